"""The SQL row kit: dataclass rows as insert values, a snapshot written to a database, and
`Prepared`, a DML statement compiled once and run as the driver's executemany (the batch writer's
fast path; speed work lives here, inside the store adapters, not in domain code)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, text

from ..domain import (
    Account,
    ChatMessage,
    ChatSession,
    LedgerEntry,
    Notification,
    ProviderCallback,
    Task,
    TaskEvent,
)
from ..ports import Snapshot
from . import jsontext, schema
from .db import init_db, make_engine

BATCH = 2000

# Snapshot attribute -> (table, row dataclass): the one place rows meet tables.
SNAPSHOT_TABLES: dict[str, tuple[Any, type]] = {
    "accounts": (schema.account, Account),
    "tasks": (schema.ai_task, Task),
    "ledger": (schema.credit_ledger, LedgerEntry),
    "notifications": (schema.notification, Notification),
    "events": (schema.task_event, TaskEvent),
    "callbacks": (schema.provider_callback, ProviderCallback),
    "sessions": (schema.chat_session, ChatSession),
    "messages": (schema.chat_message, ChatMessage),
}


# --- bulk writes ------------------------------------------------------------------


# (table, row class) -> (field names it stores, a getter of their values as a tuple)
_ROW_COLUMNS: dict[tuple[Any, type], tuple[tuple[str, ...], Any]] = {}


def row_values(table: Any, row: Any) -> dict[str, Any]:
    """A dataclass row as insert values for table (same keys for every row)."""
    key = (table, type(row))
    got = _ROW_COLUMNS.get(key)
    if got is None:  # once per table and row class, not per row (batch writes call this per row)
        names = tuple(f.name for f in dataclasses.fields(row) if f.name in table.c)
        get = operator.attrgetter(*names) if len(names) > 1 else (lambda r, n=names[0]: (getattr(r, n),))
        got = _ROW_COLUMNS[key] = (names, get)
    names, get = got
    return dict(zip(names, get(row), strict=True))


def write_snapshot(engine: Engine, snapshot: Snapshot) -> None:
    """Insert every row of snapshot, ids preserved, in batches of Core inserts."""
    with engine.begin() as conn:
        for attr, (table, _cls) in SNAPSHOT_TABLES.items():
            rows = getattr(snapshot, attr)
            for start in range(0, len(rows), BATCH):
                conn.execute(insert(table), [row_values(table, r) for r in rows[start : start + BATCH]])
            if rows and engine.dialect.name == "postgresql":
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT max(id) FROM {table.name}))"
                    )
                )


def snapshot_to_engine(snapshot: Snapshot, url: str = "sqlite://") -> Engine:
    """A database (in-memory SQLite by default) holding exactly snapshot's rows."""
    engine = make_engine(url)
    init_db(engine)
    write_snapshot(engine, snapshot)
    return engine


_SAMPLES = (datetime(2026, 12, 31, 23, 59, 58, 7), datetime(999, 1, 2, 3, 4, 5), None)


_JSON_SAMPLES = ({"b": 1, "a": [1.5, "\u00e9", None, True, {"c": "d"}]}, ["x", 2])


class _Inlined:
    """A bind processor and the source text of the same conversion (`inline`, with `{value}` and
    `{proc}` to fill in), which `_row_function` writes into the row function instead of a call."""

    __slots__ = ("fn", "inline")

    def __init__(self, fn: Callable[[Any], Any], inline: str):
        self.fn, self.inline = fn, inline

    def __call__(self, value: Any) -> Any:
        return self.fn(value)


def _faster_json(proc: Any) -> Any:
    """A JSON column's processor wraps the engine's serializer in two calls per value; when it
    writes what `jsontext.dumps` writes, encode dicts and lists with that directly."""
    try:
        same = all(proc(v) == jsontext.dumps(v) for v in _JSON_SAMPLES)
    except Exception:  # a processor for another type, or one that does not return text
        same = False
    if not same:
        return None
    dumps = jsontext.dumps

    def process(value: Any) -> Any:
        if value.__class__ is dict or value.__class__ is list:
            return dumps(value)
        return proc(value)

    return _Inlined(process, "(_dumps(x) if (x := {value}).__class__ is dict or x.__class__ is list else {proc}(x))")


