"""The guide's "Recheck Before Running Again" signals for a user: the same prompt failing, tasks
in progress past the stuck age, credits consumed without output, heavier duplicate runs.
`diagnose` adds them to a task's checklist."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, select

from .. import rules
from ..domain import EntryType, TaskStatus
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..stores.schema import ai_task, credit_ledger
from .queries import ACTIVE_STATES, Bind, connect, resolve_now, rows


@dataclass
class Signal:
    kind: str
    message: str
    evidence: list[dict[str, Any]] = field(default_factory=list)


def _cap(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _stuck_cutoff(policy: BillingPolicy, now: datetime):
    per = {c: now - timedelta(seconds=policy.stuck_for(c)) for c in policy.stuck_after_s}
    default = now - timedelta(seconds=policy.stuck_for("\0"))
    return case(per, value=ai_task.c.category, else_=default) if per else literal(default)


_SIG_COLS = (
    ai_task.c.id.label("task_id"),
    ai_task.c.model,
    ai_task.c.status,
    ai_task.c.reserved_credits,
    ai_task.c.error_code,
    ai_task.c.failure_class,
    ai_task.c.created_at,
    ai_task.c.submitted_at,
)


def recheck_signals(
    bind: Bind,
    user_id: int,
    policy: BillingPolicy = DEFAULT_POLICY,
    now: datetime | None = None,
    prompt: str | None = None,
    model: str | None = None,
) -> list[Signal]:
    """The guide's reasons to recheck before running again, for one user (optionally one prompt/model)."""
    at = resolve_now(bind, now)
    t = ai_task.c
    mine = t.user_id == user_id
    same = and_(mine, t.prompt == prompt) if prompt is not None else mine
    if model is not None:
        same = and_(same, t.model == model)
    started = func.coalesce(t.submitted_at, t.created_at)
    too_long = and_(t.status.in_(ACTIVE_STATES), started < _stuck_cutoff(policy, at))
    out: list[Signal] = []
    with connect(bind) as conn:
        fails = conn.execute(
            select(t.prompt, func.count().label("n"))
            .where(same, t.status == TaskStatus.FAILED)
            .group_by(t.prompt)
            .having(func.count() >= 2)
            .order_by(func.count().desc())
            .limit(5)
        )
        for p, n in fails.all():
            ev = rows(
                conn.execute(
                    select(*_SIG_COLS)
                    .where(mine, t.prompt == p, t.status == TaskStatus.FAILED)
                    .order_by(t.id.desc())
                    .limit(10)
                )
            )
            out.append(Signal("same_prompt_failing", f"The same prompt failed {n} times: {p[:80]!r}.", ev))
        stuck = rows(conn.execute(select(*_SIG_COLS).where(mine, too_long).order_by(t.id).limit(20)))
        if stuck:
            out.append(
                Signal(
                    "in_progress_too_long",
                    f"{_cap(len(stuck), 'task')} in progress past the stuck "
                    "threshold: " + ", ".join(f"#{r['task_id']}" for r in stuck) + ".",
                    stuck,
                )
            )
        has = lambda et: exists().where(credit_ledger.c.task_id == t.id, credit_ledger.c.entry_type == et)  # noqa: E731
        lost = rows(
            conn.execute(
                select(*_SIG_COLS)
                .where(
                    mine,
                    t.status != TaskStatus.SUCCESS,
                    has(EntryType.CONSUME),
                    ~has(EntryType.REFUND),
                    (t.status == TaskStatus.FAILED) | too_long,
                )
                .order_by(t.id)
                .limit(20)
            )
        )
        if lost:
            out.append(
                Signal(
                    "credits_without_output",
                    f"Credits consumed without output or refund on "
                    f"{_cap(len(lost), 'task')}: " + ", ".join(f"#{r['task_id']}" for r in lost) + ".",
                    lost,
                )
            )
        active = rows(
            conn.execute(select(*_SIG_COLS, t.prompt).where(same, t.status.in_(ACTIVE_STATES)).order_by(t.id).limit(50))
        )
        out += _duplicates(conn, user_id, active, policy, prompt, model)
    return out


def _duplicates(conn, user_id, active, policy, prompt, model) -> list[Signal]:
    out, window = [], timedelta(seconds=policy.duplicate_window_s)
    t = ai_task.c
    for a in active:
        running = rules.Run(a["task_id"], a["model"], a["prompt"], a["reserved_credits"], a["created_at"])
        later = rows(
            conn.execute(
                select(*_SIG_COLS)
                .where(
                    t.user_id == user_id,
                    t.model == a["model"],
                    t.prompt == a["prompt"],
                    t.id > a["task_id"],
                    t.created_at >= a["created_at"],
                    t.created_at <= a["created_at"] + window,
                )
                .order_by(t.id)
                .limit(50)
            )
        )
        twins = [
            r
            for r in later
            if rules.heavier_duplicate(
                rules.Run(r["task_id"], r["model"], a["prompt"], r["reserved_credits"], r["created_at"]),
                running,
                policy,
            )
        ][:10]
        if twins:
            ev = [{k: v for k, v in a.items() if k != "prompt"}, *twins]
            out.append(
                Signal(
                    "heavier_duplicate",
                    f"Task #{a['task_id']} is still running and "
                    f"{_cap(len(twins), 'same-prompt run')} as heavy or heavier started within "
                    f"{int(policy.duplicate_window_s)} s: " + ", ".join(f"#{r['task_id']}" for r in twins) + ".",
                    ev,
                )
            )
        elif prompt is not None and model is not None:
            out.append(
                Signal(
                    "heavier_duplicate",
                    f"A run with the same model and prompt is still in progress "
                    f"(#{a['task_id']}): wait for it before running again.",
                    [{k: v for k, v in a.items() if k != "prompt"}],
                )
            )
    return out
