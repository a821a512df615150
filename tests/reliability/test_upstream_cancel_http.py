"""Upstream cancel over real HTTP on 127.0.0.1 against `serve-provider` (the fake provider), in both
flavors, through the real clients: support marks a stuck task failed, the service cancels its job,
the fake stops it (no success, billing stops), the answer is on the timeline; Replicate
submissions carry Cancel-After, which the fake honours; run seconds are reported."""

from __future__ import annotations

import dataclasses
import time
import tomllib

import pytest

from rivya_core.catalog import default_catalog
from rivya_core.clock import ManualClock
from rivya_core.lifecycle import LifecycleService
from rivya_core.providers.config import build_clients, parse_providers
from rivya_core.stores.memory import MemoryStore
from simulations.httpfarm import FakeProvider, providers_toml
from simulations.live import ServerThread
from simulations.scenarios import ProviderConfig, Range, load_scenario

VIDEO = {"model": "kinetica-v2", "prompt": "waves on a breakwater at night", "params": {}}


def _wait(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


@pytest.mark.parametrize("flavor", ["replicate", "fal"])
def test_support_mark_failed_cancels_the_job_at_the_fake_provider(flavor):
    farm = ProviderConfig(capacity=4, video_s=Range(3000.0, 3000.0))  # runs far longer than the test
    scenario = dataclasses.replace(load_scenario("baseline"), farm=farm, providers={}, outages=())
    fake = FakeProvider(flavor, scenario, speed=1.0)
    with ServerThread(fake.app) as server:
        text = providers_toml(flavor, server.url, "http://127.0.0.1:9", fake.keys, fake.provider_names)
        clients = build_clients(parse_providers(tomllib.loads(text), "<test>"))
        for c in clients.values():
            c.webhook_url = None
        clock = ManualClock()
        svc = LifecycleService(MemoryStore(), clock, clients, default_catalog())
        user = svc.create_account("ops@qa.example", "Ops", grant=1000)
        task = svc.submit(user.id, VIDEO)
        job = fake.jobs[task.upstream_task_id]
        _wait(lambda: job.state == "running")
        if flavor == "replicate":  # Cancel-After: the video timeout, 2 hours, in the fake's seconds
            assert job.deadline == pytest.approx(7200.0, abs=60.0)
        clock.advance(svc.policy.stuck_for("video") + 1)
        failed = svc.support_mark_failed(task.id, "Dana", "stuck for the incident")
        assert failed.status == "FAILED"
        assert job.state == "canceled" and job.run_s() is not None and job.run_s() < 60
        [event] = [e for e in svc.store.snapshot().events if e.kind == "upstream_cancel"]
        assert event.detail["answer"] == "canceled" and event.detail["reason"] == "marked_failed_by_operator"
        if flavor == "replicate":
            assert "status canceled" in event.detail["detail"] and event.detail["run_s"] == job.run_s()
        else:
            assert "CANCELLATION_REQUESTED" in event.detail["detail"]
            assert clients["kinetica"].cancel(task.upstream_task_id).answer == "already_finished"
        assert fake.stats.cancels == {"running": 1}


def test_the_fake_aborts_a_job_whose_cancel_after_passed_in_the_queue_and_reports_predict_time():
    farm = ProviderConfig(capacity=1, image_s=Range(1.0, 1.0))
    scenario = dataclasses.replace(load_scenario("baseline"), farm=farm, providers={}, outages=())
    fake = FakeProvider("replicate", scenario, speed=1.0)
    with ServerThread(fake.app) as server:
        import httpx

        api = httpx.Client(base_url=server.url + "/v1", headers={"Authorization": "Bearer fake-provider-token"})
        hook = "http://127.0.0.1:9/webhooks/lumen?ref="
        first = api.post("/models/lumen-flash/predictions", json={"input": {"prompt": "a"}, "webhook": hook + "t1"})
        second = api.post(
            "/models/lumen-flash/predictions",
            json={"input": {"prompt": "b"}, "webhook": hook + "t2"},
            headers={"Cancel-After": "0.2s"},
        )
        bad = api.post(
            "/models/lumen-flash/predictions",
            json={"input": {"prompt": "c"}, "webhook": hook + "t3"},
            headers={"Cancel-After": "soon"},
        )
        assert (first.status_code, second.status_code, bad.status_code) == (201, 201, 422)
        a, b = first.json()["id"], second.json()["id"]
        _wait(lambda: fake.jobs[a].state == "succeeded" and fake.jobs[b].state == "aborted")
        done = api.get(f"/predictions/{a}").json()
        assert done["status"] == "succeeded" and 0.9 <= done["metrics"]["predict_time"] <= 2.0
        aborted = api.get(f"/predictions/{b}").json()
        assert aborted["status"] == "aborted" and aborted["metrics"] == {}
        api.close()
