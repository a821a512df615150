"""How a provider job ends is one rule (farm.drawn_outcome), used by the in-process farm and the
farm served over HTTP alike: an outage that fails jobs says so, a hanging outage loses them."""

from __future__ import annotations

import dataclasses

import pytest

from simulations.farm import OUTAGE_FAILURE, drawn_outcome
from simulations.httpfarm import FakeJob, FakeProvider
from simulations.scenarios import Outage, load_scenario

NO_FAULT = [0.99] * 5


def test_the_rule_in_order_of_precedence():
    cfg = load_scenario("baseline").provider_config("kinetica")
    assert drawn_outcome(cfg, None, NO_FAULT) == ("succeeded", None, True)
    assert drawn_outcome(cfg, Outage("kinetica", 0, 10, "fail"), NO_FAULT) == ("failed", OUTAGE_FAILURE, False)
    assert drawn_outcome(cfg, Outage("kinetica", 0, 10, "hang"), NO_FAULT) == ("lost", None, False)
    assert drawn_outcome(dataclasses.replace(cfg, lost_job=0.5), None, [0.0, *NO_FAULT[1:]])[0] == "lost"
    assert drawn_outcome(dataclasses.replace(cfg, no_urls=1.0), None, NO_FAULT) == ("succeeded", None, False)


@pytest.mark.parametrize("mode, state, error", [("fail", "failed", OUTAGE_FAILURE), ("hang", "lost", None)])
def test_the_http_farm_decides_outages_like_the_in_process_farm(mode, state, error):
    scenario = dataclasses.replace(load_scenario("baseline"), outages=(Outage("kinetica", 0.0, 1e9, mode),))
    farm = FakeProvider("fal", scenario, seed=1)
    job = FakeJob(
        id="j1", provider="kinetica", task_ref="task-1", model="m", category="video", webhook=None, created=0.0
    )
    farm._decide(job, NO_FAULT)
    assert (job.state, job.error, job.urls) == (state, error, ())
