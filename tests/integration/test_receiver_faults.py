"""The receiver when its own machinery fails: a worker killed, the database's sessions
terminated or refused, a delivery waiting on a lock that is not released."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, make_url, text
from starlette.testclient import TestClient

from rivya_core.domain import TaskStatus
from rivya_core.receiver import create_app
from rivya_core.stores.sql import open_store
from rivya_core.wiring import Wired
from simulations.live import free_port
from tests.fakes import IMAGE, callback, make_service


def _wired(url: str) -> Wired:
    store = open_store(url)
    return Wired(make_service(store=store)[0], store.engine)


def _serve(url: str, port: int) -> None:
    from rivya_core import receiver

    os._exit(receiver.serve(lambda: _wired(url), "127.0.0.1", port, poll_every=None, workers=2))


def _workers(pid: int, n: int, deadline_s: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        kids = []
        for c in psutil.Process(pid).children():
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    kids.append(c)
            except psutil.NoSuchProcess:
                continue
        if len(kids) == n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"the receiver did not have {n} workers within {deadline_s} s")


@pytest.mark.slow  # receiver worker processes
def test_a_killed_worker_is_replaced_and_the_receiver_keeps_serving(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, _providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    tasks = [svc.submit(user.id, {**IMAGE, "prompt": f"replaced {i}"}) for i in range(6)]
    store.engine.dispose()
    port = free_port()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sqlite_url, port))
    server.start()
    try:
        first, second = _workers(server.pid, 2)
        first.kill()
        first.wait(10)
        replaced = _workers(server.pid, 2)
        assert server.is_alive() and second in replaced and first not in replaced
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            answers = [
                http.post("/webhooks/lumen", content=body, headers=headers).json()["outcome"]
                for headers, body in (callback(clock, t.upstream_task_id, msg_id=f"r{t.id}") for t in tasks)
            ]
        assert answers == ["applied"] * len(tasks)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.join(30)
    assert server.exitcode == 0
    assert all(t.status == TaskStatus.SUCCESS for t in svc.store.snapshot().tasks)


def _admin(url: str):
    return create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def _terminate_sessions(admin, name: str) -> int:
    with admin.connect() as conn:
        return len(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": name},
            ).all()
        )


def test_after_the_databases_sessions_are_terminated_the_pool_recovers_by_itself(pg_url):
    store = open_store(pg_url, create=True)
    svc, clock, _providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    tasks = [svc.submit(user.id, {**IMAGE, "prompt": f"restart {i}"}) for i in range(3)]
    name = make_url(pg_url).database
    admin = _admin(pg_url)
    try:
        with TestClient(create_app(svc, engine=store.engine, threads=2)) as http:

            def post(task):
                headers, body = callback(clock, task.upstream_task_id, msg_id=f"t{task.id}")
                return http.post("/webhooks/lumen", content=body, headers=headers)

            assert post(tasks[0]).status_code == 200
            with admin.connect() as conn:  # the database refuses new sessions, the old ones are ended
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            try:
                assert _terminate_sessions(admin, name) >= 1
                down = post(tasks[1])
                assert down.status_code == 503  # retried by the provider, never acknowledged
                assert http.get("/healthz").status_code == 503
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            again = [post(tasks[1]), post(tasks[2])]
            assert [r.status_code for r in again] == [200, 200]
            assert [r.json()["outcome"] for r in again] == ["applied", "applied"]
    finally:
        admin.dispose()
        store.engine.dispose()
    assert [t.status for t in svc.store.snapshot().tasks] == [TaskStatus.SUCCESS] * 3


def _waiting_on_a_lock(engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        )


def test_a_delivery_waiting_on_a_lock_answers_503_within_its_timeout(pg_url):
    """A row lock held by a session that never ends its transaction: the delivery gives up at
    the receiver's request timeout with a 503 (the provider retries) instead of hanging."""
    store = open_store(pg_url, create=True)
    svc, clock, _providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    task = svc.submit(user.id, IMAGE)
    holder = create_engine(pg_url)
    answers: list[httpx.Response] = []
    try:
        with TestClient(create_app(svc, engine=store.engine, threads=2, request_timeout_s=1.0)) as http:
            headers, body = callback(clock, task.upstream_task_id, msg_id="locked")
            with holder.connect() as conn:
                conn.execute(text("SELECT id FROM ai_task WHERE id = :i FOR UPDATE"), {"i": task.id})
                sender = threading.Thread(
                    target=lambda: answers.append(http.post("/webhooks/lumen", content=body, headers=headers)),
                    daemon=True,
                )
                started = time.monotonic()
                sender.start()
                sender.join(20)
                waited = time.monotonic() - started
                # the statement behind the 503 gives up too (its own timeout) while the lock is held
                deadline = time.monotonic() + 20
                while _waiting_on_a_lock(holder) and time.monotonic() < deadline:
                    time.sleep(0.05)
                still_waiting = _waiting_on_a_lock(holder)
                conn.rollback()
            sender.join(30)
            assert answers and answers[0].status_code == 503, f"no answer within {waited:.1f} s"
            assert not still_waiting
            again = http.post("/webhooks/lumen", content=body, headers=headers)
            assert again.status_code == 200 and again.json()["outcome"] == "applied"
    finally:
        holder.dispose()
        store.engine.dispose()
    assert waited < 15
    with open_store(pg_url).engine.connect() as conn:
        applied = conn.scalar(text("SELECT count(*) FROM provider_callback WHERE outcome = 'applied'"))
    assert applied == 1 and svc.task(task.id).status == TaskStatus.SUCCESS


class _HangingFirstSweep:
    """A service whose first poll never returns (a connection that never answers); the later ones do."""

    def __init__(self):
        self.calls = 0
        self.release = threading.Event()

    def poll(self):
        from rivya_core.lifecycle.polling import PollReport

        self.calls += 1
        if self.calls == 1:
            self.release.wait(60)
        return PollReport()


def test_a_sweep_that_never_returns_does_not_stop_the_polling():
    from rivya_core import receiver

    svc = _HangingFirstSweep()
    loop = receiver.PollLoop(svc, 0.02, sweep_timeout_s=0.3)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while loop.sweeps < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loop.sweeps >= 3, f"{loop.sweeps} sweeps in 10 s after the first one hung"
        assert loop.abandoned == 1
    finally:
        svc.release.set()
        loop.stop()
