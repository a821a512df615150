"""Read-only aggregations for the dashboard, as small pandas DataFrames or dicts.

Every query aggregates in SQL or carries a LIMIT, so a page never pulls a whole
table into memory however large the database. Functions take a SQLAlchemy
Engine and only read the data-contract tables of rivya_core.stores.schema; they work
unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, Engine, func, or_, select

from .. import rules
from ..audit import current_audit, ledger_sums
from ..domain import ACTIVE, Category, RivyaError, TaskStatus
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..stores.schema import account, ai_task, credit_ledger
from .queries import active_started, connect, last_events, like_escape, match_active

MAX_ROWS = 500


def read_frame(engine: Engine, stmt) -> pd.DataFrame:
    """The rows of `stmt` as a DataFrame, read through queries.connect (no write lock on SQLite)."""
    with connect(engine) as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _scalar(engine: Engine, stmt) -> Any:
    with connect(engine) as conn:
        return conn.execute(stmt).scalar()


# --- overview -----------------------------------------------------------------


def tasks_by_state(engine: Engine) -> dict[str, int]:
    """Count of tasks per status; every state present, zero when none."""
    stmt = select(ai_task.c.status, func.count()).group_by(ai_task.c.status)
    with connect(engine) as conn:
        found = {status: int(n) for status, n in conn.execute(stmt)}
    return {s.value: found.get(s.value, 0) for s in TaskStatus} | found


def _bucket(engine: Engine, col, unit: str):
    if engine.dialect.name == "sqlite":
        fmt = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}[unit]
        return func.strftime(fmt, col)
    return func.date_trunc(unit, col)


def _unit_for(span: timedelta) -> str:
    if span <= timedelta(hours=6):
        return "minute"
    if span <= timedelta(days=14):
        return "hour"
    return "day"


THROUGHPUT_DAYS = 7.0


def throughput(engine: Engine, days: float | None = THROUGHPUT_DAYS, max_buckets: int = MAX_ROWS) -> pd.DataFrame:
    """Finished tasks per time bucket and outcome over the latest `days` of finished_at (None: the
    whole history): columns bucket, status, tasks; attrs["window"] is the (start, end) shown.

    The window ends at the newest finished task and is read through ix_ai_task_finished, so a
    million-task history costs no more than its last week; the bucket width (minute, hour,
    day) follows the window's span.
    """
    span = _span(engine)
    if span is None:
        return pd.DataFrame(columns=["bucket", "status", "tasks"])
    lo, hi = span
    if days is not None:
        lo = max(lo, hi - timedelta(days=float(days)))
    bucket = _bucket(engine, ai_task.c.finished_at, _unit_for(hi - lo)).label("bucket")
    stmt = (
        select(bucket, ai_task.c.status, func.count().label("tasks"))
        .where(ai_task.c.finished_at >= lo)
        .group_by(bucket, ai_task.c.status)
        .order_by(bucket.desc())
        .limit(max_buckets * 2)
    )
    df = read_frame(engine, stmt)
    df["bucket"] = pd.to_datetime(df["bucket"])
    df = df.sort_values("bucket").reset_index(drop=True)
    df.attrs["window"] = (lo, hi)
    return df


def _span(engine: Engine) -> tuple[datetime, datetime] | None:
    """The first and last finished_at (None: no task finished yet): two index lookups."""
    with connect(engine) as conn:
        lo = conn.execute(select(func.min(ai_task.c.finished_at))).scalar()
        hi = conn.execute(select(func.max(ai_task.c.finished_at))).scalar()
    if lo is None or hi is None:
        return None
    return pd.Timestamp(lo).to_pydatetime(), pd.Timestamp(hi).to_pydatetime()


def failures_by_code(engine: Engine, limit: int = 20) -> pd.DataFrame:
    """Failed tasks grouped by error code and failure class, most frequent first."""
    n = func.count().label("tasks")
    stmt = (
        select(ai_task.c.error_code, ai_task.c.failure_class, n)
        .where(ai_task.c.status == TaskStatus.FAILED.value)
        .group_by(ai_task.c.error_code, ai_task.c.failure_class)
        .order_by(n.desc())
        .limit(limit)
    )
    return read_frame(engine, stmt)


def ledger_by_type(engine: Engine) -> pd.DataFrame:
    """Sum and count of ledger rows per entry type."""
    stmt = (
        select(credit_ledger.c.entry_type, func.count().label("rows"), func.sum(credit_ledger.c.amount).label("amount"))
        .group_by(credit_ledger.c.entry_type)
        .order_by(credit_ledger.c.entry_type)
    )
    df = read_frame(engine, stmt)
    df["amount"] = df["amount"].fillna(0).astype("int64")
    return df


def credit_breakdown(by_type: dict[str, int]) -> dict[str, int]:
    """Split ledger sums per entry type into flows that add up to what is left in balances:

        granted − task_charged + task_refunded − chat_charged + other = balance

    granted includes adjustments; chat_charged is what users were finally charged for chat
    (credits.chat_figures: reservations + overrun − refunds), with chat_reserved and
    chat_refunded beside it; other is any entry type this version does not know.
    """
    return rules.credit_flows(by_type).as_dict()


def credit_totals(engine: Engine) -> dict[str, int]:
    """Credits charged (tasks, and chat as finally charged), refunded (task refunds), net, and
    granted, plus the credit_breakdown of the whole ledger and the sum of the accounts' cached balances."""
    flows = credit_breakdown(ledger_sums(engine))
    charged = flows["task_charged"] + flows["chat_charged"]
    balances = _scalar(engine, select(func.coalesce(func.sum(account.c.balance), 0)))
    return {
        "charged": charged,
        "refunded": flows["task_refunded"],
        "net": charged - flows["task_refunded"],
        **flows,
        "account_balances": int(balances or 0),
    }


