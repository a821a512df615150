"""Background jobs: runs, comparisons and sweeps that must not block whoever started them.

A job is a row of `lab_job` in `jobs.db` under the runs folder (RIVYA_RUNS_DIR,
else data/runs), so every process and every browser tab sees the same list,
and a worker process of its own (`python -m simulations.jobs work ID`, a new
session, its output in `jobs/<id>.log`) that runs it and writes its progress
and its result into the row:

    queued -> running -> done | failed | cancelled

A job that ran to its end is `done` only when its result can be trusted (`verdict`: what its
command line would exit 1 on — a run's violations, a failed replication, a backtest's failed
self-check — makes it `failed`, with the reason as its error and the result kept).

`submit` starts one, `cancel` ends one (its whole process group, so the Dask
workers of a comparison go too), `list_jobs` reads them after `refresh` has
marked as failed every job whose worker is gone without a result (killed, out
of memory, crashed), keeping its log. Parameters and results are JSON; what a
kind does is in KINDS, each a function (params, progress) -> result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)

from rivya_core.domain import RivyaError

from .paths import ROOT, runs_dir
from .quotas import pid_running

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
PROGRESS_EVERY_S = 0.5
CANCEL_GRACE_S = 3.0

metadata = MetaData()
lab_job = Table(
    "lab_job",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("label", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("status", String(12), nullable=False),
    Column("progress", Float, nullable=False, default=0.0),
    Column("message", Text, nullable=False, default=""),
    Column("owner", Text),
    Column("pid", Integer),
    Column("created_at", String(32), nullable=False),
    Column("started_at", String(32)),
    Column("finished_at", String(32)),
    Column("result", Text),
    Column("error", Text),
    Column("log", Text, nullable=False),
)


class JobError(RivyaError):
    code = "job_failed"
    user_correctable = True


class Cancelled(BaseException):
    """Raised in a worker on SIGTERM: the job was cancelled."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


_ENGINES: dict[Path, Any] = {}


def _engine(runs: Path | None = None):
    runs = (runs or runs_dir()).resolve()
    eng = _ENGINES.get(runs)
    if eng is None:
        runs.mkdir(parents=True, exist_ok=True)
        eng = create_engine(f"sqlite:///{runs / 'jobs.db'}", connect_args={"timeout": 30})

        @event.listens_for(eng, "connect")
        def _wal(dbapi_conn, _record):  # readers never wait for the worker writing progress
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        metadata.create_all(eng)
        _ENGINES[runs] = eng
    return eng


# --- what each kind does --------------------------------------------------------------

Progress = Callable[[float, str], None]


def _scenario(params: dict[str, Any]):
    from .scenarios import parse_scenario

    return parse_scenario(
        params["scenario_toml"],
        f"<job {params.get('scenario_name', 'scenario')}>",
        params.get("scenario_name", "scenario"),
    )


def _policies(params: dict[str, Any]):
    from rivya_core.policy import BillingPolicy

    return tuple(BillingPolicy.from_dict(p, "<job policy>") for p in params.get("policies", []))


