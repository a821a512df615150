"""Read-only SQL aggregations behind the dashboard's money and lab pages.

Every function takes a SQLAlchemy Engine, aggregates in SQL and returns a
pandas DataFrame or a small dict; every row-returning query is LIMITed, so a
page never loads a whole table. No Streamlit here: the pages cache and render.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Engine, Float, Integer, case, cast, func, select

from ..stores.schema import account, ai_task, chat_message, chat_session, credit_ledger, notification
from .queries import ACTIVE_STATES, connect
from .reports import read_frame

MAX_ROWS = 5000


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
    with connect(engine) as conn:
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
    return read_frame(engine, select(inner).order_by(inner.c.id))


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
    with connect(engine) as conn:
        total = conn.execute(select(func.count()).select_from(credit_ledger).where(*where)).scalar_one()
    return read_frame(engine, stmt), int(total)


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
    with connect(engine) as conn:
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
    """Chat sessions, newest first, with message count and reserved/charged/refunded credits.
    The newest `limit` sessions are picked first; their messages are summed through the
    covering (session_id, reserved, charged) index and their refunds through the ledger."""
    top = select(chat_session.c.id).order_by(chat_session.c.id.desc()).limit(_limit(limit))
    if user_id is not None:
        top = top.where(chat_session.c.user_id == user_id)
    ids = select(top.subquery().c.id)
    per_session = (
        select(
            chat_message.c.session_id,
            func.count().label("messages"),
            func.sum(chat_message.c.reserved_credits).label("reserved"),
            func.sum(chat_message.c.charged_credits).label("charged"),
        )
        .where(chat_message.c.session_id.in_(ids))
        .group_by(chat_message.c.session_id)
        .subquery()
    )
    refunds = (
        select(chat_message.c.session_id, func.sum(credit_ledger.c.amount).label("refunded"))
        .select_from(credit_ledger.join(chat_message, chat_message.c.id == credit_ledger.c.chat_message_id))
        .where(credit_ledger.c.entry_type == "chat_refund", chat_message.c.session_id.in_(ids))
        .group_by(chat_message.c.session_id)
        .subquery()
    )
    stmt = (
        select(
            chat_session.c.id.label("session_id"),
            chat_session.c.user_id,
            account.c.email,
            chat_session.c.model,
            chat_session.c.title,
            chat_session.c.created_at,
            func.coalesce(per_session.c.messages, 0).label("messages"),
            func.coalesce(per_session.c.reserved, 0).label("reserved"),
            func.coalesce(per_session.c.charged, 0).label("charged"),
            func.coalesce(refunds.c.refunded, 0).label("refunded"),
        )
        .select_from(
            chat_session.outerjoin(account, account.c.id == chat_session.c.user_id)
            .outerjoin(per_session, per_session.c.session_id == chat_session.c.id)
            .outerjoin(refunds, refunds.c.session_id == chat_session.c.id)
        )
        .where(chat_session.c.id.in_(ids))
        .order_by(chat_session.c.id.desc())
    )
    return read_frame(engine, stmt)


def chat_messages(engine: Engine, session_id: int | None = None, limit: int = 200) -> pd.DataFrame:
    """Chat messages, newest first (optionally of one session), with their refund and any tool task.
    Each listed message's refund and task are looked up through the chat-message indexes
    (not summed over every chat refund and tool task first)."""
    refunded = (
        select(func.sum(credit_ledger.c.amount))
        .where(credit_ledger.c.chat_message_id == chat_message.c.id, credit_ledger.c.entry_type == "chat_refund")
        .scalar_subquery()
    )
    tool_task = select(func.min(ai_task.c.id)).where(ai_task.c.chat_message_id == chat_message.c.id).scalar_subquery()
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
            func.coalesce(refunded, 0).label("refunded"),
            tool_task.label("task_id"),
            chat_message.c.created_at,
            chat_message.c.settled_at,
        )
        .order_by(chat_message.c.id.desc())
        .limit(_limit(limit))
    )
    if session_id is not None:
        stmt = stmt.where(chat_message.c.session_id == session_id)
    return read_frame(engine, stmt)


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
    return read_frame(engine, stmt)


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
    return read_frame(engine, stmt)


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
    return read_frame(engine, stmt.order_by(notification.c.kind))


# --- simulation runs ------------------------------------------------------------------


WINDOW_S = 7 * 86400.0  # the lab's charts show the latest week of a long run by default


def _to_epoch(value: Any) -> float:
    return pd.Timestamp(value).timestamp() if value is not None else float("nan")


def _first_last(engine: Engine, cols) -> tuple[Any, Any] | None:
    """The earliest value of cols[0] and the latest of any col: plain min/max, so index lookups."""
    with connect(engine) as conn:
        first = conn.execute(select(func.min(cols[0]))).scalar()
        lasts = [conn.execute(select(func.max(c))).scalar() for c in cols]
    lasts = [v for v in lasts if v is not None]
    if first is None or not lasts:
        return None
    return pd.Timestamp(first), max(pd.Timestamp(v) for v in lasts)


def _window(engine: Engine, cols, buckets: int, window_s: float | None):
    """(first, start, width): the first timestamp (t = 0), where the window starts (the latest
    `window_s` seconds, or the whole history) and the bucket width in seconds; None without rows."""
    span = _first_last(engine, cols)
    if span is None:
        return None
    first, last = span
    start = first if window_s is None else max(first, last - pd.Timedelta(seconds=float(window_s)))
    width = max((last - start).total_seconds() / max(1, buckets), 1.0)
    return first, start, width


def _bucketed(engine: Engine, col, start, width: float, *extra):
    """Counts per (bucket, *extra) of rows where `col` falls in the window: columns b, *extra, n."""
    lo = _to_epoch(start)
    b = cast((epoch_seconds(engine, col) - lo) / width, Integer).label("b")
    inner = select(b, *extra).where(col >= start.to_pydatetime()).subquery()
    keys = [inner.c.b, *(inner.c[e.name] for e in extra)]
    return read_frame(engine, select(*keys, func.count().label("n")).group_by(*keys))


def state_timeline(engine: Engine, buckets: int = 60, window_s: float | None = WINDOW_S) -> pd.DataFrame:
    """Tasks active at the end of each time bucket of the latest `window_s` seconds (None: since
    the first task), and tasks succeeded and failed since the window's start.

    Columns t_s (seconds since the first task), state, tasks. Only rows in the window are read
    (index range scans): tasks active at time t are those active now, less those created after t,
    plus those finished after t. Cumulated here over at most `buckets` + 1 rows.
    """
    w = _window(engine, [ai_task.c.created_at, ai_task.c.finished_at], buckets, window_s)
    if w is None:
        return pd.DataFrame(columns=["t_s", "state", "tasks"])
    first, start, width = w
    idx = pd.RangeIndex(buckets + 1)
    created = _bucketed(engine, ai_task.c.created_at, start, width)
    finished = _bucketed(engine, ai_task.c.finished_at, start, width, ai_task.c.status)
    with connect(engine) as conn:
        active_now = int(conn.scalar(select(func.count()).where(ai_task.c.status.in_(ACTIVE_STATES))) or 0)
    made = created.set_index("b")["n"].reindex(idx, fill_value=0)
    done = finished.groupby("b")["n"].sum().reindex(idx, fill_value=0)
    frame = pd.DataFrame({"ACTIVE": active_now - (made.sum() - made.cumsum()) + (done.sum() - done.cumsum())})
    for state in ("SUCCESS", "FAILED"):
        part = finished[finished["status"] == state].set_index("b")["n"]
        frame[state] = part.reindex(idx, fill_value=0).cumsum()
    frame["t_s"] = (start - first).total_seconds() + idx * width + width
    return frame.melt(id_vars="t_s", value_vars=["ACTIVE", "SUCCESS", "FAILED"], var_name="state", value_name="tasks")


def credit_flow(engine: Engine, buckets: int = 60, window_s: float | None = WINDOW_S) -> pd.DataFrame:
    """Credits moved per time bucket and entry type over the latest `window_s` seconds (None: the
    whole ledger): columns t_s (bucket start, seconds since the first entry), entry_type, credits, width_s."""
    w = _window(engine, [credit_ledger.c.created_at], buckets, window_s)
    if w is None:
        return pd.DataFrame(columns=["t_s", "entry_type", "credits", "width_s"])
    first, start, width = w
    b = cast((epoch_seconds(engine, credit_ledger.c.created_at) - _to_epoch(start)) / width, Integer).label("b")
    inner = (
        select(b, credit_ledger.c.entry_type, credit_ledger.c.amount)
        .where(credit_ledger.c.created_at >= start.to_pydatetime())
        .subquery()
    )
    stmt = (
        select(inner.c.b, inner.c.entry_type, func.sum(inner.c.amount).label("credits"))
        .group_by(inner.c.b, inner.c.entry_type)
        .order_by(inner.c.b)
        .limit(MAX_ROWS)
    )
    frame = read_frame(engine, stmt)
    frame["t_s"] = (start - first).total_seconds() + frame.pop("b") * width
    frame["width_s"] = width
    return frame[["t_s", "entry_type", "credits", "width_s"]]


def latency_histogram(engine: Engine, buckets: int = 40, window_s: float | None = WINDOW_S) -> pd.DataFrame:
    """Tasks that reached a terminal state in the latest `window_s` seconds (None: all of them) by
    time to terminal (finished_at − created_at) bucket and category.

    Columns latency_s (bucket start, seconds), category, tasks, width_s (the bucket width).
    """
    span = _first_last(engine, [ai_task.c.finished_at])
    if span is None:
        return pd.DataFrame(columns=["latency_s", "category", "tasks", "width_s"])
    start = span[0] if window_s is None else max(span[0], span[1] - pd.Timedelta(seconds=float(window_s)))
    in_window = ai_task.c.finished_at >= start.to_pydatetime()
    latency = epoch_seconds(engine, ai_task.c.finished_at) - epoch_seconds(engine, ai_task.c.created_at)
    with connect(engine) as conn:
        hi = conn.execute(select(func.max(latency)).where(in_window)).scalar()
    width = max(float(hi or 0.0) / max(1, buckets), 1.0)
    b = cast(latency / width, Integer).label("b")
    inner = select(b, ai_task.c.category).where(in_window).subquery()
    stmt = (
        select(inner.c.b, inner.c.category, func.count().label("tasks"))
        .group_by(inner.c.b, inner.c.category)
        .order_by(inner.c.b)
        .limit(MAX_ROWS)
    )
    frame = read_frame(engine, stmt)
    frame["latency_s"] = frame.pop("b") * width
    frame["width_s"] = width
    return frame[["latency_s", "category", "tasks", "width_s"]]


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
    return read_frame(engine, stmt)
