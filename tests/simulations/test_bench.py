"""The benchmark runs at small N and every mode processes the same workload."""

from __future__ import annotations

import json

import pytest

from simulations import bench


@pytest.fixture(scope="module")
def report():
    return bench.bench(300, reps=1, modes=("bare", "memory", "sqlite", "postgres"))


def test_every_mode_processes_the_same_tasks(report):
    rows = {r["mode"]: r for r in report["modes"]}
    assert {"bare", "memory", "sqlite"} <= set(rows)
    assert {r["tasks"] for r in rows.values()} == {300}
    assert len({r["succeeded"] for r in rows.values()}) == 1
    # the same arrivals and latency draws: the summed time-to-terminal agrees
    assert len({r["latency_sum_s"] for r in rows.values()}) == 1
    assert all(r["consistent"] for r in rows.values())


def test_rates_ratios_and_memory_are_reported(report):
    for r in report["modes"]:
        assert r["rate"] > 0 and r["cpu_rate"] > 0 and r["peak_rss_mib"] > 0
        assert r["ratio"] is not None and r["ratio"] > 0
    assert report["modes"][0]["mode"] == "bare" and report["modes"][0]["ratio"] == 1.0
    assert "x bare" in bench.render(report)


def test_bare_model_does_no_lifecycle_work():
    out = bench.run_bare(bench.workload(50))
    assert out["tasks"] == 50 and out["sim_s"] > 0


def test_cli_json_and_bad_arguments(capsys):
    assert bench.main(["--tasks", "40", "--reps", "1", "--modes", "bare,memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["mode"] for m in out["modes"]] == ["bare", "memory"]
    assert out["modes"][0]["tasks"] == out["modes"][1]["tasks"] == 40
    assert bench.main(["--tasks", "40", "--modes", "bare,nosuch"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert bench.main(["--tasks", "0", "--modes", "bare"]) == 2


def test_make_db_writes_a_fresh_database(tmp_path):
    out = bench.make_db(str(tmp_path / "m.db"), 60)
    assert out["tasks"] > 0 and out["violations"] == 0 and out["liveness_ok"]
