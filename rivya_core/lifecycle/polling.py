"""Step 5b: polling due tasks and re-checking one, with the timeout and the no-URLs limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import rules
from ..domain import NO_RESULT_URLS, TIMEOUT, EventKind, FailureClass, Task, TaskStatus
from ..ports import ProviderError, Tx, UpstreamState, UpstreamStatus
from .outputs import Outputs


@dataclass
class PollReport:
    checked: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    still_running: int = 0


class Polling(Outputs):
    def poll(self, limit: int = 1000) -> PollReport:
        report = PollReport()
        due = self._tx(lambda tx: tx.tasks_due_for_check(self._now(), limit))
        for task in due:
            before = task.status
            after = self._check(task.id, EventKind.RECHECK if task.check_attempts else EventKind.POLL)
            report.checked += 1
            if after is None or after.status == before:
                report.still_running += 1
            elif after.status == TaskStatus.SUCCESS:
                report.succeeded += 1
            elif after.error_code == TIMEOUT:
                report.timed_out += 1
            else:
                report.failed += 1
        return report

    def recheck(self, task_id: int, reason: str = "recheck") -> Task:
        task = self.task(task_id)
        if task.status != TaskStatus.GENERATING:
            return task
        return self._check(task_id, EventKind.RECHECK, reason=reason) or self.task(task_id)

    def _check(self, task_id: int, kind: EventKind, reason: str | None = None) -> Task | None:
        task = self.task(task_id)
        if task.status != TaskStatus.GENERATING:
            return task
        status, fault = self._read_upstream(task)
        status, copied = self._copy_outputs(task_id, status)
        path = "polling" if kind == EventKind.POLL else "recheck"

        def step(tx: Tx) -> Task | None:
            current = tx.get_task(task_id, for_update=True)
            if current is None:
                return None
            if fault is not None:  # the read failed: on the timeline, then handled as "unknown"
                self._event(tx, task_id, EventKind.POLL_ERROR, error_kind=fault.kind, message=fault.message, path=path)
            detail: dict[str, Any] = {"state": status.state}
            if reason:
                detail["reason"] = reason
            if current.status != TaskStatus.GENERATING:  # lost a race with a callback: a recorded no-op
                self._event(tx, task_id, kind, **detail, result=f"no-op: task already {current.status}")
                return current
            self._event(tx, task_id, kind, **detail)
            if copied is not None and self._record_copy(tx, current, copied, path):
                return tx.get_task(task_id)
            if self._apply_status(tx, current, status, path=path):
                return tx.get_task(task_id)
            elapsed = (self._now() - (current.submitted_at or current.created_at)).total_seconds()
            limit = self.policy.timeout_for(current.category)
            if status.state == UpstreamState.SUCCEEDED and rules.rechecks_spent(current.check_attempts, self.policy):
                self._finish_failed(
                    tx,
                    current,
                    NO_RESULT_URLS,
                    "the provider reported success but never delivered result URLs",
                    FailureClass.PROVIDER,
                    path=path,
                )
            elif elapsed >= limit:
                self._finish_failed(
                    tx,
                    current,
                    TIMEOUT,
                    f"no result after {int(elapsed)} s (limit {int(limit)} s)",
                    FailureClass.INFRASTRUCTURE,
                    path=path,
                )
            else:
                self._schedule_next_check(tx, current)
            return tx.get_task(task_id)

        return self._tx(step)

    def _upstream_status(self, task: Task) -> UpstreamStatus:
        return self._read_upstream(task)[0]

    def _read_upstream(self, task: Task) -> tuple[UpstreamStatus, ProviderError | None]:
        """The provider's status of the task's job; a provider error reads as "unknown" and is
        returned beside it, so the caller can record it."""
        provider = self.providers.get(task.provider)
        if provider is None or not task.upstream_task_id:
            return UpstreamStatus(UpstreamState.UNKNOWN), None
        try:
            return provider.status(task.upstream_task_id), None
        except ProviderError as exc:
            return UpstreamStatus(UpstreamState.UNKNOWN), exc
