"""The webhook receiver (Starlette app) in front of the lifecycle service on the SQL store."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from rivya_core.db import open_store
from rivya_core.domain import TaskStatus
from rivya_core.receiver import create_app
from tests.fakes import IMAGE, callback, make_service


@pytest.fixture
def env(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    yield svc, clock, providers, user
    store.engine.dispose()


def outcomes(svc):
    return [c.outcome for c in svc.store.snapshot().callbacks]


def test_deliveries_are_answered_by_outcome_and_recorded(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    with TestClient(create_app(svc)) as http:
        headers, body = callback(clock, task.upstream_task_id, state="running", msg_id="p")
        assert http.post("/webhooks/lumen", content=body, headers=headers).status_code == 200     # progress
        headers, body = callback(clock, task.upstream_task_id, msg_id="a")
        r = http.post("/webhooks/lumen", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["outcome"] == "applied"
        assert http.post("/webhooks/lumen", content=body, headers=headers).json()["outcome"] == "duplicate"
        forged = {**headers, "webhook-signature": "v1,AAAA"}
        assert http.post("/webhooks/lumen", content=body, headers=forged).status_code == 401
        stale_h, stale_b = callback(clock, task.upstream_task_id, msg_id="s", ts=1)
        assert http.post("/webhooks/lumen", content=stale_b, headers=stale_h).status_code == 401
        bad_h, bad_b = callback(clock, task.upstream_task_id, msg_id="m", body=b"{not json")
        assert http.post("/webhooks/lumen", content=bad_b, headers=bad_h).status_code == 400
        unknown_h, unknown_b = callback(clock, "lumen-job-404", msg_id="u")
        assert http.post("/webhooks/lumen", content=unknown_b, headers=unknown_h).status_code == 200
        assert http.post("/webhooks/nobody", content=body, headers=headers).status_code == 401
    assert svc.task(task.id).status == TaskStatus.SUCCESS
    assert outcomes(svc) == ["progress", "applied", "duplicate", "rejected_signature", "rejected_stale",
                             "malformed", "unknown_task", "rejected_signature"]


def test_oversized_bodies_are_refused_before_being_read_whole(env):
    svc, clock, providers, user = env
    with TestClient(create_app(svc, max_body=1000)) as http:
        headers, body = callback(clock, "x", msg_id="big", body=b"{" + b" " * 5000 + b"}")
        assert http.post("/webhooks/lumen", content=body, headers=headers).status_code == 413

        def chunks():  # no Content-Length: refused while streaming
            for _ in range(100):
                yield b" " * 100

        assert http.post("/webhooks/lumen", content=chunks(), headers=headers).status_code == 413
    assert outcomes(svc) == []


def test_health_and_the_polling_sweep_in_the_same_process(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id)
    clock.advance(3600)   # past the first check
    with TestClient(create_app(svc, poll_every=0.05)) as http:
        assert http.get("/healthz").json()["ok"] is True
        deadline = time.monotonic() + 20
        while svc.task(task.id).status != TaskStatus.SUCCESS and time.monotonic() < deadline:
            time.sleep(0.05)
    assert svc.task(task.id).status == TaskStatus.SUCCESS


def test_health_says_when_the_database_is_gone(env, tmp_path):
    svc, clock, providers, user = env
    from rivya_core.db import make_engine
    from rivya_core.store_sql import SqlStore

    svc.store = SqlStore(make_engine(f"sqlite:///{tmp_path}/no-such-dir/x.db"))
    with TestClient(create_app(svc)) as http:
        assert http.get("/healthz").status_code == 503
