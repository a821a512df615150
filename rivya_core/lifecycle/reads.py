"""Reading one task or a balance through the Store port."""

from __future__ import annotations

from .. import limits
from ..domain import ChatMessage, ChatSession, NotFound, Task
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

    @staticmethod
    def _message_in(tx: Tx, message_id: int, for_update: bool = False) -> ChatMessage:
        msg = tx.get_message(message_id, for_update=for_update) if limits.LIMITS["id"].ok(message_id) else None
        if msg is None:
            raise NotFound(f"no chat message {message_id!r}")
        return msg

    @staticmethod
    def _session_in(tx: Tx, session_id: int) -> ChatSession:
        session = tx.get_session(session_id) if limits.LIMITS["id"].ok(session_id) else None
        if session is None:
            raise NotFound(f"no chat session {session_id}")
        return session

    def balance(self, user_id: int) -> int:
        return self._tx(lambda tx: tx.balance(user_id))
