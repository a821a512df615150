"""Where the simulation sandbox keeps its files: the checkout's root and the runs folder.

The runs folder (RIVYA_RUNS_DIR, else data/runs) holds the lab's run databases, its sweeps and
the background jobs' `jobs.db`; every module that reads or writes there asks `runs_dir()`, so a
test or a deployment moves all of them with one variable.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def runs_dir() -> Path:
    return Path(os.environ.get("RIVYA_RUNS_DIR") or ROOT / "data" / "runs")


__all__ = ["ROOT", "runs_dir"]
