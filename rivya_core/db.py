"""Engines, schema setup and opening a SQL store from a URL.

SQLite is the embedded default, PostgreSQL the team database; only the URL
differs. SQLite engines run in WAL mode with a 30 s busy timeout, and every
transaction starts with BEGIN IMMEDIATE (SQLAlchemy's documented pysqlite
recipe), so concurrent writers queue for the write lock instead of failing
half-way. A read-only caller may ask for a plain BEGIN with
`engine.execution_options(sqlite_begin="DEFERRED")`.

Readers (`open_reader`, `make_engine(url, read_only=True)`) cannot write at all:
SQLite is opened with the `mode=ro` URI (no journal-mode switch, so an empty
file stays empty and a missing one is not created) and PostgreSQL sessions
start with `default_transaction_read_only=on`. Pages and read-only commands use
them; nothing they do can create or change a file or a database.

Every refusal to open a database is a StoreUnavailable (or SchemaMissing) with
one readable line, never a driver traceback.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateColumn, CreateTable

from . import jsontext, schema
from .domain import (
    Account,
    ChatMessage,
    ChatSession,
    LedgerEntry,
    Notification,
    ProviderCallback,
    SchemaMissing,
    StoreUnavailable,
    Task,
    TaskEvent,
)
from .ports import Snapshot

if TYPE_CHECKING:
    from .store_sql import SqlStore

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_PATH = REPO_ROOT / "data" / "rivya.db"
# RIVYA_DB_URL when set, else the embedded SQLite file under data/.
DEFAULT_URL = os.environ.get("RIVYA_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}"
BUSY_TIMEOUT_S = 30
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


def normalize_url(url: str) -> str:
    """postgres[ql]:// -> postgresql+psycopg://; a bare path -> sqlite:///path."""
    url = (url or "").strip()
    if not url:
        raise StoreUnavailable("no database URL given")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.split("@")[-1]


def _is_memory_sqlite(url: Any) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    u = make_url(normalize_url(url))
    if u.get_backend_name() != "sqlite" or _is_memory_sqlite(u):
        return None
    return Path(u.database)


def make_engine(url: str, *, read_only: bool = False, pool_size: int | None = None) -> Engine:
    """An engine configured for the store (read_only: one that cannot write, see the
    module doc). pool_size: the connections a process that uses that many at once keeps
    open (the webhook receiver: its callback threads and the sweep), with little overflow,
    so none is opened and closed again per request; default SQLAlchemy's (5, and 10 more
    that are closed when given back). Raises StoreUnavailable for a bad URL."""
    url = normalize_url(url)
    pool: dict[str, Any] = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 2}
    try:
        u = make_url(url)
        if u.get_backend_name() == "sqlite":
            return _sqlite_engine(u, read_only=read_only, pool=pool)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": jsontext.driver_dumps, **pool}
        if u.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
            if read_only:
                kwargs["connect_args"]["options"] = "-c default_transaction_read_only=on"
        elif read_only:
            raise StoreUnavailable(f"cannot open {safe_url(url)} read-only: only SQLite and PostgreSQL are supported")
        return create_engine(u, **kwargs)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreUnavailable(f"malformed database URL {safe_url(url)!r}: {exc}") from exc
    except ImportError as exc:  # a dialect SQLAlchemy knows whose DBAPI driver is not installed
        raise StoreUnavailable(
            f"no driver installed for {u.drivername!r} (database URL {safe_url(url)!r}): the Python module "
            f"{getattr(exc, 'name', None) or exc} is missing; install it, or pick a supported database "
            "(sqlite:///path.db or postgresql+psycopg://...)") from None


def _read_only_sqlite_url(u: Any) -> Any:
    """The same file as a `mode=ro` SQLite URI (the path percent-encoded, any query of the
    given URL dropped, so nothing in it can ask for write access)."""
    path = Path(u.database).absolute()
    return URL.create("sqlite", database="file:" + quote(str(path)), query={"mode": "ro", "uri": "true"})


