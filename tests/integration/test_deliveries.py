"""The webhook delivery log and re-processing a parked callback, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from rivya_core.domain import ActionRefused, NotFound, TaskStatus
from rivya_core.read.deliveries import delivery_log, delivery_providers
from rivya_core.rules import ReprocessRefusal, SupportRefusal
from rivya_core.stores import schema
from rivya_core.support.reprocess import reprocess_callback
from tests.cli import run_main
from tests.fakes import IMAGE, callback


@pytest.fixture
def env(sql_user_env):
    return sql_user_env


def _park(svc, clock, upstream, msg_id, **kw):
    """A signed callback for an upstream id no task holds: recorded unknown_task and parked."""
    return svc.handle_callback("lumen", *callback(clock, upstream, msg_id=msg_id, **kw))


def _holder(svc, user, upstream):
    """A task that holds `upstream` without having claimed its parked callbacks (as a task written by
    an import, or by a version before parking, would)."""
    t = svc.submit(user.id, {**IMAGE, "prompt": f"holds {upstream}"})
    svc._tx(lambda tx: tx.update_task(t.id, None, upstream_task_id=upstream))
    return svc.task(t.id)


def test_the_log_lists_every_delivery_newest_first_with_counts_filters_and_pages(env):
    svc, clock, providers, store, user = env
    t = svc.submit(user.id, IMAGE)
    first = clock.now()
    svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id="a"))
    clock.advance(10)
    svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id="a"))  # duplicate
    clock.advance(10)
    svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id="b", secret="whsec_Zm9yZ2Vk"))
    clock.advance(10)
    _park(svc, clock, "lumen-job-77", "c")
    clock.advance(10)
    svc.handle_callback("kinetica", {}, b"not json")
    page = delivery_log(store.engine)
    assert [r["outcome"] for r in page.rows] == [
        "rejected_signature",
        "unknown_task",
        "rejected_signature",
        "duplicate",
        "applied",
    ]
    assert page.total == 5 and page.counts == {"applied": 1, "duplicate": 1, "rejected_signature": 2, "unknown_task": 1}
    assert page.rows[1]["parked"] and not page.rows[1]["reprocessable"]  # no task holds lumen-job-77 yet
    assert {"body", "webhook_id", "signature_valid", "detail", "upstream_task_id"} <= set(page.rows[0])
    assert delivery_providers(store.engine) == ["kinetica", "lumen"]
    only = delivery_log(store.engine, providers=("lumen",), outcomes=("applied", "duplicate"))
    assert [r["outcome"] for r in only.rows] == ["duplicate", "applied"] and only.total == 2
    window = delivery_log(store.engine, since=first + timedelta(seconds=5), until=first + timedelta(seconds=25))
    assert [r["outcome"] for r in window.rows] == ["rejected_signature", "duplicate"]
    second = delivery_log(store.engine, limit=2, offset=2)
    assert [r["outcome"] for r in second.rows] == ["rejected_signature", "duplicate"] and second.total == 5
    assert delivery_log(store.engine, limit=10**9).limit == 1000  # pages are bounded


def test_a_parked_callback_is_reprocessed_once_its_task_exists_and_a_repeat_is_a_duplicate(env):
    svc, clock, providers, store, user = env
    parked = _park(svc, clock, "lumen-job-99", "early")
    with pytest.raises(ActionRefused) as err:
        reprocess_callback(svc, parked.callback_id, "Dana", "provider was early")
    assert err.value.reason == ReprocessRefusal.NO_TASK_YET and "stays parked" in err.value.message
    task = _holder(svc, user, "lumen-job-99")
    [row] = [r for r in delivery_log(store.engine).rows if r["id"] == parked.callback_id]
    assert row["reprocessable"] and row["holder_task_id"] == task.id
    done = reprocess_callback(svc, parked.callback_id, "Dana", "provider was early")
    assert (done.task_id, done.outcome, done.applied) == (task.id, "applied", [(parked.callback_id, "applied")])
    assert svc.task(task.id).status == TaskStatus.SUCCESS
    [row] = [r for r in delivery_log(store.engine).rows if r["id"] == parked.callback_id]
    assert (row["outcome"], row["task_id"], row["claimed_task_id"], row["reprocessable"]) == (
        "applied",
        task.id,
        task.id,
        False,
    )
    before = store.snapshot()
    again = reprocess_callback(svc, parked.callback_id, "Kim", "clicked twice")
    assert again.outcome == "duplicate" and again.applied == [] and "already applied" in again.text
    after = store.snapshot()
    assert (after.tasks, after.ledger, after.notifications, after.callbacks) == (
        before.tasks,
        before.ledger,
        before.notifications,
        before.callbacks,
    )
    new = [e for e in after.events if e not in before.events]
    assert [(e.kind, e.detail.get("outcome") or e.detail.get("operator")) for e in new] == [
        ("callback", "duplicate"),
        ("support_action", "Kim"),
    ]
    support = [e for e in after.events if e.kind == "support_action" and e.task_id == task.id]
    assert support[0].detail["action"] == "reprocess_callback" and support[0].detail["operator"] == "Dana"
    notes = [n for n in after.notifications if n.task_id == task.id]
    assert notes and all("Dana" not in n.body and "early" not in n.body for n in notes)


def test_every_parked_callback_of_the_upstream_id_is_applied_in_arrival_order(env):
    svc, clock, providers, store, user = env
    running = _park(svc, clock, "lumen-job-50", "p1", state="running")
    clock.advance(5)
    done = _park(svc, clock, "lumen-job-50", "p2")
    task = _holder(svc, user, "lumen-job-50")
    got = reprocess_callback(svc, done.callback_id, "Dana", "late link")
    assert got.applied == [(running.callback_id, "progress"), (done.callback_id, "applied")]
    assert "1 more parked callback" in got.text and svc.task(task.id).status == TaskStatus.SUCCESS


def test_only_parked_callbacks_are_reprocessed(env):
    svc, clock, providers, store, user = env
    t = svc.submit(user.id, IMAGE)
    applied = svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id="a"))
    forged = svc.handle_callback("lumen", *callback(clock, "lumen-job-5", msg_id="f", secret="whsec_Zm9yZ2Vk"))
    for cb in (applied, forged):
        with pytest.raises(ActionRefused) as err:
            reprocess_callback(svc, cb.callback_id, "Dana", "try")
        assert err.value.reason == ReprocessRefusal.NOT_PARKED
    with pytest.raises(NotFound):
        reprocess_callback(svc, 10**9, "Dana", "try")
    with pytest.raises(ActionRefused) as err:
        reprocess_callback(svc, applied.callback_id, "", "try")
    assert err.value.reason == SupportRefusal.NO_OPERATOR


def _legacy_unknown(store, clock, upstream, body):
    """An unknown_task row as a version before parking recorded it: no parked copy."""
    with store.engine.begin() as conn:
        return conn.execute(
            insert(schema.provider_callback)
            .values(
                provider="lumen",
                webhook_id="legacy-1",
                upstream_task_id=upstream,
                received_at=clock.now(),
                signature_valid=True,
                outcome="unknown_task",
                body=body,
                detail="no task has this upstream id",
            )
            .returning(schema.provider_callback.c.id)
        ).scalar()


def test_an_unknown_task_callback_recorded_before_parking_is_parked_from_its_body_then_applied(env):
    svc, clock, providers, store, user = env
    _, body = callback(clock, "lumen-job-60", msg_id="legacy-1")
    cid = _legacy_unknown(store, clock, "lumen-job-60", body.decode())
    task = _holder(svc, user, "lumen-job-60")
    got = reprocess_callback(svc, cid, "Dana", "old row")
    assert got.outcome == "applied" and svc.task(task.id).status == TaskStatus.SUCCESS
    with store.engine.connect() as conn:
        claimed = conn.execute(
            select(schema.parked_callback.c.claimed_task_id).where(schema.parked_callback.c.callback_id == cid)
        ).scalar()
    assert claimed == task.id
    assert reprocess_callback(svc, cid, "Dana", "old row").outcome == "duplicate"


def test_an_unknown_task_callback_whose_stored_body_does_not_parse_is_refused(env):
    svc, clock, providers, store, user = env
    cid = _legacy_unknown(store, clock, "lumen-job-61", '{"data": {"upstream_task_id": "lumen-job-61", "sta')
    _holder(svc, user, "lumen-job-61")
    with pytest.raises(ActionRefused) as err:
        reprocess_callback(svc, cid, "Dana", "old row")
    assert err.value.reason == ReprocessRefusal.BODY_UNREADABLE


def test_cli_reprocess_callback(env, db_url):
    svc, clock, providers, store, user = env
    parked = _park(svc, clock, "lumen-job-70", "early")
    task = _holder(svc, user, "lumen-job-70")

    def run():
        return run_main(
            "rivya_core", "reprocess-callback", str(parked.callback_id), "--db", db_url,
            "--operator", "Dana", "--reason", "late",
        )  # fmt: skip

    first, second = run(), run()
    assert first.returncode == 0 and f"task {task.id}: callback #{parked.callback_id} re-processed" in first.stdout
    assert second.returncode == 0 and "duplicate" in second.stdout, second.stderr
