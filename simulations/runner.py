"""The runner: one scenario, one seed, the real lifecycle service on a SimPy clock.

Setup (in the style of SimPy's examples): an environment, the SimPy clock, the
run buffer (a StreamingStore), the provider farm, the lifecycle service wired
to all three, the user population; then processes: arrivals (or the scenario's script), the
polling sweep, the batch writer, and a monitor that stops the run once
arrivals are over and every task is terminal (or the drain timeout passed).
The database then gets the audit of every invariant and a liveness check.

`--realtime FACTOR`: the SimPy clock follows the wall clock, FACTOR simulated
seconds per wall second (simpy.rt.RealtimeEnvironment(factor=1/FACTOR)), and
the writer flushes every wall second so the dashboard can watch tasks move.

Every flush, batch or realtime, is one transaction holding a consistent cut
of the run (writer.py): a run killed at any moment leaves a database that
`python -m rivya_core recover` can finish and `audit` passes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import simpy
import simpy.rt
from sqlalchemy import func, select

from rivya_core import cost, upstream_cancel
from rivya_core.audit import audit
from rivya_core.catalog import default_catalog
from rivya_core.domain import ACTIVE, RivyaError
from rivya_core.lifecycle import LifecycleService
from rivya_core.stores import schema
from rivya_core.stores.db import init_db, make_engine, sqlite_path
from rivya_core.targets import ensure_fresh

from . import kpis as kpis_def
from .buffer import StreamingStore
from .clock import SimClock
from .farm import Farm
from .gctune import run_pace
from .paths import ROOT, runs_dir
from .reads import NotificationReads
from .scenarios import Scenario, ScenarioError, check_run_bounds, drain_seconds
from .streams import Streams
from .users import Population
from .writer import BatchWriter, beat, compact_sqlite, end_beat, relax_sqlite_sync, sim_metadata, write_sim_run

FLUSH_EVERY_S = 60.0  # simulated seconds between checks for a batch write
FLUSH_MIN_TASKS = 2000  # ... which happens once this many new tasks exist
FLUSH_MAX_GAP_S = 3600.0  # ... or this many simulated seconds went by
REALTIME_FLUSH_WALL_S = 1.0
# Evicted tasks the store keeps a tombstone of. The writer evicts only tasks the
# farm will send nothing more about, so the window only guards against a stray
# late callback; one batch's worth keeps it small (about 250 bytes a task).
TOMBSTONES = FLUSH_MIN_TASKS


class RunError(RivyaError):
    code = "run_failed"
    user_correctable = True


@dataclass
class RunSummary:
    fingerprint: str
    seed: int
    scenario_name: str
    tasks: int
    sim_seconds: float
    counts_by_state: dict[str, int]
    counts_by_outcome: dict[str, int]
    credits: dict[str, int]
    completion_paths: dict[str, int]
    deferrals: int
    rejected_callbacks: dict[str, int]
    latency_percentiles: dict[str, float]
    violations: list[dict[str, Any]]
    liveness_ok: bool
    kpis: dict[str, float] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    farm: dict[str, dict[str, int]] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    arrivals: dict[str, int] = field(default_factory=dict)  # generation | chat | tool_chat
    task_sources: dict[str, int] = field(default_factory=dict)  # what made each task (TASK_SOURCES)
    money: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # {"model"|"provider": {name: ...}}
    wall_seconds: float = 0.0  # not stored: differs between identical runs

    @property
    def ok(self) -> bool:
        return not self.violations and self.liveness_ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stored(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("wall_seconds")
        return d

    def tasks_explained(self) -> str:
        return explain_tasks(self.tasks, self.arrivals, self.task_sources)

    def render_text(self) -> str:
        c = self.credits
        lines = [
            f"scenario {self.scenario_name}  seed {self.seed}  fingerprint {self.fingerprint[:16]}",
            f"tasks {self.tasks} over {self.sim_seconds:,.0f} simulated s"
            + (
                f" in {self.wall_seconds:.1f} s wall ({self.tasks / self.wall_seconds:,.0f} tasks/s)"
                if self.wall_seconds > 0
                else ""
            ),
            *([f"arrivals:    {self.tasks_explained()}"] if self.tasks_explained() else []),
            "by state:    " + _kv(self.counts_by_state),
            "callbacks:   " + _kv(self.counts_by_outcome),
            f"credits:     charged {c['charged']}  refunded {c['refunded']}  net {c['net']}"
            f"  (chat charged {c['chat_charged']}: reserved {c.get('chat_reserved', 0)}, "
            f"{c['chat_refunded']} of it returned unused)",
            "completion:  " + _kv(self.completion_paths),
            f"deferrals:   {self.deferrals}",
            "rejected:    " + (_kv(self.rejected_callbacks) or "none"),
            "latency s:   " + "  ".join(f"{k} {v:,.1f}" for k, v in self.latency_percentiles.items()),
            f"liveness:    {'ok' if self.liveness_ok else 'FAILED: tasks left active'}",
        ]
        if self.violations:
            lines.append(f"VIOLATIONS:  {len(self.violations)}")
            lines += [f"  - {v['kind']}: {v['message']}" for v in self.violations]
        else:
            lines.append("violations:  none")
        return "\n".join(lines)


# what made a task, beyond the population's arrivals and reruns (RunSummary.tasks_explained)
TASK_SOURCES = {"script": "from the scenario's script", "crashed_worker": "submitted by a worker that died"}


def explain_tasks(tasks: int, arrivals: dict[str, int], sources: dict[str, int]) -> str:
    """How a run's arrivals (what --tasks counts: generation requests and chat turns) became its
    tasks (the ai_task rows), in one line; empty for a run that recorded neither (RunSummary's
    arrivals and task_sources, or the same keys of a stored summary)."""
    a, t = arrivals or {}, sources or {}
    if not a and not t:
        return ""
    chat, tool = a.get("chat", 0) + a.get("tool_chat", 0), a.get("tool_chat", 0)
    head = f"{tasks:,} tasks"
    if a:
        head += (
            f" from {sum(a.values()):,} arrivals ({a.get('generation', 0):,} generation requests and "
            f"{chat:,} chat turns, {tool:,} of them tool-backed)"
        )
    parts = []
    if a.get("generation") or t.get("generation"):
        parts.append(f"{t.get('generation', 0):,} from generation requests")
        refused = a.get("generation", 0) - t.get("generation", 0)
        if refused > 0:
            parts[-1] += f" ({refused:,} refused before a task existed)"
    if tool:
        parts.append(f"{t.get('tool_chat', 0):,} started by tool-backed chat turns")
    reruns = {k: t.get(k, 0) for k in ("retry", "resubmit", "duplicate_heavy")}
    if any(reruns.values()):
        parts.append(
            f"{sum(reruns.values()):,} users' reruns ({reruns['retry']:,} retries after a failure, "
            f"{reruns['resubmit']:,} resubmits while running, {reruns['duplicate_heavy']:,} "
            "heavier duplicates)"
        )
    parts += [f"{n:,} {TASK_SOURCES.get(k, k)}" for k, n in t.items() if k not in ("generation", "tool_chat", *reruns)]
    return (
        head
        + (": " + "; ".join(parts) if parts else "")
        + (". Chat turns are billed apart, not tasks." if chat else ".")
    )


def _kv(d: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v}" for k, v in sorted(d.items()))


class Run:
    """The wiring of one run. Kept as an object so tests can look inside."""

    def __init__(
        self, scenario: Scenario, *, seed: int | None = None, tasks: int | None = None, realtime: float | None = None
    ):
        self.sc = scenario
        self.seed = scenario.seed if seed is None else int(seed)
        self.max_tasks = scenario.tasks if tasks is None else int(tasks)
        check_run_bounds(scenario, self.max_tasks)
        self.streams = Streams(self.seed)
        if realtime:
            self.env: simpy.Environment = simpy.rt.RealtimeEnvironment(factor=1.0 / realtime, strict=False)
        else:
            self.env = simpy.Environment()
        self.realtime = realtime
        self.clock = SimClock(self.env)
        self.store = StreamingStore(tombstones=TOMBSTONES)
        self.catalog = default_catalog()
        names = list(self.catalog.providers())
        unknown = sorted(set(scenario.providers) | {o.provider for o in scenario.outages})
        unknown = [n for n in unknown if n not in names]
        if unknown:
            raise ScenarioError(
                f"{scenario.path}: key 'farm.providers.{unknown[0]}': no such provider in the "
                f"catalogue (known: {', '.join(names)})"
            )
        category = {m.id: m.category for m in self.catalog.models}
        self.farm = Farm(
            self.env,
            self.clock,
            self.streams,
            names,
            scenario.provider_config,
            lambda model: category.get(model, "image"),
            scenario.callbacks,
            scenario.outages,
        )
        self.svc = LifecycleService(
            self.store,
            self.clock,
            self.farm.providers,
            self.catalog,
            scenario.policy,
            self.farm.secrets,
            callbacks_enabled=scenario.callbacks,
            retry_seed=self.seed,
        )
        self.farm.deliver = self.svc.handle_callback
        if scenario.policy.upstream_cancel:  # submissions carry a Cancel-After deadline: the category's timeout
            self.farm.deadline_for = lambda cat: upstream_cancel.cancel_after_s(scenario.policy, cat)
        self.writer: BatchWriter | None = None
        self.population = Population(
            self.env, self.svc, self.catalog, scenario, self.streams, self._read_task, self._pin
        )
        self.script_tasks: list[int] = []
        self.script_done = not scenario.script

    def _read_task(self, task_id: int):
        with self.store.begin() as tx:
            return tx.get_task(task_id)

    def _pin(self, task_id: int, on: bool) -> None:
        if self.writer is not None:
            self.writer.pin(task_id, on)

    def start(self, engine=None) -> BatchWriter | None:
        """Wire the batch writer (and the farm's job records) to engine, create the
        accounts and start arrivals (or the script), polling and flushing. The
        caller runs the environment; every flush commits a consistent cut.
        Without an engine the run stays in memory (the benchmark's memory mode)."""
        sc, env, farm = self.sc, self.env, self.farm
        if engine is not None:
            self.writer = BatchWriter(
                engine,
                self.store,
                sc.policy,
                realtime=bool(self.realtime),
                quiet=lambda t: farm.quiet(t.provider, t.upstream_task_id),
                forget=lambda t: farm.forget(t.provider, t.upstream_task_id),
                jobs=farm.job_rows,
                reads=NotificationReads.for_behaviour(self.streams, sc.behaviour),
                now=self.clock.now,
            )
            farm.record_jobs = True
        self.population.create_accounts()
        if sc.script:
            self.population.arrivals_done = True
            env.process(self.script())
        else:
            env.process(self.population.arrivals(sc.horizon_s if sc.horizon_s > 0 else float("inf"), self.max_tasks))
        env.process(self.poller())
        if engine is not None:
            env.process(self.flusher())
        return self.writer

    # --- processes -----------------------------------------------------------------

    def poller(self):
        tick = self.sc.poll_tick_s
        while True:
            yield self.env.timeout(tick)
            self.svc.poll()

    def flusher(self):
        # Batch mode writes once FLUSH_MIN_TASKS new tasks exist (or an hour went
        # by): a commit per simulated minute made fsync the bulk of a long run.
        last_top, last_at = 0, 0.0
        while True:
            if self.realtime:
                yield self.env.timeout(REALTIME_FLUSH_WALL_S * self.realtime)
            else:
                yield self.env.timeout(FLUSH_EVERY_S)
                top = self.store.last_id("ai_task")
                if top - last_top < FLUSH_MIN_TASKS and self.env.now - last_at < FLUSH_MAX_GAP_S:
                    continue
                last_top, last_at = top, self.env.now
            self.writer.flush()
            if self.realtime:
                beat(self.writer.engine, os.getpid())

    def monitor(self, stop: simpy.Event, deadline: Callable[[], float], progress):
        horizon = self.sc.horizon_s
        while True:
            yield self.env.timeout(self.sc.poll_tick_s)
            pop = self.population
            if progress is not None:
                if not pop.arrivals_done:
                    frac = (pop.arrived / self.max_tasks) if self.max_tasks else self.env.now / max(horizon, 1)
                    progress(min(0.95, 0.95 * frac), "arrivals")
                else:
                    progress(0.96, f"draining ({self.store.active_count()} active)")
            if not (pop.arrivals_done and self.script_done):
                continue
            idle = not self.store.active_count() and pop.open_chats == 0 and not (self.writer and self.writer.pinned)
            if idle or self.env.now >= deadline():
                stop.succeed()
                return

    def script(self):
        from .scripted import play

        yield from play(self)
        self.script_done = True


def open_fresh(db_url: str, force: bool = False):
    """An engine on db_url with the schema and the simulation tables, for a run to
    write into; a target that already holds data is refused (rivya_core.targets),
    or with force a SQLite file is replaced."""
    ensure_fresh(db_url, force=force, command="a simulation run")
    engine = make_engine(db_url)
    relax_sqlite_sync(engine)
    try:
        init_db(engine)
        sim_metadata.create_all(engine)
        with engine.connect() as conn:
            if conn.scalar(select(func.count()).select_from(schema.ai_task)) or conn.scalar(
                select(func.count()).select_from(schema.account)
            ):
                raise RunError(
                    f"database {engine.url.render_as_string(hide_password=True)} already holds data; "
                    "a run writes into a fresh database"
                )
    except BaseException:
        engine.dispose()
        raise
    return engine


def run_scenario(
    scenario: Scenario,
    db_url: str,
    *,
    seed: int | None = None,
    tasks: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    realtime: float | None = None,
    force: bool = False,
    processes: Sequence[Callable[[Run], Any]] = (),
) -> RunSummary:
    """Run scenario into db_url and nowhere else (its sim_run row records scenario, seed and
    fingerprint: what `replay` needs). processes: more SimPy processes on the run's clock, each
    process(run) started with the run's own (the demo's dying submission worker)."""
    wall0 = time.perf_counter()
    run = Run(scenario, seed=seed, tasks=tasks, realtime=realtime)
    engine = open_fresh(db_url, force=force)
    try:
        summary = _execute(run, engine, progress, wall0, processes)
    finally:
        engine.dispose()
    path = sqlite_path(db_url)
    if path is not None and not realtime:
        compact_sqlite(path)
    return summary


def run_in_tempdir(
    scenario: Scenario, *, seed: int | None = None, tasks: int | None = None, prefix: str = "rivya-run-"
) -> RunSummary:
    """run_scenario into a temporary SQLite file, gone afterwards (chaos seeds,
    policy comparisons, replays: only the summary is kept)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return run_scenario(scenario, f"sqlite:///{Path(tmp) / 'run.db'}", seed=seed, tasks=tasks)


def _execute(run: Run, engine, progress, wall0: float, processes: Sequence[Callable[[Run], Any]] = ()) -> RunSummary:
    sc, env = run.sc, run.env
    writer = run.start(engine)
    for process in processes:
        env.process(process(run))
    ended_at: list[float] = []

    def deadline() -> float:
        if not ended_at:
            ended_at.append(env.now)
        return ended_at[0] + drain_seconds(sc)

    stop = env.event()
    env.process(run.monitor(stop, deadline, progress))
    with run_pace():  # fewer garbage collections: most of a run's garbage is acyclic
        env.run(until=stop)
    writer.flush(final=True)
    if progress is not None:
        progress(0.98, "audit")
    report = audit(engine, sc.policy)  # not recorded: a stored audit holds wall times, not in a run's bytes
    with engine.connect() as conn:
        left = conn.scalar(
            select(func.count())
            .select_from(schema.ai_task)
            .where(schema.ai_task.c.status.in_([str(s) for s in ACTIVE]))
        )
    summary = _summarize(run, writer, report, left == 0)
    summary.wall_seconds = time.perf_counter() - wall0
    write_sim_run(
        engine,
        {
            "scenario_name": sc.name,
            "scenario_toml": sc.to_toml(),
            "seed": run.seed,
            "tasks": run.max_tasks,
            "fingerprint": summary.fingerprint,
            "started_at": run.clock.at(0),
            "finished_at": run.clock.now(),
            "summary": json.loads(json.dumps(summary.stored(), default=str)),
        },
    )
    if run.realtime:
        end_beat(engine)
    if progress is not None:
        progress(1.0, "done")
    return summary


def _summarize(run: Run, writer: BatchWriter, report, live_ok: bool) -> RunSummary:
    k = writer.kpis
    outcomes = dict(k.by_outcome)
    rejected = {o: n for o, n in outcomes.items() if o not in ("applied", "duplicate", "deferred", "progress")}
    users = dict(run.population.stats)
    insufficient = k.insufficient + users.get("chat_refused", 0)
    flows = k.flows
    net = flows.task_charged - flows.task_refunded + flows.chat_charged
    kpis = {
        "revenue": net,
        "refunds": flows.task_refunded,  # task refunds (chat differences are settlement, not policy)
        "failures_without_refund": k.failed_without_refund,
        "insufficient_credit_rejections": insufficient,
        "user_visible_failure_rate": (k.user_visible_failures / k.tasks) if k.tasks else 0.0,
        "time_to_terminal_mean_s": k.mean_latency(),
        "time_to_terminal_p95_s": k.percentile(0.95),
        "stuck_tasks": k.stuck,
        "notifications": k.notifications,
    }
    run.farm.settle_bills()
    per_model = kpis_def.run_money(run.catalog, run.sc.policy, k.credits_by_model, k.chat_tokens, run.farm.billing)
    total = cost.totals(per_model)
    kpis.update(
        {
            "revenue_money": round(cost.money(net, run.sc.policy), 6),
            "provider_cost": round(total.provider_cost, 6),
            "margin": round(cost.money(net, run.sc.policy) - total.provider_cost, 6),
            "cost_saved": round(total.cost_saved, 6),
        }
    )
    return RunSummary(
        fingerprint=writer.fingerprint(),
        seed=run.seed,
        scenario_name=run.sc.name,
        tasks=k.tasks,
        sim_seconds=round(run.env.now, 3),
        counts_by_state=dict(k.by_state),
        counts_by_outcome=outcomes,
        credits={
            "charged": flows.task_charged,
            "refunded": flows.task_refunded,
            "chat_charged": flows.chat_charged,
            "chat_reserved": flows.chat_reserved,
            "chat_overrun": flows.chat_overrun,
            "chat_refunded": flows.chat_refunded,
            "net": net,
            "granted": flows.granted,
        },
        completion_paths=dict(k.paths),
        deferrals=k.events.get("deferred", 0),
        rejected_callbacks=rejected,
        latency_percentiles={"p50": k.percentile(0.5), "p90": k.percentile(0.9), "p99": k.percentile(0.99)},
        violations=[{"kind": f.kind, "message": f.message, "count": f.count} for f in report.findings],
        liveness_ok=live_ok,
        kpis=kpis,
        events=dict(k.events),
        farm={
            "sent": dict(run.farm.stats.sent),
            "dropped": dict(run.farm.stats.dropped),
            "submit_faults": dict(run.farm.stats.submit_faults),
            "outcomes": dict(run.farm.stats.outcomes),
        },
        users=users,
        arrivals=dict(sorted(run.population.arrivals_by_kind.items())),
        money=cost.by_group(per_model, run.catalog),
        task_sources=dict(sorted(run.population.task_sources.items())),
    )


def _sim_databases() -> list[Path]:
    """The SQLite files a fingerprint is looked up in: directly under data/ and the runs folder
    (RIVYA_RUNS_DIR), as the dashboard's data source lists them."""
    found = [*sorted((ROOT / "data").glob("*.db")), *sorted(runs_dir().glob("*.db"))]
    return [p for p in dict.fromkeys(p.resolve() for p in found) if p.name != "jobs.db"]


def _recorded_in(path: Path) -> list[dict[str, Any]]:
    from .writer import read_sim_runs

    try:
        engine = make_engine(f"sqlite:///{path}", read_only=True)
    except Exception:  # noqa: BLE001 - not a database we can open: not one to look in
        return []
    try:
        return read_sim_runs(engine)
    except Exception:  # noqa: BLE001 - not SQLite, or not ours
        return []
    finally:
        engine.dispose()


def find_recorded(target: str) -> dict[str, Any]:
    """The recorded run `replay` re-runs: the last sim_run row of a database URL, or the run
    with a (unique prefix of a) fingerprint among the simulation databases under data/ and the
    runs folder (a run elsewhere is replayed by its database URL)."""
    if "://" in target or target.endswith(".db"):
        from .writer import read_sim_runs

        path = sqlite_path(target)
        if path is not None and not path.is_file():
            raise RivyaError(f"no SQLite database at {path}", code="replay_not_found")
        engine = make_engine(target, read_only=True)  # replay only reads the recorded run
        try:
            runs = read_sim_runs(engine)
        except Exception as exc:  # noqa: BLE001 - any driver error: one line
            raise RivyaError(f"cannot read {target}: {type(exc).__name__}", code="replay_unreadable") from None
        finally:
            engine.dispose()
        if not runs:
            raise RivyaError(f"{target} holds no recorded simulation run", code="replay_not_found")
        return runs[-1]
    found: dict[str, dict[str, Any]] = {}
    if target.isalnum():
        for path in _sim_databases():
            for rec in _recorded_in(path):
                if str(rec.get("fingerprint", "")).startswith(target):
                    found.setdefault(rec["fingerprint"], rec)
    if len(found) != 1:
        why = "no recorded run" if not found else "more than one recorded run"
        raise RivyaError(
            f"{why} with fingerprint {target!r} in the simulation databases under data/ and "
            f"{runs_dir()} (give the run's database URL instead)",
            code="replay_not_found",
        )
    return next(iter(found.values()))


__all__ = [
    "Run",
    "RunSummary",
    "explain_tasks",
    "RunError",
    "open_fresh",
    "run_scenario",
    "run_in_tempdir",
    "find_recorded",
    "drain_seconds",
]
