"""Read-only SQL aggregations behind the dashboard's money and lab pages.

Every function takes a SQLAlchemy Engine, aggregates in SQL and returns a
pandas DataFrame or a small dict; every row-returning query is LIMITed, so a
page never loads a whole table. No Streamlit here: the pages cache and render.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Engine, Float, Integer, case, cast, func, inspect, select

from .schema import (
    account,
    ai_task,
    chat_message,
    chat_session,
    credit_ledger,
    notification,
)

MAX_ROWS = 5000


def missing_tables(engine: Engine, names: tuple[str, ...] | list[str]) -> list[str]:
    """The names among `names` that this database does not have (older schema)."""
    present = set(inspect(engine).get_table_names())
    return [n for n in names if n not in present]


def _frame(engine: Engine, stmt, columns: list[str] | None = None) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=columns or list(result.keys()))


def _limit(n: int) -> int:
    return max(1, min(int(n), MAX_ROWS))


def epoch_seconds(engine: Engine, col):
    """A portable SQL expression for a DateTime column as seconds since 1970 (UTC, naive)."""
    if engine.dialect.name == "sqlite":
        return (func.julianday(col) - 2440587.5) * 86400.0
    return cast(func.extract("epoch", col), Float)


# --- accounts and ledger ---------------------------------------------------------


def account_overview(engine: Engine, user_id: int) -> dict[str, Any] | None:
    """One account: identity, cached balance, ledger sum, entry count and totals per entry type."""
    with engine.connect() as conn:
        row = conn.execute(select(account).where(account.c.id == user_id)).mappings().first()
        if row is None:
            return None
        by_type = conn.execute(
            select(credit_ledger.c.entry_type, func.count(), func.coalesce(func.sum(credit_ledger.c.amount), 0))
            .where(credit_ledger.c.user_id == user_id)
            .group_by(credit_ledger.c.entry_type)
        ).all()
    totals = {t: int(s) for t, _, s in by_type}
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "created_at": row["created_at"],
        "balance": int(row["balance"] or 0),
        "ledger_sum": sum(totals.values()),
        "entries": sum(int(c) for _, c, _ in by_type),
        "totals": totals,
    }


def balance_series(engine: Engine, user_id: int, limit: int = 2000) -> pd.DataFrame:
    """The account's latest `limit` ledger rows in order: created_at, balance_after, entry_type, amount."""
    inner = (
        select(
            credit_ledger.c.id,
            credit_ledger.c.created_at,
            credit_ledger.c.balance_after,
            credit_ledger.c.entry_type,
            credit_ledger.c.amount,
        )
        .where(credit_ledger.c.user_id == user_id)
        .order_by(credit_ledger.c.id.desc())
        .limit(_limit(limit))
        .subquery()
    )
    return _frame(engine, select(inner).order_by(inner.c.id))


def ledger_page(
    engine: Engine, user_id: int, page: int = 1, page_size: int = 50, entry_types: list[str] | None = None
) -> tuple[pd.DataFrame, int]:
    """One page (newest first) of an account's ledger rows, and how many rows match in all."""
    where = [credit_ledger.c.user_id == user_id]
    if entry_types:
        where.append(credit_ledger.c.entry_type.in_(entry_types))
    size = _limit(page_size)
    stmt = (
        select(
            credit_ledger.c.id,
            credit_ledger.c.created_at,
            credit_ledger.c.entry_type,
            credit_ledger.c.amount,
            credit_ledger.c.balance_after,
            credit_ledger.c.task_id,
            credit_ledger.c.chat_message_id,
            credit_ledger.c.note,
        )
        .where(*where)
        .order_by(credit_ledger.c.id.desc())
        .offset((max(1, int(page)) - 1) * size)
        .limit(size)
    )
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(credit_ledger).where(*where)).scalar_one()
    return _frame(engine, stmt), int(total)


# --- chat -----------------------------------------------------------------------------


def _chat_refunds():
    return (
        select(credit_ledger.c.chat_message_id, func.sum(credit_ledger.c.amount).label("refunded"))
        .where(credit_ledger.c.entry_type == "chat_refund", credit_ledger.c.chat_message_id.is_not(None))
        .group_by(credit_ledger.c.chat_message_id)
        .subquery()
    )


