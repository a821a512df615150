"""Incidents, read: the filter that names the tasks an incident covers (`BulkFilter`), the tasks it
matches now, the incidents so far, the open incident covering a provider's task, and the incidents
that acted on a task. `support.bulk` dry-runs and executes an incident's action.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, inspect, or_, select

from ..domain import EventKind, FailureClass, Task, TaskStatus, ValidationError
from ..stores.db import missing_tables
from ..stores.schema import account, ai_task, incident, task_event
from .queries import connect, naive_utc

MAX_TASKS = 200_000  # one incident acts on at most this many tasks: narrow the filter beyond it
# what the refusal checks read: no prompt, params or result URLs (JSON per row would double a plan's time)
_TASK_FIELDS = (
    "id",
    "user_id",
    "model",
    "category",
    "status",
    "billing_type",
    "reserved_credits",
    "provider",
    "upstream_task_id",
    "error_code",
    "failure_class",
    "chat_message_id",
    "created_at",
    "submitted_at",
    "finished_at",
    "check_attempts",
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BulkError(ValidationError):
    code = "bulk_invalid"


@dataclass(frozen=True)
class BulkFilter:
    """Which tasks an incident covers. Every field narrows; None means any.

    `min_age_s`: waiting or running for at least this long (from submission, else creation)
    at the service's clock, the same age mark-failed judges; `since`/`until`: creation time
    window (naive UTC); `user`: an account id or email."""

    provider: str | None = None
    model: str | None = None
    category: str | None = None
    status: tuple[str, ...] = ()
    error_code: str | None = None
    failure_class: str | None = None
    min_age_s: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None

    KEYS = (
        "provider",
        "model",
        "category",
        "status",
        "error_code",
        "failure_class",
        "min_age_s",
        "since",
        "until",
        "user",
    )

    @classmethod
    def parse(cls, clauses: Iterable[str]) -> BulkFilter:
        """From `key=value` clauses (CLI, query parameters); a list value is comma-separated."""
        data: dict[str, str] = {}
        for clause in clauses:
            key, sep, value = str(clause).partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise BulkError(f"filter clause {clause!r} is not key=value (keys: {', '.join(cls.KEYS)})")
            if key in data:
                raise BulkError(f"filter key {key!r} given twice")
            data[key] = value.strip()
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BulkFilter:
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise BulkError(f"unknown filter key(s) {', '.join(unknown)} (keys: {', '.join(cls.KEYS)})")
        out: dict[str, Any] = {}
        for key, value in data.items():
            if value is None or value == "" or value == [] or value == ():
                continue
            if key == "status":
                items = value.split(",") if isinstance(value, str) else list(value)
                states = tuple(sorted({str(s).strip().upper() for s in items if str(s).strip()}))
                bad = [s for s in states if s not in TaskStatus.__members__]
                if bad:
                    raise BulkError(f"status {', '.join(bad)} is not one of {', '.join(TaskStatus.__members__)}")
                out[key] = states
            elif key == "failure_class":
                if str(value) not in {c.value for c in FailureClass}:
                    raise BulkError(f"failure_class {value!r} is not one of {', '.join(c.value for c in FailureClass)}")
                out[key] = str(value)
            elif key == "min_age_s":
                out[key] = _seconds(value)
            elif key in ("since", "until"):
                out[key] = _time(key, value)
            else:
                text = str(value).strip()
                if len(text) > 320:
                    raise BulkError(f"filter {key} is longer than 320 characters")
                out[key] = text
        if out.get("since") and out.get("until") and out["since"] > out["until"]:
            raise BulkError("filter since is after until")
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        """Only the narrowing fields, JSON-ready (stored with the incident, used in links)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None or value == ():
                continue
            out[key] = (
                value.isoformat(sep=" ")
                if isinstance(value, datetime)
                else list(value)
                if isinstance(value, tuple)
                else value
            )
        return out

    def to_params(self) -> dict[str, str]:
        """As flat string parameters (a URL's query, `--filter` clauses)."""
        return {
            k: ",".join(v) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)
            for k, v in self.to_dict().items()
        }

    def describe(self) -> str:
        params = self.to_params()
        return ", ".join(f"{k}={v}" for k, v in params.items()) or "every task"


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise BulkError(f"min_age_s {value!r} is not a duration (seconds, or 90s / 15m / 2h / 1d)")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not 0 <= seconds <= 10 * 365 * 86400:
        raise BulkError(f"min_age_s {value!r} is outside 0 s .. 10 years")
    return seconds


