"""Benchmarks: the lifecycle against SimPy's own limit, and a million-task database.

`python -m simulations bench --tasks N [--reps R] [--json]` runs each mode in
its own child process (so the child's `ru_maxrss` is that mode's peak memory),
on one workload with the same draws:

1. bare     -- a bare SimPy model: the same arrival process (the population's
               own arrival code and draws), the same provider slots and the same
               per-task timeouts (generation, callback delay, drawn from the
               farm's keyed streams; submission takes no simulated time in the
               farm), and no lifecycle work at all;
2. memory   -- the full lifecycle (validation, task, ledger, signed callbacks,
               notifications, events) on the in-memory store;
3. sqlite   -- the same, streamed to SQLite by the real batch writer;
4. postgres -- the same to PostgreSQL, when it is reachable.

Rates are medians over R repetitions; the ratio to (1) is the figure to quote.
Each mode also reports the summed task latency, which only matches across
modes when every mode saw the same draws.

`python -m simulations bench --bulk sqlite:///big.db` times bulk remediation on a copy
of that SQLite database (the file given is only read): dry runs of `refund` over
every failed task and over every finished one, and of `mark-failed` over every
succeeded one, then the execution
of the refund incident (under `refund_everything`, so content-policy failures are
really refunded and the rest refused, each with its support_action event), and a
second execution that must change nothing.

`python -m simulations bench --make-db PATH --tasks 1000000` runs the baseline
scenario (without its one-day horizon, so the task count decides) into a fresh
SQLite file: the database the dashboard measurements use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import simpy

from rivya_core import rules
from rivya_core.cli import OneLineParser, number
from rivya_core.domain import TERMINAL, RivyaError, TaskStatus

from .gctune import run_pace
from .scenarios import Scenario, load_scenario, parse_scenario
from .streams import Streams
from .users import Population

MODES = ("bare", "memory", "sqlite", "postgres")
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_BENCH_DB = "rivya_bench"

# Generation only, no faults, no behaviours, everyone rich: every arrival is one
# task with id = arrival number, so the bare model can key the farm's draws.
WORKLOAD = """
[scenario]
description = "benchmark workload"
seed = 6
horizon_s = 0
tasks = {tasks}
callbacks = true
[population]
users = 500
balance = [100000000, 100000000]
[arrivals]
rate_per_hour = 36000
pattern = "flat"
[mix]
image = 0.7
video = 0.1
audio = 0.2
chat = 0
tool_chat = 0
[behaviour]
retry_failed = 0
resubmit_running = 0
duplicate_heavy = 0
[farm]
capacity = 2000
"""


class BenchError(RivyaError):
    code = "bench_failed"
    user_correctable = True


def workload(tasks: int) -> Scenario:
    return parse_scenario(WORKLOAD.format(tasks=int(tasks)), "<bench>", "bench")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- (1) the bare SimPy model ------------------------------------------------------


class _BarePopulation(Population):
    """The population's own arrival process and draws; each arrival starts a bare job."""

    def __init__(self, env: simpy.Environment, catalog: Any, sc: Scenario, streams: Streams, job: Any):
        super().__init__(env, None, catalog, sc, streams, lambda _i: None, lambda _i, _on: None)
        self.user_ids = list(range(1, sc.population.users + 1))  # same length -> same user draws
        self._job = job

    def arrive(self, intent: Any) -> None:
        self.arrived += 1
        self._job(self.arrived, intent.request.model)


def run_bare(sc: Scenario) -> dict[str, Any]:
    from rivya_core.catalog import default_catalog

    catalog = default_catalog()
    env = simpy.Environment()
    streams = Streams(sc.seed)
    spec = {m.id: (m.provider, m.category) for m in catalog.models}
    slots = {name: simpy.Resource(env, capacity=sc.provider_config(name).capacity) for name in catalog.providers()}
    done = [0, 0.0]

    def job(n: int, model: str):
        provider, category = spec[model]
        cfg = sc.provider_config(provider)
        ref = rules.task_ref(n)
        # the farm's draws for this job, in the farm's order (farm.JOB_DRAWS): generation
        # time is the 4th draw of the job's Random, the final callback's delay the 18th
        rng = streams.keyed(f"job:{provider}", ref)
        u = [rng.random() for _ in range(18)]
        gen_s = cfg.gen_range(category).draw(u[3])
        delay = cfg.callback_delay_s.draw(u[17])
        start = env.now
        with slots[provider].request() as req:
            yield req
            yield env.timeout(gen_s)
        yield env.timeout(delay)
        done[0] += 1
        done[1] += env.now - start

    pop = _BarePopulation(env, catalog, sc, streams, lambda n, model: env.process(job(n, model)))
    env.process(pop.arrivals(float("inf"), sc.tasks))
    t0, c0 = time.perf_counter(), time.process_time()
    with run_pace():  # the runner's garbage-collector pace, in every mode alike
        env.run()
    return _result("bare", done[0], done[0], done[1], t0, c0, env.now)