def audit_summary(engine: Engine, policy: BillingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """The latest stored audit judged with `policy` (audit.current_audit: run now only on a small
    database): violation total, count per violated kind, when it ran and whether rows were added
    since (fresh), and whether it is a stored one (and by whom) or one computed now. total is
    None when a big database has no stored audit yet."""
    stored = current_audit(engine, policy)
    if stored is None:
        return {
            "total": None,
            "kinds": {},
            "policy": policy.name,
            "ran_at": None,
            "judged_at": None,
            "fresh": False,
            "duration_s": None,
            "stored": False,
            "stored_by": None,
        }
    kinds = {f["title"]: int(f["count"]) for f in stored.report.get("findings", [])}
    return {
        "total": stored.total,
        "kinds": kinds,
        "policy": stored.policy,
        "ran_at": stored.ran_at,
        "judged_at": stored.judged_at,
        "fresh": stored.fresh,
        "duration_s": stored.duration_s,
        "stored": stored.stored,
        "stored_by": stored.stored_by,
    }


def audit_provenance(
    stored: bool,
    ran_at: Any,
    stored_by: str | None,
    judged_at: Any,
    duration_s: float | None,
    quote: Callable[[str], str] = str,
) -> str:
    """Which audit a page shows: one stored in `audit_run` (when, by whom) or one computed now.
    `quote` shows the name (typed by a person: a page passes its plain-text helper)."""
    judged = f"judged at {format_time(judged_at)}, took {duration_s or 0:.1f} s"
    if not stored:
        return f"Audit computed now, not stored (run the audit to store it): {judged}."
    by = quote(stored_by) if stored_by else "an unnamed run (stored before runs were named)"
    return f"Audit stored at {format_time(ran_at)} UTC by {by} ({judged})."


def format_time(value: Any) -> str:
    """A timestamp as YYYY-MM-DD HH:MM:SS; "—" when missing."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def describe_detail(detail: Any) -> str:
    """An event's detail as one readable line ("outcome: applied · attempt: 2"); "—" when empty."""
    if detail is None or detail == {} or detail == "":
        return "—"
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict):
            value = describe_detail(value)
        elif isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) or "none"
        parts.append(f"{str(key).replace('_', ' ')}: {'—' if value is None else value}")
    return " · ".join(parts)


