"""Callbacks that race the write of the upstream id, and "still running" reports,
on the memory store and on the SQL stores (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from rivya_core.audit import audit
from rivya_core.domain import TaskStatus
from rivya_core.stores.memory import MemoryStore
from rivya_core.stores.sql import open_store
from tests import reads
from tests.fakes import IMAGE, callback, make_service


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def svc_env(request, tmp_path):
    store = MemoryStore()
    if request.param != "memory":
        url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/r.db"
        store = open_store(url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    yield svc, clock, providers, user
    if request.param != "memory":
        store.engine.dispose()


def _early_caller(svc, clock, provider, deliveries):
    """Make the provider call back (each delivery: state, msg id) inside submit(), after it has
    chosen the job id and before submit() returns: before our write of the upstream id."""
    real_submit = provider.submit
    seen = []

    def submit(task_ref, model, prompt, params):
        upstream = real_submit(task_ref, model, prompt, params)
        for state, msg in deliveries:
            seen.append(
                svc.handle_callback(
                    provider.name, *callback(clock, upstream, state=state, msg_id=msg), task_ref=task_ref
                )
            )
        return upstream

    provider.submit = submit
    return seen


def test_a_result_that_arrives_before_the_upstream_id_is_parked_then_applied(svc_env):
    svc, clock, providers, user = svc_env
    seen = _early_caller(svc, clock, providers["lumen"], [("succeeded", "m1")])
    task = svc.submit(user.id, IMAGE)
    assert [r.outcome for r in seen] == ["unknown_task"]  # recorded at arrival: no task had the id
    assert seen[0].task_id == task.id  # linked by our reference in the URL
    assert task.status == TaskStatus.SUCCESS  # applied when the id was stored
    assert task.result_urls == ["https://cdn.example/out.png"]
    with svc.store.begin() as tx:
        kinds = [e.kind for e in tx.task_events(task.id)]
    [cb] = reads.task_callbacks(svc.store, task.id)
    assert cb.outcome == "applied" and cb.id == seen[0].callback_id
    assert kinds[kinds.index("submitted") :][:3] == ["submitted", "callback", "succeeded"]
    # the provider retries the same delivery: a duplicate, nothing changes
    again = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, msg_id="m1"))
    assert again.outcome == "duplicate"
    assert len([n for n in svc.store.snapshot().notifications if n.task_id == task.id]) == 1


def test_parked_failure_and_progress_keep_arrival_order(svc_env):
    svc, clock, providers, user = svc_env
    _early_caller(svc, clock, providers["lumen"], [("running", "p1"), ("failed", "f1")])
    task = svc.submit(user.id, IMAGE)
    assert task.status == TaskStatus.FAILED and task.failure_class == "provider"
    assert [c.outcome for c in reads.task_callbacks(svc.store, task.id)] == ["progress", "applied"]
    assert svc.balance(user.id) == 100  # refunded once


def test_a_parked_callback_nobody_claims_changes_nothing(svc_env):
    svc, clock, providers, user = svc_env
    before = svc.store.snapshot()
    res = svc.handle_callback("lumen", *callback(clock, "lumen-job-999", msg_id="x"), task_ref="task-12345")
    assert res.outcome == "unknown_task" and res.task_id is None
    after = svc.store.snapshot()
    assert after.tasks == before.tasks and after.ledger == before.ledger and after.events == before.events


def test_still_running_is_progress_not_applied(svc_env):
    svc, clock, providers, user = svc_env
    task = svc.submit(user.id, IMAGE)
    res = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, state="running", msg_id="r"))
    assert res.outcome == "progress"
    assert svc.task(task.id).status == TaskStatus.GENERATING
    final = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, msg_id="s"))
    assert final.outcome == "applied" and svc.task(task.id).status == TaskStatus.SUCCESS


def test_parked_race_leaves_a_clean_audit_on_sql(db_url):
    store = open_store(db_url, create=True)
    try:
        svc, clock, providers = make_service(store=store)
        user = svc.create_account("bo@example.com", "Bo", grant=100)
        _early_caller(svc, clock, providers["lumen"], [("succeeded", "a")])
        svc.submit(user.id, IMAGE)
        report = audit(store.engine, svc.policy, clock.now())
        assert report.ok, [f.kind for f in report.findings]
    finally:
        store.engine.dispose()


def test_recovery_adopts_the_upstream_id_of_a_callback_parked_under_the_tasks_reference(svc_env):
    """The process died between the provider's answer and our write of the upstream id, and the
    provider cannot be searched by our reference: the callback parked under it tells the id."""
    svc, clock, providers, user = svc_env
    lumen = providers["lumen"]
    seen = _early_caller(svc, clock, lumen, [("succeeded", "m1")])
    real_submit = lumen.submit

    def crash(*args):
        real_submit(*args)
        raise KeyboardInterrupt  # the process dies before storing the id

    lumen.submit = crash
    lumen.find = lambda ref: None  # a real API: no search by our reference
    with pytest.raises(KeyboardInterrupt):
        svc.submit(user.id, IMAGE)
    [task] = [t for t in svc.store.snapshot().tasks if t.user_id == user.id]
    assert task.status == TaskStatus.WAITING and seen[0].outcome == "unknown_task" and seen[0].task_id == task.id
    clock.advance(120)
    report = svc.recover(grace_s=60)
    assert report.actions == [
        {"task_id": task.id, "action": "stored the upstream id of a callback parked under this task's reference"}
    ]
    done = svc.task(task.id)
    assert done.status == TaskStatus.SUCCESS and done.upstream_task_id == "lumen-job-1"
    assert svc.recover(grace_s=60).actions == []


def _wait_until_blocked(engine, timeout=10.0):
    """Until another connection of this database waits on a lock (row or advisory)."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar():
                return True
            conn.rollback()
            time.sleep(0.02)
    return False


