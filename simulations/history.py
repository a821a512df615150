"""Recorded history read from any database that follows the data contract.

`load_history(engine, since, until)` reads the tasks, chat turns and ledger rows
of a window once, as plain tuples (no ORM), so the backtest and calibration
can walk a million tasks quickly. Times are seconds since EPOCH (floats).
The window is judged on creation time: a task or chat turn created inside it
belongs to it with everything that happened to it afterwards; ledger rows of
accounts (grants, adjustments) belong to it when they were written inside it.
Balances at the start of the window are the recorded `balance_after` of each
account's last ledger row before it.

Ledger rows are read in id order, the order they were written: each
`balance_after` is the running sum in that order. Their timestamps come from
the clocks of whoever wrote them, which may disagree (two workers, a clock set
back), so a later row can carry an earlier time; time never orders the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, inspect, literal, select

from rivya_core.catalog import Catalog, default_catalog
from rivya_core.domain import INSUFFICIENT_CREDITS, EventKind, RivyaError
from rivya_core.read.queries import connect
from rivya_core.stores import schema

EPOCH = datetime(1970, 1, 1)


class HistoryError(RivyaError):
    code = "history_invalid"


def seconds(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.replace(tzinfo=None) - dt.utcoffset()
    return (dt - EPOCH).total_seconds()


def parse_time(text: str | None, what: str) -> datetime | None:
    """--since / --until: an ISO date or date-time (UTC)."""
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise HistoryError(
            f"{what} {text!r} is not an ISO date or date-time (2026-11-01 or 2026-11-01T12:00)", code="bad_argument"
        ) from None
    if dt.tzinfo is not None:
        dt = dt.replace(tzinfo=None) - dt.utcoffset()
    return dt


@dataclass(slots=True)
class TaskRow:
    id: int
    user_id: int
    model: str
    category: str
    provider: str
    prompt: str
    params: dict[str, Any]
    status: str
    reserved: int
    error_code: str | None
    failure_class: str | None
    created: float
    submitted: float | None
    finished: float | None
    chat_message_id: int | None
    run_s: float | None = None  # billable run seconds the provider reported (ai_task.provider_run_s)
    outputs: int = 0  # result URLs delivered


@dataclass(slots=True)
class ChatRow:
    id: int
    user_id: int
    model: str
    prompt_tokens: int
    completion_tokens: int | None
    reserved: int
    charged: int | None
    status: str
    created: float
    settled: float | None


@dataclass(slots=True)
class LedgerRow:
    id: int
    user_id: int
    entry_type: str
    amount: int
    balance_after: int
    task_id: int | None
    chat_message_id: int | None
    at: float
    own: bool = True  # False: a row of a task or turn from before the window, applied as recorded


@dataclass
class History:
    since: datetime | None
    until: datetime | None
    tasks: list[TaskRow]
    chats: list[ChatRow]
    ledger: list[LedgerRow]  # the window's rows and its tasks' later rows, in id order
    opening: dict[int, int]  # balance of each account when the window opens
    refused_balance: dict[int, int] = field(default_factory=dict)  # task refused for credits -> balance it saw
    catalog: Catalog = field(default_factory=default_catalog)

    def span(self) -> tuple[float | None, float | None]:
        """The first and the latest moment the window's rows record (None, None when it holds none)."""
        times = [r.at for r in self.ledger]
        for t in self.tasks:
            times += [x for x in (t.created, t.finished) if x is not None]
        for c in self.chats:
            times += [x for x in (c.created, c.settled) if x is not None]
        return (min(times), max(times)) if times else (None, None)

    @property
    def refused_for_credits(self) -> list[TaskRow]:
        return [t for t in self.tasks if t.error_code == INSUFFICIENT_CREDITS]


def _window(col, since: datetime | None, until: datetime | None):
    conds = []
    if since is not None:
        conds.append(col >= since)
    if until is not None:
        conds.append(col < until)
    return and_(*conds) if conds else None


