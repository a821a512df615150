"""The Simulation lab's knobs show the selected scenario's own values, whatever was selected before, and
a lab run with untouched knobs writes the same database (fingerprint) as the CLI's `run`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rivya_core.audit import ledger_sums
from rivya_core.credits import chat_figures
from rivya_core.stores import db
from simulations import jobs
from simulations.scenarios import list_scenarios, load_scenario
from simulations.writer import read_sim_runs
from tests.dashboard.test_lab_jobs import button, lab, wait_job  # noqa: F401  (lab: a fixture)
from tests.dashboard.test_money_pages import ROOT, run_page

FAULTS = [
    "early",
    "lost",
    "duplicate",
    "reorder",
    "forged",
    "stale",
    "malformed",
    "submit_refused",
    "submit_error",
    "submit_timeout",
    "content_policy",
    "model_error",
    "upstream_timeout",
    "lost_job",
    "no_urls",
]


def shown_knobs(at) -> dict:
    values = {e.label: e.value for e in at.number_input}
    values.update({e.label: e.value for e in at.toggle})
    values.update({e.label: e.value for e in at.slider})
    return values


def file_knobs(name: str) -> dict:
    sc = load_scenario(name)
    want = {f.replace("_", " "): getattr(sc.farm, f) for f in FAULTS}
    want.update(
        {
            "Arrivals": sc.tasks or 500,
            "Seed": sc.seed,
            "Users": sc.population.users,
            "Callbacks on": sc.callbacks,
            "Users starting with almost no credits": sc.population.broke_fraction,
        }
    )
    return want


def test_every_scenario_shows_its_own_knobs_whatever_came_before(empty_url, tmp_path, monkeypatch):
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path / "runs"))
    names = [p.stem for p in list_scenarios()]
    assert {"chaos", "lost_callbacks", "baseline"} <= set(names)
    at = run_page("simulation_lab.py", empty_url, timeout=120)
    # every scenario after every other kind: forwards, then backwards
    for name in [*names, *reversed(names)]:
        at.selectbox(key="run_scenario").set_value(name).run()
        assert not at.exception, [e.value for e in at.exception]
        shown = shown_knobs(at)
        for label, value in file_knobs(name).items():
            assert shown[label] == pytest.approx(value), f"{name}: {label} shows {shown[label]}, the file says {value}"


@pytest.mark.slow  # the run is a job in a worker process
def test_a_lab_run_with_untouched_knobs_matches_the_cli_fingerprint(lab):  # noqa: F811
    """...and its result shows chat as finally charged, with the reservations beside it."""
    at = lab()
    at.selectbox(key="run_scenario").set_value("chaos").run()  # another scenario's knobs first
    at.selectbox(key="run_scenario").set_value("lost_callbacks").run()
    sc = load_scenario("lost_callbacks")
    tasks = 60
    next(e for e in at.number_input if e.label == "Arrivals").set_value(tasks).run()
    button(at, "Run in the background").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = wait_job(lab.runs, lambda j: j["status"] in jobs.FINISHED, "finished")
    assert job["status"] == "done", jobs.log_tail(job)
    made = list(lab.runs.glob("lost_callbacks-*.db"))
    assert len(made) == 1
    engine = db.make_engine(f"sqlite:///{made[0]}")
    try:
        ran = read_sim_runs(engine)[-1]
        chat = chat_figures(ledger_sums(engine))
    finally:
        engine.dispose()
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations",
            "run",
            "lost_callbacks",
            "--seed",
            str(sc.seed),
            "--tasks",
            str(tasks),
            "--db",
            f"sqlite:///{lab.runs.parent / 'cli.db'}",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert ran["fingerprint"] == json.loads(cli.stdout)["fingerprint"]

    at.run()
    button(at, "Show result").click().run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert 0 < chat.charged < chat.reserved
    assert metrics["Chat charged"] == f"{chat.charged:,}" and metrics["Chat reserved"] == f"{chat.reserved:,}"


def test_the_lab_names_the_question_each_policy_answers(empty_url, tmp_path, monkeypatch):
    from rivya_core.policy import BillingPolicy
    from simulations.scenarios import POLICY_DIR

    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path / "runs"))
    at = run_page("simulation_lab.py", empty_url, timeout=120)
    shown = lambda: [t.value for t in at.text]  # noqa: E731
    run_policy = next(s for s in at.selectbox if s.label == "Billing policy")
    run_policy.set_value("premium_prices").run()
    premium = BillingPolicy.load(POLICY_DIR / "premium_prices.toml")
    assert f"premium_prices: {premium.description}" in shown()
    next(s for s in at.selectbox if s.label == "Policy B").set_value("refund_everything").run()
    everything = BillingPolicy.load(POLICY_DIR / "refund_everything.toml")
    default = BillingPolicy.load(POLICY_DIR / "default.toml")
    assert f"A = default: {default.description}" in shown()
    assert f"B = refund_everything: {everything.description}" in shown()
