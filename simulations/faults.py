"""The live path under faults: the receiver, the database or the provider fails while tasks
are in flight, and nothing may be lost or doubled.

`python -m simulations faults --db URL --flavor replicate|fal --tasks N --fault KIND [--seed S]
[--speed X] [--json]` runs the live stack on 127.0.0.1: `python -m rivya_core serve --workers 2`
(its polling sweep in the parent) in its own processes, the fake provider (simulations.httpfarm)
over HTTP, N tasks submitted through the real clients from this process; it injects the fault on
a schedule drawn from the seed while the tasks are in flight (the tasks go in one wave per fault
window, so each window meets a wave still running), lets the provider redeliver by its
retry policy, waits until every task is terminal (or a deadline), then checks.

Faults (what each does exactly):

- kill-worker: SIGKILL a receiver worker (drawn among the live ones) at 3 drawn moments, while
  deliveries are in flight; `serve` forks a replacement, and the deliveries the killed worker
  held get no answer, so the provider sends them again. On SQLite the killed worker may hold the
  write lock (the receiver's flock and SQLite's own): both end with the process.
- restart-db (PostgreSQL): twice, `ALTER DATABASE <db> ALLOW_CONNECTIONS false`, then
  `pg_terminate_backend` on every session of that one database (by datname), a drawn 1.5-3 s
  with the database refusing sessions, then `ALLOW_CONNECTIONS true`: what the receiver sees of
  a PostgreSQL restart, without touching the server other databases share. Refused unless the
  database has no session but this run's (give it a database of its own). Each window starts
  when its wave's submissions have ended, since this process's own submissions meet it too.
- drop-connections (PostgreSQL): the receiver reaches PostgreSQL through a TCP proxy on
  127.0.0.1; twice, the proxy resets every connection it carries and refuses new ones for a
  drawn 1.5-3 s, then listens again. Only the receiver's sessions are affected.
- slow-provider: twice for a drawn 3-6 s, every answer of the provider's API comes 1.5 x the
  clients' timeout late (the work is done, the answer is late) and each webhook leaves that much
  later.
- provider-down: twice for a drawn 3-6 s, the provider's API answers 503 and it sends no
  webhook (deliveries due then leave when it is back).

The provider's redelivery: fal retries a delivery answered 5xx or not at all up to 10 times over
2 hours (pauses doubling from 14 s, compressed by --speed); Replicate-style, the fake's few quick
retries (simulations.httpfarm.DELIVERY_ATTEMPTS), then polling is the safety net. A 2xx or 4xx
answer ends a delivery.

Checks (all must be 0, else exit 1): tasks lost (never terminal), charged twice, refunded
twice, outcome notifications missing or doubled, callbacks applied twice (the audit's checks of
those names, rivya_core.audit), every other audit finding, and deliveries acknowledged (any
non-5xx answer) while the database was down. Also printed: the HTTP answers the provider saw,
the deliveries it gave up on, the tasks in flight when each fault began, the time until the
receiver was healthy again and until every task was terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from rivya_core.audit import audit
from rivya_core.catalog import default_catalog
from rivya_core.cli import number
from rivya_core.clock import WallClock
from rivya_core.domain import ACTIVE, RivyaError, ValidationError
from rivya_core.lifecycle import LifecycleService
from rivya_core.providers.config import build_clients, parse_providers
from rivya_core.stores import schema
from rivya_core.stores.db import has_rows, normalize_url, safe_url
from rivya_core.stores.sql import open_store
from rivya_core.tomlfile import parse as parse_toml

from .httpfarm import FakeProvider, providers_toml
from .live import (
    CLIENT_TIMEOUT_S,
    HOST,
    SUBMITTERS,
    ServerThread,
    _accounts,
    _requests,
    free_port,
    scaled_policy,
    stop_process,
)
from .scenarios import Scenario, _table, load_scenario
from .streams import Streams

FAULTS = ("kill-worker", "restart-db", "drop-connections", "slow-provider", "provider-down")
SQLITE_FAULTS = ("kill-worker", "slow-provider", "provider-down")
WORKERS = 2
THREADS = 4  # each receiver process's callback threads (and its connections, one more for the sweep)
FAL_TRIES = 10  # fal: a delivery is tried up to 10 times over 2 hours
FAL_SPAN_S = 7200.0
FAL_FIRST_PAUSE_S = FAL_SPAN_S / (2 ** (FAL_TRIES - 1) - 1)  # pauses double: their sum is the span
KILLS = 3
WINDOWS = 2
# the audit checks behind each counted figure (one definition: rivya_core.audit)
COUNTED = {
    "charged_twice": "charged_twice",
    "refunded_twice": "double_refund",
    "notifications_missing": "notification_missing",
    "notifications_doubled": "notification_duplicate",
    "callbacks_applied_twice": "callback_applied_twice",
}


@dataclass
class Window:
    start: float  # seconds after the run's start (monotonic)
    end: float
    in_flight: int = 0  # tasks active when it began
    recovered_s: float | None = None  # after its end, until the receiver answered healthy (all workers up)
    victim_busy: bool = False  # kill-worker: the worker killed held the write lock / an open transaction


@dataclass
class Attempt:
    kind: str
    sent: float
    answered: float
    status: int  # 0: no answer (connection refused or reset, timeout)


@dataclass
class FaultReport:
    fault: str
    flavor: str
    database: str
    tasks: int
    seed: int
    speed: float
    lost: int
    charged_twice: int
    refunded_twice: int
    notifications_missing: int
    notifications_doubled: int
    callbacks_applied_twice: int
    audit_findings: dict[str, int]
    acked_while_down: int
    answers: dict[str, int]
    api_faults: dict[str, int]
    gave_up: dict[str, int]
    windows: list[dict[str, Any]]
    states: dict[str, int]
    failed_by_code: dict[str, int]
    drain_s: float
    wall_s: float
    submitted: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.charged_twice
            or self.refunded_twice
            or self.notifications_missing
            or self.notifications_doubled
            or self.callbacks_applied_twice
            or self.audit_findings
            or self.acked_while_down
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def render_text(self) -> str:
        def recovered(w: dict[str, Any]) -> str:
            r = w["recovered_s"]
            busy = ", killed mid-delivery" if w["victim_busy"] else ""
            return busy + ("" if r is None else f", healthy {r:.2f} s after")

        lines = [
            f"{self.fault} on {self.database} ({self.flavor}): {self.tasks} tasks, seed {self.seed}, "
            f"speed {self.speed:g}, {self.wall_s:.1f} s",
            "  faults: "
            + "; ".join(
                f"{w['start']:.2f}-{w['end']:.2f} s ({w['in_flight']} in flight{recovered(w)})" for w in self.windows
            ),
            f"  every task terminal {self.drain_s:.1f} s after the last fault ended; states "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.states.items()))
            + (
                " (failed: " + ", ".join(f"{k} {v}" for k, v in sorted(self.failed_by_code.items())) + ")"
                if self.failed_by_code
                else ""
            ),
            "  provider saw: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
            + ("; gave up on " + ", ".join(f"{k} {v}" for k, v in sorted(self.gave_up.items())) if self.gave_up else "")
            + (
                "; its API answers " + ", ".join(f"{k} {v}" for k, v in sorted(self.api_faults.items()))
                if self.api_faults
                else ""
            ),
            f"  lost {self.lost}, charged twice {self.charged_twice}, refunded twice {self.refunded_twice}, "
            f"notifications missing {self.notifications_missing}, doubled {self.notifications_doubled}, "
            f"callbacks applied twice {self.callbacks_applied_twice}, acknowledged while the database was "
            f"down {self.acked_while_down}, audit findings "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.audit_findings.items())) or "0"),
            *(f"  note: {n}" for n in self.notes),
            "  OK" if self.ok else "  FAILED",
        ]
        return "\n".join(lines)


# --- the provider with a retry policy, an API that can be slow or down, and a log of answers --------


class FaultyProvider(FakeProvider):
    """The HTTP farm with the fault switches: `slow` / `down` (set by the schedule), the flavor's
    redelivery policy, and every delivery attempt with the answer it got."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.slow = threading.Event()
        self.down = threading.Event()
        self.slow_s = CLIENT_TIMEOUT_S * 1.5
        self.attempts: list[Attempt] = []
        self.gave_up: Counter = Counter()
        self.api_faults: Counter = Counter()  # API answers refused (down) or late (slow)
        self.t0 = time.monotonic()
        inner: Any = self.app

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope.get("path") == "/healthz":
                return await inner(scope, receive, send)
            if self.down.is_set():
                self.api_faults["refused"] += 1
                body = b'{"detail":"the provider is unavailable"}'
                await send(
                    {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]}
                )
                return await send({"type": "http.response.body", "body": body})
            slow = self.slow.is_set()
            if slow:
                self.api_faults["late"] += 1

            async def late(message: dict[str, Any]) -> None:
                if slow and message["type"] == "http.response.start":
                    await asyncio.sleep(self.slow_s)  # the work is done; its answer comes late
                await send(message)

            return await inner(scope, receive, late)

        self.app: Any = app

    def pauses(self) -> list[float]:
        """Wall seconds before each retry of a delivery: fal's policy, else the fake's own."""
        if self.flavor == "fal":
            return [FAL_FIRST_PAUSE_S * 2**i / self.speed for i in range(FAL_TRIES - 1)]
        return super().pauses()

    async def _until_up(self) -> None:
        while self.down.is_set():
            await asyncio.sleep(0.05)
        if self.slow.is_set():
            await asyncio.sleep(self.slow_s)

    def _answered(self, kind: str, sent: float, status: int) -> None:
        self.attempts.append(Attempt(kind, sent - self.t0, time.monotonic() - self.t0, status))

    def _gave_up(self, kind: str) -> None:
        self.gave_up[kind] += 1


