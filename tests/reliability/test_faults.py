"""The live path under faults (simulations.faults): each fault kind on PostgreSQL at a small
size, and kill-worker on SQLite; nothing lost or doubled, and a delivery that met a dead
database was answered 5xx (so the provider sent it again), never acknowledged."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect, text

from rivya_core.domain import RivyaError
from simulations.faults import run_faults

TASKS = 40
SPEED = 60.0


def _ok(report):
    assert report.ok, report.render_text()
    assert report.lost == 0 and report.tasks == TASKS and report.submitted == TASKS
    assert set(report.states) <= {"SUCCESS", "FAILED"}
    assert all(w["in_flight"] > 0 for w in report.windows), report.render_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault,flavor",
    [
        ("kill-worker", "replicate"),
        ("restart-db", "fal"),
        ("drop-connections", "replicate"),
        ("slow-provider", "fal"),
        ("provider-down", "replicate"),
    ],
)
def test_each_fault_on_postgresql_loses_and_doubles_nothing(pg_url, fault, flavor):
    report = run_faults(pg_url, flavor, TASKS, fault, speed=SPEED)
    _ok(report)
    if fault == "kill-worker":
        # a worker was killed in the middle of a delivery, which the provider then sent again
        assert any(w["victim_busy"] for w in report.windows) and report.answers.get("no answer", 0) >= 1
        assert all(w["recovered_s"] is not None for w in report.windows)  # replaced each time
    if fault in ("restart-db", "drop-connections"):
        assert report.answers.get("5xx", 0) >= 1 and report.acked_while_down == 0
        assert all(w["recovered_s"] is not None for w in report.windows)
    if fault == "slow-provider":
        assert report.api_faults.get("late", 0) >= 1
    if fault == "provider-down":
        assert report.api_faults.get("refused", 0) >= 1


@pytest.mark.slow
def test_on_sqlite_a_worker_killed_holding_the_write_lock_loses_nothing(sqlite_url):
    report = run_faults(sqlite_url, "fal", TASKS, "kill-worker", speed=SPEED)
    _ok(report)
    assert any(w["victim_busy"] for w in report.windows), report.render_text()


def test_a_fault_that_needs_postgresql_is_refused_on_sqlite_in_one_line(tmp_path):
    db = tmp_path / "x.db"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations",
            "faults",
            "--db",
            f"sqlite:///{db}",
            "--flavor",
            "fal",
            "--tasks",
            "5",
            "--fault",
            "restart-db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "needs PostgreSQL" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not db.exists()


def test_restart_db_refuses_a_database_other_sessions_use(pg_url):
    other = create_engine(pg_url)
    try:
        with other.connect() as conn:
            conn.execute(text("SELECT 1"))
            with pytest.raises(RivyaError) as err:
                run_faults(pg_url, "fal", 5, "restart-db")
        assert err.value.code == "db_shared"
    finally:
        other.dispose()
    check = create_engine(pg_url)
    try:
        assert inspect(check).get_table_names() == []  # refused before anything was written
    finally:
        check.dispose()


def test_a_dropped_proxy_connection_fails_the_query_waiting_on_it_at_once(pg_url):
    """drop-connections resets the connections it carries: a query waiting for its answer gets an
    error, instead of waiting for ever on a socket the proxy no longer reads."""
    import threading
    import time

    from sqlalchemy.engine import make_url

    from simulations.faults import TcpProxy

    u = make_url(pg_url)
    proxy = TcpProxy(u.host, u.port or 5432)
    proxy.listen()
    engine = create_engine(u.set(drivername="postgresql+psycopg", host="127.0.0.1", port=proxy.port))
    got = []

    def query():
        started = time.monotonic()
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(2)"))
            got.append(("answered", time.monotonic() - started))
        except Exception as exc:
            got.append((type(exc).__name__, time.monotonic() - started))

    try:
        thread = threading.Thread(target=query, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while len(proxy._conns) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        proxy.drop()
        thread.join(10)
        assert got and got[0][0] == "OperationalError" and got[0][1] < 2, got
    finally:
        proxy.drop()
        engine.dispose()
