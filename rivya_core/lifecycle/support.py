"""Support actions (refund, re-check, mark failed), their refusals and their timeline events, on
the clock of an operator's act."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Self

from .. import rules
from ..clock import ManualClock, act_time
from ..domain import (
    MARKED_FAILED,
    ActionRefused,
    EventKind,
    LedgerEntry,
    SupportAction,
    Task,
    TaskStatus,
    ValidationError,
)
from ..ports import Tx
from ..rules import Refusal, SupportRefusal
from .base import consume_key, refund_key
from .recovery import Recovery


def checked_operator(operator: Any, reason: Any) -> tuple[str, str]:
    if not isinstance(operator, str) or not operator.strip():
        raise ActionRefused("a support action needs the operator's name", reason=SupportRefusal.NO_OPERATOR)
    if not isinstance(reason, str) or not reason.strip():
        raise ActionRefused("a support action needs a reason", reason=SupportRefusal.NO_REASON)
    return operator.strip()[:100], reason.strip()[:500]


class Support(Recovery):
    def support_refund(self, task_id: int, operator: str, reason: str, *, incident_id: int | None = None) -> Task:
        operator, reason = checked_operator(operator, reason)
        return self._refused_or(
            self._tx(lambda tx: self._acting(tx, task_id)._refund_step(tx, task_id, operator, reason, incident_id))
        )

    def _refund_step(self, tx: Tx, task_id: int, operator: str, reason: str, incident_id: int | None) -> Task | Refusal:
        task = self._task_in(tx, task_id, for_update=True)
        refusal = self.refund_refusal(tx, task)
        if refusal:
            self._support_event(tx, task_id, operator, SupportAction.REFUND.event_name, reason, refusal, incident_id)
            return refusal
        self._refund_if_due(tx, task, task.failure_class, support_note=rules.SUPPORT_REFUND_NOTE)
        self._support_event(tx, task_id, operator, SupportAction.REFUND.event_name, reason, "refunded", incident_id)
        return self._task_in(tx, task_id)

    def support(
        self, action: SupportAction | str, task_id: int, operator: str, reason: str, *, incident_id: int | None = None
    ) -> Task:
        """Run one support action on a task: the one dispatch of support actions (the inspector,
        the CLI and bulk incidents call it). ValidationError for an unknown action; ActionRefused
        with the refusal's code when the action may not run now."""
        run = {
            SupportAction.RECHECK: self.support_recheck,
            SupportAction.REFUND: self.support_refund,
            SupportAction.MARK_FAILED: self.support_mark_failed,
        }[SupportAction.parse(action)]
        return run(task_id, operator, reason, incident_id=incident_id)

    def support_refusal(self, action: SupportAction | str, task: Task, charged: bool, refunded: bool) -> Refusal | None:
        """Why `action` may not run on the task now, or None when it may, over facts already read
        (whether the task was charged, refunded): the form bulk dry runs use for thousands of tasks."""
        act = SupportAction.parse(action)
        if act is SupportAction.REFUND:
            return self.refund_refusal_for(task, charged, refunded)
        if act is SupportAction.MARK_FAILED:
            return self.mark_failed_refusal(task)
        return self.recheck_refusal(task)

    def support_many(
        self,
        action: SupportAction | str,
        task_ids: list[int],
        operator: str,
        reason: str,
        *,
        incident_id: int | None = None,
    ) -> list[tuple[int, Task | Refusal]]:
        """`refund` or `mark-failed` on several tasks in one unit of work (a bulk incident's chunk):
        the very steps, refusals and events of support_refund / support_mark_failed, one commit.
        Returns (task id, the task after, or the refusal) per task."""
        operator, reason = checked_operator(operator, reason)
        steps = {SupportAction.REFUND: type(self)._refund_step, SupportAction.MARK_FAILED: type(self)._mark_failed_step}
        act = SupportAction.parse(action)
        if act not in steps:
            raise ValidationError(
                f"{act} runs one task at a time (support), not in a batch", code="support_action_unknown"
            )
        step = steps[act]
        ids = list(task_ids)
        return self._tx(lambda tx: [(i, step(self._acting(tx, i), tx, i, operator, reason, incident_id)) for i in ids])

    def act_time(self, latest: datetime | None = None) -> datetime:
        """When an operator's act done now is recorded (clock.act_time at the judging clock)."""
        return act_time(self.judge_clock.now(), latest)

    def _acting(self, tx: Tx, task_id: int) -> Self:
        """This service on the clock of an operator's act on the task (clock.act_time): the judging
        clock, never before the task's latest event, so everything the act writes (its events, a
        refund, a notification) keeps the task's timeline in order. The task's row is locked first:
        no other write to the task lands between this read and the act."""
        self._task_in(tx, task_id, for_update=True)
        acting = copy.copy(self)
        acting.clock = ManualClock(self.act_time(max((e.at for e in tx.task_events(task_id)), default=None)))
        return acting

    def refund_refusal(self, tx: Tx, task: Task) -> Refusal | None:
        """Why a refund of this task is not due, or None when it is."""
        charge = tx.entry(consume_key(task.id))
        return self.refund_refusal_for(task, charge is not None, tx.entry(refund_key(task.id)) is not None)

    def refund_refusal_for(self, task: Task, charged: bool, refunded: bool) -> Refusal | None:
        """refund_refusal over facts already read (whether the task was charged, refunded):
        the form bulk dry runs use for thousands of tasks at once."""
        facts = rules.RefundFacts(task.status, task.failure_class, charged, refunded)
        code = rules.refund_refusal(facts, self.policy)
        return None if code is None else Refusal(code, rules.refund_refusal_text(code, facts, self.policy))

    def credits_outcome(self, task: Task) -> str:
        """What happened to the task's credits, in the operator's words (rules.credits_outcome)."""

        def read(tx: Tx) -> tuple[LedgerEntry | None, LedgerEntry | None]:
            return tx.entry(consume_key(task.id)), tx.entry(refund_key(task.id))

        charge, refund = self._tx(read)
        facts = rules.RefundFacts(task.status, task.failure_class, charge is not None, refund is not None)
        return rules.credits_outcome(
            facts, -charge.amount if charge else 0, refund.amount if refund else 0, self.policy
        )

    def _stuck_facts(self, task: Task) -> rules.StuckFacts:
        """The task's age judged at judge_clock (the same moment the pages and the checklist judge it at)."""
        age = (self.judge_clock.now() - (task.submitted_at or task.created_at)).total_seconds()
        return rules.StuckFacts(task.status, age, self.policy.stuck_for(task.category))

    def recheck_refusal(self, task: Task) -> Refusal | None:
        """Why support cannot re-check this task upstream, or None when it can (rules.recheck_refusal).
        A WAITING task is re-checked once it is stuck: the provider is asked for a job under the
        task's reference, as `recover` does for one task."""
        facts = self._stuck_facts(task)
        code = rules.recheck_refusal(facts, task.provider in self.providers)
        return (
            None
            if code is None
            else Refusal(code, rules.stuck_refusal_text(code, facts, "are re-checked", task.provider))
        )

    def mark_failed_refusal(self, task: Task) -> Refusal | None:
        """Why support cannot mark this task failed now, or None when it is stuck (rules.mark_failed_refusal)."""
        facts = self._stuck_facts(task)
        code = rules.mark_failed_refusal(facts)
        return None if code is None else Refusal(code, rules.stuck_refusal_text(code, facts, "can be marked failed"))

    def support_recheck(self, task_id: int, operator: str, reason: str, *, incident_id: int | None = None) -> Task:
        operator, reason = checked_operator(operator, reason)
        me = self._tx(lambda tx: self._acting(tx, task_id))
        task = me.task(task_id)
        refusal = me.recheck_refusal(task)
        found = None
        if refusal is None and task.status == TaskStatus.WAITING:  # interrupted before the provider answered
            found = me._recover_one(task)
            task = me.task(task_id)
        elif refusal is None:
            task = me._check(task_id, EventKind.RECHECK, reason=f"support: {operator}") or me.task(task_id)
        result = refusal or (f"upstream checked; task is {task.status}" + (f" ({found})" if found else ""))
        me._tx(
            lambda tx: me._support_event(
                tx, task_id, operator, SupportAction.RECHECK.event_name, reason, result, incident_id
            )
        )
        return self._refused_or(refusal or task)

    def support_mark_failed(self, task_id: int, operator: str, reason: str, *, incident_id: int | None = None) -> Task:
        operator, reason = checked_operator(operator, reason)
        return self._refused_or(
            self._tx(lambda tx: self._acting(tx, task_id)._mark_failed_step(tx, task_id, operator, reason, incident_id))
        )

    def _mark_failed_step(
        self, tx: Tx, task_id: int, operator: str, reason: str, incident_id: int | None
    ) -> Task | Refusal:
        task = self._task_in(tx, task_id, for_update=True)
        refusal = self.mark_failed_refusal(task)
        if refusal:
            self._support_event(
                tx, task_id, operator, SupportAction.MARK_FAILED.event_name, reason, refusal, incident_id
            )
            return refusal
        self._finish_failed(
            tx, task, MARKED_FAILED, rules.MARKED_FAILED_MESSAGE, rules.MARKED_FAILED_CLASS, path="support"
        )
        self._support_event(
            tx, task_id, operator, SupportAction.MARK_FAILED.event_name, reason, "marked failed", incident_id
        )
        return self._task_in(tx, task_id)

    def _support_event(
        self,
        tx: Tx,
        task_id: int,
        operator: str,
        action: str,
        reason: str,
        result: str | Refusal,
        incident_id: int | None = None,
    ) -> None:
        """detail: operator, action, reason, result (a sentence); a refused action adds `refusal`, its code."""
        extra: dict[str, Any] = {} if incident_id is None else {"incident": int(incident_id)}
        if isinstance(result, Refusal):
            extra["refusal"] = str(result.code)
            result = f"refused: {result.text}"
        self._event(
            tx,
            task_id,
            EventKind.SUPPORT_ACTION,
            operator=operator,
            action=action,
            reason=reason,
            result=result,
            **extra,
        )

    @staticmethod
    def _refused_or(result: Task | Refusal) -> Task:
        if isinstance(result, Refusal):
            raise ActionRefused(result.text, reason=result.code)
        return result
