"""Where a command may write: the one rule every writing command follows.

A target is fresh when it is a missing file, an empty file, or a database whose
tables hold no rows (the schema version row `init-db` writes does not count).
Anything else already holds data, and a command refuses to write over it unless
given --force; --force replaces a SQLite file (and its -wal/-shm/-journal
companions) only: a server database is never emptied by a command.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import MetaData, Table, inspect, select

from .domain import RivyaError
from .stores import schema
from .stores.db import make_engine, safe_url, sqlite_path

SQLITE_MAGIC = b"SQLite format 3\x00"
COMPANIONS = ("-wal", "-shm", "-journal")
IGNORED_TABLES = frozenset({"schema_meta"})


class TargetOccupied(RivyaError):
    code = "target_holds_data"


def occupied(url: str) -> str | None:
    """Why the target at url is not fresh, or None when it is. Reads only: never
    creates or changes a file or a database."""
    path = sqlite_path(url)
    if path is not None:
        return _file_occupied(path)
    engine = make_engine(url)
    try:
        full = _tables_with_rows(engine)
    finally:
        engine.dispose()
    return f"database {safe_url(url)} holds rows in {', '.join(full)}" if full else None


def _file_occupied(path: Path) -> str | None:
    if not path.exists():
        return None
    if not path.is_file():
        return f"{path} exists and is not a regular file"
    if path.stat().st_size == 0:
        return None
    with path.open("rb") as fh:
        if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            return f"{path} is a non-empty file that is not a SQLite database"
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)  # read-only: never writes
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        ]
        full = [
            n
            for n in names
            if n not in IGNORED_TABLES
            and conn.execute(f'SELECT 1 FROM "{n.replace(chr(34), chr(34) * 2)}" LIMIT 1').fetchone()
        ]
    except sqlite3.DatabaseError as exc:
        return f"{path} cannot be read as a SQLite database ({exc})"
    finally:
        conn.close()
    return f"{path} holds rows in {', '.join(sorted(full))}" if full else None


def _tables_with_rows(engine) -> list[str]:
    names = [n for n in inspect(engine).get_table_names() if n not in IGNORED_TABLES]
    full = []
    with engine.connect() as conn:
        for name in names:
            table = Table(name, MetaData(), autoload_with=conn)
            if conn.execute(select(1).select_from(table).limit(1)).first() is not None:
                full.append(name)
    return sorted(full)


def ensure_fresh(url: str, *, force: bool, command: str) -> None:
    """Refuse (TargetOccupied, one line) a target that holds data; with force,
    remove a SQLite file and its companions so the command starts from nothing."""
    reason = occupied(url)
    if reason is None:
        return
    path = sqlite_path(url)
    if not force:
        raise TargetOccupied(
            f"{reason}; {command} writes only into a fresh database "
            f"(pass --force to replace {'the file' if path else 'it'})"
        )
    if path is None:
        raise TargetOccupied(
            f"{reason}; --force replaces SQLite files only: empty or drop this database yourself, or give a new one"
        )
    if not path.is_file():
        raise TargetOccupied(f"{path} is not a regular file; not replaced even with --force")
    for suffix in ("", *COMPANIONS):
        Path(str(path) + suffix).unlink(missing_ok=True)


def file_target(path: str | Path, force: bool) -> Path:
    """An output file a command may write: refused (TargetOccupied, one line) when it is a directory,
    or a file that holds data and `force` is not given. Reads only."""
    p = Path(path)
    if p.is_dir():
        raise RivyaError(f"{p} is a directory; give a file path", code="bad_argument")
    if p.exists() and p.stat().st_size > 0 and not force:
        raise TargetOccupied(f"{p} already exists; pass --force to overwrite it", code="output_exists")
    return p


def _table_names(url: str) -> set[str]:
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file() or path.stat().st_size == 0:
            return set()
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def ensure_initialisable(url: str, *, force: bool) -> None:
    """init-db may create the schema in a fresh target and upgrade a Rivya database;
    a database that holds other data gets the Rivya tables beside its own only with
    force (nothing is dropped), and a file that is not a SQLite database never."""
    reason = occupied(url)
    if reason is None:
        return
    path = sqlite_path(url)
    if path is not None and (not path.is_file() or path.read_bytes()[: len(SQLITE_MAGIC)] != SQLITE_MAGIC):
        raise TargetOccupied(f"{reason}; init-db never writes into it")
    ours = {"schema_meta", *schema.CONTRACT_TABLES}
    if _table_names(url) & ours or force:
        return
    raise TargetOccupied(
        f"{reason} and is not a Rivya database; pass --force to add the Rivya tables "
        "beside its own (nothing is dropped)"
    )
