"""The in-memory Store: dicts of domain rows, for tests and fast simulation.

One re-entrant lock is held for a whole unit of work, so concurrent callers
see serial transactions. Every write records its inverse in an undo log; a unit
of work that raises is rolled back to where it started. Rows handed out are
copies, so callers cannot change the store behind its back.

The rows, their indexes and the copies handed out are in `memory_tables`, the Tx port
over them in `memory_tx`.

The simulation's run buffer (`simulations.buffer.StreamingStore`) extends this
store: it hands new rows to the batch writer and forgets finished tasks.
"""

from __future__ import annotations

from typing import Any

from ..ports import Snapshot
from .memory_tables import MemoryTables, _copy
from .memory_tx import MemoryTx


class _Unit:
    """The store's units of work: holds the lock, rolls back a unit's own writes when it raises.
    A plain context manager (not @contextmanager), and one object per store, entered once per
    unit (nested units push their undo mark on `marks`, under the lock): a lifecycle step enters
    one, four a task, so none is built per step."""

    __slots__ = ("s", "marks")

    def __init__(self, store: MemoryStore):
        self.s = store
        self.marks: list[int] = []  # the undo log's length when each open unit began, innermost last

    def __enter__(self) -> MemoryTx:
        s = self.s
        s._lock.acquire()
        self.marks.append(len(s._undo))
        s._depth += 1
        return s._tx

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        s = self.s
        try:
            mark = self.marks.pop()
            if exc_type is not None:
                undo = s._undo
                while len(undo) > mark:
                    undo.pop()()
        finally:
            s._depth -= 1
            if s._depth == 0:
                s._undo.clear()
            s._lock.release()
        return False


class MemoryStore(MemoryTables):
    """Store protocol over dicts. Thread-safe; sequential ids from 1."""

    def __init__(self) -> None:
        super().__init__()
        self._tx = MemoryTx(self)
        self._unit = _Unit(self)

    # --- Store protocol ---------------------------------------------------------

    def begin(self) -> _Unit:
        """A unit of work (re-entrant): `with store.begin() as tx: ...`."""
        return self._unit

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