def _faster(proc: Any) -> Any:
    """SQLite's DateTime processor formats with a %-dict per value; when it writes what
    `datetime.isoformat(" ", "microseconds")` writes (SQLAlchemy's default storage format),
    use that for naive datetimes and keep the processor for anything else. A JSON processor
    that writes `jsontext.dumps`'s text: see `_faster_json`."""
    if proc is None:
        return None
    json_proc = _faster_json(proc)
    if json_proc is not None:
        return json_proc
    try:
        same = all(proc(v) == (v and v.isoformat(" ", "microseconds")) for v in _SAMPLES)
    except Exception:  # a processor for another type: not this one
        same = False
    if not same:
        return proc

    def process(value: Any) -> Any:
        if value.__class__ is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return proc(value)

    return _Inlined(
        process,
        "((_iso_seen(x) or _iso(x)) if (x := {value}).__class__ is _datetime and x.tzinfo is None else {proc}(x))",
    )  # each instant's text formatted once (naive_iso)


def _row_function(entries: list[tuple[str, str, Any]], positional: bool) -> Callable[[Any], Any]:
    """entries: (bind name, row key, processor or None) -> a function of one row (a mapping) giving its
    parameters, a tuple (positional) or a dict by bind name, each value through its processor. Built
    as source once per statement (as collections.namedtuple builds its class), so a row costs one
    call instead of a loop over its columns; the fast processors of `_faster` are written inline."""
    env: dict[str, Any] = {
        "_dumps": jsontext.dumps,
        "_datetime": datetime,
        "_iso": jsontext.naive_iso,
        "_iso_seen": jsontext.NAIVE_ISO.get,
    }
    parts = []
    for i, (name, key, proc) in enumerate(entries):
        value = f"v[{key!r}]"
        if proc is None:
            expr = value
        else:
            env[f"_p{i}"] = proc
            inline = getattr(proc, "inline", None)
            expr = f"_p{i}({value})" if inline is None else inline.format(value=value, proc=f"_p{i}")
        parts.append(expr if positional else f"{name!r}: {expr}")
    if positional:
        body = f"({', '.join(parts)},)" if parts else "()"
    else:
        body = "{" + ", ".join(parts) + "}"
    exec(f"def row(v):\n    return {body}\n", env)  # noqa: S102 - source from column names (repr) only
    return env["row"]


class Prepared:
    """A DML statement compiled once for a dialect and run as the driver's executemany.

    The parameters of each row go through the same bind processors SQLAlchemy's own
    `conn.execute(stmt, rows)` applies (DateTime to text on SQLite, JSON serialised, ...),
    so the stored values are the same; what is skipped is SQLAlchemy's per-row parameter
    construction, which costs more than the insert itself for the small rows a batch
    writer sends. `keys`: the parameter names every row carries (for an insert, the
    column names; for an update, its bindparam names)."""

    __slots__ = ("sql", "names", "procs", "positional", "source", "row")

    def __init__(self, stmt: Any, dialect: Any, keys: Iterable[str], source: dict[str, str] | None = None):
        """`source`: bind name -> the row key that holds its value, where they differ."""
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
        procs = {}
        for name in self.names:
            proc = _faster(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            if proc is not None:
                procs[name] = proc
        self.procs = procs
        self.source = source or {}
        self.row = _row_function(
            [(name, self.source.get(name, name), procs.get(name)) for name in self.names], self.positional
        )

    def params(self, rows: Iterable[dict[str, Any]]) -> list[Any]:
        return list(map(self.row, rows))

    def run(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.exec_driver_sql(self.sql, self.params(rows))