def load_history(
    engine: Engine, since: datetime | None = None, until: datetime | None = None, catalog: Catalog | None = None
) -> History:
    if since is not None and until is not None and until <= since:
        raise HistoryError("--until must be after --since", code="bad_argument")
    t, m, s, L = schema.ai_task.c, schema.chat_message.c, schema.chat_session.c, schema.credit_ledger.c
    with connect(engine) as conn:
        # provider_run_s came after version 1: a database without it reads as "not reported"
        has_run_s = "provider_run_s" in {c["name"] for c in inspect(conn).get_columns("ai_task")}
        run_s = t.provider_run_s if has_run_s else literal(None)
        q = select(
            t.id,
            t.user_id,
            t.model,
            t.category,
            t.provider,
            t.prompt,
            t.params,
            t.status,
            t.reserved_credits,
            t.error_code,
            t.failure_class,
            t.created_at,
            t.submitted_at,
            t.finished_at,
            t.chat_message_id,
            run_s,
            t.result_urls,
        ).order_by(t.id)
        w = _window(t.created_at, since, until)
        if w is not None:
            q = q.where(w)
        tasks = [
            TaskRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6] or {},
                r[7],
                int(r[8]),
                r[9],
                r[10],
                seconds(r[11]),
                seconds(r[12]),
                seconds(r[13]),
                r[14],
                None if r[15] is None else float(r[15]),
                len(r[16]) if isinstance(r[16], list) else 0,
            )
            for r in conn.execute(q)
        ]
        q = (
            select(
                m.id,
                s.user_id,
                s.model,
                m.prompt_tokens,
                m.completion_tokens,
                m.reserved_credits,
                m.charged_credits,
                m.status,
                m.created_at,
                m.settled_at,
            )
            .join(schema.chat_session, s.id == m.session_id)
            .where(m.role == "user")
            .order_by(m.id)
        )
        w = _window(m.created_at, since, until)
        if w is not None:
            q = q.where(w)
        chats = [
            ChatRow(r[0], r[1], r[2], int(r[3] or 0), r[4], int(r[5] or 0), r[6], r[7], seconds(r[8]), seconds(r[9]))
            for r in conn.execute(q)
        ]
        task_ids = {x.id for x in tasks}
        msg_ids = {x.id for x in chats}
        q = select(
            L.id, L.user_id, L.entry_type, L.amount, L.balance_after, L.task_id, L.chat_message_id, L.created_at
        ).order_by(L.id)
        if since is not None:  # a refund after the window of a task inside it belongs to it
            q = q.where(L.created_at >= since)
        ledger = []
        for r in conn.execute(q):
            row = LedgerRow(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], seconds(r[7]))
            if row.task_id is not None:
                row.own = row.task_id in task_ids
            elif row.chat_message_id is not None:
                row.own = row.chat_message_id in msg_ids
            in_time = until is None or r[7] < until
            if in_time if row.task_id is None and row.chat_message_id is None else (row.own or in_time):
                ledger.append(row)
        opening: dict[int, int] = {}
        if since is not None:
            last = (
                select(L.user_id, func.max(L.id).label("last_id"))
                .where(L.created_at < since)
                .group_by(L.user_id)
                .subquery()
            )
            for uid, bal in conn.execute(select(L.user_id, L.balance_after).join(last, L.id == last.c.last_id)):
                opening[uid] = int(bal)
        refused_balance: dict[int, int] = {}
        refused = {x.id for x in tasks if x.error_code == INSUFFICIENT_CREDITS}
        if refused:
            e = schema.task_event.c
            q = select(e.task_id, e.detail).where(e.kind == EventKind.CHARGE_REFUSED.value)
            w = _window(e.at, since, None)
            if w is not None:
                q = q.where(w)
            for tid, detail in conn.execute(q):
                bal = detail.get("balance") if isinstance(detail, dict) else None
                if tid in refused and isinstance(bal, int) and not isinstance(bal, bool):
                    refused_balance[tid] = bal
    return History(since, until, tasks, chats, ledger, opening, refused_balance, catalog or default_catalog())
