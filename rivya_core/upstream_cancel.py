"""Stop paying for work we gave up on: upstream cancel.

When the service fails a task while its upstream job may still run — the hard timeout of polling
(`timeout`), support's mark failed (`marked_failed`, alone or in a bulk incident action) — it asks
the provider to stop the job (`Provider.cancel`: Replicate `POST /v1/predictions/{id}/cancel`, fal
`PUT .../requests/{id}/cancel`), after the failure is committed, and records the answer on the
timeline as an `upstream_cancel` event: {"answer": CancelAnswer, "detail": the provider's words,
"upstream_task_id", "reason": the failure's code}. The failure never waits for, nor depends on,
the answer: a provider that cannot be reached is recorded as `error` and the task stays failed
and refunded as the policy says.

A success callback that arrives after such a failure never undoes it: the task is terminal, so the
callback is recorded as a duplicate, with the detail LATE_SUCCESS; the checklist then tells support
that the user was refunded (or why not) and the output arrived late.

Replicate submissions also carry a `Cancel-After` deadline (`cancel_after_s`: the category's hard
timeout), so a job whose cancel request is lost still stops upstream when we would have given up.

The policy's `upstream_cancel` (default true) turns both off, so `compare` can price the
difference on the same draws.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .domain import MARKED_FAILED, TIMEOUT, Task, TaskStatus
from .policy import BillingPolicy
from .ports import CancelAnswer, ProviderError, UpstreamCancel

# failure codes that mean "we gave up on a job that may still run upstream"
GIVE_UP_CODES = frozenset({TIMEOUT, MARKED_FAILED})
LATE_SUCCESS = "late success: the task had already failed; the failure stands"
EVENT = "upstream_cancel"


def gives_up(task: Task, code: str, policy: BillingPolicy) -> bool:
    """True when failing `task` with `code` abandons an upstream job the provider may still run."""
    return bool(policy.upstream_cancel and task.upstream_task_id and code in GIVE_UP_CODES)


def cancel_after_s(policy: BillingPolicy, category: str) -> float | None:
    """The deadline a submission carries (seconds after it), or None when the policy does not cancel."""
    return policy.timeout_for(category) if policy.upstream_cancel else None


def cancel_after_header(seconds: float) -> str:
    """A Cancel-After header value: whole seconds, Go duration style ("900s")."""
    return f"{max(1, math.ceil(seconds))}s"


def arm(providers: Any, policy: BillingPolicy, catalog: Any) -> None:
    """Give each provider client that sends a deadline (a `cancel_after` attribute, e.g. the
    Replicate client) the rule: model id -> seconds (the model's category's timeout), or None."""

    def seconds(model_id: str) -> float | None:
        spec = catalog.get(model_id)
        return cancel_after_s(policy, spec.category) if spec is not None else None

    for p in providers:
        if hasattr(p, "cancel_after") and getattr(p, "cancel_after", None) is None:
            p.cancel_after = seconds


def defer(local: Any, task: Task, code: str, at: datetime) -> None:
    """Remember, for the unit of work running on this thread (`local.cancels`, which the service
    resets per attempt), to cancel this task's job once the unit commits. `at`: the failure's time,
    which the answer's event carries too (an operator's act runs on its own clock: the timeline
    stays in order)."""
    if local.cancels is None:
        local.cancels = []
    local.cancels.append((task.id, task.provider, task.upstream_task_id, code, at))


def ask(provider: Any, upstream_task_id: str) -> UpstreamCancel:
    """The provider's answer to a cancel, never an exception."""
    cancel = getattr(provider, "cancel", None)
    if provider is None or cancel is None:
        return UpstreamCancel(CancelAnswer.UNSUPPORTED, "this provider client cannot cancel")
    try:
        answer = cancel(upstream_task_id)
    except ProviderError as exc:
        return UpstreamCancel(CancelAnswer.ERROR, exc.message[:300])
    if isinstance(answer, UpstreamCancel):
        return answer
    return UpstreamCancel(CancelAnswer.CANCELED if answer else CancelAnswer.ERROR, f"answered {answer!r}"[:300])


def send(svc: Any, jobs: list[tuple[int, str, str, str, datetime]]) -> None:
    """Ask each provider to stop each job, then record each answer on its task's timeline."""
    answers = [
        (task_id, upstream_id, code, at, ask(svc.providers.get(provider), upstream_id))
        for task_id, provider, upstream_id, code, at in jobs
    ]

    def step(tx: Any) -> None:
        for task_id, upstream_id, code, at, a in answers:
            detail: dict[str, Any] = {
                "answer": str(a.answer),
                "detail": a.detail,
                "upstream_task_id": upstream_id,
                "reason": code,
            }
            if a.run_s is not None:
                detail["run_s"] = a.run_s
            tx.add_event(task_id, EVENT, detail, at)

    svc._tx(step)


def late_detail(task: Task, state: str) -> str | None:
    """Why a callback for a finished task is a duplicate, when it is a success after our failure."""
    if task.status == TaskStatus.FAILED and state == "succeeded":
        return LATE_SUCCESS
    return None


def story(events: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """From a task's timeline rows: its upstream_cancel event (the last) and the success callbacks
    recorded after it failed (late deliveries)."""
    cancel = None
    late = []
    failed = False
    for e in events:
        kind, detail = e.get("kind"), e.get("detail") or {}
        if kind == "failed":
            failed = True
        elif kind == EVENT:
            cancel = e
        elif (
            kind == "callback"
            and failed
            and detail.get("state") == "succeeded"
            and detail.get("outcome") == "duplicate"
        ):
            late.append(e)
    return cancel, late


__all__ = [
    "GIVE_UP_CODES",
    "LATE_SUCCESS",
    "EVENT",
    "gives_up",
    "cancel_after_s",
    "cancel_after_header",
    "arm",
    "defer",
    "ask",
    "send",
    "late_detail",
    "story",
]