# --- a TCP proxy in front of PostgreSQL ------------------------------------------------------------


class TcpProxy:
    """127.0.0.1:port -> target, a thread a direction per connection. `drop()` resets every
    connection and stops listening; `listen()` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: socket.socket | None = None

    def listen(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((HOST, self.port))
        srv.listen(256)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True, name="faults-proxy").start()

    def drop(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            with contextlib.suppress(OSError):
                srv.shutdown(socket.SHUT_RDWR)
            srv.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            with contextlib.suppress(OSError):  # a reset, not an orderly close
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                # shutdown first: close() alone leaves a socket a pump thread is reading from open, and a
                # client waiting for an answer on it would wait for ever instead of seeing the drop
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not srv:  # dropped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


# --- the run ------------------------------------------------------------------------------------


def _admin_engine(url: str) -> Any:
    return create_engine(
        make_url(normalize_url(url)).set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 10},
    )


def _other_sessions(admin: Any, name: str) -> int:
    """Sessions on database `name` (the admin engine is connected to another database)."""
    with admin.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": name}))


def check_arguments(db_url: str, fault: str, tasks: int, speed: float) -> str:
    """The database's dialect; a typed refusal for a fault that does not apply."""
    if fault not in FAULTS:
        raise ValidationError(f"--fault must be one of {', '.join(FAULTS)}", code="bad_argument")
    if tasks < 1 or not speed > 0:
        raise ValidationError("--tasks must be at least 1 and --speed positive", code="bad_argument")
    dialect = make_url(normalize_url(db_url)).get_backend_name()
    if dialect == "sqlite" and fault not in SQLITE_FAULTS:
        raise ValidationError(
            f"--fault {fault} needs PostgreSQL (on SQLite: {', '.join(SQLITE_FAULTS)})", code="bad_argument"
        )
    if dialect not in ("sqlite", "postgresql"):
        raise ValidationError("--db must be a SQLite or PostgreSQL URL", code="bad_argument")
    return dialect


