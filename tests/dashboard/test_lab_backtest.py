"""The lab's Backtest tab on the current data source, and the inspector's and user page's fork download."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from simulations.runner import run_scenario
from simulations.scenarios import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('lab') / 'lost.db'}"
    run_scenario(load_scenario("lost_callbacks"), url, tasks=60)
    return url


def _page(name: str, url: str, role: str = "operator", signed_in: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=180)
    at.session_state["db_url"] = url
    at.session_state["role"] = role
    if signed_in is not None:
        at.session_state["user"] = signed_in
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.slow  # the backtest is a job in a worker process
def test_backtest_tab_shows_exact_and_simulated_figures_with_the_ci_chart(sim_url, tmp_path, monkeypatch):
    from rivya_core.access import Role
    from simulations import jobs

    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "simulation_lab.py"), default_timeout=180)
    at.session_state["db_url"] = sim_url
    at.session_state["role"] = Role.OPERATOR
    at.run()
    at.selectbox(key="bt_b").set_value("no_refunds")
    at.toggle(key="bt_timing").set_value(True)
    next(b for b in at.button if b.label == "Backtest in the background").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    deadline = time.monotonic() + 300  # the backtest runs in its own worker process
    while (job := jobs.list_jobs(tmp_path / "runs")[0])["status"] in jobs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job["kind"] == "backtest" and job["status"] == "done", jobs.log_tail(job)
    at.run()
    next(b for b in at.button if b.label == "Show result").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Self-check passed" in s.value for s in at.success)
    kpis = next(d.value for d in at.dataframe if "figure" in d.value.columns)
    assert set(kpis["figure"]) == {"exact", "simulated"}
    refunded = kpis[(kpis["kpi"] == "refunded") & (kpis["figure"] == "exact")].iloc[0]
    assert refunded["B: no_refunds"] == 0 and refunded["B − A"] == -refunded["A: default"]
    titles = [str(c.proto) for c in at.get("plotly_chart")]
    assert any("95% bootstrap CI" in t for t in titles) and any("by model" in t for t in titles)


def test_a_viewer_reads_the_tab_but_cannot_run_a_backtest(sim_url, monkeypatch):
    monkeypatch.setenv("RIVYA_VIEWERS", "vera:pw1")  # access control on (off, everybody is an operator)
    monkeypatch.delenv("RIVYA_OPERATORS", raising=False)
    at = _page("simulation_lab.py", sim_url, role="viewer", signed_in="vera")
    assert not [b for b in at.button if b.label.startswith("Backtest")]
    assert any("Running a backtest needs the operator role" in c.value for c in at.caption)


def test_inspector_and_user_page_offer_the_fork_download(sim_url):
    at = _page("task_inspector.py", sim_url, task="1")
    button = at.get("download_button")
    assert button, "no download button on the inspector"
    assert "Fork into a scenario" in str(button[0].proto)
    import sqlite3

    with sqlite3.connect(sim_url.removeprefix("sqlite:///")) as conn:
        user = conn.execute("select user_id from ai_task where id = 1").fetchone()[0]
    at = _page("user.py", sim_url, user=str(user))
    assert any("Fork into a scenario" in str(b.proto) for b in at.get("download_button"))


def test_the_forked_story_is_a_scenario_run_accepts(sim_url):
    from rivya_core.stores.db import open_reader
    from simulations.fork import fork_story

    engine = open_reader(sim_url)
    try:
        text = fork_story(engine, task_id=1).to_toml()
    finally:
        engine.dispose()
    assert tomllib.loads(text)["script"][0]["action"] == "submit"
    assert parse_scenario(text).script


@pytest.mark.slow  # the backtest is a job in a worker process
def test_a_backtest_whose_self_check_fails_shows_as_failed_with_the_reason(tmp_path, monkeypatch):
    import sqlite3

    from rivya_core.access import Role
    from simulations import jobs

    path = tmp_path / "tampered.db"
    run_scenario(load_scenario("lost_callbacks"), f"sqlite:///{path}", tasks=60)
    with sqlite3.connect(path) as conn:  # a charge one credit dearer than the recorded policy's price
        conn.execute(
            "update credit_ledger set amount = amount - 1, balance_after = balance_after - 1 "
            "where id = (select min(id) from credit_ledger where entry_type = 'consume')"
        )
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "simulation_lab.py"), default_timeout=180)
    at.session_state["db_url"] = f"sqlite:///{path}"
    at.session_state["role"] = Role.OPERATOR
    at.run()
    next(b for b in at.button if b.label == "Backtest in the background").click()
    at.run()
    deadline = time.monotonic() + 300
    while (job := jobs.list_jobs(tmp_path / "runs")[0])["status"] in jobs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job["status"] == "failed", jobs.log_tail(job)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    texts = [t.value for t in at.text] + [m.value for m in at.markdown]
    assert any("#1 backtest" in t and "failed" in t for t in texts), texts
    assert any("self-check failed" in t and "not trustworthy" in t for t in texts), texts
    assert not any("done" in t and "#1 backtest" in t for t in texts)
    next(b for b in at.button if b.label == "Show result").click()  # the evidence stays readable
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Self-check FAILED" in e.value for e in at.error)
