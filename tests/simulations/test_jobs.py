"""Background jobs: a worker process per job, the list shared through jobs.db, progress,
cancel (the whole process group), and a worker that dies shows as failed with its log."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rivya_core.policy import BillingPolicy
from simulations import jobs
from simulations.scenarios import load_scenario

WAIT_S = 240  # a loaded machine starts a worker slowly


def wait_for(runs, job_id, predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = next(j for j in jobs.list_jobs(runs) if j["id"] == job_id)
        if predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never {what}: {job}\n{jobs.log_tail(job)}")


def run_params(runs, tasks: int) -> dict:
    sc = load_scenario("baseline")
    return {
        "scenario_toml": sc.to_toml(),
        "scenario_name": sc.name,
        "tasks": tasks,
        "url": f"sqlite:///{runs / f'run-{tasks}.db'}",
    }


@pytest.mark.slow  # the job runs in a worker process
def test_a_run_job_reports_progress_and_its_result(tmp_path):
    runs = tmp_path / "runs"
    job_id = jobs.submit("run", run_params(runs, 40), label="baseline, 40 tasks", owner="sam", runs=runs)
    first = jobs.list_jobs(runs)[0]
    assert first["id"] == job_id and first["status"] in ("queued", "running") and first["owner"] == "sam"
    done = wait_for(runs, job_id, lambda j: j["status"] in jobs.FINISHED, "finished")
    assert done["status"] == "done" and done["progress"] == 1.0, jobs.log_tail(done)
    summary = done["result"]["summary"]
    assert summary["violations"] == [] and summary["liveness_ok"] and summary["tasks"] > 0
    assert (runs / "run-40.db").is_file()
    # another process (another browser tab, another server) reads the same list from disk
    jobs._ENGINES.clear()
    assert [j["id"] for j in jobs.list_jobs(runs)] == [job_id]


@pytest.mark.slow  # the job runs in a worker process
def test_a_compare_job_returns_the_paired_table(tmp_path):
    runs = tmp_path / "runs"
    sc = load_scenario("chaos")
    pols = [BillingPolicy.load(f"data/policies/{n}.toml").to_dict() for n in ("default", "no_refunds")]
    job_id = jobs.submit(
        "compare",
        {
            "scenario_toml": sc.to_toml(),
            "scenario_name": "chaos",
            "policies": pols,
            "replications": 2,
            "tasks": 30,
            "workers": 0,
        },
        label="cmp",
        runs=runs,
    )
    done = wait_for(runs, job_id, lambda j: j["status"] in jobs.FINISHED, "finished")
    assert done["status"] == "done", jobs.log_tail(done)
    table = {r["kpi"]: r for r in done["result"]["table"]}
    assert table["refunds"]["policy_b"] == 0 and done["result"]["policies"] == ["default", "no_refunds"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # the job runs in a worker process
def test_cancel_stops_the_worker_and_its_process_group(tmp_path):
    runs = tmp_path / "runs"
    job_id = jobs.submit("run", run_params(runs, 500_000), label="long", runs=runs)
    running = wait_for(runs, job_id, lambda j: j["status"] == "running" and j["progress"] > 0, "made progress")
    assert jobs.cancel(job_id, runs)
    job = jobs.get_job(job_id, runs)
    assert job["status"] == "cancelled" and job["finished_at"]
    deadline = time.monotonic() + 10
    while _group_alive(running["pid"]) and time.monotonic() < deadline:
        jobs.refresh(runs)  # reaps the worker
        time.sleep(0.1)
    assert not _group_alive(running["pid"])
    assert jobs.get_job(job_id, runs)["status"] == "cancelled"  # the worker did not overwrite it
    assert not jobs.cancel(job_id, runs)  # already finished: nothing to do


@pytest.mark.slow  # the job runs in a worker process
def test_a_worker_that_dies_shows_as_failed_with_its_log(tmp_path):
    runs = tmp_path / "runs"
    job_id = jobs.submit("run", run_params(runs, 500_000), label="doomed", runs=runs)
    running = wait_for(runs, job_id, lambda j: j["status"] == "running", "started")
    os.killpg(running["pid"], signal.SIGKILL)  # out of memory, a crash: no chance to say goodbye
    failed = wait_for(runs, job_id, lambda j: j["status"] != "running", "was noticed dead")
    assert failed["status"] == "failed" and "without a result" in failed["error"]
    assert f"job {job_id}: run doomed" in jobs.log_tail(failed)


@pytest.mark.slow  # the job runs in a worker process
def test_a_job_that_raises_is_failed_with_the_error_and_traceback(tmp_path):
    runs = tmp_path / "runs"
    params = run_params(runs, 10)
    params["scenario_toml"] = "[scenario]\nhorizon_s = -1\n"
    job_id = jobs.submit("run", params, label="bad", runs=runs)
    failed = wait_for(runs, job_id, lambda j: j["status"] in jobs.FINISHED, "finished")
    assert failed["status"] == "failed" and "ScenarioError" in failed["error"] and "horizon_s" in failed["error"]
    assert "Traceback" in jobs.log_tail(failed)


def test_unknown_kind_is_refused_and_records_nothing(tmp_path):
    with pytest.raises(jobs.JobError, match="unknown job kind"):
        jobs.submit("nope", {}, label="x", runs=tmp_path)
    assert jobs.list_jobs(tmp_path) == []


def _tampered_history(tmp_path) -> str:
    """A simulation database whose ledger no longer matches its own policy (a charge one credit dearer)."""
    import sqlite3

    from simulations.runner import run_scenario

    path = tmp_path / "tampered.db"
    run_scenario(load_scenario("lost_callbacks"), f"sqlite:///{path}", tasks=60)
    with sqlite3.connect(path) as conn:
        n = conn.execute(
            "update credit_ledger set amount = amount - 1, balance_after = balance_after - 1 "
            "where id = (select min(id) from credit_ledger where entry_type = 'consume')"
        ).rowcount
    assert n == 1
    return f"sqlite:///{path}"


@pytest.mark.slow  # the job runs in a worker process
def test_a_backtest_whose_self_check_fails_is_a_failed_job_with_the_reason_and_its_result(tmp_path):
    runs = tmp_path / "runs"
    pols = [BillingPolicy.load(f"data/policies/{n}.toml").to_dict() for n in ("default", "no_refunds")]
    job_id = jobs.submit("backtest", {"url": _tampered_history(tmp_path), "policies": pols}, label="bt", runs=runs)
    done = wait_for(runs, job_id, lambda j: j["status"] in jobs.FINISHED, "finished")
    assert done["status"] == "failed", jobs.log_tail(done)
    assert "self-check failed" in done["error"] and "not trustworthy" in done["error"]
    assert done["result"]["self_check"]["ok"] is False  # kept: the diverging rows are the evidence


def test_a_jobs_verdict_follows_its_commands_exit_status():
    """The one rule: a finished result the command line would exit 1 on is a failed job."""
    ok_bt = {"self_check": {"ok": True}}
    bad_bt = {"self_check": {"ok": False, "policy": "default", "first_diverging_rows": [{"position": 7}]}}
    assert jobs.verdict("backtest", ok_bt) is None
    assert "position 7" in jobs.verdict("backtest", bad_bt)
    assert jobs.verdict("run", {"summary": {"violations": [], "liveness_ok": True}}) is None
    assert "refund_missing" in jobs.verdict(
        "run",
        {"summary": {"violations": [{"kind": "refund_missing", "message": "m", "count": 2}], "liveness_ok": True}},
    )
    assert "left active" in jobs.verdict("run", {"summary": {"violations": [], "liveness_ok": False}})
    assert jobs.verdict("compare", {"failed": []}) is None
    assert "1 replication job" in jobs.verdict("compare", {"failed": [{"key": "a|-|r0", "error": "boom"}]})
    assert "1 replication job" in jobs.verdict("sweep", {"failed": [{"key": "a|-|r0", "error": "boom"}]})