def test_a_callback_that_waits_on_the_write_of_its_upstream_id_is_applied_not_parked(pg_url):
    """The callback arrives while the unit of work storing the upstream id is still open: it
    cannot see the id yet, waits for that unit of work, then finds the task and applies."""
    store = open_store(pg_url, create=True)
    try:
        svc, clock, providers = make_service(store=store)
        user = svc.create_account("cy@example.com", "Cy", grant=100)
        real_claim, seen, blocked = svc._claim_parked, [], []

        def claim_then_race(tx, task_id, provider, upstream_id):
            real_claim(tx, task_id, provider, upstream_id)  # nothing parked yet; the unit of work is still open
            racer = threading.Thread(
                target=lambda: seen.append(svc.handle_callback(provider, *callback(clock, upstream_id, msg_id="m1")))
            )
            racer.start()
            blocked.append(_wait_until_blocked(store.engine))
            svc._racer = racer

        svc._claim_parked = claim_then_race
        task = svc.submit(user.id, IMAGE)
        svc._racer.join(30)
        assert blocked == [True]
        assert [r.outcome for r in seen] == ["applied"] and seen[0].task_id == task.id
        assert svc.task(task.id).status == TaskStatus.SUCCESS
        assert [c.outcome for c in reads.task_callbacks(store, task.id)] == ["applied"]
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM parked_callback")).scalar() == 0  # never parked
    finally:
        store.engine.dispose()


@pytest.mark.parametrize("state", ["succeeded", "deferred"])
def test_concurrent_deliveries_of_one_webhook_take_effect_once(pg_url, state):
    """Eight threads deliver the same webhook at once: one applies (or defers), seven are duplicates."""
    store = open_store(pg_url, create=True)
    try:
        svc, clock, providers = make_service(store=store)
        user = svc.create_account("di@example.com", "Di", grant=100)
        task = svc.submit(user.id, IMAGE)
        urls = () if state == "deferred" else ("https://cdn.example/out.png",)
        delivery = callback(clock, task.upstream_task_id, urls=urls, msg_id="same")
        barrier, results = threading.Barrier(8), []

        def deliver():
            barrier.wait(timeout=30)
            results.append(svc.handle_callback("lumen", *delivery).outcome)

        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        first = "deferred" if state == "deferred" else "applied"
        assert sorted(results) == sorted([first] + ["duplicate"] * 7)
        with store.begin() as tx:
            kinds = [e.kind for e in tx.task_events(task.id)]
        notes = reads.task_notifications(store, task.id)
        assert kinds.count("callback") == 8
        assert kinds.count("deferred" if state == "deferred" else "succeeded") == 1
        assert len(notes) == (0 if state == "deferred" else 1)
    finally:
        store.engine.dispose()
