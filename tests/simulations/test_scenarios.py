"""Scenario files: every shipped file loads; bad files are refused by file, key and reason."""

from __future__ import annotations

import pytest

from simulations.scenarios import ScenarioError, list_scenarios, load_scenario, parse_scenario

SHIPPED = {
    "baseline",
    "early_callbacks",
    "lost_callbacks",
    "polling_only",
    "forged_callbacks",
    "provider_outage",
    "credit_shortfall",
    "chat_heavy",
    "chaos",
    "scripted_early_then_lost",
}


def test_every_required_scenario_ships_and_loads():
    names = {p.stem for p in list_scenarios()}
    assert SHIPPED <= names
    for path in list_scenarios():
        sc = load_scenario(path)
        assert sc.name == path.stem and sc.source


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("[scenario]\nsede = 1\n", "sede", "unknown key"),
        ("[farm]\nearly = 1.5\n", "early", "must be a number from 0 to 1, not 1.5"),
        ("[farm]\ncapacity = 0\n", "capacity", "must be a whole number from 1 to 1_000_000, not 0"),
        ("[population]\nusers = 'many'\n", "population.users", "must be a whole number from 1 to"),
        ("[arrivals]\npattern = 'weekly'\n", "arrivals.pattern", "must be one of"),
        ("[farm.providers.lumen]\nlost = -1\n", "farm.providers.lumen.lost", "must be a number from 0 to 1, not -1"),
        ("[policy]\nrefund_classes = ['nobody']\n", "refund_classes", "must be a list"),
        ("[[outages]]\nprovider = 'lumen'\nstart_s = 10\nend_s = 5\n", "outages[0].end_s", "after start_s"),
        ("[[script]]\nat = 1\naction = 'explode'\n", "script[0].action", "must be one of"),
        ("[farm]\nimage_s = [5, 1]\n", "image_s", "low <= high"),
        ("bogus = 1\n", "bogus", "unknown key"),
    ],
)
def test_bad_values_are_refused_naming_file_key_and_reason(text, key, reason):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "data/scenarios/bad.toml")
    assert "data/scenarios/bad.toml" in err.value.message
    assert key in err.value.message and reason in err.value.message


def test_missing_file_and_broken_toml():
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario("does_not_exist")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        parse_scenario("[scenario\n", "x.toml")


def test_provider_overrides_start_from_farm_defaults():
    sc = parse_scenario("[farm]\nlost = 0.2\ncapacity = 3\n[farm.providers.lumen]\ncapacity = 9\n", "x.toml")
    assert sc.provider_config("lumen").capacity == 9 and sc.provider_config("lumen").lost == 0.2
    assert sc.provider_config("kinetica").capacity == 3


def test_a_scenarios_own_policy_is_described_from_the_policy_file_it_equals():
    """The lab once said 'default: no description in its file': a scenario's own policy is built
    from its [policy] table, not read from a policy file, so it carries no description."""
    from rivya_core.policy import BillingPolicy
    from simulations.scenarios import describe_own_policy

    default = BillingPolicy.load("data/policies/default.toml")
    text = describe_own_policy(load_scenario("baseline"))
    assert default.description in text and "data/policies/default.toml" in text
    assert "no description" not in text
    assert default.description in describe_own_policy(load_scenario("chaos"))  # its [policy] changes nothing
    text = describe_own_policy(load_scenario("polling_only"))
    assert "poll_interval_s = 20" in text and "[policy]" in text and default.description in text
