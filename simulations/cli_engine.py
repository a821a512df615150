"""What the experiment commands (sweep, compare, chaos) share on the command line:
the engine's flags and a progress bar on stderr."""

from __future__ import annotations

import argparse
import sys
import time


class Bar:
    """A simple progress bar on stderr (only when stderr is a terminal or forced)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.last = 0.0

    def __call__(self, frac: float, label: str) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and frac < 1.0):
            return
        self.last = now
        width = 30
        filled = int(width * max(0.0, min(1.0, frac)))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% {label[:40]:40}")
        if frac >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes of a local Dask cluster (default: one per core; 0: run in this process)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask cluster, e.g. tcp://host:8786 (its workers need this project)",
    )
    p.add_argument("--progress", action="store_true", help="show the progress bar even when not a terminal")


def progress_bar(a: argparse.Namespace) -> Bar:
    return Bar(a.progress or (sys.stderr.isatty() and not getattr(a, "json", False)))
