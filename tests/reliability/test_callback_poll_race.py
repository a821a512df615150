"""A callback and a poll finish the same task at the same moment (threads on
SQLite and PostgreSQL): exactly one applies, the other is a recorded no-op,
and the user gets one notification."""

from __future__ import annotations

import threading

from rivya_core.catalog import default_catalog
from rivya_core.clock import ManualClock
from rivya_core.lifecycle import LifecycleService
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.sql import SqlStore
from tests import reads
from tests.fakes import IMAGE, SECRET, FakeProvider, callback

ROUNDS = 12


class BarrierProvider(FakeProvider):
    """status() waits until the callback thread is released too."""

    barrier: threading.Barrier | None = None

    def status(self, upstream_task_id):
        answer = super().status(upstream_task_id)
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        return answer


def test_callback_and_poll_racing_one_task_apply_once(db_url):
    engine = make_engine(db_url)
    init_db(engine)
    store, clock, catalog = SqlStore(engine), ManualClock(), default_catalog()
    providers = {name: BarrierProvider(name) for name in catalog.providers()}
    svc = LifecycleService(store, clock, providers, catalog, secrets={n: [SECRET] for n in providers})
    user = svc.create_account("race@example.com", "Race", grant=1000)
    lumen = providers["lumen"]
    winners = {"callback": 0, "poll": 0}
    for i in range(ROUNDS):
        task = svc.submit(user.id, {**IMAGE, "prompt": f"race {i}"})
        lumen.succeed(task.upstream_task_id)
        clock.advance(svc.policy.stuck_for("image"))  # the safety-net poll is due
        lumen.barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def do_callback(upstream=task.upstream_task_id, n=i, results=results):
            lumen.barrier.wait(timeout=30)
            results["callback"] = svc.handle_callback("lumen", *callback(clock, upstream, msg_id=f"race-{n}"))

        def do_poll(results=results):
            results["poll"] = svc.poll()

        threads = [threading.Thread(target=do_callback), threading.Thread(target=do_poll)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        lumen.barrier = None
        assert set(results) == {"callback", "poll"}, "a racer raised"
        assert results["poll"].checked == 1
        assert svc.task(task.id).status == "SUCCESS"
        with store.begin() as tx:
            events = tx.task_events(task.id)
        notes = reads.task_notifications(store, task.id)
        cbs = reads.task_callbacks(store, task.id)
        assert [n.kind for n in notes] == ["generation_success"]
        assert [e.kind for e in events].count("succeeded") == 1
        [cb] = cbs
        [poll] = [e for e in events if e.kind == "poll"]
        by_callback = next(e for e in events if e.kind == "succeeded").detail["path"] == "callback"
        if by_callback:  # the poll lost: it recorded a no-op
            assert cb.outcome == "applied" and poll.detail["result"].startswith("no-op")
            winners["callback"] += 1
        else:  # the callback lost: recorded as a duplicate
            assert cb.outcome == "duplicate" and "result" not in poll.detail
            winners["poll"] += 1
    assert sum(winners.values()) == ROUNDS
    engine.dispose()
