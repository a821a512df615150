"""MemoryStore specifics the contract suite does not reach: copies, undo of
indexes, nested units of work, the due-for-check heap and thread safety."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from rivya_core.domain import InsufficientCredits, Task, TaskStatus
from rivya_core.stores.memory import MemoryStore

T0 = datetime(2025, 1, 1, 12, 0, 0)


def _task(user_id: int, **kw) -> Task:
    return Task(
        **{
            "id": 0,
            "user_id": user_id,
            "model": "m",
            "category": "image",
            "prompt": "p",
            "params": {"n": [1]},
            "status": TaskStatus.GENERATING,
            "billing_type": "per_task",
            "reserved_credits": 5,
            "provider": "prov",
            "created_at": T0,
            **kw,
        }
    )


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
