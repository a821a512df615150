"""Re-processing a parked callback from the webhook delivery log.

    reprocess_callback(svc, callback_id, operator, reason) -> Reprocessed
        Apply a parked (or `unknown_task`) callback to the task that now holds its upstream id,
        through the lifecycle's own claim of parked callbacks (`_claim_parked`, `_route`, `_take`):
        every parked callback of that upstream id is applied, in arrival order, as when the task had
        stored its id. Idempotent: once its parked copy is claimed, a re-process is recorded as a
        duplicate on the task's timeline and changes nothing. Refused (ActionRefused,
        rules.ReprocessRefusal) for a callback that was never parked (applied, rejected, malformed:
        those are never replayed) and while no task holds the upstream id.

Its writes are stamped at the time of an operator's act on the task (`clock.act_time`, as the other
support actions are). A callback recorded as `unknown_task` before callbacks were parked has no parked copy: its stored body
(signature already verified when it arrived) is read again by the provider's parser and parked, then
claimed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import rules
from ..domain import ActionRefused, CallbackOutcome, EventKind, NotFound, ParkedCallback, ProviderCallback
from ..lifecycle import LifecycleService
from ..lifecycle.parsing import parse_callback, parse_with
from ..lifecycle.support import checked_operator
from ..rules import Refusal

ACTION = "reprocess_callback"


@dataclass
class Reprocessed:
    callback_id: int
    task_id: int
    outcome: str  # the callback's outcome after it (duplicate for a repeat)
    applied: list[tuple[int, str]] = field(default_factory=list)  # (callback id, outcome) claimed, arrival order
    text: str = ""


def reprocess_callback(svc: LifecycleService, callback_id: int, operator: str, reason: str) -> Reprocessed:
    """See the module doc. Raises ActionRefused, NotFound."""
    operator, reason = checked_operator(operator, reason)
    result = svc._tx(lambda tx: _reprocess(svc, tx, int(callback_id), operator, reason))
    if isinstance(result, Refusal):
        raise ActionRefused(result.text, reason=result.code)
    return result


def _reprocess(svc: LifecycleService, tx: Any, callback_id: int, operator: str, reason: str) -> Reprocessed | Refusal:
    cb = tx.get_callback(callback_id)
    if cb is None:
        raise NotFound(f"no provider callback {callback_id}")
    parked = tx.parked_of(callback_id)
    upstream = parked.upstream_task_id if parked is not None else cb.upstream_task_id
    task = None
    if upstream and (parked is not None or cb.outcome == CallbackOutcome.UNKNOWN_TASK):
        tx.lock_upstream(cb.provider, upstream)
        task = tx.task_by_upstream(cb.provider, upstream, for_update=True)
    claimed = parked is not None and parked.claimed_task_id is not None
    facts = rules.ReprocessFacts(str(cb.outcome), parked is not None, claimed, task is not None)
    code = rules.reprocess_refusal(facts)
    if code is not None:
        return Refusal(code, _refusal_text(code, cb, parked, upstream))
    if parked is not None and parked.claimed_task_id is not None:  # applied once already: a duplicate, nothing changes
        owner = parked.claimed_task_id
        svc = svc._acting(tx, owner)  # on the clock of an operator's act (clock.act_time)
        svc._event(
            tx,
            owner,
            EventKind.CALLBACK,
            webhook_id=cb.webhook_id,
            outcome=str(CallbackOutcome.DUPLICATE),
            state=parked.state,
            callback_id=cb.id,
            reprocessed=True,
        )
        said = (
            f"duplicate: callback #{cb.id} was already applied to this task at {parked.claimed_at:%Y-%m-%d %H:%M:%S} "
            f"UTC ({cb.outcome}); nothing changed"
        )
        svc._support_event(tx, owner, operator, ACTION, reason, said)
        return Reprocessed(cb.id, owner, str(CallbackOutcome.DUPLICATE), [], said)
    if task is None:  # reprocess_refusal refused this already: no task holds the upstream id
        code = rules.ReprocessRefusal.NO_TASK_YET
        return Refusal(code, _refusal_text(code, cb, parked, upstream))
    svc = svc._acting(tx, task.id)  # on the clock of an operator's act (clock.act_time)
    if parked is None:  # recorded as unknown_task before callbacks were parked: park it from its stored body
        got = _parked_from_body(svc, cb)
        if isinstance(got, Refusal):
            return got
        tx.park_callback(got)
    applied = svc._claim_parked(tx, task.id, cb.provider, upstream)
    outcome = next((o for i, o in applied if i == cb.id), str(tx.get_callback(cb.id).outcome))
    others = len(applied) - 1
    said = f"callback #{cb.id} re-processed for upstream id {upstream}: {outcome}" + (
        f", with {others} more parked callback(s) of that upstream id, in arrival order" if others > 0 else ""
    )
    svc._support_event(tx, task.id, operator, ACTION, reason, said)
    return Reprocessed(cb.id, task.id, outcome, applied, said)


def _parked_from_body(svc: LifecycleService, cb: ProviderCallback) -> ParkedCallback | Refusal:
    raw = (cb.body or "").encode("utf-8")
    fmt = getattr(svc.providers.get(cb.provider), "callbacks", None)
    parsed = parse_with(fmt, raw) if fmt else parse_callback(raw)
    if isinstance(parsed, str) or parsed.upstream_task_id != cb.upstream_task_id:
        why = parsed if isinstance(parsed, str) else "its body names another upstream id"
        code = rules.ReprocessRefusal.BODY_UNREADABLE
        return Refusal(code, f"callback #{cb.id}'s stored body cannot be read again ({why}); it stays as recorded")
    return ParkedCallback(
        id=0,
        callback_id=cb.id,
        provider=cb.provider,
        upstream_task_id=parsed.upstream_task_id,
        received_at=cb.received_at,
        state=str(parsed.state),
        webhook_id=cb.webhook_id,
        result_urls=list(parsed.result_urls) or None,
        error_code=parsed.error_code,
        error_message=parsed.error_message,
        failure_class=None if parsed.failure_class is None else str(parsed.failure_class),
    )


def _refusal_text(
    code: rules.ReprocessRefusal, cb: ProviderCallback, parked: ParkedCallback | None, upstream: str | None
) -> str:
    if code == rules.ReprocessRefusal.NOT_PARKED:
        return (
            f"callback #{cb.id} is {cb.outcome}, not parked: only a callback that waited for its task "
            "is re-processed (a rejected or malformed one never is)"
        )
    hint = ""
    if parked is not None and parked.task_ref:
        hint = (
            f"; its reference names {parked.task_ref}: once that task is stuck waiting, Re-check upstream "
            "(or `recover`) adopts this upstream id and applies the callback"
        )
    return (
        f"no task holds upstream id {upstream} at {cb.provider} yet: callback #{cb.id} stays parked and is "
        f"applied when a task takes that id{hint}"
    )
