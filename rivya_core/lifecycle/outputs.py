"""Outputs that outlive the provider: a success's outputs copied into our result store
(rivya_core.results) before the task becomes SUCCESS.

The copy runs outside any unit of work (`_copy_outputs`, `_copy_for_callback`: the network
never holds a row lock); the unit then records it (`_record_copy`: the provider's URLs on the
timeline as the `output_copy` event) and settles with our URLs, or, when the copy failed,
retries it on the re-check backoff or fails the task `output_copy_failed` (class
infrastructure) when it was refused or the copier's deadline has passed since the first failed
copy. A success that reaches `_apply_status` uncopied (a parked callback claimed inside a unit
of work) waits for the next check, due at once (finishing.Finishing._apply_status).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..domain import OUTPUT_COPY_FAILED, EventKind, FailureClass, Task, TaskEvicted
from ..ports import Tx, UpstreamState
from ..results import CopyError
from .finishing import Finishing
from .parsing import _Parsed


@dataclass(frozen=True)
class Copied:
    sources: list[str]  # the provider's URLs
    error: CopyError | None  # None: copied


class Outputs(Finishing):
    def _copy_outputs(self, task_id: int, status: Any) -> tuple[Any, Copied | None]:
        """Outside any unit of work: a success's outputs copied into the result store. The status
        carrying our URLs, and what happened (None: nothing to copy)."""
        if (
            self.results is None
            or status.state != UpstreamState.SUCCEEDED
            or not status.result_urls
            or self.results.owns_all(status.result_urls)
        ):
            return status, None
        sources = list(status.result_urls)
        try:
            ours = self.results.copy(task_id, sources)
        except CopyError as exc:
            return status, Copied(sources, exc)
        return replace(status, result_urls=tuple(ours)), Copied(sources, None)

    def _copy_for_callback(self, provider: str, parsed: _Parsed) -> tuple[_Parsed, Copied | None]:
        """A signed success callback's outputs copied when a running task holds its upstream id
        (a parked or repeated one is copied when, if ever, it applies)."""
        if self.results is None or parsed.state != UpstreamState.SUCCEEDED or not parsed.result_urls:
            return parsed, None
        try:
            task = self._tx(lambda tx: tx.task_by_upstream(provider, parsed.upstream_task_id))
        except TaskEvicted:
            return parsed, None
        if task is None or task.terminal:
            return parsed, None
        return self._copy_outputs(task.id, parsed)

    def _record_copy(self, tx: Tx, task: Task, copied: Copied, path: str) -> bool:
        """The copy on the timeline (the provider's URLs kept there); True when it failed and
        was handled here (retried on the re-check backoff, or failed past the deadline)."""
        if copied.error is None:
            self._event(
                tx, task.id, EventKind.OUTPUT_COPY, provider_urls=copied.sources, copied=len(copied.sources), path=path
            )
            return False
        exc = copied.error
        first = next(
            (e.at for e in tx.task_events(task.id) if e.kind == EventKind.OUTPUT_COPY and e.detail.get("error")), None
        )
        self._event(
            tx,
            task.id,
            EventKind.OUTPUT_COPY,
            provider_urls=copied.sources,
            error=exc.message,
            permanent=exc.permanent,
            path=path,
        )
        deadline_s = self.results.deadline_s if self.results is not None else 0.0
        if exc.permanent or (first is not None and (self._now() - first).total_seconds() >= deadline_s):
            self._finish_failed(
                tx,
                task,
                OUTPUT_COPY_FAILED,
                f"the outputs could not be copied: {exc.message}",
                FailureClass.INFRASTRUCTURE,
                path=path,
            )
        else:
            self._schedule_next_check(tx, task)
        return True