def chat_credits(engine: Engine, user_id: int | None = None) -> dict[str, int]:
    """Reserved vs settled chat credits: reserved, charged, refunded, and still-open reservations."""
    refunds = _chat_refunds()
    src = chat_message.join(chat_session, chat_session.c.id == chat_message.c.session_id).outerjoin(
        refunds, refunds.c.chat_message_id == chat_message.c.id
    )
    is_open = chat_message.c.status == "reserved"
    stmt = select(
        func.count(),
        func.coalesce(func.sum(chat_message.c.reserved_credits), 0),
        func.coalesce(func.sum(chat_message.c.charged_credits), 0),
        func.coalesce(func.sum(refunds.c.refunded), 0),
        func.coalesce(func.sum(case((is_open, 1), else_=0)), 0),
        func.coalesce(func.sum(case((is_open, chat_message.c.reserved_credits), else_=0)), 0),
    ).select_from(src)
    if user_id is not None:
        stmt = stmt.where(chat_session.c.user_id == user_id)
    with engine.connect() as conn:
        n, reserved, charged, refunded, open_n, open_credits = conn.execute(stmt).one()
    return {
        "messages": int(n),
        "reserved": int(reserved),
        "charged": int(charged),
        "refunded": int(refunded),
        "open_reservations": int(open_n),
        "open_credits": int(open_credits),
    }


def chat_sessions(engine: Engine, user_id: int | None = None, limit: int = 200) -> pd.DataFrame:
    """Chat sessions, newest first, with message count and reserved/charged/refunded credits."""
    refunds = _chat_refunds()
    stmt = (
        select(
            chat_session.c.id.label("session_id"),
            chat_session.c.user_id,
            account.c.email,
            chat_session.c.model,
            chat_session.c.title,
            chat_session.c.created_at,
            func.count(chat_message.c.id).label("messages"),
            func.coalesce(func.sum(chat_message.c.reserved_credits), 0).label("reserved"),
            func.coalesce(func.sum(chat_message.c.charged_credits), 0).label("charged"),
            func.coalesce(func.sum(refunds.c.refunded), 0).label("refunded"),
        )
        .select_from(
            chat_session.outerjoin(account, account.c.id == chat_session.c.user_id)
            .outerjoin(chat_message, chat_message.c.session_id == chat_session.c.id)
            .outerjoin(refunds, refunds.c.chat_message_id == chat_message.c.id)
        )
        .group_by(
            chat_session.c.id,
            chat_session.c.user_id,
            account.c.email,
            chat_session.c.model,
            chat_session.c.title,
            chat_session.c.created_at,
        )
        .order_by(chat_session.c.id.desc())
        .limit(_limit(limit))
    )
    if user_id is not None:
        stmt = stmt.where(chat_session.c.user_id == user_id)
    return _frame(engine, stmt)


def chat_messages(engine: Engine, session_id: int | None = None, limit: int = 200) -> pd.DataFrame:
    """Chat messages, newest first (optionally of one session), with their refund and any tool task."""
    refunds = _chat_refunds()
    tool = (
        select(ai_task.c.chat_message_id, func.min(ai_task.c.id).label("task_id"))
        .where(ai_task.c.chat_message_id.is_not(None))
        .group_by(ai_task.c.chat_message_id)
        .subquery()
    )
    stmt = (
        select(
            chat_message.c.id.label("message_id"),
            chat_message.c.session_id,
            chat_message.c.role,
            chat_message.c.status,
            chat_message.c.prompt_tokens,
            chat_message.c.completion_tokens,
            chat_message.c.reserved_credits.label("reserved"),
            chat_message.c.charged_credits.label("charged"),
            func.coalesce(refunds.c.refunded, 0).label("refunded"),
            tool.c.task_id,
            chat_message.c.created_at,
            chat_message.c.settled_at,
        )
        .select_from(
            chat_message.outerjoin(refunds, refunds.c.chat_message_id == chat_message.c.id).outerjoin(
                tool, tool.c.chat_message_id == chat_message.c.id
            )
        )
        .order_by(chat_message.c.id.desc())
        .limit(_limit(limit))
    )
    if session_id is not None:
        stmt = stmt.where(chat_message.c.session_id == session_id)
    return _frame(engine, stmt)


