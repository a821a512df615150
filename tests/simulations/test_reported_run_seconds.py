"""The simulated providers report what each job is billed, as Replicate's `metrics.predict_time`
does: a final callback and a final status carry `run_s`, the core stores it as
`ai_task.provider_run_s`, and a simulation database's provider cost is then exact, not the
submitted → finished estimate (queueing included) it was before."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, func, select

from rivya_core.domain import CallbackOutcome
from rivya_core.read.money import money_by
from rivya_core.stores.schema import ai_task
from simulations.runner import run_scenario
from simulations.scenarios import load_scenario
from tests.fakes import IMAGE, callback, make_service
from tests.simulations.test_farm_billing import _farm


def test_a_finished_jobs_callback_and_status_say_the_seconds_it_ran():
    env, farm, p, delivered = _farm(capacity=1)
    first, second = p.submit("task-1", "lumen-upscale", "x", {}), p.submit("task-2", "lumen-upscale", "x", {})
    assert p.status(first).run_s is None  # running: nothing billed yet
    env.run(until=50)
    bodies = [json.loads(b) for b in delivered]
    assert [b["data"]["run_s"] for b in bodies] == [10.0, 10.0]  # the second queued 10 s: not billed
    assert p.status(second).run_s == 10.0 == farm.billing["lumen-upscale"].run_s / 2


def test_a_canceled_job_reports_what_it_ran_and_a_queued_one_nothing():
    env, farm, p, delivered = _farm(capacity=1)
    running, queued = p.submit("task-1", "lumen-upscale", "x", {}), p.submit("task-2", "lumen-upscale", "x", {})
    env.run(until=4)
    p.cancel(running), p.cancel(queued)
    env.run(until=100)
    assert (p.status(running).run_s, p.status(queued).run_s) == (4.0, 0.0)


def test_the_native_callback_stores_run_s_and_refuses_a_wrong_one():
    svc, clock, providers = make_service()
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    task = svc.submit(user.id, IMAGE)

    def body(run_s):
        data = {
            "upstream_task_id": task.upstream_task_id,
            "state": "succeeded",
            "result_urls": ["https://cdn.example/a.png"],
        }
        return json.dumps({"type": "task.succeeded", "data": {**data, "run_s": run_s}}).encode()

    for bad in ("12", -1, True, [3], 1e400):
        raw = body(bad) if bad != 1e400 else body(0).replace(b'"run_s": 0', b'"run_s": 1e400')
        got = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, body=raw, msg_id=f"m{bad!r}"))
        assert got.outcome == CallbackOutcome.MALFORMED, bad
    assert svc.task(task.id).status == "GENERATING"
    got = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, body=body(12.5), msg_id="ok"))
    assert got.outcome == CallbackOutcome.APPLIED
    assert svc.task(task.id).provider_run_s == 12.5


@pytest.fixture(scope="module")
def baseline_db(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('runs') / 'baseline.db'}"
    run_scenario(load_scenario("baseline"), url, tasks=300)
    return create_engine(url)


def test_a_simulation_database_records_the_billed_seconds_so_its_cost_is_exact(baseline_db):
    t = ai_task.c
    with baseline_db.connect() as conn:
        finished = conn.scalar(
            select(func.count()).where(t.status.in_(("SUCCESS", "FAILED")), t.upstream_task_id.is_not(None))
        )
        reported = conn.scalar(select(func.count()).where(t.provider_run_s.is_not(None)))
        below = conn.scalar(
            select(func.count()).where(
                t.provider_run_s > (func.julianday(t.finished_at) - func.julianday(t.submitted_at)) * 86400 + 0.001
            )
        )
    assert finished > 0 and reported >= 0.95 * finished  # all but the hung jobs nobody heard of again
    assert below == 0  # billed seconds never exceed submitted -> finished (queueing is not billed)
    money = money_by(baseline_db)["total"]
    assert money["cost_estimated_tasks"] <= 0.05 * finished and money["cost_exact_tasks"] > 0
