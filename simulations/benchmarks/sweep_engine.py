"""The Dask engine (`bench --engine --jobs 20 --tasks 2000`): jobs per minute of a sweep in this
process and on a local cluster of 1 and of 2 workers."""

from __future__ import annotations

import time
from typing import Any

from ..scenarios import load_scenario


def engine_bench(jobs: int, tasks: int, scenario: str = "baseline") -> dict[str, Any]:
    """Jobs per minute of a two-policy sweep (jobs/2 replications of `tasks` arrivals)
    run in this process without the engine, then on a local Dask cluster of 1 and of
    2 workers (cluster start-up timed apart). The engine's per-job overhead is the
    1-worker cluster's time per job minus the in-process time per job."""
    from rivya_core.policy import BillingPolicy

    from ..engine import local_cluster, run_jobs
    from ..scenarios import POLICY_DIR
    from ..sweep import Sweep

    sweep = Sweep(
        load_scenario(scenario),
        (BillingPolicy.load(POLICY_DIR / "default.toml"), BillingPolicy.load(POLICY_DIR / "no_refunds.toml")),
        replications=max(1, jobs // 2),
        tasks=tasks,
    )
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


__all__ = ["engine_bench"]
