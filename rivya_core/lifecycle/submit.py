"""Steps 1-4: validate, create the task WAITING, charge before submission, submit to the provider."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .. import rules
from ..domain import (
    ACTIVE,
    INSUFFICIENT_CREDITS,
    Category,
    EntryType,
    EventKind,
    FailureClass,
    InsufficientCredits,
    NotFound,
    Task,
    TaskStatus,
    ValidationError,
    sources_of,
)
from ..ports import ProviderError, ProviderFault, Tx
from ..validation import NormalizedRequest, validate
from .base import consume_key
from .callbacks import Callbacks


def _run_of(task: Task) -> rules.Run:
    return rules.Run(task.id, task.model, task.prompt, task.reserved_credits, task.created_at)


class Submitting(Callbacks):
    def submit(self, user_id: int, request: Any, *, chat_message_id: int | None = None) -> Task:
        req = validate(self.catalog, request)  # 1. validate (raises, writes nothing)
        credits = self.policy.price(req.model, req.base_credits)
        task = self._tx(lambda tx: self._create(tx, user_id, req, credits, chat_message_id))  # 2. ai_task WAITING
        if not self._tx(lambda tx: self._charge(tx, task.id)):  # 3. spend before submission
            return self.task(task.id)
        return self._submit_upstream(task.id, task)  # 4. provider job, GENERATING

    def _heavier_duplicate(self, tx: Tx, user_id: int, req: NormalizedRequest, credits: int) -> Task | None:
        """A running task of this user with the same prompt that this one outweighs; raises when
        the policy blocks such a run (before anything is written)."""
        now = self._now()
        running = tx.user_tasks(
            user_id, statuses=ACTIVE, since=now - timedelta(seconds=self.policy.duplicate_window_s), limit=50
        )
        dup = None
        if running:  # most submissions: no running task of this user in the window
            new = rules.Run(0, req.model, req.prompt, credits, now)
            dup = next((t for t in running if rules.heavier_duplicate(new, _run_of(t), self.policy)), None)
        if dup is not None and self.policy.duplicate_runs == "block":
            raise ValidationError(
                f"task {dup.id} with the same prompt is still running; wait for it before a heavier duplicate run",
                code="duplicate_run",
            )
        return dup

    def _create(
        self,
        tx: Tx,
        user_id: int,
        req: NormalizedRequest,
        credits: int,
        chat_message_id: int | None,
        rerun_of: int | None = None,
    ) -> Task:
        if tx.get_account(user_id) is None:
            raise NotFound(f"no account {user_id}")
        duplicate = self._heavier_duplicate(tx, user_id, req, credits)  # may refuse: nothing written yet
        task = tx.insert_task(
            Task(
                id=0,
                user_id=user_id,
                model=req.model,
                category=Category(req.category),
                prompt=req.prompt,
                params=dict(req.params),
                status=TaskStatus.WAITING,
                billing_type=req.billing_type,
                reserved_credits=credits,
                provider=req.provider,
                created_at=self._now(),
                chat_message_id=chat_message_id,
                rerun_of=rerun_of,
            )
        )
        self._event(tx, task.id, EventKind.CREATED, model=req.model, credits=credits, billing_type=req.billing_type)
        if duplicate is not None:
            self._event(tx, task.id, EventKind.DUPLICATE_WARNING, running_task_id=duplicate.id)
        return task

    def _charge(self, tx: Tx, task_id: int) -> bool:
        """Spend the task's credits. False when the task ended here (shortfall)."""
        task = tx.get_task(task_id, for_update=True)
        if task is None or task.status != TaskStatus.WAITING:
            return False
        if tx.entry(consume_key(task_id)) is not None:
            return True
        try:
            res = tx.post(
                task.user_id,
                EntryType.CONSUME,
                -task.reserved_credits,
                consume_key(task_id),
                self._now(),
                task_id=task_id,
                chat_message_id=task.chat_message_id,
            )
        except InsufficientCredits:
            self._event(
                tx, task_id, EventKind.CHARGE_REFUSED, needed=task.reserved_credits, balance=tx.balance(task.user_id)
            )
            self._finish_failed(
                tx,
                task,
                INSUFFICIENT_CREDITS,
                f"{task.reserved_credits} credits needed, {tx.balance(task.user_id)} available",
                FailureClass.BILLING,
                path="charge",
            )
            return False
        self._event(tx, task_id, EventKind.CHARGED, amount=task.reserved_credits, balance_after=res.entry.balance_after)
        return True

    def _submit_upstream(self, task_id: int, task: Task | None = None) -> Task:
        """`task`: the row as created, when the caller has it (the fields sent upstream never change)."""
        task = task if task is not None else self.task(task_id)
        provider = self.providers.get(task.provider)
        error: ProviderError | None = None
        upstream_id: str | None = None
        if provider is None:
            error = ProviderError(ProviderFault.ERROR, f"no client for provider {task.provider!r} in this environment")
        else:
            for _ in range(1 + self.policy.submit_retries):
                try:
                    upstream_id = provider.submit(rules.task_ref(task.id), task.model, task.prompt, task.params)
                    error = None
                    break
                except ProviderError as exc:
                    error = exc

        def step(tx: Tx) -> Task:
            current = self._task_in(tx, task_id, for_update=True)
            if current.status != TaskStatus.WAITING:
                return current
            if upstream_id is None:
                fault = error or ProviderError(ProviderFault.ERROR, "the provider gave no job id")
                self._event(tx, task_id, EventKind.SUBMIT_FAILED, fault=fault.kind, message=fault.message)
                self._finish_failed(
                    tx, current, fault.code, fault.message, rules.submit_failure_class(fault.kind), path="submit"
                )
            else:
                self._mark_generating(tx, current, upstream_id)
            return self._task_in(tx, task_id)

        return self._tx(step)

    def _mark_generating(self, tx: Tx, task: Task, upstream_id: str) -> None:
        now = self._now()
        first_check = rules.first_check_in(task.category, self.callbacks_enabled, self.policy)
        tx.update_task(
            task.id,
            sources_of(TaskStatus.GENERATING),
            status=TaskStatus.GENERATING,
            upstream_task_id=upstream_id,
            submitted_at=now,
            next_check_at=now + timedelta(seconds=first_check),
            check_attempts=0,
        )
        self._event(tx, task.id, EventKind.SUBMITTED, upstream_task_id=upstream_id, provider=task.provider)
        self._claim_parked(tx, task.id, task.provider, upstream_id)
