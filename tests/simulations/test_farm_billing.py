"""The farm bills run seconds; a canceled job stops billing and sends no success; a Cancel-After
deadline aborts a job still queued at it; runs report money, and switching upstream cancel off
gives back the run the farm made before it existed."""

from __future__ import annotations

import dataclasses

import pytest
import simpy

from rivya_core.policy import BillingPolicy
from simulations.clock import SimClock
from simulations.farm import PROVIDER_MAX_RUN_S, Farm
from simulations.scenarios import ProviderConfig, Range, load_scenario
from simulations.streams import Streams


def _farm(capacity=1, callbacks=True, gen_s=10.0, **cfg):
    env = simpy.Environment()
    config = ProviderConfig(capacity=capacity, image_s=Range(gen_s, gen_s), callback_delay_s=Range(0, 0), **cfg)
    farm = Farm(env, SimClock(env), Streams(1), ["lumen"], lambda n: config, lambda m: "image", callbacks)
    delivered = []
    farm.deliver = lambda provider, headers, body: delivered.append(body)
    return env, farm, farm.providers["lumen"], delivered


def test_a_job_is_billed_the_seconds_it_ran_and_its_output():
    env, farm, p, delivered = _farm()
    p.submit("task-1", "lumen-upscale", "x", {})
    env.run(until=50)
    bill = farm.billing["lumen-upscale"]
    assert (bill.jobs, bill.run_s, bill.outputs, bill.canceled, bill.saved_s) == (1, 10.0, 1, 0, 0.0)
    assert len(delivered) == 1


def test_a_job_canceled_while_running_stops_billing_and_sends_no_success():
    env, farm, p, delivered = _farm()
    a = p.submit("task-1", "lumen-upscale", "x", {})
    env.run(until=4)
    answer = p.cancel(a)
    assert (answer.answer, answer.detail) == ("canceled", "was running")
    env.run(until=100)
    assert delivered == []  # no success, no failure callback
    st = p.status(a)
    assert (st.state, st.error_code) == ("failed", "upstream_canceled")
    bill = farm.billing["lumen-upscale"]
    assert (bill.run_s, bill.canceled, bill.saved_s, bill.saved_outputs) == (4.0, 1, 6.0, 1)
    assert p.cancel(a).answer == "already_finished" and p.cancel("nope").answer == "unknown"
    assert farm.quiet("lumen", a)


def test_a_queued_job_canceled_never_runs_costs_nothing_and_frees_its_place():
    env, farm, p, delivered = _farm(capacity=1)
    first, second, third = (p.submit(f"task-{i}", "lumen-upscale", "x", {}) for i in (1, 2, 3))
    env.run(until=1)
    p.cancel(second)
    env.run(until=100)
    assert p.status(third).state == "succeeded" and farm.providers["lumen"].jobs[third].started_at == 10.0
    bill = farm.billing["lumen-upscale"]
    assert (bill.jobs, bill.run_s, bill.canceled, bill.saved_s) == (3, 20.0, 1, 10.0)
    assert len(delivered) == 2


def test_a_deadline_aborts_a_job_still_queued_and_stops_one_running_past_it():
    env, farm, p, delivered = _farm(capacity=1, gen_s=10.0)
    farm.deadline_for = lambda category: 15.0
    first, second = p.submit("task-1", "lumen-upscale", "x", {}), p.submit("task-2", "lumen-upscale", "y", {})
    env.run(until=100)
    assert p.status(first).state == "succeeded"
    st = p.status(second)  # started at 10, its deadline at 15: stopped after 5 s of its 10
    assert (st.state, st.error_code) == ("failed", "upstream_canceled")
    farm2_env, farm2, p2, _ = _farm(capacity=1, gen_s=20.0)
    farm2.deadline_for = lambda category: 15.0
    p2.submit("task-1", "lumen-upscale", "x", {})
    late = p2.submit("task-2", "lumen-upscale", "y", {})
    farm2_env.run(until=100)
    assert p2.status(late).error_code == "upstream_aborted"  # its deadline passed in the queue
    assert farm.billing["lumen-upscale"].run_s == 15.0 and len(delivered) == 1


def test_a_hung_job_bills_until_canceled_or_the_providers_run_limit():
    env, farm, p, _ = _farm(lost_job=1.0)
    a = p.submit("task-1", "lumen-upscale", "x", {})
    env.run(until=100)
    assert p.status(a).state == "unknown" and "lumen-upscale" not in farm.billing  # still hanging
    p.cancel(a)
    bill = farm.billing["lumen-upscale"]
    assert (bill.run_s, bill.saved_s) == (100.0, PROVIDER_MAX_RUN_S - 100.0)
    env2, farm2, p2, _ = _farm(lost_job=1.0)
    p2.submit("task-1", "lumen-upscale", "x", {})
    env2.run(until=100)
    farm2.settle_bills()  # left alone: to the run limit
    assert farm2.billing["lumen-upscale"].run_s == PROVIDER_MAX_RUN_S


@pytest.fixture(scope="module")
def outage_runs(tmp_path_factory):
    from simulations.runner import run_scenario

    sc = load_scenario("provider_outage")
    off = dataclasses.replace(sc, policy=dataclasses.replace(sc.policy, upstream_cancel=False))
    out = {}
    for name, scenario in (("on", sc), ("off", off)):
        path = tmp_path_factory.mktemp(name) / "run.db"
        out[name] = run_scenario(scenario, f"sqlite:///{path}")  # the whole run: the video queue outlives its deadline
    return out


def test_runs_report_money_per_model_and_provider(outage_runs):
    on = outage_runs["on"]
    k = on.kpis
    assert k["margin"] == pytest.approx(k["revenue_money"] - k["provider_cost"])
    assert k["revenue_money"] == pytest.approx(k["revenue"] * BillingPolicy().credit_value)
    providers = on.money["provider"]
    assert set(providers) == {"kinetica", "lumen", "parley", "sonora"}
    assert sum(m["provider_cost"] for m in providers.values()) == pytest.approx(k["provider_cost"], abs=1e-3)
    assert sum(m["revenue"] for m in on.money["model"].values()) == pytest.approx(k["revenue_money"], abs=1e-3)


def test_upstream_cancel_off_counts_nothing_saved_and_on_saves(outage_runs):
    on, off = outage_runs["on"], outage_runs["off"]
    assert off.kpis["cost_saved"] == 0 and "upstream_cancel" not in off.events
    assert on.kpis["cost_saved"] > 0
    assert on.ok and off.ok
