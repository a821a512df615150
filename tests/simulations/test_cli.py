"""`python -m simulations`: errors are one line and a non-zero exit; run, replay, compare, list work."""

from __future__ import annotations

import json

import pytest

from simulations.__main__ import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "no_such_scenario", "--db", "sqlite:///{tmp}/x.db"], "no such scenario file"),
        (["run", "baseline", "--db", "nope://x"], "malformed database URL"),
        (["run", "baseline", "--db", "sqlite:///{tmp}/x.db", "--tasks", "0"], "--tasks"),
        (["compare", "baseline", "--policy", "data/policies/default.toml"], "exactly two"),
        (["compare", "baseline", "--policy", "missing.toml", "--policy", "missing.toml"], "no such policy file"),
        (["replay", "sqlite:///{tmp}/missing.db"], "no SQLite database"),
        (["replay", "0000deadbeef"], "no recorded run"),
    ],
)
def test_errors_are_one_clear_line(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as ex:  # a usage error (argparse): the same one line and status
        code = ex.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_help_everywhere(capsys):
    for argv in (["--help"], ["run", "--help"], ["replay", "--help"], ["compare", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as ex:
            main(argv)
        assert ex.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_run_json_then_replay_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path))  # a run in the runs folder is found by fingerprint
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["run", "lost_callbacks", "--db", db, "--tasks", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["violations"] == [] and out["liveness_ok"]
    assert main(["replay", db, "--check"]) == 0
    assert "MATCH" in capsys.readouterr().out
    assert main(["replay", out["fingerprint"][:20], "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["match"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]  # the replay's database is gone
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert main(["replay", out["fingerprint"][:20]]) == 2  # elsewhere: by its database URL
    assert "give the run's database URL" in capsys.readouterr().err


def test_compare_prints_a_table_with_confidence_intervals(capsys):
    code = main(
        [
            "compare",
            "chaos",
            "--policy",
            "data/policies/refund_everything.toml",
            "--policy",
            "data/policies/no_refunds.toml",
            "--replications",
            "3",
            "--tasks",
            "100",
            "--workers",
            "0",
            "--json",
        ]
    )  # in this process: the engine is tested in test_sweep
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    table = {row["kpi"]: row for row in report["table"]}
    assert table["refunds"]["policy_b"] == 0 and table["refunds"]["diff"] < 0
    assert table["refunds"]["ci_low"] <= table["refunds"]["diff"] <= table["refunds"]["ci_high"]
    assert table["revenue"]["diff"] > 0


def test_list_names_every_scenario(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "chaos" in out and "scripted_early_then_lost" in out
