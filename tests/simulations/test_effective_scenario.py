"""A run stores the scenario it ran (edited knobs included), and replay runs that one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rivya_core.policy import BillingPolicy
from simulations.__main__ import main as sim_main
from simulations.scenarios import POLICY_DIR, list_scenarios, load_scenario, parse_scenario

from .conftest import rows


@pytest.mark.parametrize("path", list_scenarios(), ids=lambda p: p.stem)
def test_every_shipped_scenario_round_trips_through_to_toml(path):
    sc = load_scenario(path)
    assert parse_scenario(sc.to_toml(), "<written>", "other-name") == sc


def edited_chaos():
    sc = load_scenario("chaos")
    knobs = {"lost": 0.3, "early": 0.0, "capacity": 3}
    return replace(
        sc,
        description='edited "knobs" \\ ünïcode\ttab',
        callbacks=True,
        population=replace(sc.population, users=17, broke_fraction=0.25),
        farm=replace(sc.farm, **knobs),
        providers={n: replace(p, **knobs) for n, p in sc.providers.items()},
        policy=BillingPolicy.load(POLICY_DIR / "no_refunds.toml"),
    )


def test_an_edited_scenario_round_trips_and_differs_from_its_file():
    sc = edited_chaos()
    again = parse_scenario(sc.to_toml())
    assert again == sc
    assert again.policy.name == "no_refunds" and again.farm.lost == 0.3 and again.population.users == 17
    assert again != load_scenario("chaos")


def test_the_run_records_the_edited_scenario_and_replay_reproduces_it(run_small, capsys):
    summary, path = run_small("chaos", tasks=60, scenario=edited_chaos())
    [(stored,)] = rows(path, "select scenario_toml from sim_run")
    assert parse_scenario(stored) == edited_chaos()
    assert sim_main(["replay", f"sqlite:///{path}", "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["match"] and out["recorded"] == summary.fingerprint
