"""Crash recovery: every task interrupted between steps brought to a consistent state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .. import limits, rules
from ..domain import ACTIVE, INTERRUPTED, TIMEOUT, EventKind, FailureClass, Task, TaskStatus, TurnClosed
from ..ports import Tx, UpstreamState
from .base import consume_key
from .chat import Chat
from .polling import Polling
from .submit import Submitting


@dataclass
class RecoveryReport:
    examined: int = 0
    actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return len(self.actions)


class Recovery(Submitting, Polling, Chat):
    def recover(self, grace_s: float = 0.0, limit: int = 100_000) -> RecoveryReport:
        """Bring every task interrupted between steps (and untouched for grace_s)
        to a consistent state. Idempotent: a second run finds nothing to do."""
        grace_s = limits.check("grace_s", grace_s, "recover: grace_s")
        report = RecoveryReport()
        cutoff = self._now() - timedelta(seconds=grace_s)
        stale = self._tx(lambda tx: tx.active_tasks_older_than(cutoff, limit))
        for task in stale:
            report.examined += 1
            action = self._recover_one(task)
            if action:
                report.actions.append({"task_id": task.id, "action": action})
        # A chat turn whose usage never came back holds its reservation: release it whole.
        for msg in self._tx(lambda tx: tx.reserved_messages_older_than(cutoff, limit)):
            report.examined += 1
            try:
                self.chat_turn_fail(msg.id, "interrupted: usage never reported, reservation released")
            except TurnClosed:
                continue  # settled (or failed) meanwhile by its own turn: nothing to release
            report.actions.append({"chat_message_id": msg.id, "action": "released the chat reservation"})
        return report

    def _recover_one(self, task: Task) -> str | None:
        if task.status == TaskStatus.GENERATING:
            overdue = (self._now() - (task.submitted_at or task.created_at)).total_seconds() >= self.policy.timeout_for(
                task.category
            )
            if task.provider in self.providers:
                status = self._upstream_status(task)
                settles = status.state == UpstreamState.FAILED or (
                    status.state == UpstreamState.SUCCEEDED and status.result_urls
                )
                if not (overdue or settles):
                    return None  # still running upstream: polling carries on; a re-check here would
                    #              spend the task's re-check backoff, so a second recover would differ
                after = self._check(task.id, EventKind.RECHECK, reason="recovery")
                return f"re-checked upstream: {after.status}" if after and after.status != task.status else None
            if overdue:
                self._tx(lambda tx: self._fail_interrupted(tx, task.id, TIMEOUT, "no result within the timeout"))
                return "failed: past the timeout with no provider client to ask"
            return None
        # WAITING: created, maybe charged, maybe submitted without the id stored.
        provider = self.providers.get(task.provider)
        charged = self._tx(lambda tx: tx.entry(consume_key(task.id))) is not None
        if provider is not None and charged:
            upstream = provider.find(rules.task_ref(task.id))
            if upstream:
                self._tx(lambda tx: self._adopt_upstream(tx, task.id, upstream))
                return "stored the upstream id found at the provider"
            parked = self._tx(lambda tx: tx.parked_upstream_for_ref(task.provider, rules.task_ref(task.id)))
            if parked:  # a signed callback for our reference: the provider has the job
                self._tx(lambda tx: self._adopt_upstream(tx, task.id, parked))
                return "stored the upstream id of a callback parked under this task's reference"
        if provider is not None and self.policy.recover_resubmit:
            if not charged and not self._tx(lambda tx: self._charge(tx, task.id)):
                return "charge refused: failed for credits"
            after = self._submit_upstream(task.id)
            return f"resumed: {after.status}"
        self._tx(
            lambda tx: self._fail_interrupted(
                tx, task.id, INTERRUPTED, "the task was interrupted before it reached the provider"
            )
        )
        return "failed: interrupted before submission" + (" (refunded)" if charged else "")

    def _adopt_upstream(self, tx: Tx, task_id: int, upstream_id: str) -> None:
        task = tx.get_task(task_id, for_update=True)
        if task and task.status == TaskStatus.WAITING:
            self._mark_generating(tx, task, upstream_id)
            self._event(tx, task_id, EventKind.RECOVERED, what="adopted upstream id")

    def _fail_interrupted(self, tx: Tx, task_id: int, code: str, message: str) -> None:
        task = tx.get_task(task_id, for_update=True)
        if task and task.status in ACTIVE:
            self._event(tx, task_id, EventKind.RECOVERED, what=message)
            self._finish_failed(tx, task, code, message, FailureClass.INFRASTRUCTURE, path="recovery")
