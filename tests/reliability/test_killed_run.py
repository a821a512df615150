"""A simulation run killed mid-way (SIGKILL right after its second committed batch)
leaves a database that `recover` finishes and `audit` passes; a second `recover`
changes nothing.

Every batch the runner writes is one transaction holding a consistent cut of the
run (tasks touched since the last batch, active ones included, and the farm's
jobs), so the kill can land between any two; `recover` asks the farm's recorded
jobs. The run kills itself once its second batch has committed, so the point is
the same on every machine and every run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rivya_core.stores import schema
from rivya_core.stores.db import make_engine
from simulations.writer import read_sim_runs

ROOT = Path(__file__).resolve().parents[2]
T = schema.ai_task

pytestmark = pytest.mark.slow  # kills a run in a child process


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


# `python -m simulations run ...` whose process SIGKILLs itself once its second batch has committed.
_KILLED_RUN = """
import os, signal, sys
from simulations import __main__ as cli, writer

flush, batches = writer.BatchWriter.flush, []

def flush_then_die(self, final=False):
    flush(self, final)
    batches.append(final)
    if len(batches) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

writer.BatchWriter.flush = flush_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


def _kill_after_two_batches(url: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, "run", "data/scenarios/chaos.toml", "--tasks", "3000", "--db", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == -signal.SIGKILL, f"the run ended before it was killed: {run.stderr[-500:]}"


def _state(engine) -> dict:
    with engine.connect() as conn:
        return {
            "statuses": dict(conn.execute(select(T.c.status, func.count()).group_by(T.c.status)).all()),
            "ledger": conn.execute(select(schema.credit_ledger).order_by(schema.credit_ledger.c.id)).all(),
            "notifications": conn.scalar(select(func.count()).select_from(schema.notification)),
            "messages": conn.execute(
                select(schema.chat_message.c.id, schema.chat_message.c.status).order_by(schema.chat_message.c.id)
            ).all(),
        }


def test_a_killed_run_is_recovered_and_passes_the_audit(db_url):
    engine = make_engine(db_url)
    try:
        _kill_after_two_batches(db_url)
        assert read_sim_runs(engine) == []  # the run never got to record itself
        before = _state(engine)
        active = before["statuses"].get("WAITING", 0) + before["statuses"].get("GENERATING", 0)
        assert active > 0 and sum(before["statuses"].values()) < 3000, before["statuses"]  # killed mid-run

        first = _cli("rivya_core", "recover", "--db", db_url, "--grace", "0")
        assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
        assert "re-checked upstream" in first.stdout  # the farm's recorded jobs settled what it had finished
        audit = _cli("rivya_core", "audit", "--db", db_url)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        after = _state(engine)
        assert after["statuses"] != before["statuses"]

        second = _cli("rivya_core", "recover", "--db", db_url, "--grace", "0")
        assert second.returncode == 0 and second.stdout.strip().endswith("changed 0"), second.stdout
        assert _state(engine) == after
    finally:
        engine.dispose()
