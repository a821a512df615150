"""The million-task database (`bench --make-db PATH --tasks 1000000`): the baseline scenario
(without its one-day horizon, so the task count decides) into a fresh SQLite file, the database
the dashboard, bulk and backtest measurements use."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..scenarios import load_scenario
from .common import peak_rss_mib


def make_db(path: str, tasks: int, scenario: str = "baseline", force: bool = False) -> dict[str, Any]:
    """Run `scenario` for `tasks` tasks into a fresh SQLite file at path; a file that
    holds data is refused unless force (rivya_core.targets)."""
    from ..runner import run_scenario

    sc = replace(load_scenario(scenario), horizon_s=0)
    t0 = time.perf_counter()
    summary = run_scenario(sc, f"sqlite:///{Path(path).resolve()}", tasks=tasks, force=force)
    wall = time.perf_counter() - t0
    return {
        "scenario": scenario,
        "tasks": summary.tasks,
        "wall_s": round(wall, 1),
        "tasks_per_s": round(summary.tasks / wall, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "violations": len(summary.violations),
        "liveness_ok": summary.liveness_ok,
        "fingerprint": summary.fingerprint,
    }


__all__ = ["make_db"]
