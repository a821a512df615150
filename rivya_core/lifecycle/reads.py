"""Reading one task or a balance through the Store port."""

from __future__ import annotations

from .. import limits
from ..domain import NotFound, Task
from ..ports import Tx
from .base import LifecycleBase


class Reads(LifecycleBase):
    def task(self, task_id: int) -> Task:
        return self._tx(lambda tx: self._task_in(tx, task_id))

    @staticmethod
    def _task_in(tx: Tx, task_id: int, for_update: bool = False) -> Task:
        task = tx.get_task(task_id, for_update=for_update) if limits.LIMITS["id"].ok(task_id) else None
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        return task

    def balance(self, user_id: int) -> int:
        return self._tx(lambda tx: tx.balance(user_id))