def schedule(fault: str, seed: int) -> list[tuple[float, float]]:
    """(delay, length) of each fault window, in wall seconds, drawn from the seed. The tasks are
    submitted in one wave per window; a window begins `delay` after its wave was released (for
    restart-db: after its wave's submissions ended), so every window meets tasks in flight
    however quickly the previous wave finished."""
    rng = Streams(seed).get(f"faults:{fault}")
    if fault == "kill-worker":
        return [(rng.uniform(0.3, 1.0), 0.0) for _ in range(KILLS)]
    low, high = (1.5, 3.0) if fault in ("restart-db", "drop-connections") else (3.0, 6.0)
    return [(rng.uniform(0.3, 1.0), rng.uniform(low, high)) for _ in range(WINDOWS)]


def waves(count: int, windows: int) -> list[range]:
    """The submissions split into one consecutive wave per fault window, as even as they go."""
    cuts = [round(count * k / windows) for k in range(windows + 1)]
    return [range(cuts[k], cuts[k + 1]) for k in range(windows)]


def run_faults(
    db_url: str,
    flavor: str,
    tasks: int,
    fault: str,
    *,
    seed: int | None = None,
    speed: float = 60.0,
    force: bool = False,
    deadline_s: float | None = None,
    scenario: Scenario | None = None,
) -> FaultReport:
    dialect = check_arguments(db_url, fault, tasks, speed)
    scenario = scenario or load_scenario("baseline")
    seed = scenario.seed if seed is None else int(seed)
    admin = None
    if dialect == "postgresql" and fault == "restart-db":  # before anything is written
        admin = _admin_engine(db_url)
        name = str(make_url(normalize_url(db_url)).database)
        try:
            others = _other_sessions(admin, name)
        except Exception:
            admin.dispose()
            raise
        if others:
            admin.dispose()
            raise RivyaError(
                f"database {name} has {others} other session(s); restart-db ends every session of "
                "the database: give the run a database of its own",
                code="db_shared",
            )
    try:
        store = open_store(db_url, create=True, pool_size=SUBMITTERS + 2)
    except Exception:
        if admin is not None:
            admin.dispose()
        raise
    try:
        if has_rows(store.engine, "ai_task") and not force:
            raise RivyaError(
                f"database {safe_url(db_url)} already holds tasks; pass --force to add a fault run to it",
                code="db_not_empty",
            )
        return _run(store, admin, db_url, dialect, scenario, flavor, tasks, fault, seed, speed, deadline_s)
    finally:
        store.engine.dispose()
        if admin is not None:
            admin.dispose()


