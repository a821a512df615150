"""Eight processes sign up the same e-mail addresses at once on PostgreSQL: one
account per address, every loser gets the typed account_exists refusal, never a
raw database error, and only the winner's sign-up grant is on the ledger."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from rivya_core.audit import conservation
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.sql import SqlStore

from .workload import services

PROCESSES, EMAILS = 8, 12


def signup_worker(url: str, barrier, out) -> None:
    from rivya_core.domain import RivyaError

    store, finisher, _, _ = services(url)
    answers = []
    try:
        for i in range(EMAILS):
            barrier.wait(timeout=60)
            try:
                answers.append(("ok", finisher.create_account(f"same{i}@example.com", "Same", grant=7).id))
            except RivyaError as exc:
                answers.append(("typed", exc.code))
            except Exception as exc:  # a raw database error fails the test
                answers.append(("untyped", f"{type(exc).__name__}: {str(exc)[:200]}"))
    finally:
        store.dispose()
        out.put(answers)


@pytest.mark.slow
def test_racing_signups_get_account_exists(pg_url):
    engine = make_engine(pg_url)
    init_db(engine)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=signup_worker, args=(pg_url, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    answers = [a for _ in procs for a in out.get(timeout=300)]
    for p in procs:
        p.join(timeout=60)
    assert [a for a in answers if a[0] == "untyped"] == []
    assert {a[1] for a in answers if a[0] == "typed"} == {"account_exists"}
    assert sum(a[0] == "ok" for a in answers) == EMAILS
    snap = SqlStore(engine).snapshot()
    assert len(snap.accounts) == EMAILS and len(snap.ledger) == EMAILS
    assert all(a.balance == 7 for a in snap.accounts)
    assert conservation(engine)["ok"]
    engine.dispose()
