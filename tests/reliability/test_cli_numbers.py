"""Bad numbers on either command line: one line naming the option and its range,
exit 2, no traceback, and the database untouched."""

from __future__ import annotations

import pytest

from rivya_core.__main__ import main as core_main
from simulations.__main__ import main as sim_main
from tests.simulations.conftest import dump

BIG = "99999999999999999999999"


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert core_main(["init-db", "--db", url]) == 0
    return url


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["recheck", BIG], "task_id"),
        (["refund", "9223372036854775808", "--operator", "o", "--reason", "r"], "task_id"),
        (["diagnose", "0"], "task_id"),
        (["mark-failed", "-1", "--operator", "o", "--reason", "r"], "task_id"),
        (["audit", "--at", "0001-01-01"], "--at"),
        (["audit", "--at", "9999-12-31T23:59:59"], "--at"),
        (["recover", "--grace", "nan"], "--grace"),
        (["recover", "--grace", "inf"], "--grace"),
        (["recover", "--grace", "1e308"], "--grace"),
        (["recover", "--grace", "-1"], "--grace"),
        (["poll", "--every", "nan"], "--every"),
        (["serve", "--poll-every", "inf"], "--poll-every"),
        (["serve", "--port", "70000"], "--port"),
    ],
)
def test_core_cli_refuses_bad_numbers_in_one_line(argv, needle, db, tmp_path, capsys):
    before = dump(tmp_path / "r.db")
    with pytest.raises(SystemExit) as ex:
        core_main([*argv, "--db", db])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and "\n" not in err and needle in err and " to " in err, err
    assert dump(tmp_path / "r.db") == before


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "baseline", "--db", "sqlite:///{tmp}/x.db", "--seed", str(2**64)], "--seed"),
        (["run", "baseline", "--db", "sqlite:///{tmp}/x.db", "--tasks", str(10**30)], "--tasks"),
        (["run", "baseline", "--db", "sqlite:///{tmp}/x.db", "--tasks", "10**30"], "--tasks"),
        (["run", "baseline", "--db", "sqlite:///{tmp}/x.db", "--realtime", "nan"], "--realtime"),
        (["compare", "baseline", "--policy", "a", "--policy", "b", "--replications", BIG], "--replications"),
        (["chaos", "--seeds", "1", "--start", str(2**63)], "--start"),
        (["bench", "--tasks", "1e300"], "--tasks"),
        (["live", "--flavor", "fal", "--tasks", BIG, "--db", "sqlite:///{tmp}/l.db"], "--tasks"),
        (["live", "--flavor", "fal", "--tasks", "3", "--speed", "inf", "--db", "sqlite:///{tmp}/l.db"], "--speed"),
        (["serve-provider", "--flavor", "fal", "--port", "0"], "--port"),
        (["receiver-load", "--duplicates", "2"], "--duplicates"),
        (
            ["backtest", "--db", "sqlite:///{tmp}/b.db", "--policy", "a", "--policy", "b", "--resamples", "0"],
            "--resamples",
        ),
    ],
)
def test_simulation_cli_refuses_bad_numbers_in_one_line(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        sim_main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and "\n" not in err and needle in err, err
    assert list(tmp_path.iterdir()) == []
