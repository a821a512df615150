"""Bulk remediation as named incidents: select tasks by a filter, dry-run an action, execute it.

    flt = BulkFilter.parse(["provider=kinetica", "status=GENERATING", "min_age_s=600"])
    plan(svc, engine, "recheck", flt)        # how many, what each would do, credits, refusals and why; writes nothing
    execute(svc, engine, "recheck", flt, operator="sam", reason="kinetica outage", name="kinetica 14:00")

`svc` is the lifecycle service that acts, `engine` the database it writes (`wiring.Wired`): the
filter and the incident are read and recorded through it.

Every action (a `SupportAction`) goes through the lifecycle service's own support actions
(`support`; refunds and mark-failed a hundred tasks per unit of work through `support_many`,
the same steps), so refusals and the `support_action` events come from one place; each event
carries the incident id (`detail.incident`). The dry run asks the same service for its
refusals (`support_refusal`) over facts read in bulk, so a plan over ten thousand tasks takes
a few queries.

The filter, the tasks it matches and the incidents so far are read by `read.incidents`.

An incident is known by its name: executing it again (same action and filter)
acts only on matching tasks that carry no event of this incident yet, so a
second run changes nothing, and a run cut short finishes where it stopped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from ..domain import ACTIVE, ActionRefused, EntryType, EventKind, SupportAction, TaskStatus, ValidationError
from ..read.incidents import BulkError, BulkFilter, matching_tasks
from ..read.queries import connect, latest_timestamp
from ..rules import RefundFacts, Refusal, SupportRefusal, credits_outcome, mark_failed_refund
from ..stores.db import missing_tables
from ..stores.schema import credit_ledger, incident, task_event

ACTIONS = tuple(a.value for a in SupportAction)
CHUNK = 500  # task ids per IN (...) read
PROGRESS_EVERY = 25
ACT_CHUNK = 100  # refund / mark-failed: tasks per unit of work (one commit)


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def _money_facts(engine: Engine, ids: Sequence[int]) -> tuple[dict[int, int], set[int]]:
    """(credits charged per task, tasks already refunded) from the ledger."""
    charged: dict[int, int] = {}
    refunded: set[int] = set()
    with connect(engine) as conn:
        for chunk in _chunks(ids):
            # by task id only: with the entry type in the WHERE, SQLite walks the (entry_type, amount)
            # index over every consume row of the database instead of each task's few rows
            q = select(credit_ledger.c.task_id, credit_ledger.c.entry_type, credit_ledger.c.amount).where(
                credit_ledger.c.task_id.in_(chunk)
            )
            for task_id, kind, amount in conn.execute(q):
                if kind == EntryType.CONSUME:
                    charged[task_id] = -int(amount)
                elif kind == EntryType.REFUND:
                    refunded.add(task_id)
    return charged, refunded


def handled_by(engine: Engine, incident_id: int, ids: Sequence[int]) -> set[int]:
    """The tasks among `ids` that already carry a support_action event of this incident."""
    done: set[int] = set()
    with connect(engine) as conn:
        for chunk in _chunks(ids):
            q = select(task_event.c.task_id, task_event.c.detail).where(
                task_event.c.task_id.in_(chunk), task_event.c.kind == EventKind.SUPPORT_ACTION.value
            )
            for task_id, detail in conn.execute(q):
                if isinstance(detail, dict) and detail.get("incident") == incident_id:
                    done.add(task_id)
    return done


# --- the dry run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTask:
    task_id: int
    user_id: int
    status: str
    model: str
    provider: str
    error_code: str | None
    age_s: float
    would: str  # what the action would do, or "refused"
    credits: int  # credits it would move back to the user (0 when none, or unknown before asking upstream)
    refusal: str | None = None  # why it would be refused, for people
    refusal_code: str | None = None  # which refusal (rules: RefundRefusal, MarkFailedRefusal, RecheckRefusal)
    done: bool = False  # already handled by this incident: a run would skip it


@dataclass
class Plan:
    action: str
    filter: BulkFilter
    now: datetime
    tasks: list[PlannedTask] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return len(self.tasks)

    @property
    def would_act(self) -> int:
        return sum(1 for t in self.tasks if t.refusal is None and not t.done)

    @property
    def would_refuse(self) -> int:
        return sum(1 for t in self.tasks if t.refusal is not None and not t.done)

    @property
    def already_done(self) -> int:
        return sum(1 for t in self.tasks if t.done)

    @property
    def credits(self) -> int:
        return sum(t.credits for t in self.tasks if t.refusal is None and not t.done)

    def refusals(self) -> dict[str, int]:
        """Refusal codes with how many tasks each, most first."""
        return dict(
            Counter(t.refusal_code for t in self.tasks if t.refusal_code is not None and not t.done).most_common()
        )

    def refusal_texts(self) -> dict[str, str]:
        """Each refusal code's sentence for people (numbers folded, e.g. ages: "task is N s old…")."""
        out: dict[str, str] = {}
        for t in self.tasks:
            if t.refusal_code is not None and not t.done and t.refusal_code not in out:
                out[t.refusal_code] = re.sub(r"\d+", "N", t.refusal or "")
        return out

    def to_dict(self, rows: int | None = None) -> dict[str, Any]:
        return {
            "action": self.action,
            "filter": self.filter.to_dict(),
            "now": self.now.isoformat(sep=" "),
            "matched": self.matched,
            "would_act": self.would_act,
            "would_refuse": self.would_refuse,
            "already_done": self.already_done,
            "credits": self.credits,
            "refusals": self.refusals(),
            "refusal_texts": self.refusal_texts(),
            "tasks": [asdict(t) for t in self.tasks[:rows]],
        }


