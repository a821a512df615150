"""Steps 6-7: settling a task SUCCESS or FAILED, refunding when the policy reverses the failure's
class, the outcome notification; the re-check schedule a deferred callback starts."""

from __future__ import annotations

from datetime import timedelta

from .. import rules, upstream_cancel
from ..domain import EntryType, EventKind, FailureClass, LedgerEntry, NotificationKind, Task, TaskStatus, sources_of
from ..ports import Tx, UpstreamState, UpstreamStatus
from .base import consume_key, notify_key, refund_key
from .parsing import _Parsed
from .reads import Reads


class Finishing(Reads):
    def _apply_status(self, tx: Tx, task: Task, status: UpstreamStatus | _Parsed, path: str) -> bool:
        """Finish a GENERATING task when what the provider says settles it (a failure, or
        success with URLs); True when it did. Anything else changes nothing here."""
        if status.run_s is not None and status.state in (UpstreamState.FAILED, UpstreamState.SUCCEEDED):
            tx.update_task(task.id, None, provider_run_s=status.run_s)  # what the provider bills (rivya_core.cost)
        if status.state == UpstreamState.FAILED:
            self._finish_failed(
                tx,
                task,
                status.error_code or "provider_failed",
                status.error_message or "the provider reported a failure",
                status.failure_class or FailureClass.PROVIDER,
                path=path,
            )
            return True
        if status.state == UpstreamState.SUCCEEDED and status.result_urls:
            if self.results is not None and not self.results.owns_all(status.result_urls):
                # not copied yet (a parked callback claimed here): never SUCCESS with the provider's URLs;
                # the next check, due now, copies them (lifecycle.outputs)
                self._event(
                    tx, task.id, EventKind.OUTPUT_COPY, provider_urls=list(status.result_urls), pending=True, path=path
                )
                tx.update_task(task.id, [TaskStatus.GENERATING], next_check_at=self._now())
                return True
            self._finish_success(tx, task, list(status.result_urls), path=path)
            return True
        return False

    def _defer(self, tx: Tx, task: Task) -> None:
        """An early callback (done, but no URLs yet): start the re-check backoff."""
        delay, attempts = rules.deferral(self.policy)
        tx.update_task(
            task.id,
            [TaskStatus.GENERATING],
            next_check_at=self._now() + timedelta(seconds=delay),
            check_attempts=attempts,
        )
        self._event(tx, task.id, EventKind.DEFERRED, path="callback", next_check_in_s=delay)

    def _schedule_next_check(self, tx: Tx, task: Task) -> None:
        """Deferred tasks follow the re-check backoff; then plain polling takes over."""
        delay, attempts = rules.next_check(task.check_attempts, self.policy)
        tx.update_task(
            task.id,
            [TaskStatus.GENERATING],
            next_check_at=self._now() + timedelta(seconds=delay),
            check_attempts=attempts,
        )

    def _finish_success(self, tx: Tx, task: Task, urls: list[str], path: str) -> None:
        now = self._now()
        if not urls:
            raise AssertionError("SUCCESS without result URLs")
        if not tx.update_task(
            task.id,
            sources_of(TaskStatus.SUCCESS),
            status=TaskStatus.SUCCESS,
            result_urls=urls,
            finished_at=now,
            settled_at=now,
            next_check_at=None,
        ):
            return
        self._event(tx, task.id, EventKind.SUCCEEDED, path=path, result_urls=len(urls))
        self._notify(
            tx,
            task,
            rules.outcome_notification(TaskStatus.SUCCESS, None),
            "Your generation is ready",
            f"{task.category.capitalize()} from {task.model} finished and is in your history.",
        )

    def _finish_failed(self, tx: Tx, task: Task, code: str, message: str, failure_class: str, path: str) -> None:
        now = self._now()
        if not tx.update_task(
            task.id,
            sources_of(TaskStatus.FAILED),
            status=TaskStatus.FAILED,
            error_code=code[:80],
            error_message=message[:2000],
            failure_class=str(failure_class),
            finished_at=now,
            settled_at=now,
            next_check_at=None,
        ):
            return
        self._event(tx, task.id, EventKind.FAILED, path=path, error_code=code, failure_class=str(failure_class))
        if upstream_cancel.gives_up(task, code, self.policy):
            upstream_cancel.defer(self._local, task, code, now)
        refund = self._refund_if_due(tx, task, failure_class)
        kind = rules.outcome_notification(TaskStatus.FAILED, code)
        if kind == NotificationKind.INSUFFICIENT_CREDITS:
            self._notify(
                tx,
                task,
                kind,
                "Not enough credits",
                f"{task.reserved_credits} credits are needed for {task.model}; nothing was charged.",
            )
        elif path == "support":  # support's words stay on the timeline: the user is told what happened
            charge = tx.entry(consume_key(task.id))
            self._notify(
                tx,
                task,
                kind,
                *rules.support_failure_notice(
                    task.category, task.model, -charge.amount if charge else 0, refund.amount if refund else 0
                ),
            )
        else:
            self._notify(tx, task, kind, "Your generation failed", f"{task.model}: {message[:300]}")

    def _refund_if_due(
        self, tx: Tx, task: Task, failure_class: str | None, *, support_note: str | None = None
    ) -> LedgerEntry | None:
        """Reverse a failed task's charge when the rules say so. `support_note`: a support action
        issues it (after refund_refusal allowed it); the row then carries support=True."""
        charge = tx.entry(consume_key(task.id))
        facts = rules.RefundFacts(TaskStatus.FAILED, failure_class, charged=charge is not None, refunded=False)
        refusal = rules.refund_refusal(facts, self.policy)
        if charge is None or refusal == rules.RefundRefusal.NEVER_CHARGED:
            return None
        if refusal == rules.RefundRefusal.POLICY_KEEPS and support_note is None:
            self._event(
                tx, task.id, EventKind.REFUND_SKIPPED, reason=f"policy keeps credits for {failure_class} failures"
            )
            return None
        res = tx.post(
            task.user_id,
            EntryType.REFUND,
            -charge.amount,
            refund_key(task.id),
            self._now(),
            task_id=task.id,
            chat_message_id=task.chat_message_id,
            support=support_note is not None,
            note=support_note or f"refund: {failure_class} failure after reservation",
        )
        if res.created:
            self._event(
                tx,
                task.id,
                EventKind.REFUNDED,
                amount=-charge.amount,
                reason="support" if support_note is not None else "policy",
            )
        return res.entry

    def _notify(self, tx: Tx, task: Task, kind: NotificationKind | None, title: str, body: str) -> None:
        """The task's one outcome notification (kind None: the outcome tells the user nothing)."""
        if kind is not None and tx.add_notification(
            task.user_id, kind, title, body, self._now(), task_id=task.id, idempotency_key=notify_key(task.id)
        ):
            self._event(tx, task.id, EventKind.NOTIFIED, notification=kind.value)
