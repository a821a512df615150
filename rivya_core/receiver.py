"""The webhook receiver: an ASGI app (Starlette, served by uvicorn) in front of a
LifecycleService.

  POST /webhooks/{provider}[?ref=task-N]  raw body + headers -> handle_callback
  GET  /healthz                           200 when the database answers, else 503

Answers: 200 when the delivery must not be retried (applied, deferred, progress,
duplicate, or recorded for a task we do not know yet); 400 for a malformed body,
401 for a bad signature or a stale timestamp (recorded, rejected); 413 for a body
over the limit, refused from its Content-Length or while streaming, before it is
read whole; 503 when the database cannot take the delivery (the provider retries).
Nothing else happens here: every rule lives in the service.

A process handles at most `threads` callbacks at once (default 8; the rest wait
their turn on the event loop), and its service's connection pool should hold that
many connections plus one for the sweep (`serve` builds it so): a thread beyond
the pool would only wait for a connection, or make the pool open one and close it
again, a new PostgreSQL backend every few deliveries.

The same process can run the polling sweep (`poll_every` seconds, in a thread),
so a deployment needs nothing else. With `workers` > 1 the listening socket is
opened once and N forked worker processes accept on it (each with its own
service and connection pool); the parent runs the polling sweep, once, replaces
a worker that dies, and stops the workers when it is stopped. On SQLite the workers
take turns to write through a lock on the database file, instead of SQLite's
busy-wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from sqlalchemy import Engine, event, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .domain import CallbackOutcome
from .lifecycle import MAX_CALLBACK_BODY, LifecycleService
from .support.alert_push import AlertPusher
from .wiring import Wired

log = logging.getLogger("rivya.receiver")

DEFAULT_THREADS = 8  # callbacks one receiver process handles at once
REQUEST_TIMEOUT_S = 15.0
SWEEP_TIMEOUT_S = 600.0  # a polling pass still running by then is left behind and the next one starts
RESTART_QUICK_S = 5.0  # a worker that dies sooner than this after its start is restarted after a pause
RESTART_PAUSE_MAX_S = (
    10.0  # doubling from 0.2 s, at most this  # a delivery not handled by then is answered 503 (the provider retries)
)

REJECTED = {
    CallbackOutcome.MALFORMED: 400,
    CallbackOutcome.REJECTED_SIGNATURE: 401,
    CallbackOutcome.REJECTED_STALE: 401,
}


class TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class PollLoop:
    """The polling sweep every `every` seconds in a daemon thread, until stopped. `after`: run after
    each pass (the alert push, rivya_core.support.alert_push.AlertPusher, bounded by its own deadline); its
    failure is logged and never stops the sweep."""

    def __init__(
        self,
        service: LifecycleService,
        every: float,
        after: Callable[[], Any] | None = None,
        *,
        sweep_timeout_s: float | None = None,
    ):
        self.service, self.every, self.after = service, every, after
        self.sweep_timeout_s = SWEEP_TIMEOUT_S if sweep_timeout_s is None else sweep_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rivya-poll", daemon=True)
        self.sweeps = 0
        self.abandoned = 0  # sweeps still running past sweep_timeout_s, left to end on their own

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        """Each pass in a thread of its own, waited for up to sweep_timeout_s: a pass stuck on a
        connection that never answers (no timeout ends a read the server never replies to) is left
        behind, logged, and the next pass starts on another connection."""
        while not self._stop.wait(self.every):
            sweep = threading.Thread(target=self._sweep, name="rivya-poll-sweep", daemon=True)
            sweep.start()
            deadline = time.monotonic() + self.sweep_timeout_s
            while sweep.is_alive() and not self._stop.is_set() and time.monotonic() < deadline:
                sweep.join(0.05)
            if sweep.is_alive() and not self._stop.is_set():
                self.abandoned += 1
                log.warning(
                    "poll sweep still running after %.0f s; the next one starts beside it", self.sweep_timeout_s
                )

    def _sweep(self) -> None:
        try:
            report = self.service.poll()
            self.sweeps += 1
            if report.checked:
                log.info(
                    "poll: checked %d, finished %d", report.checked, report.succeeded + report.failed + report.timed_out
                )
        except Exception as exc:  # a sweep that fails is tried again at the next tick
            log.warning("poll sweep failed: %s", type(exc).__name__)
        if self.after is not None:
            try:
                report = self.after()
                for n in getattr(report, "failed", []):
                    log.warning("alert %s (%s) not delivered: %s", n.key, n.state, n.error)
            except Exception as exc:
                log.warning("alert push failed: %s", type(exc).__name__)


class OneWriter:
    """SQLite takes one writer at a time: units of work queue here instead of in SQLite's
    busy-wait (SqlStore.write_gate, taken around each outermost unit, never across the
    network work between them), the threads of this process on a lock and the processes
    on an exclusive flock of the database file (SQLite itself uses fcntl locks, which do
    not interact with flock on Linux)."""

    def __init__(self, path: str | None):
        self._threads = threading.Lock()
        self._path = path if path and path != ":memory:" else None
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            if self._path is None:
                yield
                return
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def pool_size_for(threads: int) -> int:
    """The connections a receiver process with `threads` callback threads keeps: one per thread
    and one for the polling sweep."""
    return threads + 1


def _statement_timeout(engine: Any, seconds: float) -> None:
    """Every PostgreSQL session the engine hands out ends a statement (a lock wait included)
    after `seconds`: set once per connection, when the pool first hands it out."""
    ms = max(1, int(seconds * 1000))

    @event.listens_for(engine, "checkout")
    def _set(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("rivya_statement_timeout") == ms:
            return
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {ms}")
        dbapi_conn.commit()
        record.info["rivya_statement_timeout"] = ms


def create_app(
    service: LifecycleService,
    *,
    engine: Engine | None = None,
    max_body: int = MAX_CALLBACK_BODY,
    poll_every: float | None = None,
    threads: int = DEFAULT_THREADS,
    after_sweep: Callable[[], Any] | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> Starlette:
    """The receiver's app over `service`. `engine`: the SQL database the service's store writes
    (`wiring.Wired.engine`): /healthz checks it answers, and on SQLite callbacks queue for its one
    writer; None (a store without a database) skips both. request_timeout_s: a delivery (or a
    health check) not answered by then gets a 503, and on PostgreSQL each statement on `engine`
    gives up after that long too, so no request hangs on a lock, a dead connection or a database
    that stopped answering; a delivery whose work committed after its 503 is recorded as a
    duplicate when the provider sends it again."""
    if threads < 1:
        raise ValueError("a receiver needs at least one callback thread")
    if not request_timeout_s > 0:
        raise ValueError("a receiver needs a request timeout above 0")
    limiter = CapacityLimiter(threads)

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        with anyio.fail_after(request_timeout_s):  # the thread is left to end on its own timeouts
            return await anyio.to_thread.run_sync(partial(fn, *args), limiter=limiter, abandon_on_cancel=True)

    if engine is not None and engine.dialect.name == "postgresql":
        _statement_timeout(engine, request_timeout_s)
    if engine is not None and engine.dialect.name == "sqlite" and hasattr(service.store, "write_gate"):
        # one writer at a time across the receiver's processes, per unit of work: the network
        # work between units (an output copy) holds no lock
        service.store.write_gate = OneWriter(engine.url.database).held

    def handle(provider: str, headers: Any, body: bytes, ref: str | None) -> Any:
        return service.handle_callback(provider, headers, body, ref)

    async def webhook(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        try:
            body = await _body(request, max_body)
        except TooLarge:
            return JSONResponse({"error": f"body over {max_body} bytes"}, status_code=413)
        ref = request.query_params.get("ref")
        try:
            result = await in_thread(handle, provider, request.headers, body, ref)
        except Exception as exc:
            log.warning("callback for %s not recorded: %s", provider[:50], type(exc).__name__)
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        status = REJECTED.get(result.outcome, 200)
        return JSONResponse({"outcome": str(result.outcome), "callback_id": result.callback_id}, status_code=status)

    async def healthz(_request: Request) -> JSONResponse:
        def ping() -> None:
            assert engine is not None
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            if engine is not None:
                await in_thread(ping)
        except Exception:
            return JSONResponse({"ok": False, "database": "unreachable"}, status_code=503)
        return JSONResponse({"ok": True, "providers": sorted(service.providers)})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        loop = PollLoop(service, poll_every, after_sweep) if poll_every else None
        if loop:
            loop.start()
        # fetched webhook keys (fal's JWKS, Replicate's signing secret) read at start, in the
        # background: a provider that does not answer delays no start, its first delivery tries again
        threading.Thread(target=warm_webhook_keys, args=(service,), name="webhook-keys", daemon=True).start()
        try:
            yield
        finally:
            if loop:
                loop.stop()

    routes: list[Any] = [
        Route("/webhooks/{provider}", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    folder = getattr(getattr(service.results, "store", None), "root", None)
    if folder is not None:  # the result store's files, read-only, for RIVYA_RESULTS_BASE_URL = <public>/results
        routes.append(Mount("/results", StaticFiles(directory=folder, check_dir=False)))
    return Starlette(routes=routes, lifespan=lifespan)


def warm_webhook_keys(service: LifecycleService) -> int:
    """Fetch now the webhook keys each provider client reads from its provider; how many it held."""
    held = 0
    for client in service.providers.values():
        fmt = getattr(client, "callbacks", None)
        fetched = getattr(fmt, "jwks", None) or getattr(fmt, "fetched", None)
        if fetched is not None:
            held += bool(fetched.current())
    return held


def serve(
    make_service: Callable[[], Wired],
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    poll_every: float | None = 30.0,
    max_body: int = MAX_CALLBACK_BODY,
    workers: int = 1,
    threads: int = DEFAULT_THREADS,
    alerts_notify: str | None = None,
) -> int:
    """Serve until stopped (exit status 0). With workers > 1 a worker that dies is replaced by a
    new one (after a doubling pause when workers keep dying at start); the deliveries it held
    get no answer, and the provider sends them again. make_service builds each process's service
    and engine (`wiring.wire`, its pool sized by pool_size_for(threads)). alerts_notify: the alert
    webhook the sweep pushes alerts to after each pass (rivya_core.support.alert_push)."""
    import uvicorn

    if workers <= 1:
        wired = make_service()
        app = create_app(
            wired.service,
            engine=wired.engine,
            max_body=max_body,
            poll_every=poll_every,
            threads=threads,
            after_sweep=_pusher(wired, alerts_notify),
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return 0
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    children = {_fork_worker(make_service, sock, max_body, threads): time.monotonic() for _ in range(workers)}
    stopping = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loop: PollLoop | None = None
    quick_deaths = 0
    try:
        if poll_every:  # the parent's own service and pool, built after the forks
            wired = make_service()
            loop = PollLoop(wired.service, poll_every, _pusher(wired, alerts_notify))
            loop.start()
        while not stopping.is_set():
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid in children:  # a worker died (killed, or failed to start): another takes its place
                lived = time.monotonic() - children.pop(pid)
                quick_deaths = quick_deaths + 1 if lived < RESTART_QUICK_S else 0
                pause = min(RESTART_PAUSE_MAX_S, 0.1 * 2**quick_deaths) if quick_deaths else 0.0
                log.warning("receiver worker %d exited after %.1f s; starting another in %.1f s", pid, lived, pause)
                if stopping.wait(pause):
                    break
                children[_fork_worker(make_service, sock, max_body, threads)] = time.monotonic()
                continue
            stopping.wait(0.2)
    finally:
        if loop:
            loop.stop()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        sock.close()
    return 0


def _pusher(wired: Wired, url: str | None) -> Callable[[], Any] | None:
    if not url:
        return None
    return AlertPusher(wired.engine, wired.service.policy, url)


def _fork_worker(make_service: Callable[[], Wired], sock: socket.socket, max_body: int, threads: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the worker: its own service and connection pool, built after the fork
        import uvicorn

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        wired = make_service()
        app = create_app(wired.service, engine=wired.engine, max_body=max_body, poll_every=None, threads=threads)
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
        code = 0
    except BaseException:
        log.exception("receiver worker failed")
    finally:
        os._exit(code)
