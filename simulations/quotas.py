"""Quotas for the simulation runs operators start from the dashboard, and cleaning up old runs.

Every run started from the dashboard writes under one runs folder (RIVYA_RUNS_DIR, else
data/runs). Before it starts, `admit` checks, under a lock on that folder so two sessions
cannot both take the last slot:

    arrivals per run      at most RIVYA_QUOTA_TASKS    (default 20,000; generation requests and chat turns)
    users per run         at most RIVYA_QUOTA_USERS    (default 10,000)
    runs at once          at most RIVYA_QUOTA_RUNS     (default 2; realtime and lab runs together)
    disk under the folder at most RIVYA_QUOTA_DISK_MB  (default 2,048 MiB; a run is refused once it is used)

A refusal is a QuotaExceeded naming the quota, its value and what to do. A run in progress is
an `active/<token>.json` marker holding the pid of the process that runs it; a marker whose
process has ended no longer counts (a killed run frees its slot). `cleanup` deletes all but the
newest run databases, with their logs and scenario copies, never one that is being written.

The command line is not bound by these quotas: whoever has a shell there can run anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rivya_core.domain import RivyaError

MiB = 1024 * 1024
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
SIDE_FILES = (".log", ".scenario.toml")


class QuotaExceeded(RivyaError):
    code = "quota_exceeded"
    user_correctable = True


class QuotaConfigError(RivyaError):
    code = "quota_config_invalid"


@dataclass(frozen=True)
class Quotas:
    max_tasks: int = 20_000
    max_users: int = 10_000
    max_concurrent: int = 2
    max_disk_mb: int = 2_048

    ENV = {
        "max_tasks": "RIVYA_QUOTA_TASKS",
        "max_users": "RIVYA_QUOTA_USERS",
        "max_concurrent": "RIVYA_QUOTA_RUNS",
        "max_disk_mb": "RIVYA_QUOTA_DISK_MB",
    }
    RANGE = (1, 10_000_000)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Quotas:
        """The defaults, overridden by RIVYA_QUOTA_*; a value that is not a whole number in
        1..10,000,000 raises QuotaConfigError naming the variable."""
        env = os.environ if env is None else env
        values = {}
        for name, var in cls.ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            lo, hi = cls.RANGE
            if not raw.isdigit() or not lo <= int(raw) <= hi:
                raise QuotaConfigError(f"{var}: expected a whole number from {lo:,} to {hi:,}, got {raw[:20]!r}")
            values[name] = int(raw)
        return cls(**values)


def disk_used(runs_dir: Path) -> int:
    """Bytes in every file under the runs folder."""
    total = 0
    for path in Path(runs_dir).rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:  # removed while we looked
            pass
    return total


def pid_running(pid: int) -> bool:
    """True while a process with this id runs (one of another user counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an ended child nobody has waited for yet is a zombie: not running
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _markers(runs_dir: Path) -> Path:
    return Path(runs_dir) / "active"


def active_runs(runs_dir: Path) -> list[dict]:
    """The runs in progress ({"pid", "db", "tasks", "users"}); markers of ended processes are removed."""
    found = []
    for marker in sorted(_markers(runs_dir).glob("*.json")):
        try:
            info = json.loads(marker.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            marker.unlink(missing_ok=True)
            continue
        if pid_running(pid):
            found.append(info)
        else:
            marker.unlink(missing_ok=True)
    return found


@contextmanager
def _locked(runs_dir: Path) -> Iterator[None]:
    runs_dir = Path(runs_dir)
    _markers(runs_dir).mkdir(parents=True, exist_ok=True)
    with open(runs_dir / ".quota.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check(quotas: Quotas, runs_dir: Path, *, tasks: int, users: int) -> None:
    """Raise QuotaExceeded when a run of `tasks` arrivals and `users` users may not start now."""
    if tasks > quotas.max_tasks:
        raise QuotaExceeded(
            f"{tasks:,} arrivals is over the quota of {quotas.max_tasks:,} arrivals per run "
            "(generation requests and chat turns, what --tasks counts)"
        )
    if users > quotas.max_users:
        raise QuotaExceeded(f"{users:,} users is over the quota of {quotas.max_users:,} users per run")
    running = len(active_runs(runs_dir))
    if running >= quotas.max_concurrent:
        raise QuotaExceeded(
            f"{running} run(s) in progress: the quota is {quotas.max_concurrent} at once; wait for one to finish"
        )
    used = disk_used(runs_dir)
    if used >= quotas.max_disk_mb * MiB:
        raise QuotaExceeded(
            f"the runs folder holds {used / MiB:,.0f} MiB, the quota is {quotas.max_disk_mb:,} MiB; "
            "clean up old runs first"
        )


def admit(
    runs_dir: Path, *, tasks: int, users: int, db: str, launch: Callable[[], int], quotas: Quotas | None = None
) -> int:
    """Check every quota and, still under the folder's lock, call `launch()` (it starts the run and
    returns the pid of the process running it) and record the run as active until that process ends.
    Returns the pid."""
    quotas = quotas or Quotas.from_env()
    with _locked(runs_dir):
        check(quotas, runs_dir, tasks=tasks, users=users)
        pid = launch()
        marker = _markers(runs_dir) / f"{uuid.uuid4().hex}.json"
        marker.write_text(json.dumps({"pid": int(pid), "db": db, "tasks": tasks, "users": users}))
    return pid


@contextmanager
def running(runs_dir: Path, *, tasks: int, users: int, db: str, quotas: Quotas | None = None) -> Iterator[None]:
    """A run inside this process: admitted like any other, active until the block ends."""
    quotas = quotas or Quotas.from_env()
    token = uuid.uuid4().hex
    with _locked(runs_dir):
        check(quotas, runs_dir, tasks=tasks, users=users)
        (_markers(runs_dir) / f"{token}.json").write_text(
            json.dumps({"pid": os.getpid(), "db": db, "tasks": tasks, "users": users})
        )
    try:
        yield
    finally:
        (_markers(runs_dir) / f"{token}.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class Cleanup:
    removed: list[str]
    freed_bytes: int
    kept_active: int


def cleanup(runs_dir: Path, *, keep: int) -> Cleanup:
    """Delete every run database under the runs folder but the newest `keep` (by modification time),
    with its -wal/-shm files, log and scenario copy; a database being written is never deleted."""
    if keep < 0:
        raise QuotaExceeded("keep must be 0 or more")
    runs_dir = Path(runs_dir)
    with _locked(runs_dir):
        busy = {Path(str(info.get("db", "")).removeprefix("sqlite:///")).resolve() for info in active_runs(runs_dir)}
        dbs = sorted(
            (p for p in runs_dir.glob("*.db") if p.name != "jobs.db"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        removed, freed, kept_active = [], 0, 0
        for path in dbs[keep:]:
            if path.resolve() in busy:
                kept_active += 1
                continue
            for f in (path, *(Path(f"{path}{s}") for s in SIDE_SUFFIXES), *(path.with_suffix(s) for s in SIDE_FILES)):
                try:
                    size = f.stat().st_size
                    f.unlink()
                except FileNotFoundError:
                    continue
                freed += size
            removed.append(path.name)
    return Cleanup(removed, freed, kept_active)
