"""The simulation's run buffer: drain_changes, rows_for, evict and the tombstones of
evicted tasks (a late callback is a duplicate; reads and ledger posts raise TaskEvicted)."""

from __future__ import annotations

from datetime import datetime

import pytest

from rivya_core.domain import ActionRefused, RivyaError, TaskStatus
from rivya_core.lifecycle import consume_key
from simulations.buffer import StreamingStore
from tests.fakes import IMAGE, callback, make_service

T0 = datetime(2025, 1, 1, 12, 0, 0)


def _finished_service(n: int = 1, store=None):
    """A service on a StreamingStore with `n` tasks of one user settled by callback."""
    svc, clock, providers = make_service(store=store or StreamingStore())
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
    svc, clock, user, [task] = _finished_service()
    svc.store.drain_changes()
    assert svc.store.evict([task.id]) == 1
    for msg_id in ("m0", "m-late"):  # the same delivery again, and a new one for the same job
        result = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, msg_id=msg_id))
        assert (result.outcome, result.task_id) == ("duplicate", task.id)
    with pytest.raises(RivyaError) as err:  # the full row is in the database, not here
        svc.task(task.id)
    assert err.value.code == "task_evicted" and not isinstance(err.value, ActionRefused)
    late = svc.store.drain_changes()  # the late rows are written like any other ...
    assert [c.outcome for c in late.callbacks] == ["duplicate", "duplicate"]
    assert {e.task_id for e in late.events} == {task.id}
    svc.store.evict()  # ... and then leave memory: nothing held links to them
    counts = svc.store.counts()
    assert counts["callbacks"] == counts["events"] == counts["tasks"] == 0


def test_eviction_keeps_balances_and_a_replayed_charge_cannot_charge_twice():
    svc, clock, user, [task] = _finished_service()
    balance = svc.balance(user.id)
    svc.store.drain_changes()
    svc.store.evict([task.id])
    assert svc.balance(user.id) == balance == 1000 - task.reserved_credits
    with pytest.raises(RivyaError) as err, svc.store.begin() as tx:
        tx.post(user.id, "consume", -task.reserved_credits, consume_key(task.id), T0, task_id=task.id)
    assert err.value.code == "task_evicted" and not isinstance(err.value, ActionRefused)
    with pytest.raises(RivyaError) as err:
        svc.support_refund(task.id, "ops@rivya", "asked twice")
    assert err.value.code == "task_evicted"
    assert svc.balance(user.id) == balance
    again = svc.submit(user.id, IMAGE)  # life goes on: the ledger keeps its running balance
    with svc.store.begin() as tx:
        [consume] = tx.task_entries(again.id)
    assert consume.balance_after == balance - again.reserved_credits == svc.balance(user.id)


def test_get_task_of_an_evicted_task_raises_never_a_hollow_row():
    svc, clock, user, [task] = _finished_service()
    svc.store.drain_changes()
    svc.store.evict([task.id])
    for read in (
        lambda tx: tx.get_task(task.id),
        lambda tx: tx.get_task(task.id, for_update=True),
        lambda tx: tx.task_by_upstream(task.provider, task.upstream_task_id),
    ):
        with pytest.raises(RivyaError) as err, svc.store.begin() as tx:
            read(tx)
        assert err.value.code == "task_evicted" and err.value.task_id == task.id
        assert err.value.status == TaskStatus.SUCCESS
    with svc.store.begin() as tx:
        assert tx.get_task(task.id + 1000) is None  # never there: plain not-found


def test_evict_refuses_live_undrained_and_in_unit_of_work():
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

    tracemalloc.start()
    try:
        svc, clock, user, tasks = _finished_service(200, store=StreamingStore(tombstones=50))
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