def chat_gap_distribution(engine: Engine, limit: int = 500) -> pd.DataFrame:
    """How many settled messages have each value of (reserved − charged): columns gap, messages."""
    gap = (chat_message.c.reserved_credits - chat_message.c.charged_credits).label("gap")
    stmt = (
        select(gap, func.count().label("messages"))
        .where(chat_message.c.charged_credits.is_not(None))
        .group_by(gap)
        .order_by(gap)
        .limit(_limit(limit))
    )
    return _frame(engine, stmt)


def tool_backed_turns(engine: Engine, limit: int = 200) -> pd.DataFrame:
    """Generation tasks started by a chat turn, newest first, with the turn's session."""
    stmt = (
        select(
            ai_task.c.id.label("task_id"),
            ai_task.c.chat_message_id.label("message_id"),
            chat_message.c.session_id,
            ai_task.c.user_id,
            ai_task.c.model,
            ai_task.c.status,
            ai_task.c.reserved_credits,
            ai_task.c.created_at,
        )
        .select_from(ai_task.outerjoin(chat_message, chat_message.c.id == ai_task.c.chat_message_id))
        .where(ai_task.c.chat_message_id.is_not(None))
        .order_by(ai_task.c.id.desc())
        .limit(_limit(limit))
    )
    return _frame(engine, stmt)


# --- notifications ---------------------------------------------------------------------


def notification_kinds(engine: Engine, user_id: int | None = None) -> pd.DataFrame:
    """Notifications per kind with how many are unread: columns kind, total, unread."""
    stmt = select(
        notification.c.kind,
        func.count().label("total"),
        func.coalesce(func.sum(case((notification.c.read_at.is_(None), 1), else_=0)), 0).label("unread"),
    ).group_by(notification.c.kind)
    if user_id is not None:
        stmt = stmt.where(notification.c.user_id == user_id)
    return _frame(engine, stmt.order_by(notification.c.kind))


# --- simulation runs ------------------------------------------------------------------


def _buckets(engine: Engine, cols, buckets: int) -> tuple[float, float] | None:
    exprs = [epoch_seconds(engine, c) for c in cols]
    with engine.connect() as conn:
        lo = conn.execute(select(func.min(exprs[0]))).scalar()
        hi = max((conn.execute(select(func.max(e))).scalar() or 0.0) for e in exprs)
    if lo is None:
        return None
    width = max((float(hi) - float(lo)) / max(1, buckets), 1.0)
    return float(lo), width


def _bucketed(engine: Engine, col, lo: float, width: float, *extra):
    """Counts per (bucket, *extra) of rows where `col` is set: columns b, *extra, n."""
    b = cast((epoch_seconds(engine, col) - lo) / width, Integer).label("b")
    inner = select(b, *extra).where(col.is_not(None)).subquery()
    keys = [inner.c.b, *(inner.c[e.name] for e in extra)]
    return _frame(engine, select(*keys, func.count().label("n")).group_by(*keys))


def state_timeline(engine: Engine, buckets: int = 60) -> pd.DataFrame:
    """Tasks active, succeeded and failed at the end of each time bucket since the first task.

    Columns t_s (seconds since the first task), state, tasks: per-bucket counts
    come from SQL and are cumulated here over at most `buckets` + 1 rows.
    """
    span = _span(engine, [ai_task.c.created_at, ai_task.c.finished_at], buckets)
    if span is None:
        return pd.DataFrame(columns=["t_s", "state", "tasks"])
    lo, width = span
    idx = pd.RangeIndex(buckets + 1)
    created = _bucketed(engine, ai_task.c.created_at, lo, width)
    finished = _bucketed(engine, ai_task.c.finished_at, lo, width, ai_task.c.status)
    frame = pd.DataFrame({"created": created.set_index("b")["n"].reindex(idx, fill_value=0).cumsum()})
    for state in ("SUCCESS", "FAILED"):
        part = finished[finished["status"] == state].set_index("b")["n"]
        frame[state] = part.reindex(idx, fill_value=0).cumsum()
    frame["ACTIVE"] = frame["created"] - frame["SUCCESS"] - frame["FAILED"]
    frame["t_s"] = idx * width + width
    return frame.melt(id_vars="t_s", value_vars=["ACTIVE", "SUCCESS", "FAILED"], var_name="state", value_name="tasks")