def do_run(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from .runner import run_scenario

    summary = run_scenario(_scenario(params), params["url"], tasks=params.get("tasks"), progress=progress)
    return {"url": params["url"], "summary": summary.to_dict()}


def do_compare(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from .compare import compare

    report = compare(
        _scenario(params),
        list(_policies(params)),
        int(params["replications"]),
        workers=params.get("workers"),
        tasks=params.get("tasks"),
        progress=progress,
    )
    return report.to_dict()


def do_sweep(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from .sweep import Sweep, mean_table, run_sweep, write_results

    grid = tuple((k, tuple(v)) for k, v in params.get("grid", []))
    sweep = Sweep(_scenario(params), _policies(params), grid, int(params["replications"]), tasks=params.get("tasks"))
    result = run_sweep(sweep, workers=params.get("workers"), progress=progress)
    out = write_results(result, params["output"], force=False) if params.get("output") else None
    return {
        "definition": sweep.definition(),
        "variants": mean_table(result.frame),
        "failed": [{"key": o.key, "error": o.error} for o in result.failed],
        "output": str(out or ""),
    }


def do_backtest(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from datetime import datetime

    from rivya_core.stores.db import open_reader

    from .backtest import backtest
    from .history import load_history
    from .history_cli import recorded_policy_for

    since, until = (datetime.fromisoformat(params[k]) if params.get(k) else None for k in ("since", "until"))
    engine = open_reader(params["url"])
    try:
        progress(0.05, "reading the history")
        recorded, where = recorded_policy_for(engine, None)
        history = load_history(engine, since, until)
        progress(0.4, "re-applying the policies")
        report = backtest(history, list(_policies(params)), recorded, where)
        if params.get("timing"):
            from .timing import timing_part

            progress(0.6, "timing part: trace-driven re-run")
            report.timing = timing_part(engine, history, list(_policies(params)), resamples=500)
    finally:
        engine.dispose()
    return report.to_dict()


KINDS: dict[str, Callable[[dict[str, Any], Progress], dict[str, Any]]] = {
    "run": do_run,
    "compare": do_compare,
    "sweep": do_sweep,
    "backtest": do_backtest,
}


# --- whether a finished result can be trusted ----------------------------------------
# A job that ran to its end is `done` only when its command line would exit 0 on the same result;
# otherwise it is `failed`, with the reason as its error and its result kept (the evidence).


def _run_verdict(result: dict[str, Any]) -> str | None:
    s = result.get("summary") or {}
    bad = s.get("violations") or []
    if bad:
        kinds = ", ".join(sorted({str(v.get("kind")) for v in bad}))
        return f"the run broke {len(bad)} invariant(s) ({kinds}): its figures are not trustworthy"
    if s.get("liveness_ok") is False:
        return "tasks were left active after the faults stopped (liveness): its figures are not trustworthy"
    return None


def _replications_verdict(result: dict[str, Any]) -> str | None:
    failed = result.get("failed") or []
    if not failed:
        return None
    first = failed[0]
    return (
        f"{len(failed)} replication job(s) failed (first {first.get('key')}: {first.get('error')}): "
        "the figures cover only the jobs that finished"
    )


def _backtest_verdict(result: dict[str, Any]) -> str | None:
    sc = result.get("self_check") or {}
    if sc.get("ok", True):
        return None
    rows = sc.get("first_diverging_rows") or [{}]
    where = ", ".join(f"{k} {v}" for k, v in rows[0].items() if k in ("position", "account", "totals")) or "totals"
    return (
        f"the self-check failed: replaying the history under its recorded policy {sc.get('policy')!r} does "
        f"not reproduce the database's ledger (first difference at {where}), so the figures are not "
        "trustworthy"
    )


VERDICTS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "run": _run_verdict,
    "compare": _replications_verdict,
    "sweep": _replications_verdict,
    "backtest": _backtest_verdict,
}


def verdict(kind: str, result: dict[str, Any]) -> str | None:
    """Why a finished job's result cannot be trusted (the job is then failed with this reason), or
    None: the rule its command's exit status follows (`run` on a violation or a liveness failure,
    `compare`/`sweep` on a failed replication, `backtest` on a failed self-check)."""
    judge = VERDICTS.get(kind)
    return judge(result) if judge is not None else None


def register(
    kind: str,
    fn: Callable[[dict[str, Any], Progress], dict[str, Any]],
    judge: Callable[[dict[str, Any]], str | None] | None = None,
) -> None:
    """Another kind of background job: fn(params, progress) -> result; judge(result) -> why the
    result cannot be trusted, or None (see verdict)."""
    KINDS[kind] = fn
    if judge is not None:
        VERDICTS[kind] = judge


# --- the page's side ----------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen] = {}  # workers this process started, reaped by refresh()


def submit(kind: str, params: dict[str, Any], *, label: str, owner: str | None = None, runs: Path | None = None) -> int:
    """Record the job and start its worker; returns the job id at once."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r} (known: {', '.join(sorted(KINDS))})", code="bad_argument")
    runs = (runs or runs_dir()).resolve()
    eng = _engine(runs)
    logs = runs / "jobs"
    logs.mkdir(parents=True, exist_ok=True)
    with eng.begin() as conn:
        job_id = conn.execute(
            insert(lab_job).values(
                kind=kind,
                label=label,
                params=json.dumps(params, default=str),
                status="queued",
                progress=0.0,
                message="starting",
                owner=owner,
                created_at=_now(),
                log="",
            )
        ).inserted_primary_key[0]
        log = logs / f"{job_id}.log"
        conn.execute(update(lab_job).where(lab_job.c.id == job_id).values(log=str(log)))
    with open(log, "w") as fh:  # the worker keeps its own handle
        popen = subprocess.Popen(
            [sys.executable, "-m", "simulations.jobs", "work", str(job_id), "--runs", str(runs)],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _CHILDREN[popen.pid] = popen
    with eng.begin() as conn:
        conn.execute(update(lab_job).where(lab_job.c.id == job_id, lab_job.c.pid.is_(None)).values(pid=popen.pid))
    return int(job_id)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    return pid_running(pid)


def refresh(runs: Path | None = None) -> None:
    """Mark jobs whose worker is gone without finishing as failed (the log stays)."""
    eng = _engine(runs)
    with eng.begin() as conn:
        rows = conn.execute(
            select(lab_job.c.id, lab_job.c.pid, lab_job.c.status, lab_job.c.created_at).where(
                lab_job.c.status.in_(ACTIVE)
            )
        ).all()
        for job_id, pid, _status, _created in rows:
            if pid and not _alive(pid):
                conn.execute(
                    update(lab_job)
                    .where(lab_job.c.id == job_id, lab_job.c.status.in_(ACTIVE))
                    .values(
                        status="failed",
                        finished_at=_now(),
                        error="the worker process ended without a result (killed or crashed); see its log",
                    )
                )


def _row(r: Any) -> dict[str, Any]:
    d = dict(r._mapping)
    d["params"] = json.loads(d["params"])
    d["result"] = json.loads(d["result"]) if d["result"] else None
    return d


def list_jobs(runs: Path | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest jobs first, as dicts (params and result decoded); none, and nothing created,
    while no job was ever submitted (looking at the list never makes the jobs database)."""
    if not ((runs or runs_dir()).resolve() / "jobs.db").is_file():
        return []
    refresh(runs)
    with _engine(runs).connect() as conn:
        return [_row(r) for r in conn.execute(select(lab_job).order_by(lab_job.c.id.desc()).limit(limit))]


def get_job(job_id: int, runs: Path | None = None) -> dict[str, Any]:
    with _engine(runs).connect() as conn:
        r = conn.execute(select(lab_job).where(lab_job.c.id == int(job_id))).first()
    if r is None:
        raise JobError(f"no background job {job_id}", code="job_not_found")
    return _row(r)


def log_tail(job: dict[str, Any], chars: int = 4000) -> str:
    try:
        return Path(job["log"]).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def cancel(job_id: int, runs: Path | None = None) -> bool:
    """Stop a queued or running job and its whole process group; False when it had already finished."""
    eng = _engine(runs)
    with eng.begin() as conn:
        pid = conn.execute(select(lab_job.c.pid).where(lab_job.c.id == int(job_id))).scalar()
        n = conn.execute(
            update(lab_job)
            .where(lab_job.c.id == int(job_id), lab_job.c.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=_now(), message="cancelled")
        ).rowcount
    if not n:
        return False
    if pid:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session: its Dask workers go with it
    except (ProcessLookupError, PermissionError):
        pass


# --- the worker's side --------------------------------------------------------------


def _set(eng, job_id: int, **values: Any) -> int:
    with eng.begin() as conn:
        return conn.execute(
            update(lab_job).where(lab_job.c.id == job_id, lab_job.c.status.in_(ACTIVE)).values(**values)
        ).rowcount


def work(job_id: int, runs: Path | None = None) -> int:
    """Run job_id in this process (the worker): progress into its row, then its result."""
    eng = _engine(runs)
    job = get_job(job_id, runs)
    if not _set(eng, job_id, status="running", pid=os.getpid(), started_at=_now(), message="running"):
        return 0  # cancelled before it started

    def on_term(_sig, _frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, on_term)
    last = [0.0]

    def progress(frac: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or frac >= 1.0:
            last[0] = now
            _set(eng, job_id, progress=max(0.0, min(1.0, float(frac))), message=str(message)[:200])

    print(f"job {job_id}: {job['kind']} {job['label']}", flush=True)
    try:
        result = KINDS[job["kind"]](job["params"], progress)
    except Cancelled:
        print("cancelled", flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure is the job's result, with its traceback in the log
        traceback.print_exc()
        message = getattr(exc, "message", None) or str(exc).strip().splitlines()[0:1]
        message = message if isinstance(message, str) else (message[0] if message else type(exc).__name__)
        _set(eng, job_id, status="failed", finished_at=_now(), error=f"{type(exc).__name__}: {message}")
        return 1
    problem = verdict(job["kind"], result)
    _set(
        eng,
        job_id,
        status="failed" if problem else "done",
        progress=1.0,
        message="failed" if problem else "done",
        finished_at=_now(),
        result=json.dumps(result, default=str),
        error=problem,
    )
    print(f"failed: {problem}" if problem else "done", flush=True)
    return 1 if problem else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m simulations.jobs", description="The worker of one background job.")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("work")
    w.add_argument("job", type=int)
    w.add_argument("--runs", type=Path)
    a = p.parse_args(argv)
    return work(a.job, a.runs)


if __name__ == "__main__":
    sys.exit(main())
