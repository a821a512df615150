"""Quotas on dashboard-started runs: tasks and users per run, runs at once, disk under the runs
folder, and cleaning up old runs without touching one in progress."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from simulations import quotas
from simulations.quotas import QuotaConfigError, QuotaExceeded, Quotas


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_defaults_and_environment():
    assert Quotas.from_env({}) == Quotas(20_000, 10_000, 2, 2_048)
    assert Quotas.from_env({"RIVYA_QUOTA_TASKS": "500", "RIVYA_QUOTA_RUNS": "1"}) == Quotas(500, 10_000, 1, 2_048)


@pytest.mark.parametrize("value", ["0", "-1", "1e3", "abc", "99999999999"])
def test_a_bad_quota_setting_is_named(value):
    with pytest.raises(QuotaConfigError, match="RIVYA_QUOTA_DISK_MB"):
        Quotas.from_env({"RIVYA_QUOTA_DISK_MB": value})


def test_tasks_and_users_per_run(tmp_path):
    q = Quotas(max_tasks=100, max_users=10)
    quotas.check(q, tmp_path, tasks=100, users=10)
    with pytest.raises(QuotaExceeded, match="101 arrivals is over the quota of 100 arrivals per run"):
        quotas.check(q, tmp_path, tasks=101, users=1)
    with pytest.raises(QuotaExceeded, match="quota of 10 users"):
        quotas.check(q, tmp_path, tasks=1, users=11)


def test_runs_at_once_and_a_finished_run_frees_its_slot(tmp_path):
    q = Quotas(max_concurrent=1)
    procs: list[subprocess.Popen] = []

    def launch() -> int:
        procs.append(_sleeper())
        return procs[-1].pid

    try:
        quotas.admit(tmp_path, tasks=10, users=1, db="sqlite:///a.db", launch=launch, quotas=q)
        with pytest.raises(QuotaExceeded, match="1 run"):
            quotas.admit(tmp_path, tasks=10, users=1, db="sqlite:///b.db", launch=launch, quotas=q)
        assert len(procs) == 1  # the refused run was never launched
        procs[0].kill()
        procs[0].wait()
        quotas.admit(tmp_path, tasks=10, users=1, db="sqlite:///b.db", launch=launch, quotas=q)
        assert len(procs) == 2
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_an_ended_child_not_yet_waited_for_does_not_hold_a_slot(tmp_path):
    q = Quotas(max_concurrent=1)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    quotas.admit(tmp_path, tasks=1, users=1, db="", launch=lambda: proc.pid, quotas=q)
    deadline = time.monotonic() + 30
    while quotas.active_runs(tmp_path) and time.monotonic() < deadline:  # a zombie until we wait
        time.sleep(0.1)
    assert quotas.active_runs(tmp_path) == []
    proc.wait()


def test_two_sessions_racing_for_the_last_slot_get_one(tmp_path):
    q = Quotas(max_concurrent=1)
    results: list[str] = []
    start = threading.Barrier(6)

    def one() -> None:
        start.wait()
        try:
            with quotas.running(tmp_path, tasks=1, users=1, db="", quotas=q):
                results.append("ran")
                time.sleep(0.5)
        except QuotaExceeded:
            results.append("refused")

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ran"] + ["refused"] * 5
    assert quotas.active_runs(tmp_path) == []  # the block's end freed it


def test_disk_quota_and_cleanup(tmp_path):
    q = Quotas(max_disk_mb=1)
    for i, name in enumerate(["old", "mid", "new"]):
        db = tmp_path / f"{name}.db"
        db.write_bytes(b"x" * 400_000)
        db.with_suffix(".log").write_text("log")
        db.with_suffix(".scenario.toml").write_text("[scenario]")
        os.utime(db, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "jobs.db").write_bytes(b"j")
    with pytest.raises(QuotaExceeded, match="clean up old runs"):
        quotas.check(q, tmp_path, tasks=1, users=1)
    proc = _sleeper()
    try:  # "old" is being written: cleanup keeps it whatever its age
        quotas.admit(tmp_path, tasks=1, users=1, db=f"sqlite:///{tmp_path / 'old.db'}", launch=lambda: proc.pid)
        done = quotas.cleanup(tmp_path, keep=1)
    finally:
        proc.kill()
        proc.wait()
    assert done.removed == ["mid.db"] and done.kept_active == 1 and done.freed_bytes >= 400_000
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["jobs.db", "new.db", "old.db"]
    assert not (tmp_path / "mid.log").exists() and not (tmp_path / "mid.scenario.toml").exists()
    quotas.check(Quotas(max_disk_mb=1, max_concurrent=5), tmp_path, tasks=1, users=1)  # under 1 MiB again