def _time(key: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return naive_utc(value)
    try:
        return naive_utc(datetime.fromisoformat(str(value).strip()))
    except ValueError:
        raise BulkError(f"filter {key} {value!r} is not an ISO time (e.g. 2026-12-01 14:00)") from None


def _where(q, flt: BulkFilter, now: datetime):
    for col, value in (
        (ai_task.c.provider, flt.provider),
        (ai_task.c.model, flt.model),
        (ai_task.c.category, flt.category),
        (ai_task.c.error_code, flt.error_code),
        (ai_task.c.failure_class, flt.failure_class),
    ):
        if value is not None:
            q = q.where(col == value)
    if flt.status:
        q = q.where(ai_task.c.status.in_(flt.status))
    if flt.min_age_s is not None:
        started = func.coalesce(ai_task.c.submitted_at, ai_task.c.created_at)
        q = q.where(started <= now - timedelta(seconds=flt.min_age_s))
    if flt.since is not None:
        q = q.where(ai_task.c.created_at >= flt.since)
    if flt.until is not None:
        q = q.where(ai_task.c.created_at < flt.until)
    if flt.user is not None:
        cond = [account.c.email == flt.user]
        if flt.user.isdigit() and len(flt.user) < 19:
            cond.append(account.c.id == int(flt.user))
        q = q.where(ai_task.c.user_id.in_(select(account.c.id).where(or_(*cond))))
    return q


def matching_tasks(engine: Engine, flt: BulkFilter, now: datetime) -> list[Task]:
    """The tasks the filter matches at `now`, by id, with the fields support refusals read (prompt and
    params left empty). Raises BulkError past MAX_TASKS."""
    q = _where(select(*(ai_task.c[name] for name in _TASK_FIELDS)), flt, now)
    with connect(engine) as conn:
        found = conn.execute(q.order_by(ai_task.c.id).limit(MAX_TASKS + 1)).all()
    if len(found) > MAX_TASKS:
        raise BulkError(f"the filter matches more than {MAX_TASKS:,} tasks; narrow it ({flt.describe()})")
    return [Task(prompt="", params={}, **dict(zip(_TASK_FIELDS, row, strict=True))) for row in found]


def incidents(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    """Incidents newest first with their scope and results (empty on a database without the table)."""
    if missing_tables(engine, ["incident"]):
        return []
    with connect(engine) as conn:
        found = conn.execute(select(incident).order_by(incident.c.id.desc()).limit(max(1, min(limit, 1000))))
        out = []
        for row in found:
            d = dict(row._mapping)
            d["scope"] = BulkFilter.from_dict(d["filter"] or {}).describe()
            out.append(d)
        return out


OPEN_FOR_S = 3600.0  # an incident stays open this long after its latest run ended (a run going: open)


def covering_incident(bind: Any, provider: str, task_id: int, now: datetime) -> dict[str, Any] | None:
    """The newest open incident whose filter names `provider` and that has not acted on the task yet:
    its run is going, or its latest run ended at most OPEN_FOR_S before `now`. None when none is."""
    since = now - timedelta(seconds=OPEN_FOR_S)
    with connect(bind) as conn:
        if not inspect(conn).has_table(incident.name):  # an older database: no incident yet
            return None
        found = conn.execute(
            select(incident)
            .where(or_(incident.c.finished_at.is_(None), incident.c.finished_at >= since), incident.c.created_at <= now)
            .order_by(incident.c.id.desc())
            .limit(50)
        ).all()
        mine = [dict(r._mapping) for r in found if (r.filter or {}).get("provider") == provider]
        if not mine:
            return None
        acted = handled_by_any(conn, task_id)
    return next((d for d in mine if d["id"] not in acted), None)


def handled_by_any(conn: Any, task_id: int) -> set[int]:
    """The incidents that acted on this task (its support_action events' `incident`)."""
    q = select(task_event.c.detail).where(
        task_event.c.task_id == task_id, task_event.c.kind == EventKind.SUPPORT_ACTION.value
    )
    return {int(d["incident"]) for (d,) in conn.execute(q) if isinstance(d, dict) and d.get("incident")}


def incident_by_name(engine: Engine, name: str) -> dict[str, Any] | None:
    if missing_tables(engine, ["incident"]):
        return None
    with connect(engine) as conn:
        row = conn.execute(select(incident).where(incident.c.name == name)).first()
        return dict(row._mapping) if row else None
