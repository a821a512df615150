"""The Simulation lab runs in the background: start a run, follow its progress, see its
result when ready; cancel a comparison; a second session sees the same job list; a
worker that dies shows as failed with its log."""

from __future__ import annotations

import os
import signal
import time

import pytest
from streamlit.testing.v1 import AppTest

from simulations import jobs

pytestmark = pytest.mark.slow  # every job runs in a worker process

WAIT_S = 240


@pytest.fixture
def lab(tmp_path, monkeypatch, empty_url, open_page):
    """open_lab() -> the lab through app.py (access off: everybody is an operator), a new session each call."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(runs))

    def open_lab() -> AppTest:
        at = open_page(empty_url, "pages/simulation_lab.py")
        at.default_timeout = 120
        assert not at.exception, [e.value for e in at.exception]
        return at

    open_lab.runs = runs
    yield open_lab
    for job in jobs.list_jobs(runs):  # leave no worker behind
        jobs.cancel(job["id"], runs)


def button(at: AppTest, label: str, key_prefix: str | None = None):
    return next(
        b for b in at.button if b.label == label and (key_prefix is None or (b.key or "").startswith(key_prefix))
    )


def shown(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.text)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def wait_job(runs, predicate, what):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        rows = jobs.list_jobs(runs)
        if rows and predicate(rows[0]):
            return rows[0]
        time.sleep(0.3)
    raise AssertionError(f"the job never {what}: {rows[:1]}\n{jobs.log_tail(rows[0]) if rows else ''}")


def show_finished(at: AppTest, runs) -> dict:
    """Wait for the newest job to finish well, then show its result; the job."""
    job = wait_job(runs, lambda j: j["status"] in jobs.FINISHED, "finished")
    assert job["status"] == "done", jobs.log_tail(job)
    at.run()
    button(at, "Show result").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return job


def test_a_run_starts_in_the_background_and_its_result_shows_when_ready(lab):
    at = lab()
    assert "No background jobs yet." in shown(at)
    at.number_input[0].set_value(20)
    t0 = time.monotonic()
    button(at, "Run in the background").click().run()
    assert time.monotonic() - t0 < 30  # the page came back without waiting for the run
    assert not at.exception, [e.value for e in at.exception]
    assert "#1 run" in shown(at) and "baseline, 20 arrivals" in shown(at)
    other = lab()  # another browser tab: its own session, the same list
    assert "#1 run" in shown(other)
    job = show_finished(at, lab.runs)
    text = shown(at)
    assert "Violations=0" in text and "Liveness=ok" in text and "Scenario baseline, seed" in text
    made = list(lab.runs.glob("baseline-*.db"))
    assert len(made) == 1 and job["result"]["url"] == f"sqlite:///{made[0]}"
    assert len(at.get("plotly_chart")) == 4


def test_a_comparison_shows_progress_and_cancel_stops_it(lab):
    at = lab()
    compare_tab = [n for n in at.number_input if n.label in ("Replications", "Arrivals per run") and not n.key]
    compare_tab[0].set_value(25)  # 50 jobs: each one done is 2% of the bar
    compare_tab[1].set_value(3000)
    button(at, "Compare in the background").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = wait_job(lab.runs, lambda j: j["status"] == "running" and j["progress"] > 0.01, "made progress")
    at.run()
    bars = at.get("progress")
    assert bars and 0 < bars[0].value < 100  # percent
    assert "/50 jobs" in shown(at) or "/50 jobs" in str(bars[0].proto)
    button(at, "Cancel").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert jobs.get_job(job["id"], lab.runs)["status"] == "cancelled"
    at.run()
    assert "· cancelled" in shown(at)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(job["pid"], 0)
        except ProcessLookupError:
            break
        jobs.refresh(lab.runs)
        time.sleep(0.2)
    else:
        raise AssertionError("the comparison's processes outlived the cancel")


def test_a_worker_that_died_shows_as_failed_with_its_log(lab, monkeypatch):
    monkeypatch.setenv("RIVYA_QUOTA_TASKS", "200000")  # a run long enough to kill mid-way
    at = lab()
    at.number_input[0].set_value(200_000)
    button(at, "Run in the background").click().run()
    job = wait_job(lab.runs, lambda j: j["status"] == "running", "started")
    os.killpg(job["pid"], signal.SIGKILL)
    wait_job(lab.runs, lambda j: j["status"] == "failed", "was marked failed")
    at.run()
    text = shown(at)
    assert "· failed" in text and "ended without a result" in text
    assert any(f"job {job['id']}: run" in str(c.value) for c in at.code)


def test_a_comparisons_result_gives_changes_definitions_and_the_price_note(lab):
    at = lab()
    policies = [s for s in at.selectbox if s.label in ("Policy A", "Policy B") and not (s.key or "").startswith("bt_")]
    policies[1].set_value("premium_prices")
    compare_tab = [n for n in at.number_input if n.label in ("Replications", "Arrivals per run") and not n.key]
    compare_tab[0].set_value(2)
    compare_tab[1].set_value(40)
    button(at, "Compare in the background").click().run()
    show_finished(at, lab.runs)
    table = next(d.value for d in at.dataframe if "what it counts" in d.value.columns)
    assert {"change", "change, 95% CI", "B − A"} <= set(table.columns)
    row = table[table["KPI"] == "failures without refund"].iloc[0]
    assert row["what it counts"].startswith("tasks charged, then failed")
    assert "rounded up to whole credits" in shown(at) and "lumen-flash 2 → 3 (+50.0%)" in shown(at)


def test_the_lab_names_the_scenarios_own_policy_and_arrivals_against_tasks(lab):
    at = lab()
    text = shown(at)
    assert "no description in its file" not in text
    assert "default: The baseline: refund provider and infrastructure failures" in text
    next(e for e in at.number_input if e.label == "Arrivals").set_value(300)
    button(at, "Run in the background").click().run()
    assert "baseline, 300 arrivals (generation requests and chat turns)" in shown(at)
    s = show_finished(at, lab.runs)["result"]["summary"]
    assert f"{s['tasks']:,} tasks from 300 arrivals" in shown(at)
