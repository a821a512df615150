"""The lifecycle service over the real SQL store, on SQLite and PostgreSQL,
with the audit run on what it wrote, and the core CLI on the same databases."""

from __future__ import annotations

import pytest

from rivya_core.audit import audit
from rivya_core.domain import ActionRefused, TaskStatus
from rivya_core.policy import BillingPolicy
from rivya_core.read.diagnose import diagnose
from rivya_core.rules import MarkFailedRefusal, RefundRefusal
from rivya_core.stores.sql import open_store
from rivya_core.verdicts import NextAction, Verdict
from tests.cli import run_main
from tests.fakes import IMAGE, callback, make_service


@pytest.fixture
def sql_env(db_url):
    store = open_store(db_url, create=True)
    svc, clock, providers = make_service(store=store)
    yield svc, clock, providers, store
    store.engine.dispose()


def test_every_path_on_sql_store_leaves_a_clean_audit(sql_env):
    svc, clock, providers, store = sql_env
    rich = svc.create_account("rich@example.com", "Rich", grant=500)
    poor = svc.create_account("poor@example.com", "Poor", grant=1)
    ok = svc.submit(rich.id, IMAGE)
    failed = svc.submit(rich.id, {**IMAGE, "prompt": "fails upstream"})
    early = svc.submit(rich.id, {**IMAGE, "prompt": "early callback"})
    lost = svc.submit(rich.id, {**IMAGE, "prompt": "lost callback"})
    shortfall = svc.submit(poor.id, {"model": "lumen-pro", "prompt": "too dear"})
    assert shortfall.status == TaskStatus.FAILED

    svc.handle_callback("lumen", *callback(clock, ok.upstream_task_id, msg_id="a"))
    svc.handle_callback("lumen", *callback(clock, ok.upstream_task_id, msg_id="a"))  # duplicate
    svc.handle_callback(
        "lumen",
        *callback(
            clock,
            failed.upstream_task_id,
            state="failed",
            msg_id="b",
            error_code="model_error",
            failure_class="provider",
        ),
    )
    svc.handle_callback("lumen", *callback(clock, early.upstream_task_id, urls=(), msg_id="c"))
    svc.handle_callback("lumen", *callback(clock, ok.upstream_task_id, secret="whsec_Zm9yZ2Vk", msg_id="d"))
    providers["lumen"].succeed(early.upstream_task_id)
    providers["lumen"].succeed(lost.upstream_task_id)
    clock.advance(svc.policy.stuck_for("image"))
    svc.poll()

    statuses = {t: svc.task(t).status for t in (ok.id, failed.id, early.id, lost.id)}
    assert statuses == {ok.id: "SUCCESS", failed.id: "FAILED", early.id: "SUCCESS", lost.id: "SUCCESS"}
    outcomes = sorted(c.outcome for c in store.snapshot().callbacks)
    assert outcomes == ["applied", "applied", "deferred", "duplicate", "rejected_signature"]
    assert svc.balance(rich.id) == 500 - 3 * ok.reserved_credits
    report = audit(store.engine, svc.policy, now=clock.now())
    assert report.ok, report.findings


def test_support_actions_on_sql_store(sql_env):
    svc, clock, providers, store = sql_env
    user = svc.create_account("s@example.com", "S", grant=50)
    task = svc.submit(user.id, IMAGE)
    with pytest.raises(ActionRefused) as early:
        svc.support_mark_failed(task.id, "sam", "too early")
    assert early.value.reason == MarkFailedRefusal.NOT_STUCK_YET
    clock.advance(svc.policy.stuck_for("image"))
    assert svc.support_mark_failed(task.id, "sam", "stuck").status == TaskStatus.FAILED
    with pytest.raises(ActionRefused) as again:
        svc.support_refund(task.id, "sam", "again")
    assert again.value.reason == RefundRefusal.ALREADY_REFUNDED
    actions = [e.detail for e in store.snapshot().events if e.kind == "support_action"]
    assert [(a["operator"], a["action"]) for a in actions] == [
        ("sam", "mark_failed"),
        ("sam", "mark_failed"),
        ("sam", "refund"),
    ]
    assert audit(store.engine, svc.policy, now=clock.now()).ok


def _cli(*args):
    return run_main("rivya_core", *args)


def test_cli_init_db_then_audit_is_clean(db_url):
    assert _cli("init-db", "--db", db_url).returncode == 0
    out = _cli("audit", "--db", db_url)
    assert out.returncode == 0 and "no violations" in out.stdout


def test_the_checklist_explains_status_reads_the_provider_failed(sql_env):
    svc, clock, providers, store = sql_env
    user = svc.create_account("p@example.com", "P", grant=50)
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].status_faults = ["timeout", "error"]
    clock.advance(svc.policy.stuck_for("image"))
    svc.poll()
    svc.recheck(task.id, reason="support asked")
    d = diagnose(store.engine, task.id, svc.policy, now=clock.now())
    assert (d.verdict_code, d.action_code) == (Verdict.STUCK, NextAction.RECHECK_LATER)
    assert (
        d.item("polling").status == "warn"
        and "2 status reads failed (timeout ×1, error ×1)" in d.item("polling").answer
    )
    providers["lumen"].succeed(task.upstream_task_id)  # the provider answers again
    clock.advance(1)
    svc.recheck(task.id)
    d = diagnose(store.engine, task.id, svc.policy, now=clock.now())
    assert d.verdict_code == Verdict.DELIVERED and "the provider answered since" in d.item("polling").answer


def test_cli_diagnose_and_refusals_on_a_real_story(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("c@example.com", "C", grant=50)
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback(
        "lumen", *callback(clock, task.upstream_task_id, state="failed", error_code="nsfw", failure_class="user")
    )
    store.engine.dispose()
    shown = _cli("diagnose", str(task.id), "--db", sqlite_url)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr and shown.stdout.strip()
    refused = _cli("refund", str(task.id), "--db", sqlite_url, "--operator", "sam", "--reason", "asked")
    assert refused.returncode == 2 and "[policy_keeps]" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "--db", "sqlite:////nonexistent/dir/x.db"],
        ["audit", "--db", "postgresql://nobody@127.0.0.1:1/none"],
        ["diagnose", "notanumber"],
        ["refund", "1"],
        ["nonsense"],
    ],
)
def test_cli_errors_are_one_line(args):
    out = _cli(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_audit_at_wall_time_finds_a_task_stuck_on_a_quiet_live_database(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(store=store)  # its clock stands in 2026-01-01
    user = svc.create_account("q@example.com", "Q", grant=50)
    svc.submit(user.id, IMAGE)  # never hears back; nothing else happens on this database
    store.engine.dispose()
    judged_at_last_activity = _cli("audit", "--db", sqlite_url)
    assert judged_at_last_activity.returncode == 0
    judged_now = _cli("audit", "--db", sqlite_url, "--at", "now")
    assert judged_now.returncode == 1 and "stuck_past_timeout" in judged_now.stdout


def test_cli_support_action_says_the_money(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(policy=BillingPolicy(refund_classes=frozenset()), store=store)
    user = svc.create_account("m@example.com", "M", grant=50)
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback(
        "lumen",
        *callback(clock, task.upstream_task_id, state="failed", error_code="model_error", failure_class="provider"),
    )  # kept then; the default reverses it
    store.engine.dispose()
    done = _cli("refund", str(task.id), "--db", sqlite_url, "--operator", "sam", "--reason", "asked")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"task {task.id}: FAILED (model_error); refunded {task.reserved_credits} credits"
