"""Bulk remediation as named incidents, over the SQL store (SQLite and PostgreSQL) and the CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, inspect, text

from rivya_core.audit import audit
from rivya_core.domain import ActionRefused, TaskStatus
from rivya_core.policy import BillingPolicy
from rivya_core.read import incidents
from rivya_core.rules import SupportRefusal
from rivya_core.stores.sql import open_store
from rivya_core.support import bulk
from tests.cli import run_main
from tests.fakes import IMAGE, callback, make_service


def _events(store, kind="support_action"):
    return [e for e in store.snapshot().events if e.kind == kind]


@pytest.fixture
def outage(db_url):
    """Six failed lumen tasks (four provider failures the policy at the time kept, two content-policy
    failures), two tasks still generating, and one success."""
    store = open_store(db_url, create=True)
    svc, clock, providers = make_service(policy=BillingPolicy(refund_classes=frozenset()), store=store)
    users = [svc.create_account(f"u{i}@example.com", f"User {i}", grant=200) for i in range(3)]
    failed, generating = [], []
    for i in range(6):
        t = svc.submit(users[i % 3].id, {**IMAGE, "prompt": f"outage {i}"})
        klass = "provider" if i < 4 else "user"
        svc.handle_callback(
            "lumen",
            *callback(
                clock,
                t.upstream_task_id,
                state="failed",
                msg_id=f"f{i}",
                error_code="model_error" if i < 4 else "nsfw",
                failure_class=klass,
            ),
        )
        failed.append(t.id)
    ok = svc.submit(users[0].id, {**IMAGE, "prompt": "fine"})
    svc.handle_callback("lumen", *callback(clock, ok.upstream_task_id, msg_id="ok"))
    for i in range(2):
        generating.append(svc.submit(users[1].id, {**IMAGE, "prompt": f"slow {i}"}).id)
    svc.policy = BillingPolicy()  # the policy now reverses provider failures: four refunds are due
    yield svc, clock, providers, store, failed, generating
    store.engine.dispose()


def test_dry_run_says_what_each_task_would_do_and_writes_nothing(outage):
    svc, clock, providers, store, failed, generating = outage
    before = store.snapshot()
    p = bulk.plan(svc, svc.store.engine, "refund", incidents.BulkFilter.parse(["provider=lumen", "status=FAILED"]))
    assert p.matched == 6 and p.would_act == 4 and p.would_refuse == 2
    assert p.credits == 4 * svc.task(failed[0]).reserved_credits
    assert p.refusals() == {"policy_keeps": 2}
    assert p.refusal_texts() == {"policy_keeps": "policy 'default' keeps credits for user failures"}
    assert {t.task_id for t in p.tasks if t.refusal is None} == set(failed[:4])
    after = store.snapshot()
    assert (len(after.events), len(after.ledger)) == (len(before.events), len(before.ledger))


def test_execute_acts_through_support_actions_and_a_second_run_changes_nothing(outage):
    svc, clock, providers, store, failed, generating = outage
    flt = incidents.BulkFilter.parse(["provider=lumen", "status=FAILED"])
    seen = []
    first = bulk.execute(
        svc,
        svc.store.engine,
        "refund",
        flt,
        operator="sam",
        reason="lumen outage",
        name="lumen 14:00",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert (first.matched, first.acted, first.refused, first.skipped) == (6, 4, 2, 0)
    assert sorted(o.get("refusal", "") for o in first.outcomes) == ["", "", "", "", "policy_keeps", "policy_keeps"]
    assert first.credits_moved == 4 * svc.task(failed[0]).reserved_credits
    assert seen[-1] == (6, 6)
    events = _events(store)
    assert sorted(e.task_id for e in events) == sorted(failed)
    assert {e.detail["incident"] for e in events} == {first.incident_id}
    assert all(e.detail["operator"] == "sam" and e.detail["reason"] == "lumen outage" for e in events)
    snap = store.snapshot()

    again = bulk.execute(
        svc, svc.store.engine, "refund", flt, operator="sam", reason="lumen outage", name="lumen 14:00"
    )
    assert again.incident_id == first.incident_id
    assert (again.acted, again.refused, again.skipped, again.credits_moved) == (0, 0, 6, 0)
    later = store.snapshot()
    assert (len(later.events), len(later.ledger), later.accounts) == (len(snap.events), len(snap.ledger), snap.accounts)
    [row] = incidents.incidents(store.engine)
    assert (row["name"], row["runs"], row["acted"], row["refused"], row["credits_moved"]) == (
        "lumen 14:00",
        2,
        4,
        2,
        first.credits_moved,
    )
    assert row["scope"] == "provider=lumen, status=FAILED"
    assert bulk.plan(svc, svc.store.engine, "refund", flt, incident_id=first.incident_id).already_done == 6
    assert audit(store.engine, svc.policy, now=clock.now()).ok


def test_a_name_in_use_with_another_filter_is_refused(outage):
    svc, *_ = outage
    bulk.execute(
        svc, svc.store.engine, "refund", incidents.BulkFilter(provider="lumen"), operator="sam", reason="r", name="inc"
    )
    with pytest.raises(incidents.BulkError, match="exists"):
        bulk.execute(
            svc,
            svc.store.engine,
            "refund",
            incidents.BulkFilter(provider="other"),
            operator="sam",
            reason="r",
            name="inc",
        )
    with pytest.raises(ActionRefused) as unexplained:
        bulk.execute(
            svc, svc.store.engine, "refund", incidents.BulkFilter(provider="lumen"), operator="sam", reason=" "
        )
    assert unexplained.value.reason == SupportRefusal.NO_REASON


def test_mark_failed_acts_on_stuck_tasks_only_and_recheck_asks_upstream(outage):
    svc, clock, providers, store, failed, generating = outage
    flt = incidents.BulkFilter(status=("GENERATING",))
    p = bulk.plan(svc, svc.store.engine, "mark-failed", flt)
    assert p.would_act == 0 and p.would_refuse == 2 and p.refusals() == {"not_stuck_yet": 2}
    upstream = svc.task(generating[0]).upstream_task_id
    providers["lumen"].succeed(upstream)
    run = bulk.execute(svc, svc.store.engine, "recheck", flt, operator="sam", reason="outage over")
    assert (run.acted, run.refused) == (2, 0)
    assert svc.task(generating[0]).status == TaskStatus.SUCCESS
    assert svc.task(generating[1]).status == TaskStatus.GENERATING
    clock.advance(svc.policy.stuck_for("image"))
    aged = incidents.BulkFilter.parse(["status=GENERATING", "min_age_s=1m"])
    p = bulk.plan(svc, svc.store.engine, "mark-failed", aged)
    assert p.matched == 1 and p.would_act == 1 and p.credits == svc.task(generating[1]).reserved_credits
    run = bulk.execute(svc, svc.store.engine, "mark-failed", aged, operator="sam", reason="stuck in outage")
    assert run.acted == 1 and run.credits_moved == p.credits
    assert svc.task(generating[1]).error_code == "marked_failed_by_operator"


@pytest.mark.parametrize(
    "clause, message",
    [
        ("provider", "key=value"),
        ("colour=red", "unknown filter key"),
        ("status=DONE", "status DONE"),
        ("min_age_s=soon", "duration"),
        ("since=yesterday", "ISO time"),
        ("failure_class=cosmic", "failure_class"),
    ],
)
def test_bad_filters_are_refused_by_name(clause, message):
    with pytest.raises(incidents.BulkError, match=message):
        incidents.BulkFilter.parse([clause])


def test_filter_round_trips_through_its_parameters():
    flt = incidents.BulkFilter.parse(
        ["status=generating,waiting", "min_age_s=15m", "since=2026-12-01T10:00", "provider=kinetica", "user=7"]
    )
    assert flt.status == ("GENERATING", "WAITING") and flt.min_age_s == 900
    assert incidents.BulkFilter.parse(f"{k}={v}" for k, v in flt.to_params().items()) == flt
    assert incidents.BulkFilter.from_dict(flt.to_dict()) == flt


def test_init_db_adds_the_incident_table_to_an_older_database(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(store=store)
    svc.create_account("old@example.com", "Old", grant=10)
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE incident"))
    assert incidents.incidents(store.engine) == []
    with pytest.raises(incidents.BulkError, match="init-db"):
        bulk.execute(svc, svc.store.engine, "refund", incidents.BulkFilter(), operator="sam", reason="r")
    store.engine.dispose()
    assert _cli("init-db", "--db", sqlite_url).returncode == 0
    engine = create_engine(sqlite_url)
    assert "incident" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("select email from account")).scalar() == "old@example.com"
    engine.dispose()


# --- the CLI --------------------------------------------------------------------------------


def _cli(*args):
    return run_main("rivya_core", *args)


def test_cli_dry_run_then_execute_twice(outage):
    svc, clock, providers, store, failed, generating = outage
    url = store.engine.url.render_as_string(hide_password=False)
    common = [
        "--filter",
        "provider=lumen",
        "--filter",
        "status=FAILED",
        "--db",
        url,
        "--operator",
        "sam",
        "--reason",
        "lumen outage",
        "--json",
    ]
    n_events = len(store.snapshot().events)
    dry = _cli("bulk", "refund", "--dry-run", *common)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert (doc["matched"], doc["would_act"], doc["would_refuse"]) == (6, 4, 2)
    assert len(store.snapshot().events) == n_events
    run = _cli("bulk", "refund", *common)
    assert run.returncode == 0, run.stderr
    assert (json.loads(run.stdout)["acted"], json.loads(run.stdout)["refused"]) == (4, 2)
    again = json.loads(_cli("bulk", "refund", *common).stdout)
    assert (again["acted"], again["refused"], again["skipped"]) == (0, 0, 6)
    text_out = _cli("bulk", "refund", "--dry-run", *common[:-1])
    assert text_out.returncode == 0 and "6 task(s) match" in text_out.stdout


def test_cli_errors_are_one_line(sqlite_url):
    assert _cli("init-db", "--db", sqlite_url).returncode == 0
    for args in (
        ["bulk", "refund", "--filter", "colour=red", "--operator", "s", "--reason", "r"],
        ["bulk", "explode", "--operator", "s", "--reason", "r"],
        ["bulk", "refund", "--filter", "provider=x"],
    ):
        out = _cli(*args, "--db", sqlite_url)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_bulk_result_says_the_money_per_task_and_in_sum(db_url):
    """Mark-failed under a policy that keeps infrastructure failures: each task's outcome and the run's
    sentence say that no credits went back, and why; under the default, how many did."""
    store = open_store(db_url, create=True)
    try:
        svc, clock, providers = make_service(policy=BillingPolicy(name="keep", refund_classes=frozenset()), store=store)
        user = svc.create_account("k@example.com", "K", grant=500)
        for i in range(3):
            svc.submit(user.id, {**IMAGE, "prompt": f"hang {i}"})
        clock.advance(svc.policy.stuck_for("image"))
        kept = bulk.execute(
            svc,
            svc.store.engine,
            "mark-failed",
            incidents.BulkFilter(status=("GENERATING",)),
            operator="sam",
            reason="hang",
            name="keep run",
        )
        assert {o["detail"] for o in kept.outcomes} == {
            "task is FAILED; no refund: policy 'keep' keeps credits for infrastructure failures"
        }
        assert kept.money() == (
            "no credits refunded; 3 task(s) without a refund: policy 'keep' keeps credits for infrastructure failures"
        )
        more = [svc.submit(user.id, {**IMAGE, "prompt": f"again {i}"}) for i in range(2)]
        clock.advance(svc.policy.stuck_for("image"))
        svc.policy = BillingPolicy()
        back = bulk.execute(
            svc,
            svc.store.engine,
            "mark-failed",
            incidents.BulkFilter(status=("GENERATING",)),
            operator="sam",
            reason="hang",
            name="refund run",
        )
        each = more[0].reserved_credits
        assert {o["detail"] for o in back.outcomes} == {f"task is FAILED; refunded {each} credits"}
        assert back.money() == f"{2 * each} credits refunded on 2 task(s)"
    finally:
        store.engine.dispose()