def _run(
    store: Any,
    admin: Any,
    db_url: str,
    dialect: str,
    scenario: Scenario,
    flavor: str,
    tasks: int,
    fault: str,
    seed: int,
    speed: float,
    deadline_s: float | None,
) -> FaultReport:
    started = time.monotonic()
    catalog = default_catalog()
    policy = scaled_policy(scenario.policy, speed)
    fake = FaultyProvider(flavor, scenario, seed, speed=speed, stall_s=CLIENT_TIMEOUT_S * 1.5, catalog=catalog)
    fake.t0 = started
    receiver_port = free_port()
    proxy = None
    receiver_url = db_url
    if fault == "drop-connections":
        u = make_url(normalize_url(db_url))
        proxy = TcpProxy(u.host or "127.0.0.1", u.port or 5432)
        proxy.listen()
        receiver_url = u.set(host=HOST, port=proxy.port).render_as_string(hide_password=False)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rivya-faults-") as tmp, ServerThread(fake.app) as farm_server:
        toml = providers_toml(
            flavor,
            farm_server.url,
            f"http://{HOST}:{receiver_port}",
            fake.keys,
            fake.provider_names,
            timeout_s=CLIENT_TIMEOUT_S,
        )
        policy_file = Path(tmp) / "policy.toml"
        policy_file.write_text("\n".join(_table("policy", policy.to_dict())) + "\n")
        receiver = _start_receiver(receiver_url, receiver_port, toml, policy_file, policy.poll_interval_s, tmp)
        base = f"http://{HOST}:{receiver_port}"
        try:
            clients = build_clients(parse_providers(parse_toml(toml, "<faults>", RivyaError), "<faults>"))
            svc = LifecycleService(store, WallClock(), clients, catalog, policy)
            streams = Streams(seed)
            users = _accounts(svc, scenario, streams)
            requests = _requests(catalog, scenario, streams, tasks)
            pick = streams.get("live:users")
            owners = [pick.choice(users) for _ in requests]
            plan = schedule(fault, seed)
            windows: list[Window] = []
            submitted = [0]

            def submit(i: int) -> None:
                try:
                    svc.submit(owners[i], requests[i])
                    submitted[0] += 1
                except ValidationError:
                    pass  # refused before a task existed

            injector = _Injector(fault, seed, windows, fake, proxy, admin, db_url, receiver, base, store, started)
            sent: list[Any] = []
            with ThreadPoolExecutor(SUBMITTERS) as pool:
                for (delay, length), wave in zip(plan, waves(len(requests), len(plan)), strict=True):
                    sent += [pool.submit(submit, i) for i in wave]
                    if fault == "restart-db":  # this process's submissions meet it too: theirs first
                        wait(sent)
                    try:
                        injector.window(delay, length)
                    except Exception as exc:  # noqa: BLE001 - the fault is cleared, the run reports it
                        raise RivyaError(f"the fault could not be injected: {exc}", code="fault_failed") from exc
            for f in sent:
                f.result()  # a submission that broke (not refused by validation) breaks the run
            last_end = max((w.end for w in windows), default=time.monotonic() - started)
            longest = max(policy.timeout_s.values(), default=600.0)
            deadline = time.monotonic() + (deadline_s or longest + 60.0)
            active = _active(store)
            while active and time.monotonic() < deadline:
                time.sleep(0.25)
                active = _active(store)
            drained = time.monotonic() - started - last_end
            quiet_by = time.monotonic() + 30
            while not fake.quiet() and time.monotonic() < quiet_by:
                time.sleep(0.1)
            if not fake.quiet():
                notes.append("the provider still had deliveries to make at the end")
            if receiver.poll() is not None:
                notes.append(f"the receiver exited with status {receiver.returncode}")
        finally:
            stop_process(receiver, grace_s=30)
            if proxy is not None:
                proxy.drop()
    return _report(
        store,
        fault,
        flavor,
        dialect,
        tasks,
        seed,
        speed,
        policy,
        fake,
        windows,
        drained,
        time.monotonic() - started,
        submitted[0],
        notes,
    )