def _check_action(action: SupportAction | str) -> SupportAction:
    try:
        return SupportAction.parse(action)
    except ValidationError:
        raise BulkError(f"action {action!r} is not one of {', '.join(ACTIONS)}") from None


def plan(
    svc: Any, engine: Engine, action: SupportAction | str, flt: BulkFilter, *, incident_id: int | None = None
) -> Plan:
    """What `action` would do to every task `flt` matches now; writes nothing. With
    `incident_id`, tasks that incident already handled are marked done."""
    action = _check_action(action)
    now = svc.judge_clock.now()  # ages judged like the pages and mark-failed judge them
    tasks = matching_tasks(engine, flt, now)
    ids = [t.id for t in tasks]
    charged, refunded = _money_facts(engine, ids)
    done = handled_by(engine, incident_id, ids) if incident_id is not None else set()
    out = Plan(action, flt, now)
    for t in tasks:
        credits = 0
        refusal = svc.support_refusal(action, t, t.id in charged, t.id in refunded)
        if action is SupportAction.REFUND:
            would = f"refund {charged.get(t.id, 0)} credits"
            credits = charged.get(t.id, 0)
        elif action is SupportAction.MARK_FAILED:
            back = mark_failed_refund(charged.get(t.id, 0), t.id in refunded, svc.policy)
            would = "mark failed" + (f", refund {back} credits" if back else ", no refund")
            credits = back
        else:
            would = (
                f"ask {t.provider} for the result"
                if t.status != TaskStatus.WAITING
                else f"ask {t.provider} for a job under the task's reference; else resubmit or fail it"
            )
        age = (now - (t.submitted_at or t.created_at)).total_seconds()
        out.tasks.append(
            PlannedTask(
                t.id,
                t.user_id,
                t.status,
                t.model,
                t.provider,
                t.error_code,
                age,
                "refused" if refusal else would,
                0 if refusal else credits,
                refusal and refusal.text,
                refusal and str(refusal.code),
                t.id in done,
            )
        )
    return out


