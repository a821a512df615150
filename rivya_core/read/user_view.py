"""What support reads about one person: their tasks (filtered, newest first, with whether they saw
the outcome), whether they saw a task's outcome notification and when, and chat turns found by id,
session or user.

Every function takes an Engine or a Connection and returns plain dicts; user text is only ever a
bound parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, select

from ..domain import NotificationKind
from ..stores.schema import account, ai_task, chat_message, chat_session, notification
from .queries import Bind, _as_id, _clean, _page, connect, find_accounts, naive_utc, rows

OUTCOME_KINDS = [k.value for k in NotificationKind]


def user_tasks(
    bind: Bind,
    user_id: int,
    *,
    statuses: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
    providers: tuple[str, ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """One user's tasks, newest first, each with its outcome notification's sent and read times."""
    limit, offset = _page(limit, offset)
    outcome = notification.alias("outcome")
    q = (
        select(
            ai_task.c.id,
            ai_task.c.status,
            ai_task.c.category,
            ai_task.c.model,
            ai_task.c.provider,
            ai_task.c.prompt,
            ai_task.c.reserved_credits,
            ai_task.c.error_code,
            ai_task.c.failure_class,
            ai_task.c.created_at,
            ai_task.c.finished_at,
            outcome.c.kind.label("notified"),
            outcome.c.created_at.label("notified_at"),
            outcome.c.read_at,
        )
        .select_from(
            ai_task.outerjoin(outcome, and_(outcome.c.task_id == ai_task.c.id, outcome.c.kind.in_(OUTCOME_KINDS)))
        )
        .where(ai_task.c.user_id == int(user_id))
    )
    for col, values in (
        (ai_task.c.status, statuses),
        (ai_task.c.category, categories),
        (ai_task.c.model, models),
        (ai_task.c.provider, providers),
    ):
        if values:
            q = q.where(col.in_(list(values)))
    if since is not None:
        q = q.where(ai_task.c.created_at >= naive_utc(since))
    if until is not None:
        q = q.where(ai_task.c.created_at < naive_utc(until))
    q = q.order_by(ai_task.c.created_at.desc(), ai_task.c.id.desc()).limit(limit).offset(offset)
    with connect(bind) as conn:
        return rows(conn.execute(q))


def outcome_seen(bind: Bind, task_id: int, now: datetime | None = None) -> dict[str, Any]:
    """Did the user see the task's outcome notification, and when? {"seen": bool | None,
    "answer": one sentence, "notified_at", "read_at", "kind"}; seen is None when none was sent."""
    with connect(bind) as conn:
        row = conn.execute(
            select(notification.c.kind, notification.c.created_at, notification.c.read_at)
            .where(notification.c.task_id == int(task_id), notification.c.kind.in_(OUTCOME_KINDS))
            .order_by(notification.c.id)
            .limit(1)
        ).first()
        status = conn.scalar(select(ai_task.c.status).where(ai_task.c.id == int(task_id)))
    if row is None:
        why = "the task is still running" if status in ("WAITING", "GENERATING") else "none was recorded"
        return {
            "seen": None,
            "kind": None,
            "notified_at": None,
            "read_at": None,
            "answer": f"No outcome notification was sent: {why}.",
        }
    kind, sent, read = row
    if read is not None:
        answer = (
            f"Yes: the {kind.replace('_', ' ')} notification sent {sent:%Y-%m-%d %H:%M:%S} UTC was read "
            f"{read:%Y-%m-%d %H:%M:%S} UTC, {_span((read - sent).total_seconds())} later."
        )
    else:
        unread = f" after {_span((now - sent).total_seconds())}" if now is not None and now >= sent else ""
        answer = (
            f"Not yet: the {kind.replace('_', ' ')} notification sent {sent:%Y-%m-%d %H:%M:%S} UTC "
            f"is still unread{unread}."
        )
    return {"seen": read is not None, "kind": kind, "notified_at": sent, "read_at": read, "answer": answer}


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def find_chat_messages(bind: Bind, query: str, limit: int = 50) -> list[dict[str, Any]]:
    """Chat turns matching a message id or a session id (exact), or a user (id, email, name:
    their newest turns). Each row carries `match` saying why it was found."""
    text = _clean(query)
    limit, _ = _page(limit)
    if not text or not limit:
        return []
    cols = [
        chat_message.c.id.label("message_id"),
        chat_message.c.session_id,
        chat_session.c.user_id,
        account.c.email,
        chat_session.c.model,
        chat_message.c.role,
        chat_message.c.status,
        chat_message.c.reserved_credits,
        chat_message.c.charged_credits,
        chat_message.c.created_at,
        chat_message.c.settled_at,
    ]
    base = select(*cols).select_from(
        chat_message.join(chat_session, chat_session.c.id == chat_message.c.session_id).outerjoin(
            account, account.c.id == chat_session.c.user_id
        )
    )
    newest = (chat_message.c.id.desc(),)
    out: dict[int, dict[str, Any]] = {}

    def add(result, why):
        for r in rows(result):
            if r["message_id"] not in out and len(out) < limit:
                out[r["message_id"]] = {**r, "match": why}

    with connect(bind) as conn:
        ident = _as_id(text)
        if ident is not None:
            add(conn.execute(base.where(chat_message.c.id == ident)), "message id")
            add(
                conn.execute(base.where(chat_message.c.session_id == ident).order_by(*newest).limit(limit)),
                "session id",
            )
        users = [a["id"] for a in find_accounts(conn, text, 20)]
        for uid in users:
            add(conn.execute(base.where(chat_session.c.user_id == uid).order_by(*newest).limit(limit)), "user")
    return list(out.values())