def _start_receiver(url: str, port: int, toml: str, policy_file: Path, poll_every: float, tmp: str) -> Any:
    env = {**os.environ, "RIVYA_PROVIDERS": toml, "RIVYA_WEBHOOK_SECRETS": ""}
    # the receiver copies outputs before SUCCESS: into the run's own folder, from the loopback fake
    env.update(RIVYA_RESULTS_DIR=str(Path(tmp) / "results"), RIVYA_RESULTS_TEST_ALLOW_HOSTS=HOST)
    env.pop("RIVYA_ALERTS_NOTIFY", None)
    log = open(Path(tmp) / "receiver.log", "wb")  # noqa: SIM115 - the child writes it until stopped
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rivya_core",
            "serve",
            "--db",
            url,
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            "--threads",
            str(THREADS),
            "--policy",
            str(policy_file),
            "--poll-every",
            f"{max(0.1, min(1.0, poll_every)):g}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while not _healthy(f"http://{HOST}:{port}", proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            tail = (Path(tmp) / "receiver.log").read_bytes()[-300:].decode("utf-8", "replace")
            raise RivyaError(f"the receiver did not start: {tail}", code="server_failed")
        time.sleep(0.1)
    return proc


def _workers(pid: int) -> list[psutil.Process]:
    out = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for c in psutil.Process(pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c)
    return out


