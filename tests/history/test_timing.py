"""Timing part: the trace-driven re-run reproduces the history under its own policy, and a timing
policy moves only what it should."""

from __future__ import annotations

import json
import sqlite3

import pytest

from simulations.__main__ import main
from simulations.runner import run_scenario
from simulations.scenarios import load_scenario


@pytest.fixture(scope="module")
def lost_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("timing") / "lost.db"
    run_scenario(load_scenario("chaos"), f"sqlite:///{path}", tasks=250)
    return path


def test_a_shorter_video_timeout_changes_time_not_money_and_says_what_is_simulated(lost_db, tmp_path, capsys):
    short = tmp_path / "short.toml"
    short.write_text('[policy]\nname = "short_video_timeout"\ntimeout_s = {image = 900, video = 1200, audio = 1800}\n')
    code = main(
        [
            "backtest",
            "--db",
            f"sqlite:///{lost_db}",
            "--policy",
            "data/policies/default.toml",
            "--policy",
            str(short),
            "--json",
            "--resamples",
            "200",
        ]
    )
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    timing = rep["timing"]["kpis"]
    with sqlite3.connect(lost_db) as conn:
        failed, timeouts = conn.execute(
            "select count(*), sum(error_code = 'timeout') from ai_task where status = 'FAILED'"
        ).fetchone()
    # under the recorded policy the trace-driven re-run is the history
    assert timing["user_visible_failures"]["a"] == failed
    assert timing["timeouts"]["a"] == timeouts
    assert timing["kept"]["a"] == rep["exact"]["kpis"]["kept"]["a"]
    # the policy changes no price or refund rule: the exact part does not move
    assert all(v["diff"] == 0 for v in rep["exact"]["kpis"].values())
    assert all(v["source"] == "exact" for v in rep["exact"]["kpis"].values())
    assert all(v["source"] == "simulated" for v in timing.values())
    t = timing["time_to_terminal_mean_s"]
    assert t["b"] <= t["a"]
    lo, hi = t["ci95"]
    assert lo <= t["diff"] <= hi


def test_exact_only_skips_the_re_run(lost_db, capsys):
    assert (
        main(
            [
                "backtest",
                "--db",
                f"sqlite:///{lost_db}",
                "--policy",
                "data/policies/default.toml",
                "--policy",
                "data/policies/no_refunds.toml",
                "--json",
                "--exact-only",
            ]
        )
        == 0
    )
    assert "timing" not in json.loads(capsys.readouterr().out)