def _sqlite_engine(u: Any, *, read_only: bool = False, pool: dict[str, Any] | None = None) -> Engine:
    memory = _is_memory_sqlite(u)
    read_only = read_only and not memory
    if read_only:
        u = _read_only_sqlite_url(u)
    connect_args = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
    extra: dict[str, Any] = {"poolclass": StaticPool} if memory else dict(pool or {})
    engine = create_engine(u, connect_args=connect_args, json_serializer=jsontext.dumps, **extra)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        if not memory and not read_only:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine.execution_options(sqlite_begin="DEFERRED") if read_only else engine


def init_db(engine: Engine) -> None:
    """Create every table and index and record the schema version. Idempotent, and
    an upgrade: on a database made by an older version it adds the tables and the
    indexes that version lacked (create_all alone adds indexes only with their table).
    Tables go in dependency order and each table's indexes in name order, so the same
    schema is the same bytes in every process (a table's indexes are a set, in hash order)."""
    with engine.begin() as conn:
        present = set(inspect(conn).get_table_names())
        for table in schema.metadata.sorted_tables:
            if table.name not in present:
                conn.execute(CreateTable(table))
        _add_missing_columns(conn, present)
        for table in schema.metadata.sorted_tables:
            for index in sorted(table.indexes, key=lambda ix: ix.name):
                index.create(conn, checkfirst=True)
        have = conn.scalar(select(schema.schema_meta.c.value).where(schema.schema_meta.c.key == "version"))
        if have is None:
            conn.execute(insert(schema.schema_meta).values(key="version", value=str(schema.SCHEMA_VERSION)))


# Facts an older database kept another way, filled into a column added since:
# support refunds were once marked only by a note starting with "support:".
_BACKFILL = {
    ("credit_ledger", "support"): "UPDATE credit_ledger SET support = TRUE "
                                  "WHERE entry_type = 'refund' AND note LIKE 'support:%'",
}


def _add_missing_columns(conn: Any, present: set[str]) -> None:
    """The migration: every contract column an existing table lacks, added with its server
    default (so rows written before it read as the default), then backfilled where the
    older database held the fact another way."""
    for table in schema.metadata.sorted_tables:
        if table.name not in present:
            continue
        have = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
            if (table.name, column.name) in _BACKFILL:
                conn.execute(text(_BACKFILL[table.name, column.name]))


def add_missing_columns(engine: Engine, table_name: str) -> None:
    """The migration of init_db for one existing table: the columns this version added to it
    (a writer that creates its table itself on an older database, e.g. audit.record_audit)."""
    with engine.begin() as conn:
        if inspect(conn).has_table(table_name):
            _add_missing_columns(conn, {table_name})


def missing_tables(engine: Engine, names: Iterable[str] = schema.CONTRACT_TABLES) -> list[str]:
    """The tables among `names` (default: the data contract) this database lacks (an older schema)."""
    present = set(inspect(engine).get_table_names())
    return [t for t in names if t not in present]


def missing_columns(engine: Engine, names: Iterable[str] = schema.CONTRACT_TABLES) -> list[str]:
    """`table.column` for every column this version defines on the present tables among `names`
    that the database lacks (made by an older version; `init-db` adds them)."""
    insp = inspect(engine)
    present = set(insp.get_table_names())
    gaps = []
    for name in names:
        if name in present:
            have = {c["name"] for c in insp.get_columns(name)}
            gaps += [f"{name}.{c.name}" for c in schema.metadata.tables[name].columns if c.name not in have]
    return gaps


def require_schema(engine: Engine, url: str | None = None) -> None:
    """Raise SchemaMissing naming the contract tables, or the columns of this version, the database
    lacks (`url`: how to name it)."""
    where = safe_url(url or engine.url.render_as_string())
    missing = missing_tables(engine)
    if missing:
        raise SchemaMissing(
            f"database {where} has no Rivya schema "
            f"(missing tables: {', '.join(missing)}); run `python -m rivya_core init-db --db URL` first"
        )
    gaps = missing_columns(engine)
    if gaps:
        raise SchemaMissing(
            f"database {where} was made by an older version (missing columns: {', '.join(gaps)}); "
            "run `python -m rivya_core init-db --db URL` to upgrade it"
        )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    return lines[0] if lines else type(orig).__name__


