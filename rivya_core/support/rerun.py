"""Re-run a task for its user: support's "run it again for me", through the lifecycle's own submit path.

    support_rerun(svc, task_id, operator, reason, *, courtesy=False) -> Task   the new task
    rerun_refusal(svc, tx, task) -> Refusal | None                               why not now (rules.rerun_refusal)
    reruns_of(bind, task_id) -> list[dict]                                       the re-runs made from a task

The new task has the original's model, prompt and params, validated again (step 1), priced by the
policy in force, created WAITING with `ai_task.rerun_of` naming the original (step 2), charged before
submission (step 3) and submitted to the provider (step 4), exactly as `LifecycleService.submit` does.
Both tasks get a timeline event naming the other (`rerun` on the original, `rerun_of` on the new one),
and the original a `support_action` event naming the operator and the reason, in the unit of work that
creates the new task. With `courtesy`, the charge is given back at once as a support refund
(`credit_ledger.support` = true, under the task's one refund key, so a later refund by the policy is
the same entry, never a second one); the audit allows a support refund on a re-run in any state
(rules.courtesy_refund). What operators write stays internal: the ledger note and every
notification the user gets name neither the operator nor the reason.

Every write is stamped at the time of an operator's act on the original (`clock.act_time`, as the
other support actions are): the new task is created then, never before the original's latest event.

Refused (ActionRefused with a rules.RerunRefusal code, recorded on the original's timeline) while
the original or another run of the same model and prompt of that user is still waiting or
generating (the guide's "recheck before running again"), when the request no longer validates, and
where this environment has no client for the provider: there the new task could only fail at
submission and tell the user their generation failed, so nothing is created. On a simulation
database the recorded providers answer: they refuse new jobs, so the re-run fails at submission
and the policy refunds it, as the lifecycle does for any refused submission.

These are functions over a LifecycleService (as `bulk` is), using its unit-of-work steps.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .. import rules
from ..domain import ACTIVE, EntryType, EventKind, Task, ValidationError
from ..lifecycle import LifecycleService, consume_key, refund_key
from ..lifecycle.support import checked_operator
from ..read.queries import Bind, connect, rows
from ..rules import Refusal
from ..stores.schema import ai_task
from ..validation import NormalizedRequest, validate

ACTION = "rerun"
TWIN_SCAN = 1000  # running tasks of the user read to find a same-model, same-prompt run


def rerun_refusal(svc: LifecycleService, tx: Any, task: Task) -> Refusal | None:
    """Why support may not re-run `task` now, or None (rules.rerun_refusal over the store's facts)."""
    twins = tuple(
        t.id
        for t in tx.user_tasks(task.user_id, statuses=ACTIVE, limit=TWIN_SCAN)
        if t.id != task.id and t.model == task.model and t.prompt == task.prompt
    )
    facts = rules.RerunFacts(task.status, tuple(sorted(twins)), task.provider in svc.providers)
    code = rules.rerun_refusal(facts)
    return None if code is None else Refusal(code, rules.rerun_refusal_text(code, facts, task.provider))


def support_rerun(svc: LifecycleService, task_id: int, operator: str, reason: str, *, courtesy: bool = False) -> Task:
    """A new task with the original's request, linked to it both ways, submitted as `submit` does;
    returns it as it stands after submission (GENERATING, or FAILED as the lifecycle decided).
    Raises ActionRefused (rules.RerunRefusal, SupportRefusal), NotFound."""
    operator, reason = checked_operator(operator, reason)
    svc = svc._tx(lambda tx: svc._acting(tx, task_id))  # on the clock of an operator's act (clock.act_time)
    original = svc.task(task_id)
    try:
        req = validate(
            svc.catalog, {"model": original.model, "prompt": original.prompt, "params": dict(original.params or {})}
        )
    except ValidationError as exc:
        code = rules.RerunRefusal.REQUEST_INVALID
        said = rules.rerun_refusal_text(code, rules.RerunFacts(original.status, (), True))
        refusal = Refusal(code, f"{said} ({exc.code}: {exc.message})")
        svc._tx(lambda tx: svc._support_event(tx, task_id, operator, ACTION, reason, refusal))
        return svc._refused_or(refusal)
    credits = svc.policy.price(req.model, req.base_credits)
    new = svc._refused_or(svc._tx(lambda tx: _create(svc, tx, task_id, req, credits, operator, reason, courtesy)))
    if not svc._tx(lambda tx: _charge(svc, tx, new.id, courtesy)):  # 3. spend before submission
        return svc.task(new.id)
    return svc._submit_upstream(new.id, new)  # 4. provider job, GENERATING


def _create(
    svc: LifecycleService,
    tx: Any,
    task_id: int,
    req: NormalizedRequest,
    credits: int,
    operator: str,
    reason: str,
    courtesy: bool,
) -> Task | Refusal:
    """Step 2 for a re-run, with the refusal decided under the original's row lock (two operators
    re-running one task: the second finds the first's new task running and is refused)."""
    original = svc._task_in(tx, task_id, for_update=True)
    refusal = rerun_refusal(svc, tx, original)
    if refusal is not None:
        svc._support_event(tx, task_id, operator, ACTION, reason, refusal)
        return refusal
    new = svc._create(tx, original.user_id, req, credits, None, rerun_of=original.id)
    svc._event(tx, new.id, EventKind.RERUN_OF, original_task_id=original.id, courtesy=courtesy)
    svc._event(tx, original.id, EventKind.RERUN, rerun_task_id=new.id, courtesy=courtesy)
    svc._support_event(
        tx,
        task_id,
        operator,
        ACTION,
        reason,
        f"re-run as task #{new.id}" + (" (courtesy: its charge refunded at once)" if courtesy else ""),
    )
    return new


def _charge(svc: LifecycleService, tx: Any, task_id: int, courtesy: bool) -> bool:
    """Step 3, and for a courtesy re-run the charge given back in the same unit of work."""
    if not svc._charge(tx, task_id):
        return False
    if courtesy:
        task = tx.get_task(task_id)
        charge = tx.entry(consume_key(task_id))
        res = tx.post(
            task.user_id,
            EntryType.REFUND,
            -charge.amount,
            refund_key(task_id),
            svc._now(),
            task_id=task_id,
            chat_message_id=task.chat_message_id,
            support=True,
            note=f"courtesy re-run of task #{task.rerun_of}: charge refunded by support",
        )
        if res.created:
            svc._event(tx, task_id, EventKind.REFUNDED, amount=-charge.amount, reason="courtesy")
    return True


def reruns_of(bind: Bind, task_id: int) -> list[dict[str, Any]]:
    """The tasks re-run from `task_id`, oldest first (id, status, created_at)."""
    t = ai_task.c
    with connect(bind) as conn:
        return rows(
            conn.execute(
                select(t.id, t.status, t.created_at, t.reserved_credits)
                .where(t.rerun_of == int(task_id))
                .order_by(t.id)
            )
        )


def describe_rerun(svc: LifecycleService, original_id: int, task: Task) -> dict[str, Any]:
    """What support is told after a re-run (the CLI and the inspector say the same): the new task, where
    it stands, and what happened to the credits. {"task_id", "rerun_of", "status", "charged", "refunded",
    "courtesy", "text"}."""
    entries = svc._tx(lambda tx: tx.task_entries(task.id))
    charged = -sum(e.amount for e in entries if e.entry_type == EntryType.CONSUME)
    refunds = [e for e in entries if e.entry_type == EntryType.REFUND]
    refunded = sum(e.amount for e in refunds)
    courtesy = rules.courtesy_refund(bool(refunds) and all(e.support for e in refunds), task.rerun_of is not None)
    head = f"task #{task.id}, a re-run of task #{original_id}"
    if task.error_code == "insufficient_credits":
        text = (
            f"{head}, failed for credits ({task.error_message}): nothing was charged, and the user was "
            "told they need more credits"
        )
    elif task.status == "FAILED":
        money = (
            f"its {charged} credits were refunded" + (" at once (courtesy)" if courtesy else " by policy")
            if refunded
            else f"its {charged} credits were kept under the policy"
            if charged
            else "nothing was charged"
        )
        text = f"{head}, failed ({task.error_code}: {task.error_message}); {money}"
    else:
        money = f"charged {charged} credits" + (", refunded at once (courtesy)" if courtesy else " by the policy")
        where = f" at {task.provider} (upstream id {task.upstream_task_id})" if task.upstream_task_id else ""
        text = f"{head}, is {task.status}{where}; {money}"
    return {
        "task_id": task.id,
        "rerun_of": original_id,
        "status": str(task.status),
        "charged": charged,
        "refunded": refunded,
        "courtesy": courtesy,
        "text": text[0].upper() + text[1:] + ".",
    }