def _healthy(base: str, pid: int) -> bool:
    if len(_workers(pid)) < WORKERS:
        return False
    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class _Injector:
    """Applies one fault window at a time, on the run's own thread, and measures its recovery."""

    def __init__(
        self,
        fault: str,
        seed: int,
        windows: list[Window],
        fake: FaultyProvider,
        proxy: TcpProxy | None,
        admin: Any,
        db_url: str,
        receiver: Any,
        base: str,
        store: Any,
        started: float,
    ):
        self.fault, self.windows, self.fake, self.proxy = fault, windows, fake, proxy
        self.admin, self.receiver, self.base, self.store, self.started = admin, receiver, base, store, started
        self.db_name = make_url(normalize_url(db_url)).database
        self.victims = Streams(seed).get(f"faults:victims:{fault}")  # which worker each kill takes

    def now(self) -> float:
        return time.monotonic() - self.started

    def window(self, delay: float, length: float) -> None:
        """Wait `delay`, apply the fault for `length` seconds (a kill is a moment), record the
        window. On any error the fault is cleared before the error goes on."""
        try:
            time.sleep(delay)
            in_flight = _active(self.store, quiet=True)
            busy = False
            if self.fault == "kill-worker":
                victim, busy = self._victim()
                begin = self.now()
                if victim is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
            else:
                self._begin()
                begin = self.now()  # in effect from here
                time.sleep(length)
                self._end()
            w = Window(begin, self.now(), in_flight, victim_busy=busy)
            self.windows.append(w)
            w.recovered_s = self._recovery(w.end)
        except BaseException:
            self._end()
            raise

    def _victim(self) -> tuple[int | None, bool]:
        """The worker to kill: one in the middle of a delivery when one is within 2 s, else one
        drawn among the live workers; (pid, busy). On SQLite: the holder of the receiver's write
        lock. On PostgreSQL: this process holds the row locks of the active tasks for a moment, and
        a worker whose delivery waits on one (its transaction open, its request unanswered) is killed
        before they are released."""
        workers = sorted(w.pid for w in _workers(self.receiver.pid))
        if not workers:
            return None, False
        if self.store.engine.dialect.name == "sqlite":
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                busy = sorted(set(workers) & self._flock_holders())
                if busy:
                    return self.victims.choice(busy), True
                time.sleep(0.002)
            return self.victims.choice(workers), False
        t = schema.ai_task
        with contextlib.suppress(Exception), self.store.engine.connect() as hold:
            hold.execute(select(t.c.id).where(t.c.status.in_([str(s) for s in ACTIVE])).with_for_update())
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                busy = sorted(set(workers) & self._waiting_on_a_lock(workers))
                if busy:
                    victim = self.victims.choice(busy)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                    return victim, True
                time.sleep(0.01)
        return self.victims.choice(workers), False

    def _flock_holders(self) -> set[int]:
        inode = str(os.stat(self.store.engine.url.database).st_ino)
        held = set()
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if (
                    len(parts) > 5
                    and parts[1] == "FLOCK"
                    and parts[3] == "WRITE"
                    and parts[5].rsplit(":", 1)[-1] == inode
                ):
                    held.add(int(parts[4]))
        return held

    def _waiting_on_a_lock(self, workers: list[int]) -> set[int]:
        with self.store.engine.connect() as conn:
            ports = set(
                conn.scalars(
                    text(
                        "SELECT client_port FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'"
                    )
                ).all()
            )
        out = set()
        for pid in workers:
            with contextlib.suppress(psutil.Error):
                if any(c.laddr and c.laddr.port in ports for c in psutil.Process(pid).net_connections("tcp")):
                    out.add(pid)
        return out

    def _begin(self) -> None:
        if self.fault == "restart-db":
            with self.admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS false'))
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                        "WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": self.db_name},
                )
        elif self.fault == "drop-connections" and self.proxy is not None:
            self.proxy.drop()
        elif self.fault == "slow-provider":
            self.fake.slow.set()
        elif self.fault == "provider-down":
            self.fake.down.set()

    def _end(self) -> None:
        if self.fault == "restart-db" and self.admin is not None:
            with self.admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS true'))
        elif self.fault == "drop-connections" and self.proxy is not None and self.proxy._server is None:
            self.proxy.listen()
        self.fake.slow.clear()
        self.fake.down.clear()

    def _recovery(self, since: float) -> float | None:
        """Seconds after `since` until the receiver is healthy again, all workers up (30 s at most)."""
        if self.fault in ("slow-provider", "provider-down"):
            return None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _healthy(self.base, self.receiver.pid):
                return self.now() - since
            time.sleep(0.02)
        return None


