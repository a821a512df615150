"""Push alerts to a webhook: each new alert once, again when it clears, the sent state in alert_notice;
a sink that refuses, is down or hangs is retried with a bounded backoff and never holds up the sweep.
Every sink is on 127.0.0.1 (a tiny http.server, or a socket that never answers)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rivya_core.domain import RivyaError, ValidationError
from rivya_core.policy import BillingPolicy
from rivya_core.read import alerts
from rivya_core.receiver import PollLoop
from rivya_core.stores.sql import open_store
from rivya_core.support import alert_push
from tests.cli import run_main
from tests.fakes import IMAGE, callback, make_service


class Sink:
    """An http.server on 127.0.0.1 that records each POST body and answers `status`."""

    def __init__(self, status: int = 200):
        self.status, self.bodies = status, []
        self.got = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with sink.got:
                    sink.bodies.append(json.loads(body))
                    sink.got.notify_all()
                self.send_response(sink.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 30) -> bool:
        with self.got:
            return self.got.wait_for(lambda: len(self.bodies) >= n, timeout)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture
def env(db_url):
    store = open_store(db_url, create=True)
    policy = BillingPolicy(stuck_after_s={"image": 5.0, "video": 5.0, "audio": 5.0})
    svc, clock, providers = make_service(policy=policy, store=store)
    user = svc.create_account("a@example.com", "A", grant=1000)
    stuck = svc.submit(user.id, IMAGE)
    clock.advance(60)
    yield svc, clock, store, user, stuck
    store.engine.dispose()


def _found(svc, clock):
    return alerts.alerts(svc.store.engine, svc.policy, clock.now())


def _notices(store):
    return alert_push.notice_states(store.engine)


def test_a_new_alert_is_pushed_once_and_its_clearing_once(env, sink):
    svc, clock, store, user, stuck = env
    first = alert_push.push_alerts(store.engine, _found(svc, clock), sink.url)
    assert [(n.key, n.state, n.delivered) for n in first.notices] == [("stuck:lumen:lumen-flash", "raised", True)]
    [body] = sink.bodies
    assert body["text"].startswith("Rivya alert (stuck): 1 lumen-flash task(s) on lumen")
    assert body["rivya_alert"]["state"] == "raised" and body["rivya_alert"]["action"] == "recheck"
    assert body["rivya_alert"]["filter"]["provider"] == "lumen"
    assert alert_push.push_alerts(store.engine, _found(svc, clock), sink.url).notices == []  # nothing new
    assert len(sink.bodies) == 1 and _notices(store)["stuck:lumen:lumen-flash"]["state"] == "raised"
    svc.handle_callback("lumen", *callback(clock, stuck.upstream_task_id, msg_id="done"))
    cleared = alert_push.push_alerts(store.engine, _found(svc, clock), sink.url)
    assert [(n.state, n.delivered) for n in cleared.notices] == [("cleared", True)]
    assert sink.bodies[1]["text"].startswith("Rivya alert cleared (stuck)")
    assert sink.bodies[1]["rivya_alert"]["state"] == "cleared"
    assert alert_push.push_alerts(store.engine, _found(svc, clock), sink.url).notices == []
    assert len(sink.bodies) == 2 and _notices(store)["stuck:lumen:lumen-flash"]["state"] == "quiet"
    svc.submit(user.id, {**IMAGE, "prompt": "stuck again"})
    clock.advance(60)
    again = alert_push.push_alerts(store.engine, _found(svc, clock), sink.url)
    assert [(n.state, n.delivered) for n in again.notices] == [("raised", True)] and len(sink.bodies) == 3


def test_a_sink_that_is_down_is_retried_with_a_bounded_backoff_and_tried_again_next_run(env):
    svc, clock, store, user, stuck = env
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    pauses = []
    report = alert_push.push_alerts(
        store.engine, _found(svc, clock), down, attempts=3, backoff_s=(0.5, 2.0), sleep=pauses.append
    )
    [n] = report.notices
    assert (n.delivered, n.attempts) == (False, 3) and "did not answer" in n.error and "127.0.0.1" not in n.error
    assert pauses == [0.5, 2.0]  # two pauses between three attempts, each as the backoff says
    row = _notices(store)["stuck:lumen:lumen-flash"]
    assert (row["state"], row["attempts"], row["claimed_until"]) == ("quiet", 3, None)
    sink = Sink()
    try:
        later = alert_push.push_alerts(store.engine, _found(svc, clock), sink.url)
        assert [n.delivered for n in later.notices] == [True] and len(sink.bodies) == 1
    finally:
        sink.close()


def test_a_sink_that_refuses_the_payload_is_not_retried(env):
    svc, clock, store, user, stuck = env
    sink = Sink(status=400)
    try:
        [n] = alert_push.push_alerts(store.engine, _found(svc, clock), sink.url, sleep=lambda s: None).notices
        assert (n.delivered, n.attempts, n.error) == (False, 1, "the alert webhook answered HTTP 400")
    finally:
        sink.close()


def test_a_sink_that_hangs_stops_at_the_deadline_and_the_rest_waits_for_the_next_run(env):
    svc, clock, store, user, stuck = env
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepts connections into the backlog and never answers
    try:
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/hook"
        report = alert_push.push_alerts(
            store.engine, _found(svc, clock), url, timeout_s=0.2, attempts=5, backoff_s=(0.05,), deadline_s=0.5
        )
        tried = [n for n in report.notices]
        assert tried and not any(n.delivered for n in tried) and all(n.attempts < 5 for n in tried)
        assert all("ReadTimeout" in (n.error or "") or "deadline" in (n.error or "") for n in tried)
    finally:
        hang.close()
    assert all(r["claimed_until"] is None for r in _notices(store).values())  # no claim left behind


def test_a_notice_another_sender_holds_is_not_sent_twice(env, sink):
    svc, clock, store, user, stuck = env
    found = _found(svc, clock)
    assert alert_push._claim(store.engine, "stuck:lumen:lumen-flash", "raised", alert_push.clock.wall_now())
    report = alert_push.push_alerts(store.engine, found, sink.url)
    assert report.notices == [] and report.held == ["stuck:lumen:lumen-flash"] and sink.bodies == []


def test_the_sweep_pushes_after_each_pass_and_a_dead_sink_never_stops_it(env, sink):
    svc, clock, store, user, stuck = env
    pusher = alert_push.AlertPusher(store.engine, svc.policy, sink.url)
    loop = PollLoop(svc, 0.05, pusher)
    loop.start()
    try:
        assert sink.wait_for(1)
    finally:
        loop.stop()
    assert sink.bodies[0]["rivya_alert"]["key"] == "stuck:lumen:lumen-flash" and "token" not in repr(pusher)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    svc.handle_callback("lumen", *callback(clock, stuck.upstream_task_id, msg_id="done"))
    dead = alert_push.AlertPusher(store.engine, svc.policy, down, deadline_s=1.0, sleep=lambda s: None)
    loop = PollLoop(svc, 0.05, dead)
    loop.start()
    try:
        done = threading.Event()
        for _ in range(600):  # bounded: each pass ends within its deadline
            if loop.sweeps >= 3 and dead.passes >= 3:
                done.set()
                break
            loop._stop.wait(0.05)
        assert done.is_set() and dead.last.failed
    finally:
        loop.stop()
    assert _notices(store)["stuck:lumen:lumen-flash"]["state"] == "raised"  # the clear waits for the sink


def test_push_refuses_a_bad_url_and_an_older_database(env, sink, tmp_path):
    svc, clock, store, user, stuck = env
    for bad in ("ftp://127.0.0.1/x", "not a url", ""):
        with pytest.raises(ValidationError):
            alert_push.push_alerts(store.engine, _found(svc, clock), bad)
    with store.engine.begin() as conn:
        alert_push.alert_notice.drop(conn)
    with pytest.raises(RivyaError, match="init-db"):
        alert_push.push_alerts(store.engine, _found(svc, clock), sink.url)
    assert sink.bodies == []


def test_cli_alerts_prints_and_notifies_once(env, sink, db_url):
    svc, clock, store, user, stuck = env
    clock.advance(3600)
    svc.grant(user.id, 1, note="later activity")  # the database's own clock moves past the default stuck floor

    def run(*extra):
        return run_main("rivya_core", "alerts", "--db", db_url, *extra)

    plain = run()
    assert plain.returncode == 0 and "1 alert(s)" in plain.stdout and "stuck: 1 lumen-flash" in plain.stdout
    first = run("--notify", sink.url)
    assert first.returncode == 0 and "pushed raised: stuck:lumen:lumen-flash" in first.stdout, first.stderr
    second = run("--notify", sink.url, "--json")
    assert second.returncode == 0 and json.loads(second.stdout)["push"]["notices"] == []
    assert len(sink.bodies) == 1 and "secret-token" not in first.stdout + second.stdout + first.stderr


@pytest.mark.slow  # a server's process: it must refuse before it listens
def test_serve_refuses_an_alert_webhook_it_could_not_use(sqlite_url):
    for extra in (
        ["--alerts-notify", "ftp://127.0.0.1/x"],
        ["--alerts-notify", "http://127.0.0.1:9/x", "--poll-every", "0"],
    ):
        got = subprocess.run(
            [sys.executable, "-m", "rivya_core", "serve", "--db", sqlite_url, "--port", "9", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 2 and len(got.stderr.strip().splitlines()) == 1, got.stderr
        assert "127.0.0.1:9" not in got.stderr
