"""Jepsen-style bank test: many processes submit, call back, poll and refund the
same tasks at once; afterwards the ledger must still add up (SQLite, PostgreSQL)."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import Counter

import pytest
from sqlalchemy import func, select

from rivya_core.audit import audit, conservation
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.schema import ai_task, credit_ledger
from rivya_core.stores.sql import SqlStore

from .workload import FINISH_POLICY, services

WORKERS = int(os.environ.get("RIVYA_BANK_WORKERS", 8))
TASKS = int(os.environ.get("RIVYA_BANK_TASKS", 4000))
ACCOUNTS = 50
PRICE = 2  # lumen-flash, credits per task


def _setup(url: str) -> list[int]:
    engine = make_engine(url)
    init_db(engine)
    engine.dispose()
    store, finisher, _, _ = services(url)
    per_account = TASKS // ACCOUNTS * PRICE // 2  # covers about half of each account's tasks
    users = [finisher.create_account(f"u{i}@example.com", f"U{i}", grant=per_account).id for i in range(ACCOUNTS)]
    store.dispose()
    return users


def _drain(url: str) -> int:
    """The safety-net poll (an hour ahead) until nothing is generating; returns the sweeps."""
    store, _, sweeper, _ = services(url)
    sweeps = 0
    while sweeper.poll(limit=1000).checked:
        sweeps += 1
        assert sweeps < 50, "polling does not converge"
    store.dispose()
    return sweeps


@pytest.mark.slow
def test_concurrent_bank_workload_keeps_the_ledger_exact(db_url):
    users = _setup(db_url)
    per_worker = TASKS // WORKERS
    with mp.get_context("spawn").Pool(WORKERS) as pool:
        results = pool.map(run_worker_entry, [(db_url, w, per_worker, users) for w in range(WORKERS)])
    totals = sum((Counter(r) for r in results), Counter())
    _drain(db_url)

    engine = make_engine(db_url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(ai_task.c.status, func.count()).group_by(ai_task.c.status)).all())
        negative = conn.scalar(select(func.count()).where(credit_ledger.c.balance_after < 0))
    assert sum(statuses.values()) == per_worker * WORKERS
    assert set(statuses) <= {"SUCCESS", "FAILED"}, statuses
    assert negative == 0
    cons = conservation(engine)
    assert cons["ok"], cons
    assert cons["grants"] - cons["charged"] + cons["refunded"] == cons["balances_total"]
    report = audit(engine, FINISH_POLICY)
    assert report.ok, [f.to_dict() for f in report.findings]
    snap = SqlStore(engine).snapshot()
    engine.dispose()
    from .support import invariant_violations

    assert invariant_violations(snap, FINISH_POLICY) == []
    # the workload really raced: shortfalls, callbacks of every kind, support refunds both ways
    assert totals["submit:FAILED"] > per_worker, totals
    assert totals["cb:duplicate"] and totals["cb:applied"] and totals["cb:unknown_task"], totals
    assert totals["refund:done"] and totals["refund:refused"], totals


def run_worker_entry(args):
    from .workload import run_worker

    return run_worker(args)
