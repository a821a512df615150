"""Read-side queries: the four places a task shows, and support lookups.

Active studio, history, notifications centre (with unread counts) and recent
generations all read the same `ai_task`/`notification` rows; `find_tasks`,
`find_accounts` and `task_detail` serve the support inspector. Every function
takes an `Engine` or a `Connection`, builds Core `select()`s with bound
parameters (user text is only ever a parameter, LIKE patterns are escaped),
pages with limit/offset and returns plain dicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, overload

from sqlalchemy import Connection, Engine, Select, func, or_, select, update

from .. import clock
from ..domain import ACTIVE, TERMINAL, NotFound
from ..stores.schema import (
    account,
    ai_task,
    chat_message,
    credit_ledger,
    notification,
    provider_callback,
    task_event,
)

MAX_LIMIT = 1000
PER_ACCOUNT_WALKS = 20  # find_tasks: accounts matched up to this many are searched one by one
_MAX_ID = 2**63 - 1
ACTIVE_STATES = sorted(s.value for s in ACTIVE)
TERMINAL_STATES = sorted(s.value for s in TERMINAL)

Bind = Engine | Connection


# --- shared helpers (audit and diagnose use them too) ---------------------------------


@contextmanager
def connect(bind: Bind) -> Iterator[Connection]:
    """A connection for reading: the caller's, or a fresh one from the engine.
    On SQLite a read takes no write lock (plain BEGIN), so pages and the audit
    never wait behind a simulation that is writing."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.execution_options(sqlite_begin="DEFERRED").connect() as conn:
            yield conn


