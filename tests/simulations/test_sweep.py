"""Sweeps on the experiment engine: the same rows serially, on a local Dask cluster
and on an existing one; seeds from the job's key; failed jobs reported with a
replay command while the rest finish; results in one table; compare's CIs from it."""

from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest

from rivya_core.policy import BillingPolicy
from simulations.__main__ import main
from simulations.compare import compare
from simulations.engine import Job, local_cluster, run_jobs
from simulations.scenarios import load_scenario
from simulations.sweep import NO_GRID, Sweep, paired_table, parse_grid, read_results, run_sweep, write_results

POLICIES = ("data/policies/default.toml", "data/policies/no_refunds.toml")


@pytest.fixture(scope="module")
def cluster():
    """An existing cluster, as a team would run one: its scheduler's address."""
    c = local_cluster(2)
    yield c.scheduler_address
    c.close()


def small_sweep(replications: int = 2, tasks: int = 40, grid: tuple = ()) -> Sweep:
    return Sweep(
        load_scenario("chaos"),
        tuple(BillingPolicy.load(p) for p in POLICIES),
        grid,
        replications,
        tasks=tasks,
        command=("python", "-m", "simulations", "sweep", "chaos"),
    )


def rows(frame: pd.DataFrame) -> list[dict]:
    return frame.drop(columns=["wall_s"]).to_dict("records")


@pytest.mark.slow  # Dask worker processes
def test_a_sweep_gives_the_same_rows_serially_on_a_local_cluster_and_on_an_existing_one(cluster):
    sweep = small_sweep(grid=parse_grid(["farm.capacity=4,12"]))
    serial = run_sweep(sweep, workers=0)
    local = run_sweep(sweep, workers=2)
    remote = run_sweep(sweep, scheduler=cluster)
    assert len(serial.frame) == 2 * 2 * 2 and (serial.frame["status"] == "ok").all()
    assert rows(serial.frame) == rows(local.frame) == rows(remote.frame)
    # the policies differ where they should, on the same draws
    table = paired_table(serial.frame, ("default", "farm.capacity=4"), ("no_refunds", "farm.capacity=4"))
    assert {r["kpi"]: r for r in table}["refunds"]["policy_b"] == 0


def test_seeds_come_from_the_replication_of_the_key_not_from_the_order():
    sweep = small_sweep(replications=3)
    jobs = sweep.jobs()
    assert [j.args[1] for j in jobs] == [sweep.scenario.seed + r for r in (0, 1, 2)] * 2
    forward = {o.key: o.value for o in run_jobs(jobs, workers=0)}
    backward = {o.key: o.value for o in run_jobs(jobs[::-1], workers=0)}
    for key in forward:
        forward[key].pop("wall_s"), backward[key].pop("wall_s")
    assert forward == backward
    # the same replication under both policies saw the same arrivals
    assert forward["default|-|r1"]["tasks"] == forward["no_refunds|-|r1"]["tasks"]


def boom_on_two(x: int) -> int:
    if x == 2:
        raise RuntimeError("job two broke")
    return x * 10


@pytest.mark.parametrize("where", ["serial", pytest.param("cluster", marks=pytest.mark.slow)])  # Dask workers
def test_a_failed_job_is_reported_with_its_replay_and_the_rest_finish(where, request):
    jobs = [Job(f"j{i}", boom_on_two, (i,), f"replay j{i}") for i in range(5)]
    where_to = {"workers": 0} if where == "serial" else {"scheduler": request.getfixturevalue("cluster")}
    out = run_jobs(jobs, **where_to)
    assert [o.key for o in out] == [f"j{i}" for i in range(5)]
    assert [o.value for o in out if o.ok] == [0, 10, 30, 40]
    (bad,) = [o for o in out if not o.ok]
    assert bad.key == "j2" and "RuntimeError: job two broke" in bad.error and bad.replay == "replay j2"