def credit_flow(engine: Engine, buckets: int = 60) -> pd.DataFrame:
    """Credits moved per time bucket and entry type: columns t_s (bucket start), entry_type, credits, width_s."""
    span = _span(engine, [credit_ledger.c.created_at], buckets)
    if span is None:
        return pd.DataFrame(columns=["t_s", "entry_type", "credits", "width_s"])
    lo, width = span
    b = cast((epoch_seconds(engine, credit_ledger.c.created_at) - lo) / width, Integer).label("b")
    inner = select(b, credit_ledger.c.entry_type, credit_ledger.c.amount).subquery()
    stmt = (
        select(inner.c.b, inner.c.entry_type, func.sum(inner.c.amount).label("credits"))
        .group_by(inner.c.b, inner.c.entry_type)
        .order_by(inner.c.b)
        .limit(MAX_ROWS)
    )
    frame = _frame(engine, stmt)
    frame["t_s"] = frame.pop("b") * width
    frame["width_s"] = width
    return frame[["t_s", "entry_type", "credits", "width_s"]]


def latency_histogram(engine: Engine, buckets: int = 40) -> pd.DataFrame:
    """Terminal tasks by time to terminal (finished_at − created_at) bucket and category.

    Columns latency_s (bucket start, seconds), category, tasks, width_s (the bucket width).
    """
    latency = epoch_seconds(engine, ai_task.c.finished_at) - epoch_seconds(engine, ai_task.c.created_at)
    with engine.connect() as conn:
        hi = conn.execute(select(func.max(latency)).where(ai_task.c.finished_at.is_not(None))).scalar()
    if hi is None:
        return pd.DataFrame(columns=["latency_s", "category", "tasks", "width_s"])
    width = max(float(hi) / max(1, buckets), 1.0)
    b = cast(latency / width, Integer).label("b")
    inner = select(b, ai_task.c.category).where(ai_task.c.finished_at.is_not(None)).subquery()
    stmt = (
        select(inner.c.b, inner.c.category, func.count().label("tasks"))
        .group_by(inner.c.b, inner.c.category)
        .order_by(inner.c.b)
        .limit(MAX_ROWS)
    )
    frame = _frame(engine, stmt)
    frame["latency_s"] = frame.pop("b") * width
    frame["width_s"] = width
    return frame[["latency_s", "category", "tasks", "width_s"]]


def _span(engine: Engine, cols, buckets: int) -> tuple[float, float] | None:
    """(first timestamp, bucket width) in epoch seconds over `cols`, or None when there is no row."""
    with engine.connect() as conn:
        lo = conn.execute(select(func.min(epoch_seconds(engine, cols[0])))).scalar()
        his = [conn.execute(select(func.max(epoch_seconds(engine, c)))).scalar() for c in cols]
    if lo is None:
        return None
    hi = max(float(h) for h in his if h is not None)
    return float(lo), max((hi - float(lo)) / max(1, buckets), 1.0)


def busiest_accounts(engine: Engine, limit: int = 50) -> pd.DataFrame:
    """Accounts with the most recent ledger activity first: id, email, name, balance, entries."""
    per_user = (
        select(
            credit_ledger.c.user_id,
            func.count().label("entries"),
            func.max(credit_ledger.c.id).label("last_id"),
        )
        .group_by(credit_ledger.c.user_id)
        .subquery()
    )
    stmt = (
        select(
            account.c.id,
            account.c.email,
            account.c.name,
            account.c.balance,
            func.coalesce(per_user.c.entries, 0).label("entries"),
        )
        .select_from(account.outerjoin(per_user, per_user.c.user_id == account.c.id))
        .order_by(func.coalesce(per_user.c.last_id, 0).desc(), account.c.id)
        .limit(_limit(limit))
    )
    return _frame(engine, stmt)
