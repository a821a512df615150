"""Reading a ShipAny-style source (rivya_core.sources.shipany imports it): the mapping constants,
the read-only source, the summary of one import and the target it may write into."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from ..domain import RivyaError, StoreUnavailable, TaskStatus
from ..stores.db import init_db, make_engine, normalize_url, safe_url, sqlite_path
from ..stores.schema import data_source
from ..targets import TargetOccupied, ensure_fresh, occupied
from .facts import FACTS
from .mapping import SourceMap

SOURCE = "shipany"
OVERLAP = timedelta(minutes=15)  # rows updated this long before the watermark are read again
CHUNK = 5000
NOT_RECORDED = ("callbacks", "notifications", "timeline", "chat_billing")

STATUS = {
    "pending": TaskStatus.GENERATING,
    "processing": TaskStatus.GENERATING,
    "success": TaskStatus.SUCCESS,
    "failed": TaskStatus.FAILED,
    "canceled": TaskStatus.FAILED,
    "cancelled": TaskStatus.FAILED,
}
CATEGORY = {"image": "image", "video": "video", "music": "audio", "speech": "audio", "audio": "audio"}
CANCELED = "upstream_canceled"
FAILED_WITHOUT_CODE = "upstream_failed"
URL_KEYS = (("images", "imageUrl"), ("videos", "videoUrl"), ("songs", "audioUrl"), ("audios", "audioUrl"))

USER_COLS = ["id", "name", "email", "created_at", "updated_at"]
TASK_COLS = [
    "id",
    "user_id",
    "media_type",
    "provider",
    "model",
    "prompt",
    "options",
    "status",
    "created_at",
    "updated_at",
    "task_id",
    "task_info",
    "cost_credits",
    "credit_id",
]
CREDIT_COLS = [
    "id",
    "user_id",
    "transaction_type",
    "transaction_scene",
    "credits",
    "remaining_credits",
    "expires_at",
    "status",
    "created_at",
    "updated_at",
    "deleted_at",
    "consumed_detail",
    "metadata",
]


class SourceError(RivyaError):
    """The source cannot be imported: unreachable, or without the tables and columns expected."""

    code = "source_invalid"
    user_correctable = True


@dataclass
class ImportSummary:
    source: str
    into: str
    since: datetime | None
    as_of: datetime | None
    watermark: datetime | None
    dry_run: bool
    read: Counter = field(default_factory=Counter)  # source table -> rows read
    written: Counter = field(default_factory=Counter)  # contract table -> rows inserted
    updated: Counter = field(default_factory=Counter)  # contract table -> rows updated
    apart: Counter = field(default_factory=Counter)  # what was counted apart (text tasks, ...)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "into": self.into,
            "since": _iso(self.since),
            "as_of": _iso(self.as_of),
            "watermark": _iso(self.watermark),
            "dry_run": self.dry_run,
            "read": dict(self.read),
            "written": dict(self.written),
            "updated": dict(self.updated),
            "apart": dict(self.apart),
            "seconds": round(self.seconds, 3),
        }

    def lines(self) -> list[str]:
        head = ("dry run (nothing written): " if self.dry_run else "") + (
            f"imported {self.source} into {self.into}"
            + (f" (rows updated since {self.since:%Y-%m-%d %H:%M:%S})" if self.since else " (everything)")
        )
        out = [head]
        for t in ("user", "ai_task", "credit"):
            out.append(f"    read {t:<9} {self.read.get(t, 0):>10,}")
        for t in ("account", "ai_task", "credit_ledger", "source_grant"):
            out.append(f"    {t:<14} {self.written.get(t, 0):>10,} written  {self.updated.get(t, 0):>10,} updated")
        for what, n in sorted(self.apart.items()):
            out.append(f"    counted apart: {what} {n:,}")
        out.append(
            f"    source time {_iso(self.as_of) or '-'}; next import reads from "
            f"{_iso(self.watermark - OVERLAP) if self.watermark else 'the start'}; {self.seconds:.1f} s"
        )
        return out


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(" ") if t else None


# --- reading values the way either database hands them over --------------------------------


def _ts(v: Any) -> datetime | None:
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        return v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v
    try:
        t = datetime.fromisoformat(str(v))
    except ValueError:
        return None
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _json(v: Any) -> Any:
    if v is None or isinstance(v, (dict, list)):
        return v
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return None


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def result_urls(info: Any) -> list[str]:
    """The result URLs a ShipAny `task_info` holds (images, videos, songs)."""
    urls: list[str] = []
    if not isinstance(info, dict):
        return urls
    for key, url_key in URL_KEYS:
        items = info.get(key)
        if isinstance(items, list):
            for item in items:
                u = item.get(url_key) if isinstance(item, dict) else None
                if isinstance(u, str) and u:
                    urls.append(u)
    return urls


def draws(consumed_detail: Any) -> list[tuple[str, int]]:
    """A consume row's `consumed_detail` as (grant id, credits) pairs."""
    detail = _json(consumed_detail)
    out = []
    if isinstance(detail, list):
        for d in detail:
            if isinstance(d, dict) and d.get("creditId") is not None and _int(d.get("creditsConsumed")) > 0:
                out.append((str(d["creditId"]), _int(d["creditsConsumed"])))
    return out


