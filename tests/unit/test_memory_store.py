"""MemoryStore specifics the contract suite does not reach: copies, undo of
indexes, nested units of work, the due-for-check heap and thread safety."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from rivya_core.domain import InsufficientCredits, Task, TaskStatus
from rivya_core.store_memory import MemoryStore

T0 = datetime(2025, 1, 1, 12, 0, 0)


def _task(user_id: int, **kw) -> Task:
    return Task(**{"id": 0, "user_id": user_id, "model": "m", "category": "image", "prompt": "p",
                   "params": {"n": [1]}, "status": TaskStatus.GENERATING, "billing_type": "per_task",
                   "reserved_credits": 5, "provider": "prov", "created_at": T0, **kw})


@pytest.fixture
def store():
    return MemoryStore()


def test_returned_rows_are_detached(store):
    with store.begin() as tx:
        acc = tx.add_account("a@x", "A", T0)
        task = tx.insert_task(_task(acc.id))
    task.params["n"].append(2)
    task.status = TaskStatus.FAILED
    with store.begin() as tx:
        again = tx.get_task(task.id)
    assert again.params == {"n": [1]} and again.status == TaskStatus.GENERATING


def test_rollback_restores_indexes(store):
    with store.begin() as tx:
        uid = tx.add_account("a@x", "A", T0).id
        tid = tx.insert_task(_task(uid, upstream_task_id="up-1", next_check_at=T0)).id
    with pytest.raises(RuntimeError), store.begin() as tx:
        tx.update_task(tid, upstream_task_id="up-2", next_check_at=T0 + timedelta(hours=1))
        assert tx.tasks_due_for_check(T0, 10) == []  # drops the old heap entry as stale
        raise RuntimeError("boom")
    with store.begin() as tx:
        assert tx.task_by_upstream("prov", "up-1").id == tid
        assert tx.task_by_upstream("prov", "up-2") is None
        assert [t.id for t in tx.tasks_due_for_check(T0, 10)] == [tid]


def test_nested_failure_rolls_back_inner_only(store):
    with store.begin() as tx:
        uid = tx.add_account("a@x", "A", T0).id
        tx.post(uid, "grant", 10, "g1", T0)
        with pytest.raises(InsufficientCredits), store.begin() as inner:
            inner.post(uid, "consume", -4, "c1", T0)
            inner.post(uid, "consume", -7, "c2", T0)
    with store.begin() as tx:
        assert tx.balance(uid) == 10  # the inner unit of work is undone whole, the outer one stands
        assert tx.entry("g1") is not None and tx.entry("c1") is None


def test_due_for_check_skips_moved_tasks_and_orders_by_time(store):
    with store.begin() as tx:
        uid = tx.add_account("a@x", "A", T0).id
        ids = [tx.insert_task(_task(uid, next_check_at=T0 + timedelta(seconds=100 - i))).id for i in range(100)]
        tx.update_task(ids[-1], status=TaskStatus.SUCCESS)
        tx.update_task(ids[-2], next_check_at=T0 + timedelta(days=1))
    with store.begin() as tx:
        due = tx.tasks_due_for_check(T0 + timedelta(seconds=100), limit=5)
        assert [t.id for t in due] == [ids[-3], ids[-4], ids[-5], ids[-6], ids[-7]]
        assert len(tx.tasks_due_for_check(T0 + timedelta(seconds=100), limit=1000)) == 98
        assert len(tx.tasks_due_for_check(T0 + timedelta(days=2), limit=1000)) == 99


def test_threads_never_overdraw(store):
    with store.begin() as tx:
        uid = tx.add_account("a@x", "A", T0).id
        tx.post(uid, "grant", 100, "g", T0)
    refused = []

    def worker(n: int) -> None:
        for i in range(20):
            try:
                with store.begin() as tx:
                    tx.post(uid, "consume", -3, f"c-{n}-{i}", T0)
            except InsufficientCredits:
                refused.append(1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = store.snapshot()
    assert len(snap.ledger) == 1 + 100 // 3 and len(refused) == 160 - 100 // 3
    assert snap.accounts[0].balance == 100 % 3


# --- streaming: drain_changes, rows_for, evict ----------------------------------------


def _finished_service(n: int = 1, store=None):
    """A service on a MemoryStore with `n` tasks of one user settled by callback."""
    from tests.fakes import IMAGE, callback, make_service

    svc, clock, providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=1000)
    tasks = [svc.submit(user.id, IMAGE) for _ in range(n)]
    for i, t in enumerate(tasks):
        assert svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id=f"m{i}")).outcome == "applied"
    return svc, clock, user, [svc.task(t.id) for t in tasks]


def test_drain_hands_out_each_new_row_once_in_id_order():
    svc, clock, user, [task] = _finished_service()
    first = svc.store.drain_changes()
    assert [a.id for a in first.accounts] == [user.id]
    assert [e.entry_type for e in first.ledger] == ["grant", "consume"]
    assert [e.id for e in first.events] == sorted(e.id for e in first.events) and len(first.events) >= 4
    assert len(first.callbacks) == 1 and len(first.notifications) == 1
    assert svc.store.drain_changes() == type(first)()  # nothing new, nothing twice
    [rows] = svc.store.rows_for([task.id, 999])
    assert rows.task.status == TaskStatus.SUCCESS and [e.entry_type for e in rows.ledger] == ["consume"]


def test_evicted_task_late_duplicate_callback_is_still_a_duplicate():
    from tests.fakes import callback

    svc, clock, user, [task] = _finished_service()
    svc.store.drain_changes()
    assert svc.store.evict([task.id]) == 1
    for msg_id in ("m0", "m-late"):  # the same delivery again, and a new one for the same job
        result = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, msg_id=msg_id))
        assert (result.outcome, result.task_id) == ("duplicate", task.id)
    tomb = svc.task(task.id)
    assert tomb.status == TaskStatus.SUCCESS and tomb.upstream_task_id == task.upstream_task_id
    late = svc.store.drain_changes()  # the late rows are written like any other ...
    assert [c.outcome for c in late.callbacks] == ["duplicate", "duplicate"]
    assert {e.task_id for e in late.events} == {task.id}
    svc.store.evict()  # ... and then leave memory: nothing held links to them
    counts = svc.store.counts()
    assert counts["callbacks"] == counts["events"] == counts["tasks"] == 0


def test_eviction_keeps_balances_and_a_replayed_charge_cannot_charge_twice():
    from rivya_core.domain import ActionRefused
    from rivya_core.lifecycle import consume_key
    from tests.fakes import IMAGE

    svc, clock, user, [task] = _finished_service()
    balance = svc.balance(user.id)
    svc.store.drain_changes()
    svc.store.evict([task.id])
    assert svc.balance(user.id) == balance == 1000 - task.reserved_credits
    with pytest.raises(ActionRefused) as err, svc.store.begin() as tx:
        tx.post(user.id, "consume", -task.reserved_credits, consume_key(task.id), T0, task_id=task.id)
    assert err.value.code == "entry_evicted"
    with pytest.raises(ActionRefused):
        svc.support_refund(task.id, "ops@rivya", "asked twice")
    assert svc.balance(user.id) == balance
    again = svc.submit(user.id, IMAGE)  # life goes on: the ledger keeps its running balance
    with svc.store.begin() as tx:
        [consume] = tx.task_entries(again.id)
    assert consume.balance_after == balance - again.reserved_credits == svc.balance(user.id)


def test_evict_refuses_live_undrained_and_in_unit_of_work():
    from tests.fakes import IMAGE

    svc, clock, user, [done] = _finished_service()
    live = svc.submit(user.id, IMAGE)
    svc.store.drain_changes()
    with pytest.raises(ValueError, match="GENERATING"):
        svc.store.evict([live.id])
    svc.grant(user.id, 5)
    with svc.store.begin() as tx:
        tx.add_event(done.id, "note", {}, T0)
    with pytest.raises(ValueError, match="not drained"):
        svc.store.evict([done.id])
    with pytest.raises(RuntimeError), svc.store.begin():
        svc.store.drain_changes()
    assert svc.store.counts()["tasks"] == 2


def test_memory_drops_after_eviction_and_tombstones_stay_bounded():
    import tracemalloc

    from tests.fakes import callback

    tracemalloc.start()
    try:
        svc, clock, user, tasks = _finished_service(200, store=MemoryStore(tombstones=50))
        svc.store.drain_changes()
        before = tracemalloc.get_traced_memory()[0]
        assert svc.store.evict(t.id for t in tasks) == 200
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    counts = svc.store.counts()
    assert counts["tombstones"] == 50 and counts["accounts"] == 1
    assert all(counts[k] == 0 for k in ("tasks", "ledger", "events", "notifications", "callbacks"))
    assert before - after > 200 * 1000  # well over a kilobyte per evicted task
    oldest, newest = tasks[0], tasks[-1]
    assert svc.handle_callback("lumen", *callback(clock, newest.upstream_task_id, msg_id="x")).outcome == "duplicate"
    assert svc.handle_callback("lumen", *callback(clock, oldest.upstream_task_id, msg_id="y")).outcome == "unknown_task"
    assert svc.balance(user.id) == 1000 - sum(t.reserved_credits for t in tasks)