# --- execution ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    incident_id: int
    name: str
    action: str
    matched: int = 0
    acted: int = 0
    refused: int = 0
    skipped: int = 0  # already handled by an earlier run of this incident
    credits_moved: int = 0
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # one per task acted on or refused

    def money(self) -> str:
        """The credits of the run in one sentence: how many went back on how many tasks, and why the
        tasks acted on without a refund got none (counted by reason)."""
        refunded = [o for o in self.outcomes if o.get("refunded")]
        kept = Counter(
            o["money"]
            for o in self.outcomes
            if o["outcome"] == "done" and not o.get("refunded") and o.get("money", "").startswith("no refund")
        )
        said = (
            f"{self.credits_moved:,} credits refunded on {len(refunded)} task(s)" if refunded else "no credits refunded"
        )
        for why, n in kept.most_common():
            said += f"; {n} task(s) without a refund: {why.removeprefix('no refund: ')}"
        return said

    def to_dict(self, rows: int | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["outcomes"] = self.outcomes[:rows]
        d["money"] = self.money()
        return d


def _require_table(engine: Engine) -> None:
    if missing_tables(engine, ["incident"]):
        raise BulkError(
            "this database has no incident table (an older schema): run `python -m rivya_core init-db --db URL` first",
            code="schema_missing",
        )


def default_name(action: str, flt: BulkFilter) -> str:
    return f"{action}: {flt.describe()}"[:200]


def open_incident(
    svc: Any,
    engine: Engine,
    action: SupportAction | str,
    flt: BulkFilter,
    *,
    operator: str,
    reason: str,
    name: str | None = None,
) -> int:
    """The id of the incident called `name` (default: the action and filter), created when new.
    An existing name with another action or filter is refused."""
    action = _check_action(action)
    _require_table(engine)
    operator, reason = str(operator or "").strip(), str(reason or "").strip()
    if not operator:
        raise ActionRefused("a bulk action needs the operator's name", reason=SupportRefusal.NO_OPERATOR)
    if not reason:
        raise ActionRefused("a bulk action needs a reason", reason=SupportRefusal.NO_REASON)
    name = (str(name).strip() if name else "") or default_name(action, flt)
    if len(name) > 200:
        raise BulkError("an incident name has at most 200 characters")
    with engine.begin() as conn:
        row = conn.execute(
            select(incident.c.id, incident.c.action, incident.c.filter).where(incident.c.name == name)
        ).first()
        if row is not None:
            if row.action != action or dict(row.filter or {}) != flt.to_dict():
                raise BulkError(
                    f"incident {name!r} exists with action {row.action} and filter "
                    f"{BulkFilter.from_dict(row.filter).describe()}; give this one another name",
                    code="incident_exists",
                )
            return int(row.id)
        new = conn.execute(
            insert(incident)
            .values(
                name=name,
                action=action,
                filter=flt.to_dict(),
                operator=operator[:100],
                reason=reason[:2000],
                created_at=svc.act_time(latest_timestamp(engine)),
                runs=0,
                matched=0,
                acted=0,
                refused=0,
                credits_moved=0,
            )
            .returning(incident.c.id)
        ).scalar_one()
        return int(new)


def execute(
    svc: Any,
    engine: Engine,
    action: SupportAction | str,
    flt: BulkFilter,
    *,
    operator: str,
    reason: str,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run `action` on every task `flt` matches, as the named incident (see open_incident),
    through the service's support actions. Tasks this incident already handled are skipped."""
    action = _check_action(action)
    incident_id = open_incident(svc, engine, action, flt, operator=operator, reason=reason, name=name)
    with connect(engine) as conn:
        inc = conn.execute(select(incident).where(incident.c.id == incident_id)).first()
        ledger_mark = conn.scalar(select(func.max(credit_ledger.c.id))) or 0
    engine_now = svc.judge_clock.now()
    tasks = matching_tasks(engine, flt, engine_now)
    ids = [t.id for t in tasks]
    done = handled_by(engine, incident_id, ids)
    todo = [t for t in tasks if t.id not in done]
    if inc is None:
        raise BulkError(f"incident {incident_id} vanished while it ran")
    result = RunResult(incident_id, inc.name, action, matched=len(tasks), skipped=len(done))
    with engine.begin() as conn:
        conn.execute(update(incident).where(incident.c.id == incident_id).values(finished_at=None))
    acted_ids: list[int] = []

    def record(task_id: int, after: Any) -> None:
        if isinstance(after, Refusal):
            result.refused += 1
            result.outcomes.append(
                {"task_id": task_id, "outcome": "refused", "detail": after.text, "refusal": str(after.code)}
            )
        else:
            result.acted += 1
            acted_ids.append(task_id)
            result.outcomes.append(
                {
                    "task_id": task_id,
                    "outcome": "done",
                    "detail": f"task is {after.status}",
                    "status": after.status,
                    "failure_class": after.failure_class,
                }
            )

    try:
        done_n = 0
        if action is SupportAction.RECHECK:  # asks a provider per task: one at a time
            for t in todo:
                try:
                    record(t.id, svc.support(action, t.id, inc.operator, inc.reason, incident_id=incident_id))
                except ActionRefused as exc:
                    if exc.reason is None:  # every support refusal carries its code
                        raise
                    record(t.id, Refusal(exc.reason, exc.message))
                done_n += 1
                if progress is not None and (done_n % PROGRESS_EVERY == 0 or done_n == len(todo)):
                    progress(done_n, len(todo))
        else:  # the same support steps, ACT_CHUNK tasks per unit of work
            for start in range(0, len(todo), ACT_CHUNK):
                chunk = [t.id for t in todo[start : start + ACT_CHUNK]]
                for task_id, after in svc.support_many(
                    action, chunk, inc.operator, inc.reason, incident_id=incident_id
                ):
                    record(task_id, after)
                done_n += len(chunk)
                if progress is not None:
                    progress(done_n, len(todo))
    finally:
        moved = _refunded_since(engine, acted_ids, ledger_mark)
        result.credits_moved = sum(moved.values())
        _say_money(result, engine, moved, svc.policy)
        with engine.begin() as conn:
            conn.execute(
                update(incident)
                .where(incident.c.id == incident_id)
                .values(
                    finished_at=svc.act_time(latest_timestamp(engine)),
                    runs=incident.c.runs + 1,
                    matched=result.matched,
                    acted=incident.c.acted + result.acted,
                    refused=incident.c.refused + result.refused,
                    credits_moved=incident.c.credits_moved + result.credits_moved,
                )
            )
    if progress is not None and not todo:
        progress(0, 0)
    return result


def _refunded_since(engine: Engine, ids: Sequence[int], ledger_mark: int) -> dict[int, int]:
    """Credits refunded to each of `ids` by ledger rows written after `ledger_mark` (read by the id range)."""
    wanted = set(ids)
    q = select(credit_ledger.c.task_id, credit_ledger.c.entry_type, credit_ledger.c.amount).where(
        credit_ledger.c.id > ledger_mark
    )
    moved: dict[int, int] = {}
    with connect(engine) as conn:
        for task_id, kind, amount in conn.execute(q):
            if kind == EntryType.REFUND and task_id in wanted:
                moved[task_id] = moved.get(task_id, 0) + int(amount)
    return moved


def _say_money(result: RunResult, engine: Engine, moved: Mapping[int, int], policy: Any) -> None:
    """Each task acted on: what happened to its credits (rules.credits_outcome), added to its outcome."""
    done = [o for o in result.outcomes if o["outcome"] == "done"]
    charged, refunded = _money_facts(engine, [o["task_id"] for o in done])
    for o in done:
        facts = RefundFacts(o.pop("status"), o.pop("failure_class"), o["task_id"] in charged, o["task_id"] in refunded)
        o["refunded"] = moved.get(o["task_id"], 0)
        o["money"] = credits_outcome(facts, charged.get(o["task_id"], 0), o["refunded"], policy)
        o["detail"] += f"; {o['money']}"


def active_states() -> list[str]:
    return sorted(s.value for s in ACTIVE)
