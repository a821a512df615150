"""rows.Prepared (the batch writer's executemany) stores exactly what SQLAlchemy's own
conn.execute(stmt, rows) stores, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, insert, select, text, update

from rivya_core.domain import Task, TaskEvent
from rivya_core.stores import schema
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.rows import Prepared, row_values

T0 = datetime(2026, 3, 1, 12, 0, 0)  # microsecond 0: SQLite still stores ".000000"
OLD = datetime(999, 1, 2)  # a three-digit year is padded to four


def _tasks(offset: int) -> list[dict]:
    rows = [
        Task(
            id=offset + 1,
            user_id=1,
            model="m",
            category="image",
            prompt='p \u00e9 "q"',
            params={"b": [1, 2.5], "a": None},
            status="waiting",
            billing_type="per_image",
            reserved_credits=3,
            provider="fal",
            created_at=T0,
        ),
        Task(
            id=offset + 2,
            user_id=1,
            model="m",
            category="image",
            prompt="",
            params={},
            status="success",
            billing_type="per_image",
            reserved_credits=3,
            provider="fal",
            created_at=T0.replace(microsecond=7),
            result_urls=["https://x/1"],
            finished_at=T0,
            upstream_task_id="u-1",
            settled_at=T0.replace(tzinfo=UTC, microsecond=9),
        ),  # aware: SQLite keeps the wall time
    ]
    return [row_values(schema.ai_task, t) for t in rows]


def _events(offset: int) -> list[dict]:
    return [
        row_values(
            schema.task_event,
            TaskEvent(
                id=offset + i, task_id=1, at=T0 if i == 1 else OLD, kind="created", detail={"z": i, "a": "\u2603"}
            ),
        )
        for i in (1, 2)
    ]


def _raw(engine, table: str, lo: int) -> list[tuple]:
    """Stored values as the database returns them as text, with the id offset taken out."""
    with engine.connect() as conn:
        cols = [c.name for c in schema.metadata.tables[table].c if c.name != "id"]
        sel = ", ".join(f"CAST({c} AS TEXT)" for c in cols)
        return [
            tuple(r)
            for r in conn.execute(text(f"SELECT {sel} FROM {table} WHERE id > {lo} AND id <= {lo + 100} ORDER BY id"))
        ]


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url)
    init_db(eng)
    with eng.begin() as conn:
        conn.execute(insert(schema.account).values(id=1, email="a@x", name="a", created_at=T0, balance=0))
    yield eng
    eng.dispose()


def test_inserts_store_what_sqlalchemy_stores(engine):
    with engine.begin() as conn:
        conn.execute(insert(schema.ai_task), _tasks(0))
        conn.execute(insert(schema.task_event), _events(0))
        for table, rows in ((schema.ai_task, _tasks(100)), (schema.task_event, _events(100))):
            keys = list(rows[0])
            Prepared(insert(table), conn.dialect, keys).run(conn, rows)
    assert _raw(engine, "ai_task", 0) == _raw(engine, "ai_task", 100)
    assert _raw(engine, "task_event", 0) == _raw(engine, "task_event", 100)
    with engine.connect() as conn:
        assert conn.scalar(select(schema.ai_task.c.result_urls).where(schema.ai_task.c.id == 101)) is None  # SQL NULL


def test_updates_with_renamed_parameters_store_what_sqlalchemy_stores(engine):
    t = schema.ai_task
    with engine.begin() as conn:
        conn.execute(insert(t), _tasks(0) + _tasks(100))
        changes = [
            {
                "id": i,
                "status": "failed",
                "result_urls": None,
                "finished_at": T0.replace(second=5),
                "params": {"k": "v"},
            }
            for i in (1, 2)
        ]
        stmt = (
            update(t).where(t.c.id == bindparam("_id")).values({c: bindparam(f"_{c}") for c in changes[0] if c != "id"})
        )
        conn.execute(stmt, [{f"_{k}": v for k, v in r.items()} for r in changes])
        moved = [dict(r, id=r["id"] + 100) for r in changes]
        Prepared(stmt, conn.dialect, [f"_{k}" for k in moved[0]], {f"_{k}": k for k in moved[0]}).run(conn, moved)
    assert _raw(engine, "ai_task", 0) == _raw(engine, "ai_task", 100)


def test_nothing_to_write_sends_nothing(engine):
    with engine.begin() as conn:
        Prepared(insert(schema.task_event), conn.dialect, ["id"]).run(conn, [])
    assert _raw(engine, "task_event", 0) == []
