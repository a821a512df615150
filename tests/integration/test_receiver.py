"""The webhook receiver (Starlette app) in front of the lifecycle service on the SQL store."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, make_url, text
from starlette.testclient import TestClient

from rivya_core.clock import WallClock
from rivya_core.domain import TaskStatus
from rivya_core.receiver import create_app
from rivya_core.stores.sql import open_store
from rivya_core.wiring import Wired
from simulations.live import free_port
from tests.fakes import IMAGE, SECRET, callback, make_service


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
    with TestClient(create_app(svc, engine=svc.store.engine)) as http:
        headers, body = callback(clock, task.upstream_task_id, state="running", msg_id="p")
        assert http.post("/webhooks/lumen", content=body, headers=headers).status_code == 200  # progress
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
    assert outcomes(svc) == [
        "progress",
        "applied",
        "duplicate",
        "rejected_signature",
        "rejected_stale",
        "malformed",
        "unknown_task",
        "rejected_signature",
    ]


def test_oversized_bodies_are_refused_before_being_read_whole(env):
    svc, clock, providers, user = env
    with TestClient(create_app(svc, engine=svc.store.engine, max_body=1000)) as http:
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
    clock.advance(3600)  # past the first check
    with TestClient(create_app(svc, engine=svc.store.engine, poll_every=0.05)) as http:
        assert http.get("/healthz").json()["ok"] is True
        deadline = time.monotonic() + 20
        while svc.task(task.id).status != TaskStatus.SUCCESS and time.monotonic() < deadline:
            time.sleep(0.05)
    assert svc.task(task.id).status == TaskStatus.SUCCESS


def test_health_says_when_the_database_is_gone(env, tmp_path):
    svc, clock, providers, user = env
    from rivya_core.stores.db import make_engine
    from rivya_core.stores.sql import SqlStore

    svc.store = SqlStore(make_engine(f"sqlite:///{tmp_path}/no-such-dir/x.db"))
    with TestClient(create_app(svc, engine=svc.store.engine)) as http:
        assert http.get("/healthz").status_code == 503


def _serve_two_workers(url: str, port: int, marks: str) -> None:
    """serve(workers=2) in a forked child, noting which processes build an app or start a sweep."""
    from rivya_core import receiver

    def note(line: str) -> None:
        with open(marks, "a") as f:
            f.write(line + "\n")

    class NotedPoll(receiver.PollLoop):
        def start(self):
            note(f"poll {os.getpid()}")
            super().start()

    real_create_app = receiver.create_app

    def create_app(svc, **kw):
        note(f"app {os.getpid()} {kw.get('poll_every')}")
        return real_create_app(svc, **kw)

    receiver.PollLoop, receiver.create_app = NotedPoll, create_app
    os._exit(receiver.serve(lambda: _wired(url), "127.0.0.1", port, poll_every=0.1, workers=2))


def _wired(url):
    store = open_store(url)
    return Wired(make_service(store=store)[0], store.engine)


@pytest.mark.slow  # receiver worker processes
def test_workers_accept_on_one_port_and_the_sweep_runs_once_in_the_parent(sqlite_url, tmp_path):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    tasks = [svc.submit(user.id, {**IMAGE, "prompt": f"workers {i}"}) for i in range(20)]
    store.engine.dispose()
    marks, port = tmp_path / "marks", free_port()
    server = multiprocessing.get_context("fork").Process(target=_serve_two_workers, args=(sqlite_url, port, str(marks)))
    server.start()
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=30) as http:
            answers = [
                http.post("/webhooks/lumen", content=body, headers=headers).json()["outcome"]
                for headers, body in (callback(clock, t.upstream_task_id, msg_id=f"w{t.id}") for t in tasks)
            ]
        assert answers == ["applied"] * len(tasks)
        workers = {c.pid for c in psutil.Process(server.pid).children()}
        time.sleep(0.5)  # a few sweep intervals
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.join(30)
    assert server.exitcode == 0 and len(workers) == 2
    lines = marks.read_text().splitlines()
    assert sorted(lines) == sorted([f"app {pid} None" for pid in workers] + [f"poll {server.pid}"])
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
    assert all(t.status == TaskStatus.SUCCESS for t in svc.store.snapshot().tasks)


@pytest.mark.slow  # receiver worker processes
def test_receiver_load_counts_nothing_lost_or_doubled_with_two_workers_and_in_process(tmp_path):
    from simulations.receiver_load import run_load

    for workers in (2, 0):
        res = run_load(f"sqlite:///{tmp_path}/load{workers}.db", tasks=40, concurrency=4, workers=workers)
        assert (res.lost, res.doubled, res.errors, res.audit_ok, res.workers) == (0, 0, 0, True, workers)
        assert res.cpu_ms_per_callback > 0
        assert (res.statements_per_callback is None) == (workers > 0)


def test_a_final_callback_costs_five_statements_and_a_redelivery_three(pg_url):
    """Read and lock the task, record the callback (its webhook-id dedupe included), finish the
    task, notify, and write the three timeline events at once; a redelivery reads, records and
    writes its one event."""
    from sqlalchemy import event

    store = open_store(pg_url, create=True)
    try:
        svc, clock, providers = make_service(store=store)
        user = svc.create_account("ada@example.com", "Ada", grant=100)
        task = svc.submit(user.id, IMAGE)
        statements: list[str] = []
        event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2].split()[0]))
        headers, body = callback(clock, task.upstream_task_id, msg_id="once")
        assert svc.handle_callback("lumen", headers, body).outcome == "applied"
        assert statements == ["SELECT", "INSERT", "UPDATE", "INSERT", "INSERT"]
        statements.clear()
        assert svc.handle_callback("lumen", headers, body).outcome == "duplicate"
        assert statements == ["SELECT", "INSERT", "INSERT"]
        kinds = [e.kind for e in svc.store.snapshot().events if e.task_id == task.id]
        assert kinds[-4:] == ["callback", "succeeded", "notified", "callback"]
    finally:
        store.engine.dispose()


def _sessions_opened(url: str) -> int:
    """Connections ever opened to the database at url, once none but this one is open."""
    name = make_url(url).database
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            deadline = time.monotonic() + 30
            while (
                conn.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                    {"d": name},
                )
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            return int(conn.scalar(text("SELECT sessions FROM pg_stat_database WHERE datname = :d"), {"d": name}))
    finally:
        eng.dispose()


def test_deliveries_in_flight_share_the_receivers_connections(pg_url):
    """32 deliveries at once against `serve`: the receiver handles a bounded number at a time and
    keeps that many connections (plus the sweep's), instead of opening one for every few deliveries."""
    store = open_store(pg_url, create=True)
    svc, _clock, _providers = make_service(store=store)
    user = svc.create_account("ada@example.com", "Ada", grant=10_000)
    tasks = [svc.submit(user.id, {**IMAGE, "prompt": f"in flight {i}"}) for i in range(240)]
    store.engine.dispose()
    before = _sessions_opened(pg_url)
    port = free_port()
    env = {**os.environ, "RIVYA_WEBHOOK_SECRETS": json.dumps({"lumen": [SECRET]}), "RIVYA_PROVIDERS": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "rivya_core", "serve", "--db", pg_url, "--port", str(port), "--poll-every", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        wall = WallClock()

        def deliver(t):
            headers, body = callback(wall, t.upstream_task_id, msg_id=f"f{t.id}")
            with httpx.Client(base_url=base, timeout=60) as http:
                return http.post("/webhooks/lumen", content=body, headers=headers).json()["outcome"]

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(deliver, tasks))
    finally:
        server.terminate()
        server.wait(30)
    assert answers == ["applied"] * len(tasks)
    opened = _sessions_opened(pg_url) - before
    assert opened <= 12, f"the receiver opened {opened} connections for {len(tasks)} deliveries"


class _WriterLockSpy:
    """A result copier that notes whether the receiver's one-writer flock on the SQLite file is
    held while it copies (a second open file description cannot take it then)."""

    def __init__(self, path):
        self.path, self.held_while_copying = path, []

    def owns_all(self, urls):
        return all(u.startswith("https://ours.example/") for u in urls)

    def copy(self, task_id, urls):
        import fcntl

        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self.held_while_copying.append(False)
        except BlockingIOError:
            self.held_while_copying.append(True)
        finally:
            os.close(fd)
        return tuple(f"https://ours.example/{task_id}-{i}.png" for i, _ in enumerate(urls))


def test_on_sqlite_the_output_copy_runs_without_the_writer_lock(env):
    """The one-writer lock serializes the units of work of every receiver process; a delivery's
    output copy (a network fetch, up to minutes) must not hold it, or one slow result host
    stalls every delivery and the polling sweep behind it."""
    svc, clock, providers, user = env
    spy = svc.results = _WriterLockSpy(make_url(svc.store.engine.url).database)
    task = svc.submit(user.id, IMAGE)
    with TestClient(create_app(svc, engine=svc.store.engine)) as http:
        headers, body = callback(clock, task.upstream_task_id, msg_id="a")
        assert http.post("/webhooks/lumen", content=body, headers=headers).json()["outcome"] == "applied"
    assert svc.task(task.id).status == TaskStatus.SUCCESS and svc.task(task.id).result_urls[0].startswith(
        "https://ours"
    )
    assert spy.held_while_copying == [False]