@overload
def naive_utc(dt: datetime) -> datetime: ...
@overload
def naive_utc(dt: None) -> None: ...
def naive_utc(dt: datetime | None) -> datetime | None:
    """Stored times are naive UTC; turn an aware datetime into one."""
    if dt is not None and dt.tzinfo is not None:
        return dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def jsonable(value: Any) -> Any:
    """Rows and findings as JSON-ready values (datetimes as ISO text)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


def rows(result: Iterable[Any]) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


def like_escape(text: str) -> str:
    """Escape LIKE wildcards so user text matches literally (escape char is backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _page(limit: int, offset: int = 0) -> tuple[int, int]:
    limit = max(0, min(int(limit), MAX_LIMIT))
    return limit, max(0, int(offset))


def latest_timestamp(bind: Bind) -> datetime | None:
    """The latest moment the database has recorded (task creation and finish, every event,
    callback receipt, ledger entry). A simulated run's clock stops there, so audits and diagnoses
    of a simulation database judge ages against it rather than against the wall clock.

    Rows are not written in time order by every writer (a simulation's writer drains tasks as it
    evicts them), so the newest row by id is not the latest one. The latest events are a running
    task's (polls, re-checks: read through the status index, then each running task's events),
    a settled task's last one is at its `finished_at` (its later callbacks at their receipt), and
    the newest event by id covers what a live database writes afterwards (support acts on settled
    tasks). Cheap: indexed maxima, the running tasks' events and a primary-key lookup."""
    newest_event = select(func.max(task_event.c.id)).scalar_subquery()
    running = select(ai_task.c.id).where(ai_task.c.status.in_(ACTIVE_STATES))
    candidates = [
        select(func.max(ai_task.c.created_at)),
        select(func.max(ai_task.c.finished_at)),
        select(task_event.c.at).where(task_event.c.id == newest_event),
        select(func.max(task_event.c.at)).where(task_event.c.task_id.in_(running)),
        select(func.max(provider_callback.c.received_at)),
        select(func.max(credit_ledger.c.created_at)),
    ]
    with connect(bind) as conn:
        found = [conn.execute(q).scalar() for q in candidates]
    seen = [naive_utc(t) for t in found if t is not None]
    return max(seen) if seen else None


def reference_now(bind: Bind, now: datetime | None = None) -> clock.JudgedAt:
    """The moment ages are judged at in this database (clock.judging_now over its latest
    recorded activity and the wall clock), or `now` when a caller gives one."""
    if now is not None:
        return clock.JudgedAt(naive_utc(now), "the time asked for", False)
    return clock.judging_now(latest_timestamp(bind), clock.wall_now())


def resolve_now(bind: Bind, now: datetime | None) -> datetime:
    """`now` as given (naive UTC), else reference_now(bind).at."""
    return reference_now(bind, now).at


# --- the four places a task shows -------------------------------------------------------


def task_callbacks(task_id: int, upstream_task_id: str | None, provider: str) -> Select:
    """A task's deliveries: those matched to it, and those for its upstream id at its provider
    (rejected or unknown ones carry no task id). The provider is compared as an expression so that
    the upstream-id index serves the second branch: with `provider = ?` SQLite picked the
    (provider, webhook_id) index and walked every callback of that provider (0.6 s at a million)."""
    cond = provider_callback.c.task_id == task_id
    if upstream_task_id:
        cond = or_(
            cond,
            (provider_callback.c.upstream_task_id == upstream_task_id)
            & ((provider_callback.c.provider + "") == provider),
        )
    return select(*provider_callback.c).where(cond).order_by(provider_callback.c.id)


_TASK_COLS = [
    ai_task.c.id,
    ai_task.c.user_id,
    ai_task.c.model,
    ai_task.c.category,
    ai_task.c.prompt,
    ai_task.c.status,
    ai_task.c.reserved_credits,
    ai_task.c.provider,
    ai_task.c.upstream_task_id,
    ai_task.c.error_code,
    ai_task.c.failure_class,
    ai_task.c.chat_message_id,
    ai_task.c.created_at,
    ai_task.c.submitted_at,
    ai_task.c.finished_at,
]


def active_started():
    """When a running task started: submitted, else created (what its age is measured from)."""
    return func.coalesce(ai_task.c.submitted_at, ai_task.c.created_at)


def match_active(
    q,
    *,
    statuses: Iterable[str] | None = None,
    category: Iterable[str] = (),
    model: Iterable[str] = (),
    provider: Iterable[str] = (),
    user_id: int | None = None,
):
    """The one rule for which running tasks a list shows and in what order: WAITING/GENERATING
    (narrowed to `statuses`; a status that is not running matches nothing), each given filter
    as "one of these values", oldest start first. The studio and the live tasks report use it."""
    states = ACTIVE_STATES if statuses is None else [s for s in statuses if s in ACTIVE_STATES] or ["-"]
    q = q.where(ai_task.c.status.in_(states))
    for col, values in ((ai_task.c.category, category), (ai_task.c.model, model), (ai_task.c.provider, provider)):
        values = list(values)
        if values:
            q = q.where(col.in_(values))
    if user_id is not None:
        q = q.where(ai_task.c.user_id == user_id)
    return q.order_by(active_started(), ai_task.c.id)


def last_events(bind: Bind, task_ids: list[int]) -> dict[int, tuple[str, Any]]:
    """{task_id: (kind, at)} of each task's newest event (by id): one query for a page of tasks."""
    if not task_ids:
        return {}
    newest = (
        select(func.max(task_event.c.id).label("id"))
        .where(task_event.c.task_id.in_(task_ids))
        .group_by(task_event.c.task_id)
        .subquery()
    )
    stmt = select(task_event.c.task_id, task_event.c.kind, task_event.c.at).join(newest, newest.c.id == task_event.c.id)
    with connect(bind) as conn:
        return {int(t): (k, at) for t, k, at in conn.execute(stmt)}


def active_studio(
    bind: Bind,
    user_id: int | None = None,
    *,
    status: str | None = None,
    category: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Running tasks (WAITING/GENERATING), oldest start first, with their last event and its time.
    user_id None: across all users (the live tasks page)."""
    limit, offset = _page(limit, offset)

    def one(value: str | None) -> tuple[str, ...]:
        return () if value is None else (value,)

    q = (
        match_active(
            select(*_TASK_COLS),
            statuses=None if status is None else (status,),
            category=one(category),
            model=one(model),
            provider=one(provider),
            user_id=user_id,
        )
        .limit(limit)
        .offset(offset)
    )
    with connect(bind) as conn:
        found = rows(conn.execute(q))
        last = last_events(conn, [r["id"] for r in found])
    for r in found:
        r["last_event"], r["last_event_at"] = last.get(r["id"], (None, None))
    return found


def history(bind: Bind, user_id: int | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Settled tasks (SUCCESS/FAILED), newest first, with result URLs and errors."""
    limit, offset = _page(limit, offset)
    q = select(*_TASK_COLS, ai_task.c.result_urls, ai_task.c.error_message, ai_task.c.settled_at)
    order = (ai_task.c.created_at.desc(), ai_task.c.id.desc())
    with connect(bind) as conn:
        if user_id is not None:
            q = q.where(ai_task.c.user_id == user_id, ai_task.c.status.in_(TERMINAL_STATES))
            return rows(conn.execute(q.order_by(*order).limit(limit).offset(offset)))
        # one backward walk of (status, created_at) per state, merged: status IN (...)
        # ORDER BY created_at made SQLite sort every settled task of the database
        found = [
            r
            for state in TERMINAL_STATES
            for r in conn.execute(q.where(ai_task.c.status == state).order_by(*order).limit(limit + offset))
        ]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return rows(found[offset : offset + limit])


def _notification_filter(q, user_id, kind, unread_only):
    if user_id is not None:
        q = q.where(notification.c.user_id == user_id)
    if kind is not None:
        q = q.where(notification.c.kind == kind)
    if unread_only:
        q = q.where(notification.c.read_at.is_(None))
    return q


def notifications_centre(
    bind: Bind,
    user_id: int | None = None,
    kind: str | None = None,
    unread_only: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Notifications newest first, each with its task's status and model, and the total."""
    limit, offset = _page(limit, offset)
    cols = [*notification.c, ai_task.c.status.label("task_status"), ai_task.c.model.label("task_model")]
    q = select(*cols).select_from(notification.outerjoin(ai_task, ai_task.c.id == notification.c.task_id))
    q = _notification_filter(q, user_id, kind, unread_only)
    q = q.order_by(notification.c.created_at.desc(), notification.c.id.desc()).limit(limit).offset(offset)
    total_q = _notification_filter(select(func.count()).select_from(notification), user_id, kind, unread_only)
    with connect(bind) as conn:
        return rows(conn.execute(q)), int(conn.execute(total_q).scalar() or 0)


def unread_counts(bind: Bind, user_id: int | None = None) -> dict[str, Any]:
    """{"total": n, "by_kind": {kind: n}} of unread notifications (one user or all)."""
    q = _notification_filter(select(notification.c.kind, func.count()), user_id, None, True)
    with connect(bind) as conn:
        by_kind = {k: int(n) for k, n in conn.execute(q.group_by(notification.c.kind))}
    return {"total": sum(by_kind.values()), "by_kind": by_kind}


def mark_read(bind: Bind, notification_ids: Iterable[int], at: datetime) -> int:
    """Mark unread notifications read at `at`; returns how many changed."""
    ids = sorted({int(i) for i in notification_ids})
    if not ids:
        return 0
    stmt = (
        update(notification)
        .where(notification.c.id.in_(ids), notification.c.read_at.is_(None))
        .values(read_at=naive_utc(at))
    )
    if isinstance(bind, Connection):
        return bind.execute(stmt).rowcount
    with bind.begin() as conn:
        return conn.execute(stmt).rowcount


def recent_generations(bind: Bind, user_id: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Latest tasks of any state (the dashboard's recent generations)."""
    limit, _ = _page(limit)
    q = select(*_TASK_COLS, ai_task.c.result_urls)
    if user_id is not None:
        q = q.where(ai_task.c.user_id == user_id)
    q = q.order_by(ai_task.c.created_at.desc(), ai_task.c.id.desc()).limit(limit)
    with connect(bind) as conn:
        return rows(conn.execute(q))


# --- support lookups ------------------------------------------------------------------------


def _clean(query: Any) -> str:
    """Search text as typed, trimmed and bounded; NUL bytes (refused by PostgreSQL) dropped."""
    return str(query or "").replace("\x00", "").strip()[:500]


def _as_id(text: str) -> int | None:
    return int(text) if re.fullmatch(r"\d{1,19}", text) and int(text) <= _MAX_ID else None


def _account_match(text: str):
    pattern = like_escape(text)
    return or_(
        account.c.email == text,
        account.c.email.ilike(pattern + "%", escape="\\"),
        account.c.name.ilike("%" + pattern + "%", escape="\\"),
    )


def find_tasks(bind: Bind, query: str, limit: int = 50) -> list[dict[str, Any]]:
    """Tasks matching a task id (ours, or an imported task's original id), an upstream id (exact), a user's email (exact or
    prefix) or name (substring, any case), or prompt text (substring, any case).
    Exact id/upstream hits answer alone; otherwise user and prompt matches, newest
    first. Each row carries `match` saying why it was found."""
    text = _clean(query)
    limit, _ = _page(limit)
    if not text or not limit:
        return []
    cols = [*_TASK_COLS, ai_task.c.external_ref, account.c.email, account.c.name.label("user_name")]
    base = select(*cols).select_from(ai_task.outerjoin(account, account.c.id == ai_task.c.user_id))
    order = (ai_task.c.created_at.desc(), ai_task.c.id.desc())
    out: dict[int, dict[str, Any]] = {}

    def add(result, why):
        for r in rows(result):
            if r["id"] not in out and len(out) < limit:
                out[r["id"]] = {**r, "match": why}

    with connect(bind) as conn:
        task_id = _as_id(text)
        if task_id is not None:
            add(conn.execute(base.where(ai_task.c.id == task_id)), "id")
        add(conn.execute(base.where(ai_task.c.upstream_task_id == text).order_by(*order).limit(limit)), "upstream")
        add(conn.execute(base.where(ai_task.c.external_ref == text).limit(limit)), "original id")
        if out:
            return list(out.values())
        users = list(conn.scalars(select(account.c.id).where(_account_match(text)).limit(MAX_LIMIT)))
        if len(users) <= PER_ACCOUNT_WALKS:
            # one backward walk of (user_id, created_at) per account: an IN list would
            # sort every task the accounts own (a million-task database: 8k per user)
            found = [
                r
                for uid in users
                for r in conn.execute(base.where(ai_task.c.user_id == uid).order_by(*order).limit(limit))
            ]
            found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
            add(found, "user")
        else:
            add(conn.execute(base.where(ai_task.c.user_id.in_(users)).order_by(*order).limit(limit)), "user")
        if len(out) < limit:
            prompt = ai_task.c.prompt.ilike("%" + like_escape(text) + "%", escape="\\")
            add(conn.execute(base.where(prompt).order_by(*order).limit(limit)), "prompt")
    return list(out.values())


def find_accounts(bind: Bind, query: str, limit: int = 50) -> list[dict[str, Any]]:
    """Accounts matching an id, an email (exact or prefix) or a name (substring)."""
    text = _clean(query)
    limit, _ = _page(limit)
    if not text or not limit:
        return []
    cond = _account_match(text)
    account_id = _as_id(text)
    if account_id is not None:
        cond = or_(account.c.id == account_id, cond)
    q = select(*account.c).where(cond).order_by(account.c.id).limit(limit)
    with connect(bind) as conn:
        return rows(conn.execute(q))


def task_detail(bind: Bind, task_id: int) -> dict[str, Any]:
    """Everything support reads about one task: the task row, its account, events
    in order, ledger rows (the task's, and its chat message's for tool-backed
    chat), callbacks (by task or by its upstream id), notifications and the chat
    message it belongs to. Raises NotFound."""
    tid = _as_id(str(task_id)) if not isinstance(task_id, bool) else None
    with connect(bind) as conn:
        row = conn.execute(select(*ai_task.c).where(ai_task.c.id == tid)).first() if tid is not None else None
        if row is None or tid is None:
            raise NotFound(f"task {task_id} not found")
        task = dict(row._mapping)
        acct = conn.execute(select(*account.c).where(account.c.id == task["user_id"])).first()
        events = conn.execute(select(*task_event.c).where(task_event.c.task_id == tid).order_by(task_event.c.id))
        ledger_cond = credit_ledger.c.task_id == tid
        msg = None
        if task["chat_message_id"] is not None:
            ledger_cond = or_(ledger_cond, credit_ledger.c.chat_message_id == task["chat_message_id"])
            msg = conn.execute(select(*chat_message.c).where(chat_message.c.id == task["chat_message_id"])).first()
        ledger = conn.execute(select(*credit_ledger.c).where(ledger_cond).order_by(credit_ledger.c.id))
        callbacks = conn.execute(task_callbacks(tid, task["upstream_task_id"], task["provider"]))
        notes = conn.execute(select(*notification.c).where(notification.c.task_id == tid).order_by(notification.c.id))
        return {
            "task": task,
            "account": dict(acct._mapping) if acct else None,
            "events": rows(events),
            "ledger": rows(ledger),
            "callbacks": rows(callbacks),
            "notifications": rows(notes),
            "chat_message": dict(msg._mapping) if msg else None,
        }