# --- (2)-(4) the full lifecycle --------------------------------------------------------


def run_full(sc: Scenario, mode: str, url: str | None = None) -> dict[str, Any]:
    """The runner's own wiring (Run.start, Run.monitor): with a url, the real batch
    writer and the farm's job records, as `python -m simulations run` writes them."""
    from .runner import Run, open_fresh

    run = Run(sc)
    env, store = run.env, run.store
    engine = open_fresh(url) if url is not None else None
    run.start(engine)
    stop = env.event()
    env.process(run.monitor(stop, lambda: float("inf"), None))
    t0, c0 = time.perf_counter(), time.process_time()
    with run_pace():
        env.run(until=stop)
    if run.writer is not None:
        run.writer.flush(final=True)
        k = run.writer.kpis
        tasks, ok, latency = k.tasks, k.by_state.get(TaskStatus.SUCCESS, 0), sum(k.latencies)
    else:
        terminal = [t for t in store.tasks.values() if t.status in TERMINAL]
        tasks = len(terminal)
        ok = sum(t.status == TaskStatus.SUCCESS for t in terminal)
        latency = sum((t.finished_at - t.created_at).total_seconds() for t in terminal)
    out = _result(mode, tasks, ok, latency, t0, c0, env.now)
    if engine is not None:
        engine.dispose()
    return out


def _result(mode: str, tasks: int, ok: int, latency: float, t0: float, c0: float, sim_s: float) -> dict[str, Any]:
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": mode, "tasks": tasks, "succeeded": ok, "latency_sum_s": round(latency, 1),
            "sim_s": round(sim_s, 1), "wall_s": wall, "cpu_s": cpu, "rate": tasks / wall if wall else 0.0,
            "cpu_rate": tasks / cpu if cpu else 0.0, "peak_rss_mib": round(peak_rss_mib(), 1)}


def run_mode(mode: str, tasks: int, workdir: str) -> dict[str, Any]:
    sc = workload(tasks)
    if mode == "bare":
        return run_bare(sc)
    if mode == "memory":
        return run_full(sc, mode)
    if mode == "sqlite":
        path = Path(workdir) / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return run_full(sc, mode, f"sqlite:///{path}")
    if mode == "postgres":
        return run_full(sc, mode, _fresh_pg())
    raise BenchError(f"unknown mode {mode!r}")


