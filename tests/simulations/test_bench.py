"""The benchmarks run at small N: every lifecycle mode processes the same workload, the
others run on a real run's database, and the PostgreSQL mode keeps to a database of its own."""

from __future__ import annotations

import json

import pytest

from simulations.benchmarks import bulk, common, dashboard, database, lifecycle
from simulations.benchmarks.cli import main as bench_main
from tests.conftest import skip_or_fail_in_ci


@pytest.fixture(scope="module")
def report():
    """Every mode once, each in a child process, PostgreSQL included: the tests on it are slow."""
    return lifecycle.bench(300, reps=1, modes=("bare", "memory", "sqlite", "postgres"))


@pytest.mark.slow
def test_every_mode_processes_the_same_tasks(report):
    rows = {r["mode"]: r for r in report["modes"]}
    expected = {"bare", "memory", "sqlite"} if report["postgres_skipped"] else set(lifecycle.MODES)
    assert set(rows) == expected
    assert {r["tasks"] for r in rows.values()} == {300}
    assert len({r["succeeded"] for r in rows.values()}) == 1
    # the same arrivals and latency draws: the summed time-to-terminal agrees
    assert len({r["latency_sum_s"] for r in rows.values()}) == 1
    assert all(r["consistent"] for r in rows.values())


@pytest.mark.slow
def test_the_postgres_mode_ran(report):
    if report["postgres_skipped"]:
        skip_or_fail_in_ci("PostgreSQL not reachable: the bench's postgres mode did not run")
    assert "postgres" in [r["mode"] for r in report["modes"]]
    assert "postgres: not reachable" not in lifecycle.render(report)


@pytest.mark.slow
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
    text = lifecycle.render(report)
    assert all(f"{r['rate']:>10,.0f}" in text for r in report["modes"])


def test_bare_model_does_no_lifecycle_work():
    out = lifecycle.run_bare(common.workload(50))
    assert out["tasks"] == 50 and out["sim_s"] > 0


def test_cli_json_and_bad_arguments(capsys):
    assert bench_main(["--tasks", "40", "--reps", "1", "--modes", "bare,memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["mode"] for m in out["modes"]] == ["bare", "memory"]
    assert out["modes"][0]["tasks"] == out["modes"][1]["tasks"] == 40
    assert bench_main(["--tasks", "40", "--modes", "bare,nosuch"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert bench_main(["--tasks", "0", "--modes", "bare"]) == 2


def test_make_db_writes_a_fresh_database(tmp_path):
    out = database.make_db(str(tmp_path / "m.db"), 60)
    assert out["tasks"] > 0 and out["violations"] == 0 and out["liveness_ok"]


def test_dashboard_timing_covers_every_page_and_each_call_runs(tmp_path):
    """`bench --dashboard`: the newer pages' data (alerts, the User page, incidents, the checklist) are
    timed too, and every call returns on a real run's database."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    database.make_db(str(tmp_path / "d.db"), 60)
    out = dashboard.dashboard(url, reps=1)
    names = {c["name"] for c in out["calls"]}
    assert {
        "alerts.alerts",
        "user_view.user_tasks",
        "user_view.outcome_seen",
        "bulk.incidents",
        "diagnose.diagnose",
    } <= names
    assert all(c["median_s"] >= 0 for c in out["calls"])


def test_bulk_bench_reports_a_refused_filter_and_runs_the_rest(tmp_path, monkeypatch):
    """`bench --bulk` on a history larger than incidents.MAX_TASKS: the over-broad dry run is reported as
    refused (it used to end the benchmark), the others and the executions are timed; the second
    execution of the same incident changes nothing."""
    from rivya_core.read import incidents

    database.make_db(str(tmp_path / "b.db"), 120)
    monkeypatch.setattr(incidents, "MAX_TASKS", 3)
    out = bulk.bulk(f"sqlite:///{tmp_path / 'b.db'}")
    assert "refused" in out["dry_run_refund_failed"] or out["dry_run_refund_failed"]["matched"] <= 3
    assert "refused" in out["dry_run_refund_all_finished"]
    monkeypatch.setattr(incidents, "MAX_TASKS", 200_000)
    out = bulk.bulk(f"sqlite:///{tmp_path / 'b.db'}")
    assert out["dry_run_refund_all_finished"]["matched"] > 0
    assert out["execute_again"]["acted"] == 0


def _bench_databases() -> set[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(common.PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return set(conn.scalars(text("SELECT datname FROM pg_database WHERE datname LIKE 'rivya_bench%'")))
    finally:
        admin.dispose()


@pytest.mark.slow
def test_the_postgres_mode_keeps_to_a_database_of_its_own(tmp_path, monkeypatch):
    """Two benchmarks at once (pytest -n 2, two sessions) must not clobber each other: the postgres
    mode used to DROP ... WITH (FORCE) and recreate one fixed database, ending the other run's
    connections. Now each run has a uniquely named scratch database, dropped when it ends, and a
    concurrent run's database and connection survive it."""
    from contextlib import contextmanager

    from sqlalchemy import create_engine, text

    if not common.pg_reachable():
        skip_or_fail_in_ci("PostgreSQL not reachable: the bench's postgres mode cannot run")
    used: list[str] = []

    @contextmanager
    def recorded(label: str = "run"):
        with common.scratch_postgres(label) as url:
            used.append(url.rsplit("/", 1)[1])
            assert used[-1] in _bench_databases()
            yield url

    monkeypatch.setattr(lifecycle, "scratch_postgres", recorded)
    with common.scratch_postgres("other") as other_url, common.scratch_postgres("other") as second_url:
        assert other_url != second_url  # two runs never share a name
        other = create_engine(other_url)
        try:
            with other.connect() as held:  # a concurrent run, mid-way, holding its connection
                out = lifecycle.run_mode("postgres", 40, str(tmp_path))
                assert out["mode"] == "postgres" and out["tasks"] == 40
                assert held.scalar(text("SELECT 1")) == 1  # not terminated by the other run
        finally:
            other.dispose()
        assert len(used) == 1 and used[0] not in other_url + second_url
        left = _bench_databases()
        assert used[0] not in left  # the run dropped its own database
        assert {u.rsplit("/", 1)[1] for u in (other_url, second_url)} <= left  # and only that
    assert not {u.rsplit("/", 1)[1] for u in (other_url, second_url)} & _bench_databases()
