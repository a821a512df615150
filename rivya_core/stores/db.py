"""Engines from a URL, schema setup and its checks (`stores.sql.open_store` opens a store).

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

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateColumn, CreateTable

from ..domain import SchemaMissing, StoreUnavailable
from . import jsontext, schema

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DB_PATH = REPO_ROOT / "data" / "rivya.db"
# RIVYA_DB_URL when set, else the embedded SQLite file under data/.
DEFAULT_URL = os.environ.get("RIVYA_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}"
BUSY_TIMEOUT_S = 30


def normalize_url(url: str) -> str:
    """postgres[ql]:// -> postgresql+psycopg://; a bare path -> sqlite:///path."""
    url = (url or "").strip()
    if not url:
        raise StoreUnavailable("no database URL given")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
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
    if u.get_backend_name() != "sqlite" or _is_memory_sqlite(u) or u.database is None:
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
            "(sqlite:///path.db or postgresql+psycopg://...)"
        ) from None


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
            for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
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