def test_a_failed_sweep_job_prints_a_replay_command_that_runs_it_alone(capsys, tmp_path):
    # a provider the catalogue does not know: the scenario parses, the run refuses it
    code = main(
        [
            "sweep",
            "chaos",
            "--grid",
            "farm.providers.nosuch.capacity=3",
            "--replications",
            "2",
            "--tasks",
            "20",
            "--workers",
            "0",
            "-o",
            str(tmp_path / "r.db"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED default|farm.providers.nosuch.capacity=3|r1: ScenarioError" in out
    replay = [ln.split("replay: ", 1)[1] for ln in out.splitlines() if "replay: " in ln]
    assert len(replay) == 2
    argv = shlex.split(replay[1])
    assert argv[:4] == ["python", "-m", "simulations", "sweep"] and argv[-4:] == [
        "--only",
        "default|farm.providers.nosuch.capacity=3|r1",
        "--workers",
        "0",
    ]
    assert main(argv[3:] + ["--json"]) == 1
    replayed = json.loads(capsys.readouterr().out)
    assert [f["key"] for f in replayed["failed"]] == ["default|farm.providers.nosuch.capacity=3|r1"]
    _, frame = read_results(tmp_path / "r.db")
    assert list(frame["status"]) == ["failed", "failed"] and frame["replay"].str.contains("--only").all()


def test_results_table_round_trips_with_the_definition_in_sqlite_and_parquet(tmp_path):
    result = run_sweep(small_sweep(replications=2, tasks=30), workers=0)
    for name in ("r.db", "r.parquet"):
        path = write_results(result, tmp_path / name)
        definition, frame = read_results(path)
        assert definition == json.loads(json.dumps(result.sweep.definition()))
        assert definition["replications"] == 2 and [p["name"] for p in definition["policies"]] == [
            "default",
            "no_refunds",
        ]
        assert rows(frame) == rows(result.frame)
    with pytest.raises(Exception, match="already holds data"):
        write_results(result, tmp_path / "r.db")
    write_results(result, tmp_path / "r.db", force=True)


@pytest.mark.slow
def test_two_policies_by_fifty_replications_of_baseline_match_compare(cluster, tmp_path):
    out = tmp_path / "sweep.db"
    assert (
        main(
            [
                "sweep",
                "baseline",
                "--policy",
                POLICIES[0],
                "--policy",
                POLICIES[1],
                "--replications",
                "50",
                "--tasks",
                "12",
                "--scheduler",
                cluster,
                "-o",
                str(out),
            ]
        )
        == 0
    )
    definition, frame = read_results(out)
    assert len(frame) == 100 and (frame["status"] == "ok").all()
    sweep_table = paired_table(frame, ("default", NO_GRID), ("no_refunds", NO_GRID))
    report = compare(
        load_scenario("baseline"), [BillingPolicy.load(p) for p in POLICIES], 50, tasks=12, scheduler=cluster
    )
    assert report.seeds == sorted(set(frame["seed"])) == [definition["master_seed"] + r for r in range(50)]
    assert sweep_table == report.table
    refunds = {r["kpi"]: r for r in report.table}["refunds"]
    assert refunds["ci_low"] <= refunds["diff"] <= refunds["ci_high"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sweep", "baseline", "--workers", "-1"], "--workers"),
        (["sweep", "baseline", "--workers", "257"], "--workers"),
        (["sweep", "baseline", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
        (["sweep", "baseline", "--scheduler", "nonsense"], "tcp://host:8786"),
        (["sweep", "baseline", "--grid", "farm.capacity"], "key=value1,value2"),
        (["sweep", "baseline", "--grid", "farm.no_such_knob=1,2"], "no_such_knob"),
        (["sweep", "baseline", "--grid", "farm.capacity=-3"], "farm.capacity"),
        (["sweep", "baseline", "--grid", "seed=1,2"], "seeds come from"),
        (["sweep", "baseline", "--replications", "0"], "--replications"),
        (["sweep", "baseline", "--only", "nope", "--workers", "0"], "no such job"),
        (["sweep", "baseline", "-o", "{tmp}/r.csv"], ".parquet"),
        (["sweep", "baseline", "-o", "{tmp}/full.db"], "already holds data"),
        (["compare", "baseline", "--policy", POLICIES[0], "--policy", POLICIES[1], "--workers", "-2"], "--workers"),
        (["chaos", "--seeds", "1", "--scheduler", "nonsense"], "tcp://host:8786"),
    ],
)
def test_engine_errors_are_one_clear_line(argv, needle, tmp_path, capsys):
    (tmp_path / "full.db").write_bytes(b"x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own one-line usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_chaos_and_compare_take_the_engine_flags(capsys):
    assert main(["chaos", "--seeds", "2", "--start", "3", "--tasks", "30", "--workers", "0"]) == 0
    assert "2 seed(s) from 3, 0 failed" in capsys.readouterr().out
    assert (
        main(
            [
                "compare",
                "chaos",
                "--policy",
                POLICIES[0],
                "--policy",
                POLICIES[1],
                "--replications",
                "2",
                "--tasks",
                "30",
                "--workers",
                "0",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == [] and len(report["runs"]["default"]) == 2
