"""Reading never writes: read engines, read-only commands and every dashboard page leave the
database file (bytes and mtime) as they found it, and a missing file is not created."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from rivya_core.domain import SchemaMissing, StoreUnavailable
from rivya_core.stores import db, schema
from tests.cli import run_main
from tests.dashboard.seed import seed

ROOT = Path(__file__).resolve().parents[2]


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _cli(module: str, *args: str):
    return run_main(module, *args, cwd=ROOT, timeout=180)


@pytest.fixture
def seeded(tmp_path) -> Path:
    path = tmp_path / "seeded.db"
    seed(f"sqlite:///{path}")
    return path


def test_a_reader_leaves_an_empty_file_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    before = _state(empty)
    with pytest.raises(SchemaMissing):
        db.open_reader(f"sqlite:///{empty}")
    assert _state(empty) == before and empty.stat().st_size == 0


def test_a_reader_does_not_create_a_missing_file(tmp_path):
    with pytest.raises(StoreUnavailable):
        db.open_reader(str(tmp_path / "missing.db"))
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_reader_reads_but_cannot_write(seeded):
    before = _state(seeded)
    engine = db.open_reader(f"sqlite:///{seeded}")
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(schema.ai_task.c.id).where(schema.ai_task.c.id == 1)) == 1
        with pytest.raises(DBAPIError, match="readonly"), engine.begin() as conn:
            conn.execute(insert(schema.task_event).values(task_id=1, at=seed.__globals__["T0"], kind="x", detail={}))
    finally:
        engine.dispose()
    assert _state(seeded) == before


def test_a_path_with_uri_characters_opens_read_only(tmp_path):
    path = tmp_path / "odd ?name#%.db"
    seed(f"sqlite:///{path}")
    engine = db.open_reader(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("select count(*) from ai_task")) == 4
    finally:
        engine.dispose()


def test_a_postgresql_reader_runs_read_only_transactions(pg_url):
    seed(pg_url)
    engine = db.open_reader(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("select count(*) from ai_task")) == 4
        with pytest.raises(DBAPIError, match="read-only transaction"), engine.begin() as conn:
            conn.execute(text("delete from task_event"))
    finally:
        engine.dispose()
    writer = db.make_engine(pg_url)
    with writer.connect() as conn:
        assert conn.scalar(text("select count(*) from task_event")) > 0
    writer.dispose()


def test_audit_of_an_empty_file_is_refused_and_leaves_it_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    proc = _cli("rivya_core", "audit", "--db", str(empty))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert empty.read_bytes() == b""


def test_audit_reads_only_unless_asked_to_record(seeded):
    before = _state(seeded)
    for command in (["audit"], ["audit", "--json"], ["diagnose", "2"]):
        proc = _cli("rivya_core", *command, "--db", str(seeded))
        assert proc.returncode in (0, 1), proc.stderr
        assert _state(seeded) == before, command
    proc = _cli("rivya_core", "audit", "--record", "--db", str(seeded))
    assert proc.returncode in (0, 1), proc.stderr
    from rivya_core.audit import latest_audit

    engine = db.open_reader(f"sqlite:///{seeded}")
    try:
        assert latest_audit(engine) is not None  # --record stores it for the dashboard
    finally:
        engine.dispose()


def test_replay_of_a_missing_database_creates_nothing(tmp_path):
    missing = tmp_path / "missing.db"
    proc = _cli("simulations", "replay", f"sqlite:///{missing}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_replay_of_an_empty_file_leaves_it_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    proc = _cli("simulations", "replay", str(empty))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert empty.read_bytes() == b""


def test_audit_record_that_cannot_be_stored_fails_in_one_line(seeded):
    import sqlite3

    from rivya_core.audit import latest_audit

    conn = sqlite3.connect(seeded)
    schema.audit_run.create(db.make_engine(f"sqlite:///{seeded}"), checkfirst=True)
    conn.execute("CREATE TRIGGER keep_out BEFORE INSERT ON audit_run BEGIN SELECT RAISE(ABORT, 'no audits here'); END")
    conn.commit()
    conn.close()
    proc = _cli("rivya_core", "audit", "--record", "--db", str(seeded))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "audit" in proc.stderr and "no audits here" in proc.stderr
    engine = db.open_reader(f"sqlite:///{seeded}")
    try:
        assert latest_audit(engine) is None
    finally:
        engine.dispose()
