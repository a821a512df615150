"""Simulation runs started from the dashboard, in a background process.

new_run_url(name: str) -> str
    A fresh sqlite URL under data/runs (RIVYA_RUNS_DIR) for a simulation run.
start_realtime_run(scenario, factor: float, tasks: int | None = None) -> dict
    `python -m simulations run SCENARIO --realtime FACTOR --db <new run db>` in a
    background process, admitted by simulations.quotas (raises QuotaExceeded); keeps a copy of the scenario next to the database (so
    every session judges the unfinished run with its policy), waits for its
    schema, remembers it for the session and returns {"popen", "url", "log", "scenario"}.
realtime_run() -> dict | None
    The realtime run this session started last (same dict), if any.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from pages._source import ROOT, runs_dir
from rivya_core.stores import db
from simulations import quotas


def new_run_url(name: str) -> str:
    """A sqlite URL for a new run database under the runs folder (never an existing file)."""
    runs = runs_dir()
    runs.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = runs / f"{stem}.db", 1
    while path.exists():
        n += 1
        path = runs / f"{stem}-{n}.db"
    return f"sqlite:///{path}"


def _schema_ready(url: str) -> bool:
    path = db.sqlite_path(url)
    if path is None or not path.is_file():
        return False
    engine = db.make_engine(url, read_only=True)
    try:
        return not db.missing_tables(engine)
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def start_realtime_run(
    scenario: Any, factor: float, tasks: int | None = None, *, wait_s: float = 20.0
) -> dict[str, Any]:
    """Run `scenario` (a Scenario, edited or not, or a scenario file or name) at `factor`
    simulated seconds per wall second in a background process writing into a new
    database; return once its schema exists (or the process ended). The scenario
    runs from <run>.scenario.toml beside the database, which the pages also read
    to judge the run with its own policy while it writes."""
    from simulations.recorded import scenario_sidecar
    from simulations.scenarios import Scenario, load_scenario

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
    limits = quotas.Quotas.from_env()
    tasks = int(tasks or sc.tasks or limits.max_tasks)  # always bounded: the quota applies to it
    url = new_run_url(f"{sc.name}-live")
    log_path = db.sqlite_path(url).with_suffix(".log")
    sidecar = scenario_sidecar(db.sqlite_path(url))
    cmd = [
        sys.executable,
        "-m",
        "simulations",
        "run",
        str(sidecar),
        "--db",
        url,
        "--realtime",
        f"{float(factor):g}",
        "--tasks",
        str(tasks),
    ]
    popen: subprocess.Popen | None = None

    def launch() -> int:
        nonlocal popen
        sidecar.write_text(sc.to_toml(), encoding="utf-8")
        with open(log_path, "w") as log:  # the child keeps its own handle
            popen = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return popen.pid

    quotas.admit(runs_dir(), tasks=tasks, users=sc.population.users, db=url, launch=launch, quotas=limits)
    assert popen is not None
    deadline = time.monotonic() + wait_s
    while popen.poll() is None and time.monotonic() < deadline and not _schema_ready(url):
        time.sleep(0.2)
    run = {"popen": popen, "url": url, "log": str(log_path), "scenario": sc.name}
    st.session_state["realtime_run"] = run
    return run


def realtime_run() -> dict[str, Any] | None:
    return st.session_state.get("realtime_run")
