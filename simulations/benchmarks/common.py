"""What the benchmarks share: the generation-only workload, the error, peak memory, and a
scratch PostgreSQL database of the run's own."""

from __future__ import annotations

import resource
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from rivya_core.domain import RivyaError

from ..scenarios import Scenario, parse_scenario

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_SCRATCH_PREFIX = "rivya_bench_"

# Generation only, no faults, no behaviours, everyone rich: every arrival is one
# task with id = arrival number, so the bare model can key the farm's draws.
WORKLOAD = """
[scenario]
description = "benchmark workload"
seed = 6
horizon_s = 0
tasks = {tasks}
callbacks = true
[population]
users = 500
balance = [100000000, 100000000]
[arrivals]
rate_per_hour = 36000
pattern = "flat"
[mix]
image = 0.7
video = 0.1
audio = 0.2
chat = 0
tool_chat = 0
[behaviour]
retry_failed = 0
resubmit_running = 0
duplicate_heavy = 0
[farm]
capacity = 2000
"""


class BenchError(RivyaError):
    code = "bench_failed"
    user_correctable = True


def workload(tasks: int) -> Scenario:
    return parse_scenario(WORKLOAD.format(tasks=int(tasks)), "<bench>", "bench")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _admin():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@contextmanager
def scratch_postgres(label: str = "run") -> Iterator[str]:
    """The URL of an empty database of this run's own on the local server, dropped when the block
    ends (also on an error). Its name is unique (rivya_bench_<label>_<uuid>), so concurrent runs
    (two sessions, pytest -n 2) never share one; the drop ends only connections to it."""
    from sqlalchemy import text

    name = f"{PG_SCRATCH_PREFIX}{label}_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def pg_reachable() -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except (SQLAlchemyError, OSError):
        return False
    finally:
        engine.dispose()


__all__ = ["BenchError", "PG_ADMIN_URL", "WORKLOAD", "peak_rss_mib", "pg_reachable", "scratch_postgres", "workload"]