def _fresh_pg() -> str:
    """An empty database of our own on the local server (other work uses `test`)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {PG_BENCH_DB}"))
    finally:
        admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_BENCH_DB}"


def pg_reachable() -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except (SQLAlchemyError, OSError):
        return False
    finally:
        engine.dispose()


# --- the parent: one child process per mode and repetition -------------------------


def _child(mode: str, tasks: int, workdir: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "simulations.bench", "--child", mode, "--tasks", str(tasks), "--workdir", workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"bench mode {mode} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(tasks: int, reps: int = 3, modes: tuple[str, ...] | None = None, postgres: bool | None = None,
          progress: Any = None) -> dict[str, Any]:
    if tasks < 1 or reps < 1:
        raise BenchError("--tasks and --reps must be at least 1")
    modes = tuple(modes or MODES)
    skipped = "postgres" in modes and not (pg_reachable() if postgres is None else postgres)
    if skipped:
        modes = tuple(m for m in modes if m != "postgres")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="rivya-bench-") as workdir:
        for rep in range(reps):
            for mode in modes:  # interleaved, so a noisy spell hits every mode alike
                r = _child(mode, tasks, workdir)
                runs[mode].append(r)
                if progress:
                    progress(f"rep {rep + 1}/{reps} {mode}: {r['tasks']} tasks, {r['rate']:,.0f}/s")
    rows = []
    for mode in modes:
        rs = runs[mode]
        rows.append({"mode": mode, "tasks": rs[0]["tasks"], "succeeded": rs[0]["succeeded"],
                     "latency_sum_s": rs[0]["latency_sum_s"],
                     "rate": statistics.median(r["rate"] for r in rs),
                     "cpu_rate": statistics.median(r["cpu_rate"] for r in rs),
                     "wall_s": statistics.median(r["wall_s"] for r in rs),
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                     "consistent": len({(r["tasks"], r["succeeded"]) for r in rs}) == 1})
    base = rows[0] if rows and rows[0]["mode"] == "bare" else None
    for row in rows:
        row["ratio"] = row["rate"] / base["rate"] if base and base["rate"] else None
        row["cpu_ratio"] = row["cpu_rate"] / base["cpu_rate"] if base and base["cpu_rate"] else None
    return {"tasks": tasks, "reps": reps, "modes": rows, "runs": runs, "postgres_skipped": skipped}


def render(report: dict[str, Any]) -> str:
    lines = [f"bench: {report['tasks']} tasks, median of {report['reps']} repetitions",
             f"{'mode':9} {'tasks':>8} {'tasks/s':>10} {'x bare':>7} {'cpu t/s':>10} {'x bare':>7} {'peak MiB':>9}"]
    for r in report["modes"]:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        cratio = f"{r['cpu_ratio']:.3f}" if r["cpu_ratio"] is not None else "-"
        lines.append(f"{r['mode']:9} {r['tasks']:>8} {r['rate']:>10,.0f} {ratio:>7} {r['cpu_rate']:>10,.0f} "
                     f"{cratio:>7} {r['peak_rss_mib']:>9,.0f}")
    if report.get("postgres_skipped"):
        lines.append("postgres: not reachable, skipped")
    return "\n".join(lines)


# --- the million-task database -----------------------------------------------------


def make_db(path: str, tasks: int, scenario: str = "baseline", force: bool = False) -> dict[str, Any]:
    """Run `scenario` for `tasks` tasks into a fresh SQLite file at path; a file that
    holds data is refused unless force (rivya_core.targets)."""
    from .runner import run_scenario

    sc = replace(load_scenario(scenario), horizon_s=0)
    t0 = time.perf_counter()
    summary = run_scenario(sc, f"sqlite:///{Path(path).resolve()}", tasks=tasks, force=force)
    wall = time.perf_counter() - t0
    return {"scenario": scenario, "tasks": summary.tasks, "wall_s": round(wall, 1),
            "tasks_per_s": round(summary.tasks / wall, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "violations": len(summary.violations), "liveness_ok": summary.liveness_ok,
            "fingerprint": summary.fingerprint}


# --- the dashboard's reads on a big database ----------------------------------------

LOOKUP_TARGET_S = 0.05
PAGE_TARGET_S = 0.5
AUDIT_TARGET_S = 10.0


def dashboard_calls(engine: Any) -> list[tuple[str, str, Any]]:
    """(kind, name, call) for every dashboard data function, on sample rows of the database."""
    from sqlalchemy import func, select

    from rivya_core import audit as au
    from rivya_core.read import alerts as al
    from rivya_core.read import incidents
    from rivya_core.read import ledger_views as lv
    from rivya_core.read import queries as q
    from rivya_core.read import reports as rp
    from rivya_core.read import user_view as uv
    from rivya_core.read.diagnose import diagnose
    from rivya_core.stores.schema import account, ai_task, chat_message, chat_session, credit_ledger

    with engine.connect() as conn:
        top = conn.scalar(select(func.max(ai_task.c.id)))
        tid, upstream, uid = conn.execute(select(ai_task.c.id, ai_task.c.upstream_task_id, ai_task.c.user_id)
                                          .where(ai_task.c.id >= top // 2, ai_task.c.upstream_task_id.is_not(None))
                                          .order_by(ai_task.c.id).limit(1)).one()
        email = conn.scalar(select(account.c.email).where(account.c.id == uid))
        busiest = conn.scalar(select(credit_ledger.c.user_id).group_by(credit_ledger.c.user_id)
                              .order_by(func.count().desc()).limit(1))
        sid = conn.scalar(select(func.max(chat_session.c.id))) or 1
        has_msgs = conn.scalar(select(func.count()).select_from(chat_message))
    now = q.resolve_now(engine, None)
    e = engine
    lookups = [
        ("find_tasks(id)", lambda: q.find_tasks(e, str(tid))),
        ("find_tasks(upstream)", lambda: q.find_tasks(e, upstream)),
        ("find_tasks(email)", lambda: q.find_tasks(e, email)),
        ("task_detail", lambda: q.task_detail(e, tid)),
        ("find_accounts(email)", lambda: q.find_accounts(e, email)),
    ]
    pages = [
        ("queries.active_studio", lambda: q.active_studio(e)),
        ("queries.history", lambda: q.history(e, uid)),
        ("queries.history(all)", lambda: q.history(e)),
        ("queries.notifications_centre", lambda: q.notifications_centre(e, uid)),
        ("queries.unread_counts", lambda: q.unread_counts(e, uid)),
        ("queries.recent_generations", lambda: q.recent_generations(e)),
        ("reports.tasks_by_state", lambda: rp.tasks_by_state(e)),
        ("reports.throughput", lambda: rp.throughput(e)),
        ("reports.failures_by_code", lambda: rp.failures_by_code(e)),
        ("reports.ledger_by_type", lambda: rp.ledger_by_type(e)),
        ("reports.credit_totals", lambda: rp.credit_totals(e)),
        ("reports.audit_summary", lambda: rp.audit_summary(e)),
        ("queries.reference_now", lambda: q.reference_now(e)),
        ("reports.filter_options", lambda: rp.filter_options(e)),
        ("reports.active_tasks", lambda: rp.active_tasks(e, now=now)),
        ("ledger_views.account_overview", lambda: lv.account_overview(e, busiest)),
        ("ledger_views.balance_series", lambda: lv.balance_series(e, busiest)),
        ("ledger_views.ledger_page", lambda: lv.ledger_page(e, busiest, page=3)),
        ("ledger_views.chat_credits", lambda: lv.chat_credits(e)),
        ("ledger_views.chat_sessions", lambda: lv.chat_sessions(e)),
        ("ledger_views.chat_messages", lambda: lv.chat_messages(e, sid if has_msgs else None)),
        ("ledger_views.chat_gap_distribution", lambda: lv.chat_gap_distribution(e)),
        ("ledger_views.tool_backed_turns", lambda: lv.tool_backed_turns(e)),
        ("ledger_views.notification_kinds", lambda: lv.notification_kinds(e)),
        ("ledger_views.state_timeline", lambda: lv.state_timeline(e)),
        ("ledger_views.credit_flow", lambda: lv.credit_flow(e)),
        ("ledger_views.latency_histogram", lambda: lv.latency_histogram(e)),
        ("ledger_views.busiest_accounts", lambda: lv.busiest_accounts(e)),
        ("audit.conservation", lambda: au.conservation(e)),
        ("diagnose.diagnose", lambda: diagnose(e, tid)),
        ("alerts.alerts", lambda: al.alerts(e)),
        ("user_view.user_tasks", lambda: uv.user_tasks(e, busiest, limit=500)),
        ("user_view.user_tasks(FAILED, 7 days)", lambda: uv.user_tasks(
            e, busiest, statuses=("FAILED",), since=now - timedelta(days=7), limit=500)),
        ("user_view.outcome_seen", lambda: uv.outcome_seen(e, tid)),
        ("user_view.find_chat_messages", lambda: uv.find_chat_messages(e, email)),
        ("bulk.incidents", lambda: incidents.incidents(e)),
    ]
    return ([("lookup", n, f) for n, f in lookups] + [("page", n, f) for n, f in pages]
            + [("audit", "audit.audit", lambda: au.audit(e))])


def dashboard(url: str, reps: int = 3, only: str = "") -> dict[str, Any]:
    """Median wall time of each dashboard data function on the database at url."""
    from rivya_core.stores.db import make_engine

    engine = make_engine(url)
    target = {"lookup": LOOKUP_TARGET_S, "page": PAGE_TARGET_S, "audit": AUDIT_TARGET_S}
    out = []
    try:
        for kind, name, call in dashboard_calls(engine):
            if only and only not in name:
                continue
            times = []
            for _ in range(1 if kind == "audit" else reps):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            out.append({"kind": kind, "name": name, "median_s": round(med, 4), "target_s": target[kind],
                        "ok": med <= target[kind]})
    finally:
        engine.dispose()
    return {"url": url, "reps": reps, "calls": out}


def render_dashboard(report: dict[str, Any]) -> str:
    lines = [f"dashboard reads on {report['url']} (median of {report['reps']})"]
    for c in report["calls"]:
        lines.append(f"  {c['name']:38} {c['median_s'] * 1000:10,.1f} ms  (target {c['target_s'] * 1000:,.0f} ms)"
                     f"  {'ok' if c['ok'] else 'SLOW'}")
    return "\n".join(lines)


def growth(sizes: list[int], kinds: list[str], workdir: str) -> list[dict[str, Any]]:
    """A whole `python -m simulations run` of the generation-only workload (WORKLOAD:
    capacity well above the arrival rate, so queues stay stable) at each size into a
    fresh SQLite file or PostgreSQL database, each in its own process: tasks per
    wall second and per CPU second of the run (audit included) and its peak RSS."""
    from sqlalchemy import create_engine, text

    out = []
    scenario = Path(workdir) / "generation_only.toml"
    for n in sizes:
        scenario.write_text(WORKLOAD.format(tasks=int(n)), encoding="utf-8")
        for kind in kinds:
            if kind == "sqlite":
                path = Path(workdir) / f"growth-{n}.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
                url = f"sqlite:///{path}"
            else:
                name = f"rivya_growth_{os.getpid()}"
                admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    conn.execute(text(f"CREATE DATABASE {name}"))
                admin.dispose()
                url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            cmd = [sys.executable, "-c", _GROWTH_CHILD, str(scenario), url]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise BenchError(f"growth run {kind} {n} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append({"db": kind, "arrivals": n, "tasks": child["tasks"], "wall_s": round(wall, 1),
                        "tasks_per_s": round(child["tasks"] / wall, 1),
                        "cpu_tasks_per_s": round(child["tasks"] / child["cpu_s"], 1),
                        "peak_rss_mib": child["peak_rss_mib"], "violations": child["violations"],
                        "fingerprint": child["fingerprint"][:16]})
            if kind == "postgres":
                admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                admin.dispose()
            else:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
    return out


# the child of growth(): `python -m simulations run SCENARIO --db URL`, timed from inside
_GROWTH_CHILD = """
import json, resource, sys, time
from simulations.__main__ import main
import io, contextlib
c0 = time.process_time()
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    code = main(["run", sys.argv[1], "--db", sys.argv[2], "--json"])
s = json.loads(buf.getvalue())
print(json.dumps({"tasks": s["tasks"], "cpu_s": time.process_time() - c0, "violations": len(s["violations"]),
                  "fingerprint": s["fingerprint"],
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
sys.exit(0 if code in (0, 1) else code)
"""


def engine_bench(jobs: int, tasks: int, scenario: str = "baseline") -> dict[str, Any]:
    """Jobs per minute of a two-policy sweep (jobs/2 replications of `tasks` arrivals)
    run in this process without the engine, then on a local Dask cluster of 1 and of
    2 workers (cluster start-up timed apart). The engine's per-job overhead is the
    1-worker cluster's time per job minus the in-process time per job."""
    from rivya_core.policy import BillingPolicy

    from .engine import local_cluster, run_jobs
    from .scenarios import POLICY_DIR
    from .sweep import Sweep

    sweep = Sweep(load_scenario(scenario), (BillingPolicy.load(POLICY_DIR / "default.toml"),
                                            BillingPolicy.load(POLICY_DIR / "no_refunds.toml")),
                  replications=max(1, jobs // 2), tasks=tasks)
    work = sweep.jobs()
    out: dict[str, Any] = {"scenario": scenario, "jobs": len(work), "tasks_per_job": tasks}
    t0 = time.perf_counter()
    for job in work:
        job.fn(*job.args)
    out["in_process_s"] = round(time.perf_counter() - t0, 2)
    for n in (1, 2):
        t0 = time.perf_counter()
        cluster = local_cluster(n)
        started = time.perf_counter()
        try:
            res = run_jobs(work, scheduler=cluster.scheduler_address)
        finally:
            cluster.close()
        out[f"workers_{n}_s"] = round(time.perf_counter() - started, 2)
        out[f"workers_{n}_startup_s"] = round(started - t0, 2)
        out[f"workers_{n}_failed"] = sum(not r.ok for r in res)
    for key in ("in_process", "workers_1", "workers_2"):
        out[f"{key}_jobs_per_min"] = round(60 * len(work) / out[f"{key}_s"], 1)
    out["speedup_2_vs_1"] = round(out["workers_1_s"] / out["workers_2_s"], 2)
    out["engine_overhead_ms_per_job"] = round(1000 * (out["workers_1_s"] - out["in_process_s"]) / len(work), 1)
    return out
# --- bulk remediation on a big database ------------------------------------------------


BROAD_DAYS = 14  # bench --bulk: the window of the broad dry runs


def bulk(url: str) -> dict[str, Any]:
    """Dry-run and execution rates of rivya_core.support.bulk on a temporary copy of the SQLite database at url."""
    import sqlite3

    from rivya_core.policy import BillingPolicy
    from rivya_core.read import incidents
    from rivya_core.stores.db import sqlite_path
    from rivya_core.support import bulk as bulk_actions
    from rivya_core.wiring import service_for_url

    from . import recorded  # noqa: F401  (the recorded providers answer re-checks)

    src = sqlite_path(url)
    if src is None or not src.is_file():
        raise BenchError(f"--bulk needs an existing SQLite database file, not {url!r}")
    out: dict[str, Any] = {"url": url}
    with tempfile.TemporaryDirectory(prefix="rivya-bulk-") as tmp:
        copy = Path(tmp) / "bulk.db"
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as a, sqlite3.connect(copy) as b:
            a.backup(b)  # a consistent copy, WAL included
        curl = f"sqlite:///{copy}"
        svc = service_for_url(curl, create=True)  # create: the incident table on an older file
        svc.policy = BillingPolicy.load(str(Path(__file__).resolve().parent.parent / "data" / "policies"
                                            / "refund_everything.toml"))
        out["tasks"] = svc.store.engine.connect().exec_driver_sql("select count(*) from ai_task").scalar()
        # The broad dry runs cover the latest BROAD_DAYS of creation: a filter matching more than
        # incidents.MAX_TASKS is refused (narrow it), which on a million-task history the whole of it does.
        since = svc.judge_clock.now() - timedelta(days=BROAD_DAYS)
        for label, action, states, start in (("refund_failed", "refund", ("FAILED",), None),
                                             ("refund_all_finished", "refund", ("FAILED", "SUCCESS"), since),
                                             ("mark_failed_succeeded", "mark-failed", ("SUCCESS",), since)):
            flt = incidents.BulkFilter(status=states, since=start)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                p = bulk_actions.plan(svc, action, flt)
            except incidents.BulkError as exc:
                out[f"dry_run_{label}"] = {"filter": flt.describe(), "refused": str(exc)}
                continue
            out[f"dry_run_{label}"] = {"filter": flt.describe(), "matched": p.matched, "would_act": p.would_act,
                                        "would_refuse": p.would_refuse, "seconds": round(time.perf_counter() - t0, 3),
                                        "cpu_seconds": round(time.process_time() - c0, 3)}
        from rivya_core.read import alerts

        t0 = time.perf_counter()
        found = alerts.alerts(svc.store.engine, svc.policy)
        out["alerts"] = {"stuck": len(found.stuck), "degraded": len(found.degraded),
                         "seconds": round(time.perf_counter() - t0, 3)}
        flt = incidents.BulkFilter(status=("FAILED",))
        if "refused" in out["dry_run_refund_failed"]:
            out["execute_refund"] = {"refused": out["dry_run_refund_failed"]["refused"]}
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            r = bulk_actions.execute(svc, "refund", flt, operator="bench", reason="bulk benchmark", name="bench")
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            out["execute_refund"] = {"matched": r.matched, "acted": r.acted, "refused": r.refused,
                                     "credits_moved": r.credits_moved, "seconds": round(dt, 2),
                                     "cpu_seconds": round(dc, 2),
                                     "tasks_per_s": round(r.matched / dt, 1) if dt else None,
                                     "tasks_per_cpu_s": round(r.matched / dc, 1) if dc else None}
            t0 = time.perf_counter()
            again = bulk_actions.execute(svc, "refund", flt, operator="bench", reason="bulk benchmark", name="bench")
            out["execute_again"] = {"acted": again.acted, "refused": again.refused, "skipped": again.skipped,
                                    "seconds": round(time.perf_counter() - t0, 2)}
        out["load_average"] = [round(x, 1) for x in os.getloadavg()]
        svc.store.engine.dispose()
    return out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="measure the lifecycle against a bare SimPy model",
                       description=__doc__.split("\n\n")[1])
    _arguments(b)
    return b


def _arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--tasks", type=number("tasks"), default=20_000, help="tasks per run (default 20000)")
    b.add_argument("--reps", type=number("replications"), default=3, help="repetitions per mode; rates are medians (default 3)")
    b.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    b.add_argument("--json", action="store_true")
    b.add_argument("--make-db", metavar="PATH", help="instead: run the baseline scenario into a SQLite file")
    b.add_argument("--scenario", default="baseline", help="scenario for --make-db")
    b.add_argument("--force", action="store_true", help="with --make-db: replace a file that already holds data")
    b.add_argument("--dashboard", metavar="URL", help="instead: time the dashboard's data functions on URL")
    b.add_argument("--bulk", metavar="URL", help="instead: time bulk dry runs and executions on a copy of a "
                                                 "SQLite database")
    b.add_argument("--only", default="", help="with --dashboard: only calls whose name contains this")
    b.add_argument("--engine", action="store_true", help="instead: jobs per minute of a sweep in process and on a "
                   "local Dask cluster of 1 and 2 workers (--jobs, --tasks per job)")
    b.add_argument("--growth", metavar="SIZES", help="instead: whole runs of the generation-only workload at "
                   "these comma-separated sizes (e.g. 10000,100000) into --dbs")
    b.add_argument("--dbs", default="sqlite,postgres", help="with --growth: sqlite, postgres or both")
    b.add_argument("--jobs", type=int, default=40, help="with --engine: jobs in the sweep (default 40)")
    b.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    b.add_argument("--workdir", help=argparse.SUPPRESS)


def cmd_bench(a: argparse.Namespace) -> int:
    if a.child:  # internal: the parent passes its own temporary --workdir
        if not a.workdir or not Path(a.workdir).is_dir():
            raise BenchError("--child needs the --workdir directory its parent made")
        print(json.dumps(run_mode(a.child, a.tasks, a.workdir)))
        return 0
    if a.make_db:
        print(json.dumps(make_db(a.make_db, a.tasks, a.scenario, force=a.force)))
        return 0
    if a.growth:
        sizes = [int(x) for x in a.growth.split(",") if x.strip()]
        kinds = [k.strip() for k in a.dbs.split(",") if k.strip()]
        if not sizes or min(sizes) < 1 or not kinds or set(kinds) - {"sqlite", "postgres"}:
            raise BenchError("--growth takes sizes >= 1 and --dbs sqlite and/or postgres")
        with tempfile.TemporaryDirectory(prefix="rivya-growth-") as tmp:
            rows = growth(sizes, kinds, tmp)
        print(json.dumps(rows, indent=1) if a.json else "\n".join(json.dumps(r) for r in rows))
        return 0
    if a.engine:
        if a.jobs < 2 or a.tasks < 1:
            raise BenchError("--jobs must be at least 2 and --tasks at least 1")
        print(json.dumps(engine_bench(a.jobs, a.tasks, a.scenario), indent=1))
        return 0
    if a.bulk:
        print(json.dumps(bulk(a.bulk), indent=1))
        return 0
    if a.dashboard:
        rep = dashboard(a.dashboard, a.reps, a.only)
        print(json.dumps(rep, indent=1) if a.json else render_dashboard(rep))
        return 0
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise BenchError(f"unknown mode {bad[0]!r} (modes: {', '.join(MODES)})")
    report = bench(a.tasks, a.reps, modes, progress=None if a.json else lambda s: print(s, file=sys.stderr))
    print(json.dumps(report, indent=1) if a.json else render(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m simulations.bench")
    _arguments(ap)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # a usage error was printed in one line
        return int(exc.code or 0)
    try:
        return cmd_bench(args)
    except RivyaError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