def open_store(url: str, *, create: bool = False, pool_size: int | None = None) -> SqlStore:
    """Open (create=True: also create) the SQL store at url.

    Raises StoreUnavailable for a malformed URL, an unreachable server or a
    missing SQLite file, SchemaMissing for a database without the tables.
    """
    from .store_sql import SqlStore

    return SqlStore(_checked_engine(url, create=create, pool_size=pool_size))


def open_reader(url: str) -> Engine:
    """A read-only engine for the database at url (pages, reports, read-only commands),
    checked like open_store; it never creates or changes a file or a database (see the
    module doc). On SQLite its transactions start with a plain deferred BEGIN, so readers
    never wait behind a writer."""
    return _checked_engine(url, create=False, read_only=True)


def _checked_engine(url: str, *, create: bool, read_only: bool = False, pool_size: int | None = None) -> Engine:
    url = normalize_url(url)
    try:
        path = sqlite_path(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreUnavailable(f"malformed database URL {safe_url(url)!r}: {exc}") from None
    if path is not None:
        if not create and not path.is_file():
            raise StoreUnavailable(f"no SQLite database at {path} (create it with `init-db`)")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, read_only=read_only, pool_size=pool_size)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if create:
            init_db(engine)
        else:
            require_schema(engine, url)
    except DBAPIError as exc:
        engine.dispose()
        raise StoreUnavailable(f"cannot use database {safe_url(url)}: {_first_line(exc)}") from exc
    except SchemaMissing:
        engine.dispose()
        raise
    return engine


def has_rows(engine: Engine, table: str) -> bool:
    """True when the contract table exists and holds at least one row."""
    if table not in inspect(engine).get_table_names():
        return False
    t = schema.metadata.tables[table]
    with engine.connect() as conn:
        return conn.execute(select(t.c.id).limit(1)).first() is not None


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
                conn.execute(insert(table), [row_values(table, r) for r in rows[start:start + BATCH]])
            if rows and engine.dialect.name == "postgresql":
                conn.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"(SELECT max(id) FROM {table.name}))"
                ))


def snapshot_to_engine(snapshot: Snapshot, url: str = "sqlite://") -> Engine:
    """A database (in-memory SQLite by default) holding exactly snapshot's rows."""
    engine = make_engine(url)
    init_db(engine)
    write_snapshot(engine, snapshot)
    return engine


_SAMPLES = (datetime(2026, 12, 31, 23, 59, 58, 7), datetime(999, 1, 2, 3, 4, 5), None)


_JSON_SAMPLES = ({"b": 1, "a": [1.5, "\u00e9", None, True, {"c": "d"}]}, ["x", 2])


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

    process.inline = "(_dumps(x) if (x := {value}).__class__ is dict or x.__class__ is list else {proc}(x))"
    return process


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

    process.inline = ('((_iso_seen(x) or _iso(x)) if (x := {value}).__class__ is _datetime and x.tzinfo is None '
                      'else {proc}(x))')  # the text of each instant formatted once (jsontext.naive_iso)
    return process


def _row_function(entries: list[tuple[str, str, Any]], positional: bool) -> Callable[[Any], Any]:
    """entries: (bind name, row key, processor or None) -> a function of one row (a mapping) giving its
    parameters, a tuple (positional) or a dict by bind name, each value through its processor. Built
    as source once per statement (as collections.namedtuple builds its class), so a row costs one
    call instead of a loop over its columns; the fast processors of `_faster` are written inline."""
    env: dict[str, Any] = {"_dumps": jsontext.dumps, "_datetime": datetime, "_iso": jsontext.naive_iso,
                           "_iso_seen": jsontext.NAIVE_ISO.get}
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
        self.row = _row_function([(name, self.source.get(name, name), procs.get(name)) for name in self.names],
                                 self.positional)

    def params(self, rows: Iterable[dict[str, Any]]) -> list[Any]:
        return list(map(self.row, rows))

    def run(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.exec_driver_sql(self.sql, self.params(rows))
