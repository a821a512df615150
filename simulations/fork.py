"""Fork recorded history into a scripted scenario that replays it.

`fork_story(engine, task_id=N)` or `fork_story(engine, user_id=U, since, until)`
writes a `[[script]]` scenario: the account with the balance it had, each task
submitted at its recorded moment with its recorded model, prompt and params,
the provider doing what it recorded (generation time, outcome and error,
submission fault), every callback the task received replayed at its moment
(early, progress, final, duplicate; a lost one is simply absent), the user's
re-checks, top-ups and chat turns. Polling sweeps come from the run's own
poller, on the recorded run's tick grid (the story's clock starts on a tick of
the recorded run), so deferred re-checks and timeouts land when they did.

`check_fork(engine, story, ...)` runs the story into a temporary database and
compares, task by task, the timeline (event kinds, states and outcomes, at
the same offsets from creation), the ledger effects and the notifications.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, inspect, or_, select

from rivya_core.catalog import default_catalog
from rivya_core.domain import EventKind, NotFound, RivyaError, TaskStatus
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.read.queries import connect
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine

from .farm import ABORTED, CANCELED
from .history import seconds
from .scenarios import Population, ProviderConfig, Range, Scenario, ScriptEvent, parse_scenario
from .writer import read_sim_runs, upstream_job

# A provider job that our cancel or its Cancel-After deadline stopped: its own end is unknown
STOPPED_UPSTREAM = (CANCELED[0], ABORTED[0])

LEAD_S = 5.0  # the story starts at least this long before its first recorded step
DEFAULT_TICK_S = 10.0
_RANK = {
    "chat": 0,
    "submit": 1,
    "grant": 2,
}  # same moment: a chat before its tool task, a top-up after the refusal that prompted it


class ForkError(RivyaError):
    code = "fork_invalid"


@dataclass
class Story:
    scenario: Scenario
    task_ids: list[int]  # the recorded tasks, in the order the story submits them
    chat_ids: list[int]

    def to_toml(self) -> str:
        return self.scenario.to_toml()


def _recorded_run(engine: Engine) -> tuple[Scenario | None, float | None]:
    if "sim_run" not in inspect(engine).get_table_names():
        return None, None
    runs = read_sim_runs(engine)
    if not runs:
        return None, None
    rec = runs[-1]
    sc = parse_scenario(rec["scenario_toml"], f"<recorded {rec['scenario_name']}>", rec["scenario_name"])
    return sc, seconds(rec["started_at"])


def fork_story(
    engine: Engine,
    *,
    task_id: int | None = None,
    user_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    everyone: bool = False,
    as_file: bool = True,
) -> Story:
    """The story of one task, of one account in a window, or (everyone=True) of every
    account in a window: the trace the timing part of a backtest re-simulates.
    as_file=False skips reading the scenario back from its TOML (a story only run, never written)."""
    if (task_id is not None) + (user_id is not None) + everyone != 1:
        raise ForkError("give exactly one of --task and --user", code="bad_argument")
    recorded, origin = _recorded_run(engine)
    t, L, e, m, s = (
        schema.ai_task.c,
        schema.credit_ledger.c,
        schema.task_event.c,
        schema.chat_message.c,
        schema.chat_session.c,
    )
    has_jobs = upstream_job.name in inspect(engine).get_table_names()
    with connect(engine) as conn:
        if task_id is not None:
            task = conn.execute(select(schema.ai_task).where(t.id == task_id)).first()
            if task is None:
                raise NotFound(f"no task {task_id}")
            user = task.user_id
            chats = []
            # a heavier duplicate of a running task: the running one comes along, so the warning recurs
            dup_of = [
                ev.detail.get("running_task_id")
                for ev in conn.execute(
                    select(e.detail).where(e.task_id == task_id, e.kind == EventKind.DUPLICATE_WARNING.value)
                )
                if isinstance(ev.detail, dict)
            ]
            tasks = [
                *conn.execute(select(schema.ai_task).where(t.id.in_([d for d in dup_of if d])).order_by(t.id)),
                task,
            ]
        else:
            if (
                user_id is not None
                and conn.execute(select(schema.account.c.id).where(schema.account.c.id == user_id)).first() is None
            ):
                raise NotFound(f"no account {user_id}")
            user = user_id
            q = select(schema.ai_task)
            mq = (
                select(
                    m.id,
                    s.user_id,
                    s.model,
                    m.content,
                    m.prompt_tokens,
                    m.completion_tokens,
                    m.reserved_credits,
                    m.status,
                    m.created_at,
                    m.settled_at,
                )
                .join(schema.chat_session, s.id == m.session_id)
                .where(m.role == "user")
            )
            if user is not None:
                q, mq = q.where(t.user_id == user), mq.where(s.user_id == user)
            if since is not None:
                q, mq = q.where(t.created_at >= since), mq.where(m.created_at >= since)
            if until is not None:
                q, mq = q.where(t.created_at < until), mq.where(m.created_at < until)
            tasks = list(conn.execute(q.order_by(t.id)))
            chats = list(conn.execute(mq.order_by(m.id)))
            if not tasks and not chats:
                raise ForkError(
                    f"{'account ' + str(user_id) if user_id else 'the database'} has no task or chat "
                    "turn in that window",
                    code="fork_empty",
                )
        ids = [x.id for x in tasks]
        events: dict[int, list[Any]] = {i: [] for i in ids}
        for chunk in _chunks(ids):
            for ev in conn.execute(
                select(e.task_id, e.at, e.kind, e.detail).where(e.task_id.in_(chunk)).order_by(e.id)
            ):
                events[ev.task_id].append(ev)
        jobs: dict[tuple[str, str], Any] = {}
        if has_jobs:
            keyed = [(x.provider, x.upstream_task_id) for x in tasks if x.upstream_task_id]
            j = upstream_job.c
            for chunk in _chunks(keyed):
                for row in conn.execute(
                    select(upstream_job).where(or_(*(and_(j.provider == p, j.upstream_task_id == u) for p, u in chunk)))
                ):
                    jobs[(row.provider, row.upstream_task_id)] = row
        lq = select(
            L.id, L.user_id, L.entry_type, L.amount, L.balance_after, L.task_id, L.chat_message_id, L.created_at
        ).order_by(L.created_at, L.id)
        ledger_rows = list(conn.execute(lq if user is None else lq.where(L.user_id == user)))
    accounts = sorted({x.user_id for x in tasks} | {c.user_id for c in chats})
    index = {u: i for i, u in enumerate(accounts)}
    ledger: dict[int, list[Any]] = {u: [] for u in accounts}
    for r in ledger_rows:
        if r.user_id in ledger:
            ledger[r.user_id].append(r)
    first = min([seconds(x.created_at) for x in tasks] + [seconds(c.created_at) for c in chats])
    tick = recorded.poll_tick_s if recorded is not None else DEFAULT_TICK_S
    base = origin if origin is not None else first - LEAD_S
    offset = base + max(0, math.floor((first - LEAD_S - base) / tick)) * tick
    rel = lambda dt: round(seconds(dt) - offset, 6)  # noqa: E731

    opening = {
        u: _opening_balance(ledger[u], [x for x in tasks if x.user_id == u], events, first, task_id is not None)
        for u in accounts
    }
    steps: list[tuple[float, int, int, ScriptEvent]] = []
    seq = 0

    def add(ev: ScriptEvent) -> None:
        nonlocal seq
        seq += 1
        steps.append((ev.at, _RANK.get(ev.action, 3), seq, ev))

    chat_index = {c.id: n for n, c in enumerate(chats, start=1)}
    catalog = default_catalog()
    for c in chats:
        spec = catalog.get(c.model)
        if spec is None:
            raise ForkError(f"chat turn {c.id} uses model {c.model!r}, which the catalogue does not know")
        policy = recorded.policy if recorded is not None else DEFAULT_POLICY
        reserved = int(c.reserved_credits or 0)
        if c.status == "refused":  # its estimate is not recorded: ask for the fewest tokens the balance refuses
            reserved = 1 + _balance_before(ledger[c.user_id], c.created_at, opening[c.user_id])
        max_out = _max_output_tokens(spec, int(c.prompt_tokens or 0), reserved, policy)
        settle = rel(c.settled_at) - rel(c.created_at) if c.settled_at is not None else 10**7
        add(
            ScriptEvent(
                at=rel(c.created_at),
                action="chat",
                user=index[c.user_id],
                model=c.model,
                prompt=c.content or "chat turn",
                prompt_tokens=int(c.prompt_tokens or 0),
                max_output_tokens=max_out,
                completion_tokens=int(c.completion_tokens or 0),
                gen_s=max(0.0, settle),
                outcome="failed" if c.status == "failed" else "succeeded",
            )
        )
    if len(accounts) > 1:  # balances at the start: a grant each as the story opens
        for u in accounts:
            if opening[u] > 0:
                add(ScriptEvent(at=0.0, action="grant", user=index[u], amount=opening[u]))
    if task_id is None:  # the accounts' own top-ups and grants in the window
        for u in accounts:
            for r in ledger[u]:
                at = seconds(r.created_at)
                if (
                    r.task_id is None
                    and r.chat_message_id is None
                    and r.amount > 0
                    and first <= at
                    and (until is None or r.created_at < until)
                ):
                    add(ScriptEvent(at=rel(r.created_at), action="grant", user=index[u], amount=int(r.amount)))
    for n, x in enumerate(tasks, start=1):
        add(
            replace(
                _submit(
                    x,
                    events[x.id],
                    jobs.get((x.provider, x.upstream_task_id)),
                    rel,
                    chat_index.get(x.chat_message_id, 0),
                ),
                user=index[x.user_id],
            )
        )
        for ev in events[x.id]:
            action = _action(ev)
            if action:
                add(ScriptEvent(at=rel(ev.at), action=action, task=n))
    steps.sort(key=lambda s: s[:3])
    what = (
        f"task {task_id}"
        if task_id is not None
        else (f"account {user_id}" if user_id else "every account")
        + (f" from {since:%Y-%m-%d %H:%M}" if since else "")
        + (f" until {until:%Y-%m-%d %H:%M}" if until else "")
    )
    base_sc = recorded if recorded is not None else Scenario(name="fork")
    sc = Scenario(
        name=f"fork-task-{task_id}" if task_id is not None else f"fork-user-{user_id}" if user_id else "trace",
        description=f"Forked from {what} of the recorded history: replays its recorded steps.",
        seed=base_sc.seed,
        horizon_s=0.0,
        callbacks=base_sc.callbacks,
        poll_tick_s=tick,
        farm=ProviderConfig(capacity=10**6),  # the recorded queueing is in each submit's queue_s
        population=Population(
            users=len(accounts),
            balance=Range(*(2 * [float(opening[accounts[0]]) if len(accounts) == 1 else 0.0])),
            topup_probability=0.0,
        ),
        policy=base_sc.policy,
        script=tuple(s[3] for s in steps),
    )
    if as_file:
        sc = parse_scenario(sc.to_toml(), f"<fork of {what}>", sc.name)  # what the file will hold
    return Story(sc, ids, [c.id for c in chats])


def _chunks(items: list[Any], n: int = 500):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _opening_balance(
    ledger: list[Any], tasks: list[Any], events: dict[int, list[Any]], first: float, single: bool
) -> int:
    if single:
        x = tasks[0]  # the earliest: a running task the forked one duplicates, or the task itself
        for r in ledger:
            if r.task_id == x.id and r.entry_type == "consume":
                return int(r.balance_after - r.amount)
        for ev in events[x.id]:
            if ev.kind == EventKind.CHARGE_REFUSED and isinstance(ev.detail, dict):
                return int(ev.detail.get("balance", 0))
        return 0
    before = [r for r in ledger if seconds(r.created_at) < first]
    return int(before[-1].balance_after) if before else 0


def _balance_before(ledger: list[Any], at: datetime, opening: int) -> int:
    before = [r for r in ledger if r.created_at <= at]
    return int(before[-1].balance_after) if before else opening


def _submit(x: Any, events: list[Any], job: Any, rel, chat: int) -> ScriptEvent:
    created = rel(x.created_at)
    fault = next(
        (
            ev.detail.get("fault", "error")
            for ev in events
            if ev.kind == EventKind.SUBMIT_FAILED and isinstance(ev.detail, dict)
        ),
        "",
    )
    fields: dict[str, Any] = {"outcome": "succeeded", "gen_s": 0.001}
    if job is not None:
        done = rel(job.done_at) if job.done_at is not None else None
        state = job.state
        if state == "succeeded":
            fields["outcome"] = "succeeded" if job.result_urls else "no_urls"
        elif state == "failed" and job.error_code in STOPPED_UPSTREAM:
            fields["outcome"] = "lost"  # stopped by a cancel or its deadline: how it would have ended is not recorded
        elif state == "failed":
            fields.update(
                outcome="failed",
                error_code=job.error_code or "",
                error_message=job.error_message or "",
                failure_class=job.failure_class or "",
            )
        else:
            fields["outcome"] = "lost"
        started = rel(job.started_at) if job.started_at is not None else None
        if started is not None and started > created:
            fields["queue_s"] = round(started - created, 6)
        fields["gen_s"] = max(0.001, round(done - (started or created), 6)) if done is not None else 10**7
    elif x.upstream_task_id:  # no provider record (a live database): what the task itself learnt
        done = rel(x.finished_at) if x.finished_at is not None else None
        if x.status == TaskStatus.SUCCESS:
            fields["outcome"] = "succeeded"
        elif x.status == TaskStatus.FAILED and x.error_code not in ("timeout", "no_result_urls"):
            fields.update(
                outcome="failed",
                error_code=x.error_code or "",
                error_message=x.error_message or "",
                failure_class=x.failure_class if x.failure_class in ("user", "provider", "infrastructure") else "",
            )
        else:
            fields["outcome"] = "no_urls" if x.error_code == "no_result_urls" else "lost"
        fields["gen_s"] = max(0.001, round(done - created, 6)) if done is not None else 10**7
    if fault in ("refused", "error", "timeout"):
        fields["submit_fault"] = fault
    return ScriptEvent(
        at=created,
        action="submit",
        model=x.model,
        prompt=x.prompt,
        params=dict(x.params or {}),
        auto_callbacks=False,
        chat=chat,
        **fields,
    )


def _action(ev: Any) -> str | None:
    d = ev.detail if isinstance(ev.detail, dict) else {}
    if ev.kind == EventKind.CALLBACK:
        outcome, state = d.get("outcome"), d.get("state")
        if outcome == "deferred":
            return "callback_early"
        if state == "running":  # a progress report, overtaken or not
            return "callback_progress"
        if outcome == "duplicate":
            return "callback_repeat"
        return "callback"
    if ev.kind == EventKind.RECHECK and d.get("reason") and not str(d["reason"]).startswith(("support", "recovery")):
        return "recheck"
    return None


def _max_output_tokens(spec: Any, prompt_tokens: int, reserved: int, policy) -> int:
    """The answer length a recorded reservation was made for: the fewest output tokens whose
    full-turn cost reserves what the history reserved."""
    if reserved <= 0:
        return 0
    lo, hi = 0, 1
    while policy.chat_reservation(spec.chat_credits(prompt_tokens, hi)) < reserved and hi < 10**9:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if policy.chat_reservation(spec.chat_credits(prompt_tokens, mid)) >= reserved:
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- checking a story against the history ------------------------------------------------


def task_timeline(engine: Engine, task_id: int) -> dict[str, Any]:
    """What a support person reads for one task, with times as offsets from its creation."""
    t, e, L, n = schema.ai_task.c, schema.task_event.c, schema.credit_ledger.c, schema.notification.c
    with connect(engine) as conn:
        task = conn.execute(select(schema.ai_task).where(t.id == task_id)).first()
        t0 = seconds(task.created_at)
        off = lambda dt: round(seconds(dt) - t0, 3)  # noqa: E731
        evs = []
        for ev in conn.execute(select(e.at, e.kind, e.detail).where(e.task_id == task_id).order_by(e.id)):
            d = ev.detail if isinstance(ev.detail, dict) else {}
            keep = {
                k: d[k]
                for k in (
                    "outcome",
                    "state",
                    "error_code",
                    "failure_class",
                    "amount",
                    "credits",
                    "notification",
                    "fault",
                    "next_check_in_s",
                    "path",
                )
                if k in d
            }
            evs.append((off(ev.at), ev.kind, keep))
        ledger = [
            (off(r.created_at), r.entry_type, int(r.amount))
            for r in conn.execute(
                select(L.created_at, L.entry_type, L.amount).where(L.task_id == task_id).order_by(L.id)
            )
        ]
        notes = [
            (off(r.created_at), r.kind)
            for r in conn.execute(select(n.created_at, n.kind).where(n.task_id == task_id).order_by(n.id))
        ]
    return {
        "status": task.status,
        "error_code": task.error_code,
        "failure_class": task.failure_class,
        "reserved_credits": int(task.reserved_credits),
        "events": evs,
        "ledger": ledger,
        "notifications": notes,
    }


def chat_effects(engine: Engine, message_id: int) -> dict[str, Any]:
    m, L = schema.chat_message.c, schema.credit_ledger.c
    with connect(engine) as conn:
        msg = conn.execute(select(schema.chat_message).where(m.id == message_id)).first()
        t0 = seconds(msg.created_at)
        ledger = [
            (round(seconds(r.created_at) - t0, 3), r.entry_type, int(r.amount))
            for r in conn.execute(
                select(L.created_at, L.entry_type, L.amount)
                .where(L.chat_message_id == message_id, L.task_id.is_(None))
                .order_by(L.id)
            )
        ]
    return {
        "status": msg.status,
        "reserved": int(msg.reserved_credits),
        "charged": msg.charged_credits,
        "ledger": ledger,
    }


def check_fork(engine: Engine, story: Story) -> list[str]:
    """Run the story into a temporary database; the differences from the recorded timeline
    of each forked task and chat turn (empty: it reproduces the history)."""
    from .runner import run_scenario

    diffs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rivya-fork-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'story.db'}"
        run_scenario(story.scenario, url)
        replayed = make_engine(url)
        try:
            with connect(replayed) as conn:
                new_tasks = [r[0] for r in conn.execute(select(schema.ai_task.c.id).order_by(schema.ai_task.c.id))]
                new_msgs = [
                    r[0]
                    for r in conn.execute(
                        select(schema.chat_message.c.id)
                        .where(schema.chat_message.c.role == "user")
                        .order_by(schema.chat_message.c.id)
                    )
                ]
            if len(new_tasks) != len(story.task_ids):
                diffs.append(f"the story made {len(new_tasks)} tasks, the history has {len(story.task_ids)}")
            for old, new in zip(story.task_ids, new_tasks, strict=False):
                a, b = task_timeline(engine, old), task_timeline(replayed, new)
                diffs += _differences(f"task {old}", a, b)
            for old, new in zip(story.chat_ids, new_msgs, strict=False):
                diffs += _differences(f"chat turn {old}", chat_effects(engine, old), chat_effects(replayed, new))
        finally:
            replayed.dispose()
    return diffs


def _differences(what: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, list):
            if len(va) != len(vb):
                out.append(
                    f"{what}: {key}: recorded {len(va)} rows, replayed {len(vb)}: first recorded {_first_diff(va, vb)}"
                )
                continue
            for x, y in zip(va, vb, strict=True):
                if x[1:] != y[1:] or abs(x[0] - y[0]) > 0.002:
                    out.append(f"{what}: {key}: recorded {x}, replayed {y}")
                    break
        elif va != vb:
            out.append(f"{what}: {key}: recorded {va!r}, replayed {vb!r}")
    return out


def _first_diff(a: list[Any], b: list[Any]) -> Any:
    for x, y in zip(a, b, strict=False):
        if x[1:] != y[1:]:
            return f"{x} vs replayed {y}"
    return a[len(b)] if len(a) > len(b) else f"(replayed extra) {b[len(a)]}"


__all__ = ["Story", "ForkError", "fork_story", "check_fork", "task_timeline", "chat_effects"]
