"""The in-memory Store: dicts of domain rows, for tests and fast simulation.

One re-entrant lock is held for a whole unit of work, so concurrent callers
see serial transactions. Every write records its inverse in an undo log; a unit
of work that raises is rolled back to where it started. Rows handed out are
copies, so callers cannot change the store behind its back.

Indexes: upstream id -> task, user -> tasks, idempotency keys, and a heap keyed
by next_check_at (lazily cleaned) so the polling sweep stays cheap with a
million tasks.

Streaming (the simulation's batch writer): `drain_changes()` hands out the
append-only rows created since the previous drain, `rows_for()` a finished
task with its ledger rows, and `evict()` forgets finished tasks once they are
written elsewhere, keeping a bounded window of tombstones (see `evict`), so
memory follows the live tasks, not the length of the run.
"""

from __future__ import annotations

import copy
import heapq
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from dataclasses import fields as dc_fields
from datetime import datetime
from typing import Any

from .domain import (
    ACTIVE,
    TASK_ENUM_FIELDS,
    TERMINAL,
    Account,
    ActionRefused,
    CallbackOutcome,
    ChatMessage,
    ChatSession,
    ChatStatus,
    InsufficientCredits,
    LedgerEntry,
    NotFound,
    Notification,
    ParkedCallback,
    ProviderCallback,
    Task,
    TaskEvent,
    TaskStatus,
    ValidationError,
    replayed_entry,
)
from .ports import PostResult, Snapshot

# A webhook id counts as seen once a callback carrying it was applied or deferred.
_SEEN_OUTCOMES = frozenset({CallbackOutcome.APPLIED, CallbackOutcome.DEFERRED})
_TASK_FIELDS = frozenset(f.name for f in dc_fields(Task))
_MESSAGE_FIELDS = frozenset(f.name for f in dc_fields(ChatMessage))


_CONTAINERS = (dict, list, tuple)
_ACTIVE_NAMES = frozenset(str(x) for x in ACTIVE)


