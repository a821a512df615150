"""`python -m simulations bench ...`: one command over the benchmarks of this package.

The default is the lifecycle against a bare SimPy model (lifecycle.py); `--make-db` writes the
million-task database (database.py), `--dashboard` times the pages' reads on it (dashboard.py),
`--bulk` bulk remediation on a copy of it (bulk.py), `--engine` the Dask engine
(sweep_engine.py), `--growth` whole runs as they grow (growth.py). `--child MODE` is internal:
one lifecycle mode in a process of its own (`python -m simulations.benchmarks --child ...`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rivya_core.cli import OneLineParser, number
from rivya_core.domain import RivyaError

from . import bulk, dashboard, database, growth, lifecycle, shipany_import, sweep_engine
from .common import BenchError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench", help="measure the lifecycle against a bare SimPy model", description=lifecycle.__doc__.split("\n\n")[1]
    )
    _arguments(b)
    return b


def _arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--tasks", type=number("tasks"), default=20_000, help="tasks per run (default 20000)")
    b.add_argument(
        "--reps", type=number("replications"), default=3, help="repetitions per mode; rates are medians (default 3)"
    )
    b.add_argument(
        "--modes", default=",".join(lifecycle.MODES), help="comma-separated subset of " + ",".join(lifecycle.MODES)
    )
    b.add_argument("--json", action="store_true")
    b.add_argument("--make-db", metavar="PATH", help="instead: run the baseline scenario into a SQLite file")
    b.add_argument("--scenario", default="baseline", help="scenario for --make-db")
    b.add_argument("--force", action="store_true", help="with --make-db: replace a file that already holds data")
    b.add_argument("--dashboard", metavar="URL", help="instead: time the dashboard's data functions on URL")
    b.add_argument(
        "--bulk", metavar="URL", help="instead: time bulk dry runs and executions on a copy of a SQLite database"
    )
    b.add_argument("--only", default="", help="with --dashboard: only calls whose name contains this")
    b.add_argument(
        "--engine",
        action="store_true",
        help="instead: jobs per minute of a sweep in process and on a "
        "local Dask cluster of 1 and 2 workers (--jobs, --tasks per job)",
    )
    b.add_argument(
        "--growth",
        metavar="SIZES",
        help="instead: whole runs of the generation-only workload at "
        "these comma-separated sizes (e.g. 10000,100000) into --dbs",
    )
    b.add_argument("--dbs", default="sqlite,postgres", help="with --growth: sqlite, postgres or both")
    b.add_argument("--jobs", type=int, default=40, help="with --engine: jobs in the sweep (default 40)")
    b.add_argument(
        "--import",
        dest="import_tasks",
        type=number("tasks"),
        metavar="N",
        help="instead: build a ShipAny-style SQLite source of N tasks and time `import shipany` of it "
        "into SQLite, then an incremental import of 1%% new tasks",
    )
    b.add_argument("--child", choices=lifecycle.MODES, help=argparse.SUPPRESS)
    b.add_argument("--workdir", help=argparse.SUPPRESS)


def cmd_bench(a: argparse.Namespace) -> int:
    if a.child:  # internal: the parent passes its own temporary --workdir
        if not a.workdir or not Path(a.workdir).is_dir():
            raise BenchError("--child needs the --workdir directory its parent made")
        print(json.dumps(lifecycle.run_mode(a.child, a.tasks, a.workdir)))
        return 0
    if a.import_tasks:
        rep = shipany_import.bench_import(a.import_tasks)
        print(json.dumps(rep, indent=1) if a.json else shipany_import.render(rep))
        return 0
    if a.make_db:
        print(json.dumps(database.make_db(a.make_db, a.tasks, a.scenario, force=a.force)))
        return 0
    if a.growth:
        sizes = [int(x) for x in a.growth.split(",") if x.strip()]
        kinds = [k.strip() for k in a.dbs.split(",") if k.strip()]
        if not sizes or min(sizes) < 1 or not kinds or set(kinds) - {"sqlite", "postgres"}:
            raise BenchError("--growth takes sizes >= 1 and --dbs sqlite and/or postgres")
        with tempfile.TemporaryDirectory(prefix="rivya-growth-") as tmp:
            rows = growth.growth(sizes, kinds, tmp)
        print(json.dumps(rows, indent=1) if a.json else "\n".join(json.dumps(r) for r in rows))
        return 0
    if a.engine:
        if a.jobs < 2 or a.tasks < 1:
            raise BenchError("--jobs must be at least 2 and --tasks at least 1")
        print(json.dumps(sweep_engine.engine_bench(a.jobs, a.tasks, a.scenario), indent=1))
        return 0
    if a.bulk:
        print(json.dumps(bulk.bulk(a.bulk), indent=1))
        return 0
    if a.dashboard:
        rep = dashboard.dashboard(a.dashboard, a.reps, a.only)
        print(json.dumps(rep, indent=1) if a.json else dashboard.render_dashboard(rep))
        return 0
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in lifecycle.MODES]
    if bad:
        raise BenchError(f"unknown mode {bad[0]!r} (modes: {', '.join(lifecycle.MODES)})")
    report = lifecycle.bench(a.tasks, a.reps, modes, progress=None if a.json else lambda s: print(s, file=sys.stderr))
    print(json.dumps(report, indent=1) if a.json else lifecycle.render(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m simulations.benchmarks")
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


__all__ = ["add_parser", "cmd_bench", "main"]
