"""The benchmark runs at small N and every mode processes the same workload."""

from __future__ import annotations

import json

import pytest

from simulations import bench
from tests.conftest import skip_or_fail_in_ci


@pytest.fixture(scope="module")
def report():
    return bench.bench(300, reps=1, modes=("bare", "memory", "sqlite", "postgres"))


def test_every_mode_processes_the_same_tasks(report):
    rows = {r["mode"]: r for r in report["modes"]}
    expected = {"bare", "memory", "sqlite"} if report["postgres_skipped"] else set(bench.MODES)
    assert set(rows) == expected
    assert {r["tasks"] for r in rows.values()} == {300}
    assert len({r["succeeded"] for r in rows.values()}) == 1
    # the same arrivals and latency draws: the summed time-to-terminal agrees
    assert len({r["latency_sum_s"] for r in rows.values()}) == 1
    assert all(r["consistent"] for r in rows.values())


def test_the_postgres_mode_ran(report):
    if report["postgres_skipped"]:
        skip_or_fail_in_ci("PostgreSQL not reachable: the bench's postgres mode did not run")
    assert "postgres" in [r["mode"] for r in report["modes"]]
    assert "postgres: not reachable" not in bench.render(report)


def test_rates_and_ratios_are_the_measured_ones(report):
    rows = {r["mode"]: r for r in report["modes"]}
    bare = rows["bare"]
    for r in report["modes"]:
        (run,) = report["runs"][r["mode"]]  # one repetition: the median is that run
        assert r["rate"] == pytest.approx(run["tasks"] / run["wall_s"]) and r["wall_s"] == run["wall_s"]
        assert r["cpu_rate"] == pytest.approx(run["tasks"] / run["cpu_s"])
        assert r["ratio"] == pytest.approx(r["rate"] / bare["rate"])
        assert r["cpu_ratio"] == pytest.approx(r["cpu_rate"] / bare["cpu_rate"])
        assert r["peak_rss_mib"] > 0
    assert bare["ratio"] == 1.0 and report["modes"][0] is bare
    # the lifecycle does work the bare model does not: every full mode is slower per task of CPU
    assert all(r["cpu_ratio"] < 1.0 for m, r in rows.items() if m != "bare")
    text = bench.render(report)
    assert all(f"{r['rate']:>10,.0f}" in text for r in report["modes"])


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


def test_dashboard_timing_covers_every_page_and_each_call_runs(tmp_path):
    """`bench --dashboard`: the newer pages' data (alerts, the User page, incidents, the checklist) are
    timed too, and every call returns on a real run's database."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    bench.make_db(str(tmp_path / "d.db"), 60)
    out = bench.dashboard(url, reps=1)
    names = {c["name"] for c in out["calls"]}
    assert {"alerts.alerts", "user_view.user_tasks", "user_view.outcome_seen", "bulk.incidents",
            "diagnose.diagnose"} <= names
    assert all(c["median_s"] >= 0 for c in out["calls"])


def test_bulk_bench_reports_a_refused_filter_and_runs_the_rest(tmp_path, monkeypatch):
    """`bench --bulk` on a history larger than incidents.MAX_TASKS: the over-broad dry run is reported as
    refused (it used to end the benchmark), the others and the executions are timed; the second
    execution of the same incident changes nothing."""
    from rivya_core.read import incidents

    bench.make_db(str(tmp_path / "b.db"), 120)
    monkeypatch.setattr(incidents, "MAX_TASKS", 3)
    out = bench.bulk(f"sqlite:///{tmp_path / 'b.db'}")
    assert "refused" in out["dry_run_refund_failed"] or out["dry_run_refund_failed"]["matched"] <= 3
    assert "refused" in out["dry_run_refund_all_finished"]
    monkeypatch.setattr(incidents, "MAX_TASKS", 200_000)
    out = bench.bulk(f"sqlite:///{tmp_path / 'b.db'}")
    assert out["dry_run_refund_all_finished"]["matched"] > 0
    assert out["execute_again"]["acted"] == 0
