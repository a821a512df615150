"""The experiment engine: many independent jobs on Dask distributed.

A job is a module-level function and its arguments, with a stable key and the
command that replays it alone. `run_jobs` runs a list of them

- in this process, one after the other (`workers=0`),
- on a `distributed.LocalCluster` of `workers` single-threaded processes on
  this machine (the default: one per core, at most one per job), or
- on an existing cluster (`scheduler="tcp://host:8786"`), whose workers must
  have this project importable,

and returns one `Outcome` per job in the order the jobs were given, whatever
order they finished in. A job that raises (or whose worker dies) becomes a
failed outcome carrying its error and replay command; the other jobs finish.
Nothing a job computes may depend on where or when it ran: every seed comes
from the job's own arguments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from rivya_core.domain import RivyaError


class EngineError(RivyaError):
    code = "engine_failed"
    user_correctable = True


@dataclass(frozen=True)
class Job:
    key: str  # stable and readable: what the job is, never when it ran
    fn: Callable[..., Any]  # module level, so a worker process can import it
    args: tuple[Any, ...]
    replay: str = ""  # the command that runs this job alone


@dataclass
class Outcome:
    key: str
    value: Any = None
    error: str | None = None
    replay: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


Progress = Callable[[float, str], None]


def check_flags(workers: int | None, scheduler: str | None) -> None:
    if workers is not None and not 0 <= workers <= 256:
        raise EngineError("--workers must be 0 (in this process) to 256", code="bad_argument")
    if workers is not None and scheduler:
        raise EngineError(
            "give --workers (a local cluster) or --scheduler (an existing one), not both", code="bad_argument"
        )
    if scheduler is not None and "://" not in scheduler:
        raise EngineError(f"--scheduler {scheduler!r}: expected an address like tcp://host:8786", code="bad_argument")


def run_jobs(
    jobs: Sequence[Job], *, workers: int | None = None, scheduler: str | None = None, progress: Progress | None = None
) -> list[Outcome]:
    check_flags(workers, scheduler)
    if not jobs:
        return []
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique")
    if scheduler is None and (workers == 0 or (workers is None and len(jobs) == 1)):
        return _serial(jobs, progress)
    return _distributed(jobs, workers, scheduler, progress)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _tick(progress: Progress | None, done: int, total: int, failed: int) -> None:
    if progress is not None:
        progress(done / total, f"{done}/{total} jobs" + (f", {failed} failed" if failed else ""))


def _serial(jobs: Sequence[Job], progress: Progress | None) -> list[Outcome]:
    out, failed = [], 0
    for i, job in enumerate(jobs, 1):
        try:
            out.append(Outcome(job.key, job.fn(*job.args), replay=job.replay))
        except Exception as exc:  # noqa: BLE001 - a failed job is reported, the rest go on
            failed += 1
            out.append(Outcome(job.key, error=_describe(exc), replay=job.replay))
        _tick(progress, i, len(jobs), failed)
    return out


def local_cluster(workers: int):
    """A LocalCluster of `workers` single-threaded processes on loopback, quiet; its
    scheduler's small HTTP server takes a free port (never a fixed one)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )


def _distributed(
    jobs: Sequence[Job], workers: int | None, scheduler: str | None, progress: Progress | None
) -> list[Outcome]:
    from distributed import Client, as_completed

    cluster = None
    try:
        if scheduler is None:
            cluster = local_cluster(workers or min(len(jobs), os.cpu_count() or 1))
            client = Client(cluster)
        else:
            try:
                client = Client(scheduler, timeout="10s")
            except OSError as exc:
                raise EngineError(
                    f"cannot reach the scheduler at {scheduler}: {_describe(exc)}", code="scheduler_unreachable"
                ) from None
        with client:
            token = uuid4().hex[:8]  # Dask keys are per cluster; a second sweep must not reuse the first's
            futures = {client.submit(j.fn, *j.args, key=f"{j.key}#{token}", pure=False): i for i, j in enumerate(jobs)}
            out: list[Outcome | None] = [None] * len(jobs)
            done = failed = 0
            for fut in as_completed(futures):
                i = futures[fut]
                job = jobs[i]
                try:
                    out[i] = Outcome(job.key, fut.result(), replay=job.replay)
                except Exception as exc:  # noqa: BLE001 - job error or a killed worker
                    failed += 1
                    out[i] = Outcome(job.key, error=_describe(exc), replay=job.replay)
                fut.release()
                done += 1
                _tick(progress, done, len(jobs), failed)
            return [o for o in out if o is not None]
    finally:
        if cluster is not None:
            cluster.close()


__all__ = ["Job", "Outcome", "EngineError", "run_jobs", "local_cluster", "check_flags"]