def _clone(value: Any) -> Any:
    """A copy of a JSON-like value (much cheaper than copy.deepcopy); scalars
    are tested inline rather than by a call each."""
    if isinstance(value, dict):
        return {k: _clone(v) if isinstance(v, _CONTAINERS) else v for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clone(v) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


def _shallow(row: Any) -> Any:
    """copy.copy for the plain domain dataclasses, without the __reduce_ex__ round trip."""
    state = getattr(row, "__dict__", None)
    if state is None:
        return copy.copy(row)
    out = object.__new__(type(row))
    out.__dict__.update(state)
    return out


# The JSON-like fields of each row type (every other field holds a scalar).
_JSON_FIELDS: dict[type, tuple[str, ...]] = {Task: ("params", "result_urls"), TaskEvent: ("detail",)}


def _copy(row: Any) -> Any:
    """A detached copy: the dataclass and any JSON-like value inside it."""
    out = _shallow(row)
    fields = _JSON_FIELDS.get(row.__class__)
    if fields:
        state = out.__dict__
        for name in fields:
            value = state[name]
            if isinstance(value, (dict, list)):
                state[name] = _clone(value)
    return out


def _check_fields(given: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    if given.keys() <= allowed and "id" not in given:
        return
    unknown = sorted(set(given) - allowed - {"id"})
    if unknown or "id" in given:
        raise ValueError(f"cannot update {what} field(s): {', '.join(unknown or ['id'])}")


# (counter name, store dict attribute): tables whose rows never change after insert
_APPEND_ONLY = (("credit_ledger", "ledger"), ("task_event", "events"), ("notification", "notifications"),
                ("provider_callback", "callbacks"), ("chat_session", "sessions"))
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
    user_id: int
    status: str
    provider: str
    upstream_task_id: str | None
    created_at: datetime

    def task(self, task_id: int) -> Task:
        return Task(id=task_id, user_id=self.user_id, model="", category="", prompt="", params={},
                    status=self.status, billing_type="", reserved_credits=0, provider=self.provider,
                    created_at=self.created_at, upstream_task_id=self.upstream_task_id)


class _Unit:
    """One unit of work: holds the lock, rolls back its own writes when it raises.
    A plain context manager (not @contextmanager): one is entered per lifecycle step."""

    __slots__ = ("s", "mark")

    def __init__(self, store: MemoryStore):
        self.s = store

    def __enter__(self) -> MemoryTx:
        s = self.s
        s._lock.acquire()
        self.mark = len(s._undo)
        s._depth += 1
        return s._tx

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        s = self.s
        try:
            if exc_type is not None:
                undo = s._undo
                while len(undo) > self.mark:
                    undo.pop()()
        finally:
            s._depth -= 1
            if s._depth == 0:
                s._undo.clear()
            s._lock.release()
        return False


class MemoryStore:
    """Store protocol over dicts. Thread-safe; sequential ids from 1."""

    def __init__(self, tombstones: int = TOMBSTONES) -> None:
        self._lock = threading.RLock()
        self._undo: list[Callable[[], None]] = []
        self._depth = 0
        self._next: dict[str, int] = defaultdict(int)
        self.accounts: dict[int, Account] = {}
        self.tasks: dict[int, Task] = {}
        self.ledger: dict[int, LedgerEntry] = {}
        self.notifications: dict[int, Notification] = {}
        self.events: dict[int, TaskEvent] = {}
        self.callbacks: dict[int, ProviderCallback] = {}
        self.parked: dict[int, ParkedCallback] = {}
        self.sessions: dict[int, ChatSession] = {}
        self.messages: dict[int, ChatMessage] = {}
        # indexes
        self._email: dict[str, int] = {}
        self._upstream: dict[tuple[str, str], int] = {}
        self._user_tasks: dict[int, list[int]] = defaultdict(list)
        self._active: dict[int, None] = {}  # insertion-ordered set of WAITING/GENERATING ids
        self._user_active: dict[int, dict[int, None]] = {}  # the same, per user (duplicate checks)
        self._due: list[tuple[datetime, int]] = []  # heap of (next_check_at, task id), lazily cleaned
        self._entry_key: dict[str, int] = {}
        self._entries_by: dict[tuple[str, int], list[int]] = defaultdict(list)  # ("task"|"msg", id)
        self._note_key: dict[str, int] = {}
        self._task_notes: dict[int, list[int]] = defaultdict(list)
        self._task_events: dict[int, list[int]] = defaultdict(list)
        self._task_cbs: dict[int, list[int]] = defaultdict(list)
        self._webhooks: set[tuple[str, str]] = set()
        # streaming: drain marks, drained rows nothing held links to, evicted-task tombstones
        self._drained: dict[str, int] = defaultdict(int)
        self._unheld: list[tuple[str, int]] = []
        self._tomb_limit = max(0, int(tombstones))
        self._tombs: dict[int, _Tomb] = {}
        self._tomb_upstream: dict[tuple[str, str], int] = {}
        self._tx = MemoryTx(self)

    # --- Store protocol ---------------------------------------------------------

    def begin(self) -> _Unit:
        """A unit of work (re-entrant): `with store.begin() as tx: ...`."""
        return _Unit(self)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                accounts=[_copy(r) for r in self.accounts.values()],
                tasks=[_copy(r) for r in self.tasks.values()],
                ledger=[_copy(r) for r in self.ledger.values()],
                notifications=[_copy(r) for r in self.notifications.values()],
                events=[_copy(r) for r in self.events.values()],
                callbacks=[_copy(r) for r in self.callbacks.values()],
                sessions=[_copy(r) for r in self.sessions.values()],
                messages=[_copy(r) for r in self.messages.values()],
            )

    # --- streaming: drain, settle, evict ----------------------------------------

    def last_id(self, table: str) -> int:
        """The highest id handed out for `table` (e.g. "ai_task"), evicted rows included."""
        return self._next[table]

    def active_count(self) -> int:
        """Tasks in WAITING or GENERATING."""
        return len(self._active)

    def counts(self) -> dict[str, int]:
        """Rows held in memory per table, plus remembered tombstones."""
        with self._lock:
            held = {name: len(getattr(self, name)) for name in (
                "accounts", "tasks", "ledger", "events", "notifications", "callbacks", "sessions", "messages")}
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

        Kept, for the most recent `tombstones` evicted tasks (about 250 bytes
        each): id, user, provider, upstream id, terminal status and creation
        time. So a late callback is still a `duplicate` (not `unknown_task`);
        `get_task` returns the tombstone (model, prompt, params, results and
        later times blank: the full row is in the database); and any ledger
        post linked to the task is refused (`ActionRefused`, code
        `entry_evicted`), so a replayed charge or refund cannot move money
        twice, without keeping the keys themselves. Webhook ids of evicted
        callbacks are forgotten: the terminal status makes repeats duplicates.
        Kept whatever happens: accounts and balances, chat sessions.

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
        for counter, index in (("task_event", self._task_events), ("notification", self._task_notes),
                               ("provider_callback", self._task_cbs)):
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
        self._bury(tid, _Tomb(task.user_id, task.status, task.provider, task.upstream_task_id, task.created_at))

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

    # --- internals used by MemoryTx ---------------------------------------------

    def _drop_user_active(self, task: Task) -> None:
        ids = self._user_active.get(task.user_id)
        if ids is not None:
            ids.pop(task.id, None)
            if not ids:
                del self._user_active[task.user_id]

    def _new_id(self, table: str) -> int:
        self._next[table] += 1
        return self._next[table]

    def _add(self, table: dict[int, Any], row: Any, undo_extra: Callable[[], None] | None = None) -> None:
        table[row.id] = row

        def undo() -> None:
            table.pop(row.id, None)
            if undo_extra:
                undo_extra()

        self._undo.append(undo)

    def _index_task(self, task: Task) -> None:
        if task.status in ACTIVE:
            self._active[task.id] = None
            self._user_active.setdefault(task.user_id, {})[task.id] = None
        else:
            self._active.pop(task.id, None)
            self._drop_user_active(task)
        if task.status == TaskStatus.GENERATING and task.next_check_at is not None:
            heapq.heappush(self._due, (task.next_check_at, task.id))
        if task.upstream_task_id:
            self._upstream[(task.provider, task.upstream_task_id)] = task.id

    def _unindex_task(self, task: Task) -> None:
        self._active.pop(task.id, None)
        self._drop_user_active(task)
        if task.upstream_task_id and self._upstream.get((task.provider, task.upstream_task_id)) == task.id:
            del self._upstream[(task.provider, task.upstream_task_id)]


class MemoryTx:
    """The Tx protocol for MemoryStore; valid only inside `store.begin()`."""

    def __init__(self, store: MemoryStore):
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
        if task is not None:
            return _copy(task)
        tomb = self.s._tombs.get(task_id)
        return tomb.task(task_id) if tomb is not None else None

    def task_by_upstream(self, provider: str, upstream_task_id: str, *, for_update: bool = False) -> Task | None:
        key = (provider, upstream_task_id)
        tid = self.s._upstream.get(key)
        if tid is None:
            tid = self.s._tomb_upstream.get(key)
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
        for name, value in fields.items():
            typed = TASK_ENUM_FIELDS.get(name)  # status, category, failure_class: as their StrEnum members
            state[name] = _clone(value) if isinstance(value, _CONTAINERS) else \
                value if typed is None else typed.get(value, value)
        s._index_task(task)

        def undo() -> None:
            s._unindex_task(task)
            state.update(before)
            s._index_task(task)

        s._undo.append(undo)
        return True

    def tasks_due_for_check(self, now: datetime, limit: int) -> list[Task]:
        s = self.s
        heap, found, seen = s._due, [], set()
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

    def user_tasks(self, user_id: int, *, statuses: Iterable[str] | None = None,
                   since: datetime | None = None, limit: int = 100) -> list[Task]:
        s = self.s
        wanted = {str(x) for x in statuses} if statuses is not None else None
        if wanted is not None and wanted <= _ACTIVE_NAMES:  # only live tasks: not the user's whole history
            rows = [s.tasks[t] for t in s._user_active.get(user_id, ())]
        else:
            rows = [s.tasks[t] for t in s._user_tasks.get(user_id, ())]
        rows = [t for t in rows if (wanted is None or t.status in wanted) and (since is None or t.created_at >= since)]
        rows.sort(key=lambda t: (t.created_at, t.id), reverse=True)
        return [_copy(t) for t in rows[:limit]]

    # ledger
    def post(self, user_id: int, entry_type: str, amount: int, idempotency_key: str, at: datetime, *,
             task_id: int | None = None, chat_message_id: int | None = None, note: str | None = None,
             support: bool = False) -> PostResult:
        s = self.s
        existing = s._entry_key.get(idempotency_key)
        if existing is not None:
            return PostResult(_copy(replayed_entry(s.ledger[existing], user_id, entry_type, amount)), created=False)
        if task_id is not None and task_id in s._tombs:
            raise ActionRefused(f"task {task_id} was settled and evicted; its ledger takes no more entries",
                                code="entry_evicted")
        if amount == 0:
            raise ValueError("a ledger amount is never 0")
        acc = s.accounts.get(user_id)
        if acc is None:
            raise NotFound(f"account {user_id} does not exist")
        after = acc.balance + int(amount)
        if after < 0:
            # The data contract forbids a negative balance_after.
            raise InsufficientCredits(
                f"balance {acc.balance} cannot cover {-amount} credits (short by {-after})"
            )
        entry = LedgerEntry(id=s._new_id("credit_ledger"), user_id=user_id, entry_type=str(entry_type),
                            amount=int(amount), balance_after=after, idempotency_key=idempotency_key,
                            created_at=at, task_id=task_id, chat_message_id=chat_message_id, note=note,
                            support=bool(support))
        old_balance = acc.balance
        acc.balance = after
        s._entry_key[idempotency_key] = entry.id
        refs = [k for k in (("task", task_id), ("msg", chat_message_id)) if k[1] is not None]
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

    def message_entries(self, chat_message_id: int) -> list[LedgerEntry]:
        return [_copy(self.s.ledger[e]) for e in self.s._entries_by.get(("msg", chat_message_id), ())]

    def balance(self, user_id: int) -> int:
        acc = self.s.accounts.get(user_id)
        return acc.balance if acc else 0

    # timeline, notifications, callbacks
    def add_event(self, task_id: int, kind: str, detail: dict[str, Any], at: datetime) -> None:
        s = self.s
        eid = s._new_id("task_event")
        s.events[eid] = TaskEvent(id=eid, task_id=task_id, at=at, kind=str(kind),
                                  detail=_clone(detail if type(detail) is dict else dict(detail)))  # a new dict
        ids = s._task_events[task_id]
        ids.append(eid)

        def undo() -> None:  # the most frequent write: one closure, not two
            s.events.pop(eid, None)
            ids.remove(eid)

        s._undo.append(undo)

    def task_events(self, task_id: int) -> list[TaskEvent]:
        return [_copy(self.s.events[e]) for e in self.s._task_events.get(task_id, ())]

    def add_notification(self, user_id: int, kind: str, title: str, body: str, at: datetime, *,
                         task_id: int | None = None, idempotency_key: str | None = None) -> bool:
        s = self.s
        if idempotency_key is not None and idempotency_key in s._note_key:
            return False
        note = Notification(id=s._new_id("notification"), user_id=user_id, kind=str(kind), title=title,
                            body=body, created_at=at, task_id=task_id, idempotency_key=idempotency_key)
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

    def task_notifications(self, task_id: int) -> list[Notification]:
        return [_copy(self.s.notifications[n]) for n in self.s._task_notes.get(task_id, ())]

    def add_callback(self, cb: ProviderCallback) -> ProviderCallback:
        s = self.s
        row = _copy(cb)
        row.id = s._new_id("provider_callback")
        key = (row.provider, row.webhook_id) if row.webhook_id else None
        newly_seen = key is not None and key not in s._webhooks and row.outcome in _SEEN_OUTCOMES
        if newly_seen:
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

    def task_callbacks(self, task_id: int) -> list[ProviderCallback]:
        return [_copy(self.s.callbacks[c]) for c in self.s._task_cbs.get(task_id, ())]

    def settle_callback(self, callback_id: int, task_id: int, outcome: str, detail: str | None) -> None:
        s = self.s
        row = s.callbacks.get(callback_id)
        if row is None:
            return
        before = (row.task_id, row.outcome, row.detail)
        key = (row.provider, row.webhook_id) if row.webhook_id else None
        newly_seen = key is not None and key not in s._webhooks and outcome in _SEEN_OUTCOMES
        row.task_id, row.outcome, row.detail = task_id, str(outcome), detail
        if newly_seen:
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
        return next((p.upstream_task_id for p in self.s.parked.values() if p.provider == provider
                     and p.task_ref == task_ref and p.claimed_task_id is None), None)

    def claim_parked(self, provider: str, upstream_task_id: str, task_id: int, at: datetime) -> list[ParkedCallback]:
        s = self.s
        if not s.parked:
            return []
        found = [p for p in s.parked.values() if p.provider == provider and p.upstream_task_id == upstream_task_id
                 and p.claimed_task_id is None]
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


