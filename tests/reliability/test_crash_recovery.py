"""Crash at every write boundary of submit / callback / poll, then recover.

A wrapped store counts units of work; on the N-th it either raises before
committing (the work is rolled back) or after committing (the work is kept,
the caller never learns). For every N and both kinds, the process "dies",
a fresh service over the same store (the provider still knows its jobs)
runs recover(): the invariants hold, nothing is charged twice or lost, and
a second recover changes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from rivya_core.domain import ActionRefused
from rivya_core.lifecycle import LifecycleService
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.memory import MemoryStore
from rivya_core.stores.sql import SqlStore
from tests.fakes import IMAGE, SECRET, callback, make_service

from .support import audit_snapshot, invariant_violations


class Crash(BaseException):
    """The process died here."""


class CrashingStore:
    def __init__(self, inner, crash_at: int | None, after_commit: bool):
        self.inner, self.crash_at, self.after_commit, self.units = inner, crash_at, after_commit, 0

    @contextmanager
    def begin(self):
        self.units += 1
        crash = self.units == self.crash_at
        with self.inner.begin() as tx:
            yield tx
            if crash and not self.after_commit:
                raise Crash(f"before commit of unit {self.units}")
        if crash:
            raise Crash(f"after commit of unit {self.units}")

    def snapshot(self):
        return self.inner.snapshot()


def workload(svc, clock, providers, user_id: int, tag: str) -> None:
    """submit (success by callback, failure by poll, a shortfall), a duplicate and an early callback."""
    a = svc.submit(user_id, {**IMAGE, "prompt": f"{tag} a"})
    b = svc.submit(user_id, {**IMAGE, "prompt": f"{tag} b"})
    svc.submit(user_id, {"model": "lumen-pro", "prompt": f"{tag} too dear"})  # shortfall
    svc.handle_callback("lumen", *callback(clock, a.upstream_task_id, urls=(), msg_id=f"{tag}-early"))
    providers["lumen"].succeed(a.upstream_task_id)
    svc.handle_callback("lumen", *callback(clock, a.upstream_task_id, msg_id=f"{tag}-a"))
    svc.handle_callback("lumen", *callback(clock, a.upstream_task_id, msg_id=f"{tag}-a"))  # retried delivery
    providers["lumen"].fail(b.upstream_task_id)
    clock.advance(svc.policy.stuck_for("image"))
    svc.poll()


def _service(store):
    svc, clock, providers = make_service(store=store)
    return svc, clock, providers


def _finish_upstream(providers) -> None:
    """The provider finished every job it accepted (the crash did not stop it)."""
    for p in providers.values():
        for upstream, status in list(p.jobs.items()):
            if status.state not in ("succeeded", "failed"):
                p.succeed(upstream)


def _units_of_clean_run() -> int:
    counter = CrashingStore(MemoryStore(), None, False)
    svc, clock, providers = _service(counter)
    user = svc.create_account("n@example.com", "N", grant=5)
    counter.units = 0
    workload(svc, clock, providers, user.id, "clean")
    return counter.units


UNITS = _units_of_clean_run()


def _run_crash_case(inner, n: int, after_commit: bool, tag: str) -> None:
    store = CrashingStore(inner, None, after_commit)
    svc, clock, providers = _service(store)
    user = svc.create_account(f"{tag}@example.com", tag, grant=5)
    charged_before = {e.idempotency_key for e in inner.snapshot().ledger}
    store.units, store.crash_at = 0, n
    with pytest.raises(Crash):
        workload(svc, clock, providers, user.id, tag)
    # restart: a new service over the same data, same provider (it kept its jobs)
    _finish_upstream(providers)
    clock.advance(1)
    restarted = LifecycleService(inner, clock, providers, svc.catalog, svc.policy, secrets={"lumen": [SECRET]})
    restarted.recover()
    _finish_upstream(providers)  # a task recovery resubmitted finishes upstream; the poll learns it
    clock.advance(restarted.policy.stuck_for("image"))
    restarted.poll()
    snap = inner.snapshot()
    assert invariant_violations(snap) == [], (tag, n, after_commit)
    mine = [t for t in snap.tasks if t.user_id == user.id]
    assert all(t.terminal for t in mine), [(t.id, t.status) for t in mine]
    before_second = (snap.tasks, snap.ledger, snap.notifications, len(snap.events))
    assert restarted.recover().changed == 0
    again = inner.snapshot()
    assert (again.tasks, again.ledger, again.notifications, len(again.events)) == before_second
    # nothing lost: every job the provider accepted belongs to a settled task, charged once
    upstream_ids = {t.upstream_task_id for t in mine if t.upstream_task_id}
    assert set(providers["lumen"].refs.values()) <= upstream_ids | {
        t.upstream_task_id for t in snap.tasks if t.user_id != user.id
    }
    new_keys = [e.idempotency_key for e in snap.ledger if e.idempotency_key not in charged_before]
    assert len(new_keys) == len(set(new_keys))
    for t in mine:  # and no refund is left due afterwards
        if t.status == "FAILED":
            with pytest.raises(ActionRefused):
                restarted.support_refund(t.id, "ops", "after crash")
    report = audit_snapshot(snap, now=clock.now())
    assert report.ok, [f.to_dict() for f in report.findings]


def test_clean_run_has_write_boundaries():
    assert UNITS >= 15


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
@pytest.mark.parametrize("n", range(1, UNITS + 1))
def test_crash_at_every_boundary_then_recover(n, after_commit):
    _run_crash_case(MemoryStore(), n, after_commit, f"m{n}{'a' if after_commit else 'b'}")


@pytest.mark.slow
def test_crash_at_every_boundary_on_sql(db_url):
    engine = make_engine(db_url)
    init_db(engine)
    store = SqlStore(engine)
    for n in range(1, UNITS + 1):
        for after in (False, True):
            _run_crash_case(store, n, after, f"s{n}{'a' if after else 'b'}")
    engine.dispose()
