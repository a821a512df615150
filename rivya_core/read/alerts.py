"""Stuck and degradation alerts, judged against the database's own history.

Stuck: a running task is stuck for alerting once it has been running longer than
k × its model's observed p95 time-to-terminal (from submission, else creation, to
finish, over the latest finished tasks), never less than the policy's static stuck
threshold for its category (the floor; a model with too little history uses it
alone). Because the floor is the threshold `support_mark_failed` judges by, every
task an alert calls stuck may be marked failed.

Degradation: a provider whose failure rate (provider and infrastructure failures)
or p95 latency over the last hour is far above its own baseline (the day before).

Each alert carries a prepared bulk filter (rivya_core.support.bulk.BulkFilter) and the
action support would try first, so the dashboard links straight to a dry run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, select

from ..domain import ACTIVE, FailureClass, SupportAction, TaskStatus
from ..policy import DEFAULT_POLICY, BillingPolicy
from .incidents import BulkFilter, covering_incident
from .queries import Bind, connect

STUCK_K = 2.0  # a task is stuck past k × its model's p95 time-to-terminal
HISTORY_TASKS = 20_000  # finished tasks the p95 per model is computed over (the latest ones)
MIN_HISTORY = 20  # fewer finished tasks than this: the model's p95 is not trusted, the floor alone counts
WINDOW_S = 3600.0  # degradation: the last hour ...
BASELINE_S = 24 * 3600.0  # ... against the day before it
MIN_WINDOW_TASKS = 10  # fewer finished tasks in the last hour: no degradation verdict
FAILURE_RATE_FACTOR = 3.0  # failure rate at least 3× baseline ...
FAILURE_RATE_MARGIN = 0.10  # ... and at least 10 points above it
LATENCY_FACTOR = 2.0  # p95 latency at least 2× baseline
PROVIDER_FAULTS = (FailureClass.PROVIDER.value, FailureClass.INFRASTRUCTURE.value)


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank) of values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _started():
    from ..stores.schema import ai_task

    return func.coalesce(ai_task.c.submitted_at, ai_task.c.created_at)


@dataclass(frozen=True)
class ModelThreshold:
    model: str
    category: str
    p95_s: float | None  # observed p95 time-to-terminal, None when the history is too short
    finished: int  # finished tasks it is computed over
    floor_s: float  # the policy's static stuck threshold for the category
    threshold_s: float  # max(floor, k × p95)


def model_thresholds(
    bind: Bind,
    policy: BillingPolicy = DEFAULT_POLICY,
    now: datetime | None = None,
    k: float = STUCK_K,
    history: int = HISTORY_TASKS,
) -> dict[str, ModelThreshold]:
    """Per model: the observed p95 time-to-terminal of its latest finished tasks and the stuck threshold."""
    from ..stores.schema import ai_task

    q = select(ai_task.c.model, ai_task.c.category, _started(), ai_task.c.finished_at).where(
        ai_task.c.finished_at.is_not(None)
    )
    if now is not None:
        q = q.where(ai_task.c.finished_at <= now)
    q = q.order_by(ai_task.c.finished_at.desc()).limit(history)
    durations: dict[str, list[float]] = defaultdict(list)
    categories: dict[str, str] = {}
    with connect(bind) as conn:
        for model, category, started, finished in conn.execute(q):
            if started is not None and finished is not None:
                durations[model].append(max(0.0, (finished - started).total_seconds()))
                categories[model] = category
        for model, category in conn.execute(
            select(ai_task.c.model, ai_task.c.category)
            .where(ai_task.c.status.in_([s.value for s in ACTIVE]))
            .group_by(ai_task.c.model, ai_task.c.category)
        ):
            categories.setdefault(model, category)
    out = {}
    for model, category in sorted(categories.items()):
        seen = durations.get(model, [])
        observed = p95(seen) if len(seen) >= MIN_HISTORY else None
        floor = policy.stuck_for(category)
        out[model] = ModelThreshold(
            model, category, observed, len(seen), floor, max(floor, k * observed) if observed is not None else floor
        )
    return out


@dataclass(frozen=True)
class StuckAlert:
    model: str
    provider: str
    stuck: int  # running tasks past the threshold
    generating: int  # of which GENERATING (the rest WAITING)
    oldest_s: float
    threshold: ModelThreshold
    action: SupportAction  # the bulk action to try first
    filter: BulkFilter

    @property
    def message(self) -> str:
        t = self.threshold
        basis = (
            f"{STUCK_K:g} × p95 {t.p95_s:,.0f} s over {t.finished:,} finished tasks"
            if t.p95_s is not None and t.threshold_s > t.floor_s
            else f"the {t.category} floor"
        )
        state = "running" if self.generating else "waiting to be submitted"  # WAITING only: never reached it
        return (
            f"{self.stuck:,} {self.model} task(s) on {self.provider} {state} past {t.threshold_s:,.0f} s "
            f"({basis}); the oldest for {self.oldest_s / 60:,.0f} min"
        )


@dataclass(frozen=True)
class DegradationAlert:
    provider: str
    kind: str  # failure_rate | latency
    window_tasks: int
    value: float  # failure rate (0..1) or p95 seconds in the window
    baseline: float | None  # the same over the baseline (None: no baseline)
    action: SupportAction
    filter: BulkFilter

    @property
    def message(self) -> str:
        if self.kind == "failure_rate":
            base = f"{self.baseline:.0%}" if self.baseline is not None else "no baseline"
            return (
                f"{self.provider}: {self.value:.0%} of {self.window_tasks:,} tasks failed in the last hour "
                f"(provider or infrastructure), against {base} the day before"
            )
        return (
            f"{self.provider}: p95 time-to-result {self.value:,.0f} s in the last hour over "
            f"{self.window_tasks:,} tasks, against {self.baseline:,.0f} s the day before"
        )


@dataclass
class Alerts:
    now: datetime
    stuck: list[StuckAlert] = field(default_factory=list)
    degraded: list[DegradationAlert] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.stuck) + len(self.degraded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(sep=" "),
            "stuck": [{"message": a.message, "action": a.action, "filter": a.filter.to_dict()} for a in self.stuck],
            "degraded": [
                {"message": a.message, "action": a.action, "filter": a.filter.to_dict()} for a in self.degraded
            ],
        }


def stuck_alerts(bind: Bind, policy: BillingPolicy, now: datetime, k: float = STUCK_K) -> list[StuckAlert]:
    """One alert per model with running tasks past its threshold, most stuck first."""
    from ..stores.schema import ai_task

    thresholds = model_thresholds(bind, policy, now, k)
    q = select(ai_task.c.model, ai_task.c.provider, ai_task.c.status, _started()).where(
        ai_task.c.status.in_([s.value for s in ACTIVE])
    )
    groups: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    with connect(bind) as conn:
        for model, provider, status, started in conn.execute(q):
            t = thresholds.get(model)
            age = (now - started).total_seconds()
            if t is not None and age > t.threshold_s:
                groups[(model, provider)].append((status, age))
    out = []
    for (model, provider), found in groups.items():
        t = thresholds[model]
        generating = sum(1 for s, _ in found if s == TaskStatus.GENERATING)
        action = (
            SupportAction.RECHECK
        )  # ask the provider first: a GENERATING task's job, a WAITING one's lost submission
        states = ("GENERATING",) if generating else ("WAITING",)
        flt = BulkFilter(provider=provider, model=model, status=states, min_age_s=float(math.ceil(t.threshold_s)))
        out.append(StuckAlert(model, provider, len(found), generating, max(a for _, a in found), t, action, flt))
    return sorted(out, key=lambda a: (-a.stuck, a.model))


def degradation_queries(
    now: datetime, window_s: float = WINDOW_S, baseline_s: float = BASELINE_S
) -> tuple[Select, Select, Select]:
    """The degradation alerts' reads: finished counts per provider and window, and the durations of
    the window's successes and of a recent baseline sample. Each reads a time range of the finished-at
    index; the status is tested as an expression so that no database walks every SUCCESS task
    through the status index instead (SQLite's choice for `status = ?`, a scan of the whole history)."""
    from ..stores.schema import ai_task

    start, base_start = now - timedelta(seconds=window_s), now - timedelta(seconds=window_s + baseline_s)
    t = ai_task.c
    in_window = case((t.finished_at > start, 1), else_=0)
    faulted = case((and_(t.status == TaskStatus.FAILED.value, t.failure_class.in_(PROVIDER_FAULTS)), 1), else_=0)
    counts = (
        select(t.provider, in_window.label("w"), func.count(), func.sum(faulted))
        .where(t.finished_at > base_start, t.finished_at <= now)
        .group_by(t.provider, in_window)
    )
    took = select(t.provider, _started(), t.finished_at).where((t.status + "") == TaskStatus.SUCCESS.value)
    return (
        counts,
        took.where(t.finished_at > start, t.finished_at <= now),
        took.where(t.finished_at > base_start, t.finished_at <= start)
        .order_by(t.finished_at.desc())
        .limit(HISTORY_TASKS),
    )


def degradation_alerts(
    bind: Bind, now: datetime, window_s: float = WINDOW_S, baseline_s: float = BASELINE_S
) -> list[DegradationAlert]:
    """Providers whose last hour is far worse than the day before it."""
    start = now - timedelta(seconds=window_s)
    counts, took_window, took_baseline = degradation_queries(now, window_s, baseline_s)
    stats: dict[str, dict[str, Any]] = defaultdict(lambda: {"w": [0, 0, []], "b": [0, 0, []]})
    with connect(bind) as conn:  # counts in SQL; durations of the window and of a recent baseline sample
        for provider, w, n, failed in conn.execute(counts):
            stats[provider]["w" if w else "b"][:2] = [int(n), int(failed or 0)]
        for key, q in (("w", took_window), ("b", took_baseline)):
            for provider, started, finished in conn.execute(q):
                if started is not None and provider in stats:
                    stats[provider][key][2].append((finished - started).total_seconds())
    out = []
    for provider in sorted(stats):
        (wn, wf, wd), (bn, bf, bd) = stats[provider]["w"], stats[provider]["b"]
        if wn < MIN_WINDOW_TASKS:
            continue
        rate, base_rate = wf / wn, (bf / bn if bn >= MIN_WINDOW_TASKS else None)
        if rate >= max(FAILURE_RATE_FACTOR * (base_rate or 0.0), (base_rate or 0.0) + FAILURE_RATE_MARGIN):
            flt = BulkFilter(provider=provider, status=("FAILED",), since=start - timedelta(seconds=window_s))
            out.append(DegradationAlert(provider, "failure_rate", wn, rate, base_rate, SupportAction.REFUND, flt))
        lat, base_lat = p95(wd), p95(bd) if len(bd) >= MIN_WINDOW_TASKS else None
        if lat is not None and base_lat and len(wd) >= MIN_WINDOW_TASKS and lat >= LATENCY_FACTOR * base_lat:
            flt = BulkFilter(provider=provider, status=("GENERATING",))
            out.append(DegradationAlert(provider, "latency", len(wd), lat, base_lat, SupportAction.RECHECK, flt))
    return out


def alerts(
    bind: Bind, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None, k: float = STUCK_K
) -> Alerts:
    """Every alert at `now` (default: the database's latest recorded time, queries.resolve_now)."""
    from .queries import resolve_now

    at = resolve_now(bind, now)
    return Alerts(at, stuck_alerts(bind, policy, at, k), degradation_alerts(bind, at))


def provider_incident(bind: Bind, provider: str, task_id: int, now: datetime) -> str | None:
    """A named provider incident covering a task of `provider` at `now`, in words: an open incident
    naming the provider that has not acted on the task (rivya_core.read.incidents.covering_incident), else a
    degradation alert on the provider; None when neither."""
    found = covering_incident(bind, provider, task_id, now)
    if found is not None:
        return f"incident {found['name']!r} ({found['action']} on {BulkFilter.from_dict(found['filter']).describe()})"
    alert = next((a for a in degradation_alerts(bind, now) if a.provider == provider), None)
    return None if alert is None else f"a degradation alert on {alert.message}"