def format_duration(seconds: float | None) -> str:
    """A duration for people: 42 s, 1 min 58 s, 2 h 5 min, 3 d 4 h; "—" when unknown."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    sign, s = ("−" if seconds < 0 else ""), int(round(abs(float(seconds))))
    if s < 60:
        return f"{sign}{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{sign}{m} min {s} s" if s else f"{sign}{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{sign}{h} h {m} min" if m else f"{sign}{h} h"
    d, h = divmod(h, 24)
    return f"{sign}{d} d {h} h" if h else f"{sign}{d} d"


# --- live tasks -------------------------------------------------------------------


def filter_options(engine: Engine, limit: int = 200) -> dict[str, list[str]]:
    """Categories, models and providers for filter widgets: those of the catalogue, plus any
    other value an active task has (so the filters offer choices before the first task runs)."""
    known: dict[str, set[str]] = {"category": {c.value for c in Category}, "model": set(), "provider": set()}
    try:
        from ..catalog import default_catalog

        cat = default_catalog()
        known["model"] |= set(cat.ids())
        known["provider"] |= set(cat.providers())
    except RivyaError:  # a broken catalogue file: the database's values still work
        pass
    active = ai_task.c.status.in_([s.value for s in ACTIVE])
    with connect(engine) as conn:
        for name in ("category", "model", "provider"):
            col = ai_task.c[name]
            rows = conn.execute(select(col).where(active).group_by(col).order_by(col).limit(limit))
            known[name] |= {r[0] for r in rows if r[0] is not None}
    return {name: sorted(values) for name, values in known.items()}


_ACTIVE_VALUES = tuple(status.value for status in ACTIVE)


def active_tasks(
    engine: Engine,
    *,
    now: datetime,
    statuses: tuple[str, ...] = _ACTIVE_VALUES,
    category: tuple[str, ...] = (),
    model: tuple[str, ...] = (),
    provider: tuple[str, ...] = (),
    user: str = "",
    limit: int = 200,
    policy: BillingPolicy = DEFAULT_POLICY,
) -> pd.DataFrame:
    """WAITING/GENERATING tasks, oldest first, with age, last event and a stuck flag."""
    started = active_started().label("started_at")
    stmt = match_active(
        select(
            ai_task.c.id,
            ai_task.c.status,
            ai_task.c.category,
            ai_task.c.model,
            ai_task.c.provider,
            ai_task.c.upstream_task_id,
            account.c.email,
            ai_task.c.reserved_credits,
            started,
            ai_task.c.check_attempts,
        ).select_from(ai_task.outerjoin(account, account.c.id == ai_task.c.user_id)),
        statuses=statuses,
        category=category,
        model=model,
        provider=provider,
    )
    if user.strip():
        stmt = stmt.where(_user_match(user.strip()))
    stmt = stmt.limit(min(limit, MAX_ROWS))
    df = read_frame(engine, stmt)
    cols = ["last_event", "last_event_at", "age_s", "stuck_after_s", "stuck"]
    if df.empty:
        return df.reindex(columns=[*df.columns, *cols])
    last = last_events(engine, [int(i) for i in df["id"]])
    df["last_event"] = df["id"].map(lambda i: last.get(int(i), (None, None))[0])
    df["last_event_at"] = df["id"].map(lambda i: last.get(int(i), (None, None))[1])
    df["age_s"] = (pd.Timestamp(now) - pd.to_datetime(df["started_at"])).dt.total_seconds().round(0)
    df["stuck_after_s"] = df["category"].map(policy.stuck_for)
    df["stuck"] = df["age_s"] > df["stuck_after_s"]
    return df


def _user_match(q: str):
    pattern = "%" + like_escape(q) + "%"
    conds: list[ColumnElement[bool]] = [
        account.c.email.ilike(pattern, escape="\\"),
        account.c.name.ilike(pattern, escape="\\"),
    ]
    if q.isdigit():
        conds.append(ai_task.c.user_id == int(q))
    return or_(*conds)
