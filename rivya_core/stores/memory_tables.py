"""The in-memory store's tables: dicts of domain rows, their indexes, the undo log of the unit of
work in progress, and the copies handed out (rows handed out are copies, so callers cannot change
the store behind its back). `MemoryTx` writes through them, `MemoryStore` holds them.

Indexes: upstream id -> task, user -> tasks, idempotency keys, and a heap keyed
by next_check_at (lazily cleaned) so the polling sweep stays cheap with a
million tasks.
"""

from __future__ import annotations

import copy
import heapq
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import fields as dc_fields
from datetime import datetime
from typing import Any

from ..domain import (
    ACTIVE,
    Account,
    Category,
    ChatMessage,
    ChatSession,
    FailureClass,
    LedgerEntry,
    Notification,
    ParkedCallback,
    ProviderCallback,
    Task,
    TaskEvent,
    TaskStatus,
)

_TASK_FIELDS = frozenset(f.name for f in dc_fields(Task))
_MESSAGE_FIELDS = frozenset(f.name for f in dc_fields(ChatMessage))


_CONTAINERS = (dict, list, tuple)
_ACTIVE_NAMES = frozenset(str(x) for x in ACTIVE)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _clone(value: Any) -> Any:
    """A copy of a JSON-like value (much cheaper than copy.deepcopy): a dict or list of
    plain scalars (the usual params, details and URL lists) is copied in one C call;
    otherwise scalars are tested inline rather than by a call each."""
    if isinstance(value, dict):
        if _SCALARS.issuperset(map(type, value.values())):
            return dict(value)
        return {k: _clone(v) if isinstance(v, _CONTAINERS) else v for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if _SCALARS.issuperset(map(type, value)):
            return list(value)
        return [_clone(v) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


def _shallow(row: Any) -> Any:
    """copy.copy for the plain domain dataclasses, without the __reduce_ex__ round trip."""
    state = getattr(row, "__dict__", None)
    if state is None:
        return copy.copy(row)
    out = object.__new__(row.__class__)
    object.__setattr__(out, "__dict__", state.copy())
    return out


# The JSON-like fields of each row type (every other field holds a scalar).
_JSON_FIELDS: dict[type, tuple[str, ...]] = {Task: ("params", "result_urls"), TaskEvent: ("detail",)}
# The task fields update_task does more with than store: JSON-like ones cloned (None), typed ones as their
# StrEnum members (status, category, failure_class: value -> member).
_TASK_TYPED: dict[str, dict[str, Any] | None] = {
    **dict.fromkeys(_JSON_FIELDS[Task]),
    **{
        name: {m.value: m for m in enum}
        for name, enum in (("status", TaskStatus), ("category", Category), ("failure_class", FailureClass))
    },
}


def _copy(row: Any) -> Any:
    """A detached copy: the dataclass and any JSON-like value inside it (`_shallow` inlined:
    about ten copies a task)."""
    state = getattr(row, "__dict__", None)
    if state is None:
        return copy.copy(row)
    cls = row.__class__
    out = object.__new__(cls)
    out.__dict__ = state = state.copy()  # the domain rows are plain (not frozen) dataclasses
    fields = _JSON_FIELDS.get(cls)
    if fields:
        for name in fields:
            value = state[name]
            cls = value.__class__
            if cls is dict:  # _clone's flat case inlined: a task's params, an event's detail
                state[name] = dict(value) if _SCALARS.issuperset(map(type, value.values())) else _clone(value)
            elif cls is list:
                state[name] = list(value) if _SCALARS.issuperset(map(type, value)) else _clone(value)
            elif isinstance(value, (dict, list)):
                state[name] = _clone(value)
    return out


def _check_fields(given: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    if given.keys() <= allowed and "id" not in given:
        return
    unknown = sorted(set(given) - allowed - {"id"})
    if unknown or "id" in given:
        raise ValueError(f"cannot update {what} field(s): {', '.join(unknown or ['id'])}")


class MemoryTables:
    """The rows and indexes of a MemoryStore; every write records its inverse in `_undo`."""

    def __init__(self) -> None:
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

    def _drop_user_active(self, task: Task) -> None:
        ids = self._user_active.get(task.user_id)
        if ids is not None:
            ids.pop(task.id, None)
            if not ids:
                del self._user_active[task.user_id]

    def _new_id(self, table: str) -> int:
        self._next[table] += 1
        return self._next[table]

    def _add(self, table: dict[int, Any], row: Any, undo_extra: Callable[[], object] | None = None) -> None:
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
