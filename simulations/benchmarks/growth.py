"""Whole runs as they grow (`bench --growth 10000,1000000 --dbs sqlite,postgres`): a whole
`python -m simulations run` of the generation-only workload at each size, each in its own
process, into a fresh SQLite file or a scratch PostgreSQL database of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..paths import ROOT
from .common import WORKLOAD, BenchError, scratch_postgres


def growth(sizes: list[int], kinds: list[str], workdir: str) -> list[dict[str, Any]]:
    """A whole `python -m simulations run` of the generation-only workload (WORKLOAD:
    capacity well above the arrival rate, so queues stay stable) at each size into a
    fresh SQLite file or PostgreSQL database, each in its own process: tasks per
    wall second and per CPU second of the run (audit included) and its peak RSS."""
    out = []
    scenario = Path(workdir) / "generation_only.toml"
    for n in sizes:
        scenario.write_text(WORKLOAD.format(tasks=int(n)), encoding="utf-8")
        for kind in kinds:
            with _target(kind, Path(workdir) / f"growth-{n}.db") as url:
                cmd = [sys.executable, "-c", _GROWTH_CHILD, str(scenario), url]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise BenchError(f"growth run {kind} {n} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append(
                {
                    "db": kind,
                    "arrivals": n,
                    "tasks": child["tasks"],
                    "wall_s": round(wall, 1),
                    "tasks_per_s": round(child["tasks"] / wall, 1),
                    "cpu_tasks_per_s": round(child["tasks"] / child["cpu_s"], 1),
                    "peak_rss_mib": child["peak_rss_mib"],
                    "violations": child["violations"],
                    "fingerprint": child["fingerprint"][:16],
                }
            )
    return out


@contextmanager
def _target(kind: str, path: Path) -> Iterator[str]:
    """The URL one growth run writes into, removed afterwards: a fresh SQLite file at path, or a
    scratch PostgreSQL database of its own."""
    if kind == "postgres":
        with scratch_postgres("growth") as url:
            yield url
        return
    files = [Path(str(path) + suffix) for suffix in ("", "-wal", "-shm")]
    for f in files:
        f.unlink(missing_ok=True)
    try:
        yield f"sqlite:///{path}"
    finally:
        for f in files:
            f.unlink(missing_ok=True)


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


__all__ = ["growth"]