# --- the source, read-only -----------------------------------------------------------------


def open_source(url: str) -> Engine:
    """A read-only engine on the source; StoreUnavailable (one line) when it cannot be reached."""
    if not (url or "").strip():
        raise StoreUnavailable("no source URL given")
    engine = make_engine(url, read_only=True)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreUnavailable(f"no SQLite database at {path}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        engine.dispose()
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StoreUnavailable(
            f"cannot read source {safe_url(normalize_url(url))}: {first[0] if first else type(exc).__name__}"
        ) from None
    return engine


class ReadOnlySource:
    """One read-only transaction on the source, and the queries the import makes in it."""

    def __init__(self, engine: Engine, smap: SourceMap):
        self.engine, self.smap = engine, smap
        self.conn: Any = None

    def __enter__(self) -> ReadOnlySource:
        conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
            conn.execute(text("SET TRANSACTION READ ONLY"))
        else:
            conn.begin()
        self.conn = conn
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.conn.rollback()  # nothing to keep: a read-only transaction ends without a commit
        finally:
            self.conn.close()

    def check(self) -> None:
        """SourceError naming every expected table and column the source lacks."""
        insp = inspect(self.conn)
        have = set(insp.get_table_names())
        missing_tables = [self.smap.name(t) for t in ("user", "ai_task", "credit") if self.smap.name(t) not in have]
        if missing_tables:
            raise SourceError(
                f"the source lacks the table(s) {', '.join(missing_tables)} "
                f"(expected {', '.join(self.smap.name(t) for t in ('user', 'ai_task', 'credit'))}; "
                "rename with --map FILE.toml)"
            )
        gaps = []
        for logical, cols in (("user", USER_COLS), ("ai_task", TASK_COLS), ("credit", CREDIT_COLS)):
            present = {c["name"] for c in insp.get_columns(self.smap.name(logical))}
            gaps += [
                f"{self.smap.name(logical)}.{self.smap.column_name(logical, c)}"
                for c in cols
                if self.smap.column_name(logical, c) not in present
            ]
        if gaps:
            raise SourceError(f"the source lacks the column(s) {', '.join(gaps)} (rename with --map FILE.toml)")

    def _table(self, logical: str, cols: list[str]) -> tuple[Any, list[Any]]:
        t = self.smap.select_table(logical, cols)
        return t, self.smap.columns_of(logical, t, cols)

    def latest(self) -> datetime | None:
        """The source's own latest time: the newest created_at or updated_at of its tasks and credits."""
        seen: list[datetime | None] = []
        for logical in ("ai_task", "credit"):
            t, _ = self._table(logical, ["created_at", "updated_at"])
            for c in ("created_at", "updated_at"):
                seen.append(_ts(self.conn.execute(select(func.max(t.c[self.smap.column_name(logical, c)]))).scalar()))
        known = [s for s in seen if s is not None]
        return max(known) if known else None

    def rows(self, logical: str, cols: list[str], since: datetime | None, order: list[str]) -> Iterator[Any]:
        t, labelled = self._table(logical, cols)
        changed = func.coalesce(
            t.c[self.smap.column_name(logical, "updated_at")], t.c[self.smap.column_name(logical, "created_at")]
        )
        q = select(*labelled)
        if since is not None:
            q = q.where(changed >= self._param(since))
        q = q.order_by(*(t.c[self.smap.column_name(logical, c)] for c in order))
        result = self.conn.execution_options(stream_results=True, yield_per=CHUNK).execute(q)
        for part in result.partitions():
            yield from part

    def _param(self, t: datetime) -> Any:
        # SQLite keeps times as text: compare text to text, in the same ISO layout
        return t.isoformat(" ") if self.engine.dialect.name == "sqlite" else t

    def tasks_of_consumes(self, consume_ids: list[str], task_ids: list[str]) -> list[Any]:
        """(id, media_type, credit_id) of the source's tasks with these ids (a consume's metadata names
        its task: primary-key lookups), then of those paid by the consume rows no such task claims
        (`credit_id`, which the template may not index: asked only for those few)."""
        t, labelled = self._table("ai_task", ["id", "media_type", "credit_id"])
        cid, tid = (t.c[self.smap.column_name("ai_task", c)] for c in ("credit_id", "id"))
        out = []
        for start in range(0, len(task_ids), 1000):
            out += list(self.conn.execute(select(*labelled).where(tid.in_(task_ids[start : start + 1000]))))
        claimed = {str(r.credit_id) for r in out if r.credit_id is not None}
        rest = [c for c in consume_ids if c not in claimed]
        for start in range(0, len(rest), 1000):
            out += list(self.conn.execute(select(*labelled).where(cid.in_(rest[start : start + 1000]))))
        return out


# --- the target ----------------------------------------------------------------------------


def _imported_from(engine: Engine, kind: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(data_source.name):
            return None
        row = conn.execute(select(data_source).where(data_source.c.key == kind)).mappings().first()
    return dict(row) if row else None


def _prepare_target(into: str, *, force: bool, dry_run: bool) -> tuple[Engine, dict[str, Any] | None]:
    """The target engine (schema ready) and its previous import of this source, if any. A target
    holding anything but an earlier import of this source is refused unless --force (which
    replaces a SQLite file, never empties a server database)."""
    reason = occupied(into)
    previous = None
    if reason is not None:
        probe = make_engine(into, read_only=True)
        try:
            previous = _imported_from(probe, SOURCE)
        finally:
            probe.dispose()
        if previous is None:
            if dry_run and not force:
                raise TargetOccupied(
                    f"{reason}; import writes only into a fresh database or one an earlier "
                    "import of this source wrote (pass --force to replace a SQLite file)"
                )
            ensure_fresh(into, force=force, command="import")
    if dry_run and reason is None:
        engine = make_engine("sqlite://")  # a fresh target: the dry run writes into memory, nothing on disk
    else:
        path = sqlite_path(into)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(into)
    if not dry_run or reason is None:
        init_db(engine)
    else:
        from ..stores.db import require_schema

        require_schema(engine, into)
    return engine, previous


# --- the import ------------------------------------------------------------------------------


Progress = Callable[[str, int], None]


def record_import(conn: Any, summary: ImportSummary, previous: dict[str, Any] | None) -> None:
    """The import's row in data_source (what the source has, where the next import starts), and on
    PostgreSQL the id sequences moved past the ids the import gave explicitly."""
    from sqlalchemy import update

    from ..stores.schema import account, ai_task, credit_ledger, source_grant

    values = {
        "source": summary.source,
        "not_recorded": list(NOT_RECORDED),
        "watermark": summary.watermark,
        "as_of": summary.as_of,
        "imported_at": datetime.now(UTC).replace(tzinfo=None),
        "imports": int(previous["imports"]) + 1 if previous else 1,
        "summary": summary.to_dict(),
    }
    if previous:
        conn.execute(update(data_source).where(data_source.c.key == SOURCE).values(**values))
    else:
        conn.execute(insert(data_source).values(key=SOURCE, **values))
    if conn.dialect.name == "postgresql":
        for t in (account, ai_task, credit_ledger, source_grant):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), "
                    f"GREATEST((SELECT max(id) FROM {t.name}), 1))"
                )
            )


assert set(NOT_RECORDED) <= set(FACTS)