def _active(store: Any, quiet: bool = False) -> int:
    """Tasks not yet terminal; while the database is down, the last answer is kept (-1 at first)."""
    t = schema.ai_task
    for _ in range(1 if quiet else 200):
        try:
            with store.engine.connect() as conn:
                return int(
                    conn.scalar(select(func.count()).select_from(t).where(t.c.status.in_([str(s) for s in ACTIVE])))
                )
        except Exception:  # noqa: BLE001 - the database is down: ask again
            if quiet:
                return -1
            time.sleep(0.25)
    raise RivyaError("the database did not come back within 50 s", code="db_unavailable")


def _report(
    store: Any,
    fault: str,
    flavor: str,
    dialect: str,
    tasks: int,
    seed: int,
    speed: float,
    policy: Any,
    fake: FaultyProvider,
    windows: list[Window],
    drained: float,
    wall: float,
    submitted: int,
    notes: list[str],
) -> FaultReport:
    t = schema.ai_task
    with store.engine.connect() as conn:
        states = {str(k): int(v) for k, v in conn.execute(select(t.c.status, func.count()).group_by(t.c.status))}
        failed = {
            str(k): int(v)
            for k, v in conn.execute(
                select(t.c.error_code, func.count()).where(t.c.status == "FAILED").group_by(t.c.error_code)
            )
        }
    counts = audit(store.engine, policy, WallClock().now()).counts()
    findings = {k: n for k, n in counts.items() if n}
    down = [(w.start, w.end) for w in windows] if fault in ("restart-db", "drop-connections") else []
    acked = sum(
        1 for a in fake.attempts if 0 < a.status < 500 and any(s + 0.05 <= a.sent and a.answered <= e for s, e in down)
    )
    answers = Counter("no answer" if a.status == 0 else f"{a.status // 100}xx" for a in fake.attempts)
    lost = sum(n for s, n in states.items() if s in {str(a) for a in ACTIVE})
    return FaultReport(
        fault=fault,
        flavor=flavor,
        database=dialect,
        tasks=sum(states.values()),
        seed=seed,
        speed=speed,
        lost=lost,
        **{name: counts.get(kind, 0) for name, kind in COUNTED.items()},
        audit_findings=findings,
        acked_while_down=acked,
        answers=dict(answers),
        api_faults=dict(fake.api_faults),
        gave_up=dict(fake.gave_up),
        windows=[asdict(w) for w in windows],
        states=states,
        failed_by_code=failed,
        drain_s=max(0.0, drained),
        wall_s=wall,
        submitted=submitted,
        notes=notes,
    )


# --- the command -----------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "faults", help="the live stack under one fault: nothing lost or doubled", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--db", required=True, help="a database of the run's own (refused when it holds tasks, unless --force)"
    )
    p.add_argument("--flavor", required=True, choices=("replicate", "fal"))
    p.add_argument("--tasks", type=number("tasks"), required=True)
    p.add_argument("--fault", required=True, choices=FAULTS)
    p.add_argument("--seed", type=number("seed"), help="master seed (default: the baseline scenario's)")
    p.add_argument(
        "--speed",
        type=number("realtime"),
        default=60.0,
        help="simulated seconds per wall second; the policy's waits and the provider's retry "
        "pauses scale with it (default 60)",
    )
    p.add_argument("--force", action="store_true", help="add the run to a database that already holds tasks")
    p.add_argument("--json", action="store_true")


def cmd_faults(a: argparse.Namespace) -> int:
    report = run_faults(a.db, a.flavor, a.tasks, a.fault, seed=a.seed, speed=a.speed, force=a.force)
    print(json.dumps(report.to_dict(), indent=1) if a.json else report.render_text())
    return 0 if report.ok else 1
