"""The simulation's run buffer: a MemoryStore that streams its rows out.

The runner keeps live state here and the batch writer (`writer.py`) empties
it: `drain_changes()` hands out the append-only rows created since the
previous drain, `rows_for()` a finished task with its ledger rows, and
`evict()` forgets finished tasks once they are written to the database,
keeping a bounded window of tombstones (see `evict`), so memory follows the
live tasks, not the length of the run.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rivya_core.domain import (
    TERMINAL,
    Account,
    ChatMessage,
    ChatSession,
    LedgerEntry,
    Notification,
    ProviderCallback,
    Task,
    TaskEvent,
    TaskEvicted,
)
from rivya_core.ports import PostResult
from rivya_core.stores.memory import MemoryStore
from rivya_core.stores.memory_tables import _copy
from rivya_core.stores.memory_tx import MemoryTx

# (counter name, store dict attribute): tables whose rows never change after insert
_APPEND_ONLY = (
    ("credit_ledger", "ledger"),
    ("task_event", "events"),
    ("notification", "notifications"),
    ("provider_callback", "callbacks"),
    ("chat_session", "sessions"),
)
TOMBSTONES = 10_000  # evicted tasks remembered; the oldest leave the window first


@dataclass
class Changes:
    """Rows created since the previous drain, each list in id order. Accounts
    are copies; the append-only rows are the stored rows themselves (nothing
    changes them after insert): read them, do not modify them."""

    accounts: list[Account] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    events: list[TaskEvent] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    callbacks: list[ProviderCallback] = field(default_factory=list)
    sessions: list[ChatSession] = field(default_factory=list)


@dataclass
class TaskRows:
    """A held task (a copy) and its ledger rows, for a writer settling it."""

    task: Task
    ledger: list[LedgerEntry]


@dataclass(frozen=True, slots=True)
class _Tomb:
    """What is remembered of an evicted task."""

    status: str
    provider: str
    upstream_task_id: str | None

    def error(self, task_id: int) -> TaskEvicted:
        return TaskEvicted(task_id, self.status, self.provider)


class StreamingTx(MemoryTx):
    """MemoryTx that knows evicted tasks: reading one or posting to its ledger raises TaskEvicted."""

    s: StreamingStore

    def get_task(self, task_id: int, *, for_update: bool = False) -> Task | None:
        s = self.s
        task = s.tasks.get(task_id)
        if task is not None:
            return _copy(task)
        tomb = s._tombs.get(task_id)
        if tomb is not None:
            raise tomb.error(task_id)
        return None

    def task_by_upstream(self, provider: str, upstream_task_id: str, *, for_update: bool = False) -> Task | None:
        s = self.s
        key = (provider, upstream_task_id)
        tid = s._upstream.get(key)
        if tid is None:
            tid = s._tomb_upstream.get(key)
        return self.get_task(tid) if tid is not None else None

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
        if task_id is not None and task_id in s._tombs and idempotency_key not in s._entry_key:
            raise s._tombs[task_id].error(task_id)
        return super().post(
            user_id,
            entry_type,
            amount,
            idempotency_key,
            at,
            task_id=task_id,
            chat_message_id=chat_message_id,
            note=note,
            support=support,
        )


class StreamingStore(MemoryStore):
    """A MemoryStore the batch writer drains and evicts from. Thread-safe."""

    def __init__(self, tombstones: int = TOMBSTONES) -> None:
        super().__init__()
        self._drained: dict[str, int] = defaultdict(int)  # per table: highest id handed out by a drain
        self._unheld: list[tuple[str, int]] = []  # drained rows nothing held links to
        self._tomb_limit = max(0, int(tombstones))
        self._tombs: dict[int, _Tomb] = {}
        self._tomb_upstream: dict[tuple[str, str], int] = {}
        self._tx = StreamingTx(self)

    def last_id(self, table: str) -> int:
        """The highest id handed out for `table` (e.g. "ai_task"), evicted rows included."""
        return self._next[table]

    def active_count(self) -> int:
        """Tasks in WAITING or GENERATING."""
        return len(self._active)

    def counts(self) -> dict[str, int]:
        """Rows held in memory per table, plus remembered tombstones."""
        with self._lock:
            held = {
                name: len(getattr(self, name))
                for name in (
                    "accounts",
                    "tasks",
                    "ledger",
                    "events",
                    "notifications",
                    "callbacks",
                    "sessions",
                    "messages",
                )
            }
            held["tombstones"] = len(self._tombs)
            return held

    def drain_changes(self) -> Changes:
        """Append-only rows and accounts created since the previous drain.
        Drained rows that no held task or message links to (grants, callbacks
        for unknown tasks, late rows of evicted tasks) leave at the next `evict`."""
        with self._lock:
            self._outside_work("drain_changes")
            out = Changes(accounts=[_copy(a) for a in self._since("account", self.accounts)])
            for counter, name in _APPEND_ONLY:
                rows = self._since(counter, getattr(self, name))
                setattr(out, name, rows)
                if name != "sessions":
                    self._unheld += [(name, r.id) for r in rows if not self._held_link(r)]
            return out

    def rows_for(self, task_ids: Iterable[int]) -> list[TaskRows]:
        """Each held task of `task_ids` (a copy) with its ledger rows; ids not held are skipped."""
        with self._lock:
            out = []
            for tid in task_ids:
                task = self.tasks.get(tid)
                if task is not None:
                    out.append(TaskRows(_copy(task), [self.ledger[e] for e in self._entries_by.get(("task", tid), ())]))
            return out

    def balances(self) -> dict[int, int]:
        """Every account's balance, by account id."""
        with self._lock:
            return {a.id: a.balance for a in self.accounts.values()}

    def held_tasks(self) -> list[Task]:
        """Copies of every task still in memory (live or finished and not evicted), in id order."""
        with self._lock:
            return [_copy(t) for t in self.tasks.values()]

    def held_messages(self) -> list[ChatMessage]:
        """Copies of every chat message still in memory, in id order."""
        with self._lock:
            return [_copy(m) for m in self.messages.values()]

    def evict(self, task_ids: Iterable[int] = (), message_ids: Iterable[int] = ()) -> int:
        """Forget finished tasks and settled chat messages that were written elsewhere.

        A task goes with its events, ledger rows, notifications, callbacks, its
        upstream and user index entries and its polling-heap entries; a message
        with its ledger rows tied to no task. Drained rows that nothing held
        links to go too.

        Kept, for the most recent `tombstones` evicted tasks (about 200 bytes
        each): id, provider, upstream id and terminal status. Reading such a
        task (`get_task`, `task_by_upstream`) raises `TaskEvicted` with them,
        never a hollow row (the full row is in the database), so a late
        callback is still a `duplicate` (not `unknown_task`); and any ledger
        post linked to the task raises `TaskEvicted`, so a replayed charge or
        refund cannot move money twice, without keeping the keys themselves.
        Webhook ids of evicted callbacks are forgotten: the terminal status
        makes repeats duplicates. Kept whatever happens: accounts and
        balances, chat sessions.

        Refuses (ValueError) a task that is not terminal or has rows not yet
        drained, and any call inside a unit of work. Returns the tasks evicted.
        """
        with self._lock:
            self._outside_work("evict")
            tasks = [self.tasks[t] for t in dict.fromkeys(task_ids) if t in self.tasks]
            for task in tasks:
                if task.status not in TERMINAL:
                    raise ValueError(f"task {task.id} is {task.status}; only finished tasks are evicted")
                if not self._drained_all(task.id):
                    raise ValueError(f"task {task.id} has rows not drained yet")
            for task in tasks:
                self._evict_task(task)
            for mid in message_ids:
                if self.messages.pop(mid, None) is not None:
                    for e in self._entries_by.pop(("msg", mid), ()):
                        if e in self.ledger and self.ledger[e].task_id is None:
                            self._drop_entry(e)
            self._release_unheld()
            if len(self._due) > 2 * len(self._active) + 1024:
                self._due = [(at, t) for at, t in self._due if t in self._active]
                heapq.heapify(self._due)
            return len(tasks)

    def _outside_work(self, what: str) -> None:
        if self._depth:
            raise RuntimeError(f"{what} inside a unit of work")

    def _since(self, counter: str, table: dict[int, Any]) -> list[Any]:
        mark, top = self._drained[counter], self._next[counter]
        self._drained[counter] = top
        return [table[i] for i in range(mark + 1, top + 1) if i in table]

    def _held_link(self, row: Any) -> bool:
        task_id = getattr(row, "task_id", None)
        if task_id is not None and task_id in self.tasks:
            return True
        msg_id = getattr(row, "chat_message_id", None)
        return msg_id is not None and msg_id in self.messages

    def _drained_all(self, task_id: int) -> bool:
        for counter, index in (
            ("task_event", self._task_events),
            ("notification", self._task_notes),
            ("provider_callback", self._task_cbs),
        ):
            ids = index.get(task_id)
            if ids and ids[-1] > self._drained[counter]:
                return False
        ids = self._entries_by.get(("task", task_id))
        return not ids or max(ids) <= self._drained["credit_ledger"]

    def _evict_task(self, task: Task) -> None:
        tid = task.id
        del self.tasks[tid]
        self._unindex_task(task)
        ids = self._user_tasks.get(task.user_id)
        if ids is not None:
            ids.remove(tid)
            if not ids:
                del self._user_tasks[task.user_id]
        for e in self._task_events.pop(tid, ()):
            self.events.pop(e, None)
        for n in self._task_notes.pop(tid, ()):
            note = self.notifications.pop(n, None)
            if note is not None and note.idempotency_key:
                self._note_key.pop(note.idempotency_key, None)
        for c in self._task_cbs.pop(tid, ()):
            cb = self.callbacks.pop(c, None)
            if cb is not None and cb.webhook_id:
                self._webhooks.discard((cb.provider, cb.webhook_id))
        for e in self._entries_by.pop(("task", tid), ()):
            self._drop_entry(e)
        self._bury(tid, _Tomb(task.status, task.provider, task.upstream_task_id))

    def _bury(self, tid: int, tomb: _Tomb) -> None:
        if not self._tomb_limit:
            return
        self._tombs[tid] = tomb
        if tomb.upstream_task_id:
            self._tomb_upstream[(tomb.provider, tomb.upstream_task_id)] = tid
        while len(self._tombs) > self._tomb_limit:
            old_id = next(iter(self._tombs))
            old = self._tombs.pop(old_id)
            if old.upstream_task_id and self._tomb_upstream.get((old.provider, old.upstream_task_id)) == old_id:
                del self._tomb_upstream[(old.provider, old.upstream_task_id)]

    def _drop_entry(self, entry_id: int) -> LedgerEntry | None:
        e = self.ledger.pop(entry_id, None)
        if e is not None:
            self._entry_key.pop(e.idempotency_key, None)
            for ref in (("task", e.task_id), ("msg", e.chat_message_id)):
                if ref[1] is not None:
                    self._unlink(self._entries_by, ref, entry_id)
        return e

    def _release_unheld(self) -> None:
        """Drop drained rows nothing held links to (checked again: a row's task may be held now)."""
        keep = []
        for name, rid in self._unheld:
            row = getattr(self, name).get(rid)
            if row is None:
                continue
            if self._held_link(row):
                keep.append((name, rid))  # its task or message leaves with its own eviction
                continue
            if name == "ledger":
                self._drop_entry(rid)
                continue
            del getattr(self, name)[rid]
            if name == "events":
                self._unlink(self._task_events, row.task_id, rid)
            elif name == "notifications":
                self._unlink(self._task_notes, row.task_id, rid)
                if row.idempotency_key:
                    self._note_key.pop(row.idempotency_key, None)
            elif name == "callbacks":
                self._unlink(self._task_cbs, row.task_id, rid)
                if row.webhook_id:
                    self._webhooks.discard((row.provider, row.webhook_id))
        self._unheld = keep

    @staticmethod
    def _unlink(index: dict[Any, list[int]], key: Any, rid: int) -> None:
        ids = index.get(key)
        if ids is not None:
            if rid in ids:
                ids.remove(rid)
            if not ids:
                del index[key]
