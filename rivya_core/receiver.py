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

The same process can run the polling sweep (`poll_every` seconds, in a thread),
so a deployment needs nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .domain import CallbackOutcome
from .lifecycle import MAX_CALLBACK_BODY, LifecycleService

log = logging.getLogger("rivya.receiver")

REJECTED = {CallbackOutcome.MALFORMED: 400, CallbackOutcome.REJECTED_SIGNATURE: 401,
            CallbackOutcome.REJECTED_STALE: 401}


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
    """The polling sweep every `every` seconds in a daemon thread, until stopped."""

    def __init__(self, service: LifecycleService, every: float):
        self.service, self.every = service, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rivya-poll", daemon=True)
        self.sweeps = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                report = self.service.poll()
                self.sweeps += 1
                if report.checked:
                    log.info("poll: checked %d, finished %d", report.checked,
                             report.succeeded + report.failed + report.timed_out)
            except Exception as exc:  # a sweep that fails is tried again at the next tick
                log.warning("poll sweep failed: %s", type(exc).__name__)


def create_app(service: LifecycleService, *, max_body: int = MAX_CALLBACK_BODY,
               poll_every: float | None = None) -> Starlette:
    engine = getattr(service.store, "engine", None)
    # SQLite takes one writer at a time: queue callbacks here instead of in SQLite's busy-wait
    one_writer = threading.Lock() if engine is not None and engine.dialect.name == "sqlite" else None

    def handle(provider: str, headers: Any, body: bytes, ref: str | None) -> Any:
        if one_writer is None:
            return service.handle_callback(provider, headers, body, ref)
        with one_writer:
            return service.handle_callback(provider, headers, body, ref)

    async def webhook(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        try:
            body = await _body(request, max_body)
        except TooLarge:
            return JSONResponse({"error": f"body over {max_body} bytes"}, status_code=413)
        ref = request.query_params.get("ref")
        try:
            result = await run_in_threadpool(handle, provider, request.headers, body, ref)
        except Exception as exc:
            log.warning("callback for %s not recorded: %s", provider[:50], type(exc).__name__)
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        status = REJECTED.get(result.outcome, 200)
        return JSONResponse({"outcome": str(result.outcome), "callback_id": result.callback_id}, status_code=status)

    async def healthz(_request: Request) -> JSONResponse:
        def ping() -> None:
            with service.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            if hasattr(service.store, "engine"):
                await run_in_threadpool(ping)
        except Exception:
            return JSONResponse({"ok": False, "database": "unreachable"}, status_code=503)
        return JSONResponse({"ok": True, "providers": sorted(service.providers)})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        loop = PollLoop(service, poll_every) if poll_every else None
        if loop:
            loop.start()
        try:
            yield
        finally:
            if loop:
                loop.stop()

    return Starlette(routes=[Route("/webhooks/{provider}", webhook, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


def serve(service: LifecycleService, host: str = "127.0.0.1", port: int = 8080, *,
          poll_every: float | None = 30.0, max_body: int = MAX_CALLBACK_BODY) -> None:
    import uvicorn

    app = create_app(service, max_body=max_body, poll_every=poll_every)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
