"""The Tx port over a MemoryStore's tables: one method per port operation, each write undoable."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..domain import (
    WEBHOOK_SEEN_OUTCOMES,
    Account,
    CallbackOutcome,
    ChatMessage,
    ChatSession,
    ChatStatus,
    LedgerEntry,
    NotFound,
    Notification,
    ParkedCallback,
    ProviderCallback,
    Task,
    TaskEvent,
    TaskStatus,
    ValidationError,
    balance_after,
    replayed_entry,
)
from ..ports import PostResult
from .memory_tables import (
    _ACTIVE_NAMES,
    _CONTAINERS,
    _MESSAGE_FIELDS,
    _SCALARS,
    _TASK_FIELDS,
    _TASK_TYPED,
    MemoryTables,
    _check_fields,
    _clone,
    _copy,
    _shallow,
)


class MemoryTx:
    """The Tx protocol for MemoryStore; valid only inside `store.begin()`."""

    def __init__(self, store: MemoryTables):
        self.s = store

    # accounts
    def add_account(self, email: str, name: str, at: datetime) -> Account:
        s = self.s
        if email in s._email:
            raise ValidationError(f"an account with email {email!r} already exists", code="account_exists")
        acc = Account(id=s._new_id("account"), email=email, name=name, created_at=at, balance=0)
        s._email[email] = acc.id
        s._add(s.accounts, acc, lambda: s._email.pop(email, None))
        return _copy(acc)

    def get_account(self, user_id: int) -> Account | None:
        acc = self.s.accounts.get(user_id)
        return _copy(acc) if acc else None

    def account_by_email(self, email: str) -> Account | None:
        uid = self.s._email.get(email)
        return self.get_account(uid) if uid is not None else None

    # tasks
    def insert_task(self, task: Task) -> Task:
        s = self.s
        row = _copy(task)
        if not row.id:
            row.id = s._new_id("ai_task")
        elif row.id in s.tasks:
            raise ValueError(f"task {row.id} exists")
        else:
            s._next["ai_task"] = max(s._next["ai_task"], row.id)
        s._user_tasks[row.user_id].append(row.id)
        s._index_task(row)

        def unindex() -> None:
            s._unindex_task(row)
            s._user_tasks[row.user_id].remove(row.id)

        s._add(s.tasks, row, unindex)
        return _copy(row)

    def get_task(self, task_id: int, *, for_update: bool = False) -> Task | None:
        task = self.s.tasks.get(task_id)
        return _copy(task) if task is not None else None

    def task_by_upstream(self, provider: str, upstream_task_id: str, *, for_update: bool = False) -> Task | None:
        tid = self.s._upstream.get((provider, upstream_task_id))
        return self.get_task(tid) if tid is not None else None

    def update_task(self, task_id: int, expect_status: Iterable[str] | None = None, **fields: Any) -> bool:
        _check_fields(fields, _TASK_FIELDS, "task")
        s = self.s
        task = s.tasks.get(task_id)
        if task is None:
            return False
        if expect_status is not None and task.status not in expect_status:  # str-valued: StrEnum or str
            return False
        state = task.__dict__
        before = {name: state[name] for name in fields}
        s._unindex_task(task)
        state.update(fields)  # scalars as given; then the few fields that need more (one or two a call)
        for name in _TASK_TYPED.keys() & fields.keys():
            value, typed = fields[name], _TASK_TYPED[name]
            state[name] = (
                _clone(value) if isinstance(value, _CONTAINERS) else value if typed is None else typed.get(value, value)
            )
        s._index_task(task)

        def undo() -> None:
            s._unindex_task(task)
            state.update(before)
            s._index_task(task)

        s._undo.append(undo)
        return True

    def tasks_due_for_check(self, now: datetime, limit: int) -> list[Task]:
        s = self.s
        heap, seen = s._due, set()
        found: list[tuple[datetime, int]] = []
        while heap and heap[0][0] <= now and len(found) < limit:
            at, tid = heapq.heappop(heap)
            task = s.tasks.get(tid)
            if tid in seen or task is None or task.status != TaskStatus.GENERATING or task.next_check_at != at:
                continue  # stale entry: the task moved on since it was pushed
            seen.add(tid)
            found.append((at, tid))
        for item in found:
            heapq.heappush(heap, item)
        return [_copy(s.tasks[tid]) for _, tid in found]

    def active_tasks_older_than(self, cutoff: datetime, limit: int) -> list[Task]:
        s = self.s
        rows = [s.tasks[t] for t in s._active if s.tasks[t].created_at < cutoff]
        rows.sort(key=lambda t: (t.created_at, t.id))
        return [_copy(t) for t in rows[:limit]]

    def user_tasks(
        self, user_id: int, *, statuses: Iterable[str] | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[Task]:
        s = self.s
        wanted = {str(x) for x in statuses} if statuses is not None else None
        if wanted is not None and wanted <= _ACTIVE_NAMES:  # only live tasks: not the user's whole history
            live = s._user_active.get(user_id)
            if not live:  # the duplicate check of most submissions: nothing running
                return []
            rows = [s.tasks[t] for t in live]
        else:
            rows = [s.tasks[t] for t in s._user_tasks.get(user_id, ())]
        rows = [t for t in rows if (wanted is None or t.status in wanted) and (since is None or t.created_at >= since)]
        rows.sort(key=lambda t: (t.created_at, t.id), reverse=True)
        return [_copy(t) for t in rows[:limit]]

    # ledger
    def post(
        self,
        user_id: int,
        entry_type: str,
        amount: int,
        idempotency_key: str,
        at: datetime,
        *,
        task_id: int | None = None,
        chat_message_id: int | None = None,
        note: str | None = None,
        support: bool = False,
    ) -> PostResult:
        s = self.s
        existing = s._entry_key.get(idempotency_key)
        if existing is not None:
            return PostResult(_copy(replayed_entry(s.ledger[existing], user_id, entry_type, amount)), created=False)
        if amount == 0:
            raise ValueError("a ledger amount is never 0")
        acc = s.accounts.get(user_id)
        if acc is None:
            raise NotFound(f"account {user_id} does not exist")
        after = balance_after(acc.balance, amount)
        entry = LedgerEntry(
            id=s._new_id("credit_ledger"),
            user_id=user_id,
            entry_type=str(entry_type),
            amount=int(amount),
            balance_after=after,
            idempotency_key=idempotency_key,
            created_at=at,
            task_id=task_id,
            chat_message_id=chat_message_id,
            note=note,
            support=bool(support),
        )
        old_balance = acc.balance
        acc.balance = after
        s._entry_key[idempotency_key] = entry.id
        # the rows this entry belongs to (no comprehension: one or two entries a task)
        refs = [("task", task_id)] if task_id is not None else []
        if chat_message_id is not None:
            refs.append(("msg", chat_message_id))
        for ref in refs:
            s._entries_by[ref].append(entry.id)

        def undo() -> None:
            acc.balance = old_balance
            s._entry_key.pop(idempotency_key, None)
            for ref in refs:
                s._entries_by[ref].remove(entry.id)

        s._add(s.ledger, entry, undo)
        return PostResult(_copy(entry), created=True)

    def entry(self, idempotency_key: str) -> LedgerEntry | None:
        eid = self.s._entry_key.get(idempotency_key)
        return _copy(self.s.ledger[eid]) if eid is not None else None

    def task_entries(self, task_id: int) -> list[LedgerEntry]:
        return [_copy(self.s.ledger[e]) for e in self.s._entries_by.get(("task", task_id), ())]

    def balance(self, user_id: int) -> int:
        acc = self.s.accounts.get(user_id)
        return acc.balance if acc else 0

    # timeline, notifications, callbacks
    def add_event(self, task_id: int, kind: str, detail: dict[str, Any], at: datetime) -> None:
        s = self.s
        eid = s._next["task_event"] = s._next["task_event"] + 1  # _new_id inlined: six events a task
        # a new dict: the usual flat dict copied inline (six events a task), anything else by _clone
        if detail.__class__ is dict and _SCALARS.issuperset(map(type, detail.values())):
            detail = dict(detail)
        else:
            detail = _clone(detail if detail.__class__ is dict else dict(detail))
        s.events[eid] = TaskEvent(eid, task_id, at, kind if kind.__class__ is str else str(kind), detail)
        ids = s._task_events[task_id]
        ids.append(eid)

        def undo() -> None:  # the most frequent write: one closure, not two
            s.events.pop(eid, None)
            ids.remove(eid)

        s._undo.append(undo)

    def task_events(self, task_id: int) -> list[TaskEvent]:
        return [_copy(self.s.events[e]) for e in self.s._task_events.get(task_id, ())]

    def add_notification(
        self,
        user_id: int,
        kind: str,
        title: str,
        body: str,
        at: datetime,
        *,
        task_id: int | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        s = self.s
        if idempotency_key is not None and idempotency_key in s._note_key:
            return False
        note = Notification(
            id=s._new_id("notification"),
            user_id=user_id,
            kind=str(kind),
            title=title,
            body=body,
            created_at=at,
            task_id=task_id,
            idempotency_key=idempotency_key,
        )
        if idempotency_key is not None:
            s._note_key[idempotency_key] = note.id
        if task_id is not None:
            s._task_notes[task_id].append(note.id)

        def undo() -> None:
            if idempotency_key is not None:
                s._note_key.pop(idempotency_key, None)
            if task_id is not None:
                s._task_notes[task_id].remove(note.id)

        s._add(s.notifications, note, undo)
        return True

    def add_callback(self, cb: ProviderCallback) -> ProviderCallback:
        s = self.s
        row = _copy(cb)
        row.id = s._new_id("provider_callback")
        key = (row.provider, row.webhook_id) if row.webhook_id else None
        newly_seen = key is not None and key not in s._webhooks and row.outcome in WEBHOOK_SEEN_OUTCOMES
        if key is not None and newly_seen:
            s._webhooks.add(key)
        if row.task_id is not None:
            s._task_cbs[row.task_id].append(row.id)

        def undo() -> None:
            if newly_seen:
                s._webhooks.discard(key)
            if row.task_id is not None:
                s._task_cbs[row.task_id].remove(row.id)

        s._add(s.callbacks, row, undo)
        return _copy(row)

    def add_callback_unless_seen(self, cb: ProviderCallback, seen_detail: str) -> ProviderCallback:
        if cb.webhook_id and self.webhook_seen(cb.provider, cb.webhook_id):
            cb = replace(cb, outcome=CallbackOutcome.DUPLICATE, detail=seen_detail)
        return self.add_callback(cb)

    def webhook_seen(self, provider: str, webhook_id: str) -> bool:
        return (provider, webhook_id) in self.s._webhooks

    def get_callback(self, callback_id: int) -> ProviderCallback | None:
        row = self.s.callbacks.get(callback_id)
        return _copy(row) if row else None

    def parked_of(self, callback_id: int) -> ParkedCallback | None:
        row = next((p for p in self.s.parked.values() if p.callback_id == callback_id), None)
        return _copy(row) if row else None

    def settle_callback(self, callback_id: int, task_id: int, outcome: str, detail: str | None) -> None:
        s = self.s
        row = s.callbacks.get(callback_id)
        if row is None:
            return
        before = (row.task_id, row.outcome, row.detail)
        key = (row.provider, row.webhook_id) if row.webhook_id else None
        newly_seen = key is not None and key not in s._webhooks and outcome in WEBHOOK_SEEN_OUTCOMES
        row.task_id, row.outcome, row.detail = task_id, str(outcome), detail
        if key is not None and newly_seen:
            s._webhooks.add(key)
        linked = before[0] != task_id
        if linked:
            s._task_cbs[task_id].append(callback_id)

        def undo() -> None:
            row.task_id, row.outcome, row.detail = before
            if newly_seen:
                s._webhooks.discard(key)
            if linked:
                s._task_cbs[task_id].remove(callback_id)

        s._undo.append(undo)

    def lock_upstream(self, provider: str, upstream_task_id: str) -> None:
        """Units of work are serialised already."""

    def park_callback(self, parked: ParkedCallback) -> ParkedCallback:
        row = _copy(parked)
        row.id = self.s._new_id("parked_callback")
        self.s._add(self.s.parked, row)
        return _copy(row)

    def parked_upstream_for_ref(self, provider: str, task_ref: str) -> str | None:
        return next(
            (
                p.upstream_task_id
                for p in self.s.parked.values()
                if p.provider == provider and p.task_ref == task_ref and p.claimed_task_id is None
            ),
            None,
        )

    def claim_parked(self, provider: str, upstream_task_id: str, task_id: int, at: datetime) -> list[ParkedCallback]:
        s = self.s
        if not s.parked:
            return []
        found = [
            p
            for p in s.parked.values()
            if p.provider == provider and p.upstream_task_id == upstream_task_id and p.claimed_task_id is None
        ]
        for p in found:
            p.claimed_task_id, p.claimed_at = task_id, at

        def undo() -> None:
            for p in found:
                p.claimed_task_id, p.claimed_at = None, None

        s._undo.append(undo)
        return [_copy(p) for p in found]

    # chat
    def add_session(self, user_id: int, model: str, title: str, at: datetime) -> ChatSession:
        s = self.s
        row = ChatSession(id=s._new_id("chat_session"), user_id=user_id, model=model, title=title, created_at=at)
        s._add(s.sessions, row)
        return _copy(row)

    def get_session(self, session_id: int) -> ChatSession | None:
        row = self.s.sessions.get(session_id)
        return _copy(row) if row else None

    def add_message(self, msg: ChatMessage) -> ChatMessage:
        s = self.s
        row = _copy(msg)
        row.id = s._new_id("chat_message")
        s._add(s.messages, row)
        return _copy(row)

    def get_message(self, message_id: int, *, for_update: bool = False) -> ChatMessage | None:
        row = self.s.messages.get(message_id)
        return _copy(row) if row else None

    def reserved_messages_older_than(self, cutoff: datetime, limit: int) -> list[ChatMessage]:
        rows = [m for m in self.s.messages.values() if m.status == ChatStatus.RESERVED and m.created_at < cutoff]
        rows.sort(key=lambda m: (m.created_at, m.id))
        return [_copy(m) for m in rows[:limit]]

    def update_message(self, message_id: int, expect_status: Iterable[str] | None = None, **fields: Any) -> bool:
        _check_fields(fields, _MESSAGE_FIELDS, "chat message")
        msg = self.s.messages.get(message_id)
        if msg is None:
            raise NotFound(f"chat message {message_id} does not exist")
        if expect_status is not None and msg.status not in {str(s) for s in expect_status}:
            return False
        before = _shallow(msg)
        for name, value in fields.items():
            setattr(msg, name, value)

        def undo() -> None:
            for name in fields:
                setattr(msg, name, getattr(before, name))

        self.s._undo.append(undo)
        return True
