"""The lifecycle against a bare SimPy model (`bench`, the default benchmark).

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

The postgres mode writes into a database of its own (common.scratch_postgres: a unique name,
dropped when the mode ends), so concurrent benchmarks and test runs never share one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import simpy

from rivya_core import rules
from rivya_core.domain import TERMINAL, TaskStatus

from ..gctune import run_pace
from ..paths import ROOT
from ..scenarios import Scenario
from ..streams import Streams
from ..users import Population
from .common import BenchError, peak_rss_mib, pg_reachable, scratch_postgres, workload

MODES = ("bare", "memory", "sqlite", "postgres")


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
    from ..runner import Run, open_fresh

    run = Run(sc)
    env, store = run.env, run.store
    engine = open_fresh(url) if url is not None else None
    try:
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
        return _result(mode, tasks, ok, latency, t0, c0, env.now)
    finally:
        if engine is not None:
            engine.dispose()  # before the scratch database is dropped


def _result(mode: str, tasks: int, ok: int, latency: float, t0: float, c0: float, sim_s: float) -> dict[str, Any]:
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "mode": mode,
        "tasks": tasks,
        "succeeded": ok,
        "latency_sum_s": round(latency, 1),
        "sim_s": round(sim_s, 1),
        "wall_s": wall,
        "cpu_s": cpu,
        "rate": tasks / wall if wall else 0.0,
        "cpu_rate": tasks / cpu if cpu else 0.0,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


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
        with scratch_postgres("lifecycle") as url:
            return run_full(sc, mode, url)
    raise BenchError(f"unknown mode {mode!r}")


# --- the parent: one child process per mode and repetition -------------------------


def _child(mode: str, tasks: int, workdir: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "simulations.benchmarks", "--child", mode, "--tasks", str(tasks), "--workdir", workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"bench mode {mode} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(
    tasks: int, reps: int = 3, modes: tuple[str, ...] | None = None, postgres: bool | None = None, progress: Any = None
) -> dict[str, Any]:
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
        rows.append(
            {
                "mode": mode,
                "tasks": rs[0]["tasks"],
                "succeeded": rs[0]["succeeded"],
                "latency_sum_s": rs[0]["latency_sum_s"],
                "rate": statistics.median(r["rate"] for r in rs),
                "cpu_rate": statistics.median(r["cpu_rate"] for r in rs),
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "consistent": len({(r["tasks"], r["succeeded"]) for r in rs}) == 1,
            }
        )
    base = rows[0] if rows and rows[0]["mode"] == "bare" else None
    for row in rows:
        row["ratio"] = row["rate"] / base["rate"] if base and base["rate"] else None
        row["cpu_ratio"] = row["cpu_rate"] / base["cpu_rate"] if base and base["cpu_rate"] else None
    return {"tasks": tasks, "reps": reps, "modes": rows, "runs": runs, "postgres_skipped": skipped}


def render(report: dict[str, Any]) -> str:
    lines = [
        f"bench: {report['tasks']} tasks, median of {report['reps']} repetitions",
        f"{'mode':9} {'tasks':>8} {'tasks/s':>10} {'x bare':>7} {'cpu t/s':>10} {'x bare':>7} {'peak MiB':>9}",
    ]
    for r in report["modes"]:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        cratio = f"{r['cpu_ratio']:.3f}" if r["cpu_ratio"] is not None else "-"
        lines.append(
            f"{r['mode']:9} {r['tasks']:>8} {r['rate']:>10,.0f} {ratio:>7} {r['cpu_rate']:>10,.0f} "
            f"{cratio:>7} {r['peak_rss_mib']:>9,.0f}"
        )
    if report.get("postgres_skipped"):
        lines.append("postgres: not reachable, skipped")
    return "\n".join(lines)


__all__ = ["MODES", "bench", "render", "run_bare", "run_full", "run_mode"]
