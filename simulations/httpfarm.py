"""The mock provider farm over real HTTP, in the real providers' protocols.

One Starlette app serves every catalogue provider in one flavor:

- `replicate`: POST /v1/models/{model}/predictions (or /v1/models/{owner}/{name}/predictions,
  /v1/predictions with a version), GET /v1/predictions/{id}, POST /v1/predictions/{id}/cancel;
  webhooks signed with Standard Webhooks; the body is the prediction object.
- `fal`: POST /{owner}/{provider}/{model}?fal_webhook=URL, GET .../requests/{id}/status,
  GET .../requests/{id}, PUT .../requests/{id}/cancel; webhooks signed with ED25519.

A job's draws are the in-process farm's (simulations.farm.JOB_DRAWS): one Random keyed
by (provider, task ref), in the same order and number, from the scenario's seed; so a
task ref gets the same generation time and the same faults here and in a `run`. The
farm's simulated seconds pass `speed` times faster than wall seconds (generation,
callback delays, outage windows); signature timestamps are real, so a stale delivery
is signed STALE_EXTRA_S real seconds in the past and the receiver's 300 s window
refuses it.

Faults, as the scenario says: submissions refused (422), failing (500) or stalling
past the client's timeout; outcomes (content policy, model error, upstream timeout,
lost job, success without URLs); callbacks early, lost, duplicated, reordered (a
"processing" report overtaken by the final one), forged (a key the deployment does
not hold), stale, malformed. Replicate sends its `start` webhook at once when the
filter asks for it (ours does), which races the caller's write of the upstream id,
as the real API does. fal's traps: a
failed job reports COMPLETED and its result answers 422; a success whose payload is
null (webhook `payload: null` with `payload_error`, result `null`).

Cancel (the service's upstream cancel): a queued or running job canceled (Replicate `POST
.../cancel`, fal `PUT .../cancel`) stops being billed and sends nothing more; a Replicate
submission's `Cancel-After: <n>s` (or `<n>m`, `<n>h`) deadline aborts a job still queued at it
(unbilled) and cancels one still running. What a job ran is reported as Replicate's
`metrics.predict_time` and fal's `metrics.inference_time` (COMPLETED status), in simulated seconds.

Order and timing of deliveries follow the wall clock, so a live database is not
byte-for-byte reproducible; the draws are.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rivya_core import webhooks
from rivya_core.catalog import Catalog, default_catalog

from .farm import STALE_EXTRA_S, UPSTREAM_TIMEOUT, drawn_outcome
from .scenarios import Outage, ProviderConfig, Scenario
from .streams import Streams

FLAVORS = ("replicate", "fal")
TOKEN = "fake-provider-token"  # what the fake expects as the API token/key (not a secret)
FAL_USER = "rivya-qa"
DELIVERY_ATTEMPTS = 4  # a delivery answered 5xx or not at all is retried (then dropped)
REPLICATE_EVENTS = ("start", "output", "logs", "completed")  # the events a webhook_events_filter may name
# without a filter Replicate sends "whenever there are new outputs or the prediction has finished"
DEFAULT_EVENTS = ("output", "completed")
FAL_JWKS_PATH = "/.well-known/jwks.json"
REPLICATE_SECRET_PATH = "/v1/webhooks/default/secret"
# the farm's failure codes as fal's model error types
FAL_ERROR_TYPES = {"content_policy_violation": "content_policy_violation", "model_error": "internal_server_error"}


OUTPUT_EXT = {"image": "png", "video": "mp4", "audio": "mp3"}
OUTPUT_TYPES = {"png": "image/png", "mp4": "video/mp4", "mp3": "audio/mpeg", "bin": "application/octet-stream"}


def output_bytes(job_id: str) -> bytes:
    """A job's output as the fake serves it: a few KiB derived from its id (not a real image)."""
    return b"".join(hashlib.sha256(f"{job_id}:{i}".encode()).digest() for i in range(64))


def version_id(model: str) -> str:
    """The fake's 64-hex version id of a catalogue model (stable, derived from its name)."""
    return hashlib.sha256(f"rivya-fake-version:{model}".encode()).hexdigest()


class RateLimit:
    """At most `per_s` create requests a wall second per provider (a token bucket): over it,
    429 with Retry-After, as the real APIs throttle. Decided before any draw, so the draws
    of the jobs that are created do not move."""

    def __init__(self, per_s: float):
        self.per_s = float(per_s)
        self._tokens: dict[str, tuple[float, float]] = {}

    def take(self, provider: str, now: float) -> float:
        """0 when a request may go now; else the seconds until it may."""
        tokens, at = self._tokens.get(provider, (self.per_s, now))
        tokens = min(self.per_s, tokens + (now - at) * self.per_s)
        if tokens >= 1.0:
            self._tokens[provider] = (tokens - 1.0, now)
            return 0.0
        self._tokens[provider] = (tokens, now)
        return (1.0 - tokens) / self.per_s


@dataclass
class FakeJob:
    id: str
    provider: str
    task_ref: str
    model: str
    category: str
    webhook: str | None
    created: float
    events: tuple[str, ...] = DEFAULT_EVENTS  # replicate: the webhook_events_filter asked for
    origin: str = ""  # the fake's own base URL, as the submission reached it (outputs served there)
    state: str = "queued"  # queued | running | succeeded | failed | lost | canceled
    urls: tuple[str, ...] = ()
    error: tuple[str, str, str] | None = None
    pending: int = 0
    deadline: float | None = None  # Cancel-After, in the farm's simulated seconds
    started: float | None = None  # simulated seconds
    ended: float | None = None  # simulated seconds: finished, canceled or aborted

    def run_s(self) -> float | None:
        """Billed run seconds: from start to its end (or to now while it runs); None before it ran."""
        if self.started is None or self.ended is None:
            return None
        return round(max(0.0, self.ended - self.started), 3)


@dataclass
class Keys:
    """What a deployment must configure to talk to this fake (and the forger's key it must not)."""

    secrets: dict[str, str]  # replicate: provider -> whsec_ secret
    seeds: dict[str, str]  # fal: provider -> ED25519 private seed (hex)
    forger_secret: str
    forger_seed: str

    def public_key(self, provider: str) -> str:
        return webhooks.ed25519_public_key(self.seeds[provider])


def make_keys(streams: Streams, providers: list[str]) -> Keys:
    rng = streams.get("secrets")
    secrets, seeds = {}, {}
    for name in sorted(providers):
        secrets[name] = webhooks.generate_secret(rng)
        seeds[name] = bytes(rng.getrandbits(8) for _ in range(32)).hex()
    forger = streams.get("forger")
    return Keys(secrets, seeds, webhooks.generate_secret(forger), bytes(forger.getrandbits(8) for _ in range(32)).hex())


def providers_toml(
    flavor: str, base_url: str, webhook_base: str, keys: Keys, providers: list[str], timeout_s: float = 30.0
) -> str:
    """A RIVYA_PROVIDERS file that points a deployment at this fake (contains its test keys)."""
    out = []
    for name in sorted(providers):
        out.append(f"[providers.{name}]")
        out.append(f'api = "{flavor}"')
        out.append(f'base_url = "{base_url.rstrip("/")}{"/v1" if flavor == "replicate" else ""}"')
        out.append(f'webhook_url = "{webhook_base.rstrip("/")}/webhooks/{name}"')
        out.append(f"timeout_s = {timeout_s}")
        out.append("retries = 1")
        if flavor == "replicate":
            out.append(f'token = "{TOKEN}"')
            out.append(f'webhook_secrets = ["{keys.secrets[name]}"]')
        else:
            out.append(f'key = "{TOKEN}"')
            out.append(f'app = "rivya/{name}"')
            out.append(f'jwks_url = "{base_url.rstrip("/")}{FAL_JWKS_PATH}"')  # the fake publishes its keys
        out.append("")
    return "\n".join(out)


@dataclass
class FakeStats:
    sent: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    submit_faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    cancels: Counter = field(default_factory=Counter)  # canceled jobs, by the state they were in


class FakeProvider:
    """The HTTP farm: `app` is the ASGI app; `quiet()` says when nothing more will be sent."""

    def __init__(
        self,
        flavor: str,
        scenario: Scenario,
        seed: int | None = None,
        *,
        speed: float = 1.0,
        stall_s: float = 35.0,
        catalog: Catalog | None = None,
        rate_limit_per_s: float | None = None,
    ):
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}")
        self.flavor = flavor
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else int(seed)
        self.streams = Streams(self.seed)
        self.speed = float(speed)
        self.stall_s = stall_s
        self.catalog = catalog or default_catalog()
        self.provider_names = sorted(self.catalog.providers())
        self.keys = make_keys(self.streams, self.provider_names)
        self.jobs: dict[str, FakeJob] = {}
        self.by_ref: dict[tuple[str, str], str] = {}
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.stats = FakeStats()
        self.rate_limit = RateLimit(rate_limit_per_s) if rate_limit_per_s else None
        self.started = time.monotonic()
        self._msg = 0
        self._tasks: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None
        self.app = self._app()

    # --- time and draws ---------------------------------------------------------------

    def sim_now(self) -> float:
        return (time.monotonic() - self.started) * self.speed

    async def sleep_sim(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def _outage(self, provider: str) -> Outage | None:
        now = self.sim_now()
        return next((o for o in self.scenario.outages if o.provider == provider and o.start_s <= now < o.end_s), None)

    def cfg(self, provider: str) -> ProviderConfig:
        return self.scenario.provider_config(provider)

    def quiet(self) -> bool:
        """No job still running and no delivery still to be made."""
        return not any(t for t in self._tasks if not t.done())

    # --- creating jobs --------------------------------------------------------------------

    def _create(
        self,
        provider: str,
        model: str,
        webhook: str | None,
        events: tuple[str, ...] = DEFAULT_EVENTS,
        origin: str = "",
        cancel_after_s: float | None = None,
    ) -> tuple[int, dict[str, Any] | FakeJob]:
        """(HTTP status, error body) for a refused submission, or (200, job)."""
        spec = self.catalog.get(model)
        if spec is None or spec.provider != provider:
            return 404, {"detail": f"no model {model!r}"}
        if self.rate_limit is not None:
            wait = self.rate_limit.take(provider, time.monotonic())
            if wait > 0:
                self.stats.submit_faults["throttled"] += 1
                return 429, {"detail": "Request was throttled.", "retry_after": max(1, math.ceil(wait))}
        task_ref = httpx.URL(webhook).params.get("ref", "") if webhook else ""
        task_ref = task_ref or uuid.uuid4().hex
        known = self.by_ref.get((provider, task_ref))
        if known is not None:  # the same task submitted again: the same job
            return 200, self.jobs[known]
        outage = self._outage(provider)
        if outage is not None and outage.mode in ("submit_error", "submit_refused"):
            kind = outage.mode.removeprefix("submit_")
            self.stats.submit_faults[kind] += 1
            return (422 if kind == "refused" else 503), {"detail": f"{provider} unavailable ({kind})"}
        rng = self.streams.keyed(f"job:{provider}", task_ref)
        cfg = self.cfg(provider)
        u_submit = [rng.random() for _ in range(3)]
        for kind, p, u in (
            ("refused", cfg.submit_refused, u_submit[0]),
            ("error", cfg.submit_error, u_submit[1]),
            ("timeout", cfg.submit_timeout, u_submit[2]),
        ):
            if p and u < p:
                self.stats.submit_faults[kind] += 1
                return {"refused": 422, "error": 500, "timeout": -1}[kind], {"detail": f"submission {kind}"}
        jid = self._job_id(provider, task_ref)
        job = FakeJob(jid, provider, task_ref, model, spec.category, webhook, time.time(), events, origin.rstrip("/"))
        if cancel_after_s is not None:
            job.deadline = self.sim_now() + cancel_after_s * self.speed  # the header is in wall seconds
        self.jobs[jid] = job
        self.by_ref[(provider, task_ref)] = jid
        self._spawn(self._run(job, rng))
        if self.flavor == "replicate" and webhook and "start" in events:
            self._deliver(job, self._body(job, "starting"), 0.0, "start")
        return 200, job

    def _job_id(self, provider: str, task_ref: str) -> str:
        rng = self.streams.keyed(f"id:{provider}", task_ref)
        if self.flavor == "fal":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        alphabet = "abcdefghijklmnopqrstuvwxyz234567"
        return "".join(rng.choice(alphabet) for _ in range(26))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: FakeJob, rng: Any) -> None:
        cfg = self.cfg(job.provider)
        u_gen = rng.random()
        gen_s = cfg.gen_range(job.category).draw(u_gen)
        u_outcome = [rng.random() for _ in range(5)]
        cb = {k: rng.random() for k in ("early", "lost", "duplicate", "reorder", "forged", "stale", "malformed")}
        early_at = rng.uniform(0.2, 0.8)
        delays = [cfg.callback_delay_s.draw(rng.random()) for _ in range(4)]
        slots = self.slots.setdefault(job.provider, asyncio.Semaphore(cfg.capacity))
        async with slots:
            if job.state == "canceled":
                return
            if job.deadline is not None and self.sim_now() >= job.deadline:
                job.state, job.ended = "aborted", self.sim_now()  # its deadline passed in the queue: never ran
                return
            job.state, job.started = "running", self.sim_now()
            hooks = job.webhook is not None
            # a progress report overtaken by the final one: "processing" when output or logs events
            # were asked for, else the start event; none when the filter asks for neither
            late = (
                "processing" if {"output", "logs"} & set(job.events) else "starting" if "start" in job.events else None
            )
            if hooks and self.flavor == "replicate" and late and cfg.reorder and cb["reorder"] < cfg.reorder:
                self._deliver(job, self._body(job, late), gen_s + delays[3] + 5.0, "progress")
            if hooks and cfg.early and cb["early"] < cfg.early:
                self._deliver(job, self._early_body(job), gen_s * early_at, "early", only_if_running=True)
            run_for = gen_s if job.deadline is None else min(gen_s, job.deadline - job.started)
            await self.sleep_sim(run_for)
            if job.state == "running" and run_for < gen_s:
                job.state, job.ended = "canceled", self.sim_now()  # its deadline passed while it ran
        if job.state == "canceled":
            return
        job.ended = self.sim_now()
        self._decide(job, u_outcome)
        self.stats.outcomes[job.state if job.error is None else job.error[0]] += 1
        if job.state == "lost" or not job.webhook:
            return
        final = self._final_body(job)
        if cb["lost"] < cfg.lost:
            self.stats.dropped["final"] += 1
        elif cb["stale"] < cfg.stale:
            self._deliver(job, final, delays[0], "stale", ts_offset=-STALE_EXTRA_S)
        else:
            msg = self._next_msg()
            self._deliver(job, final, delays[0], "final", msg_id=msg)
            if cb["duplicate"] < cfg.duplicate:
                self._deliver(job, final, delays[0] + delays[1], "duplicate", msg_id=msg)
        if cb["forged"] < cfg.forged:
            self._deliver(job, self._forged_body(job), delays[2], "forged", forged=True)
        if cb["malformed"] < cfg.malformed:
            bad = b'{"status": "succeeded", "output": ' if self.flavor == "replicate" else b'{"status": "OK"}'
            self._deliver(job, bad, delays[2], "malformed")

    def _decide(self, job: FakeJob, u: list[float]) -> None:
        cfg = self.cfg(job.provider)
        outage = self._outage(job.provider)
        job.state, job.error, with_urls = drawn_outcome(cfg, outage, u)
        if with_urls:
            ext = OUTPUT_EXT.get(job.category, "bin")
            # served by the fake itself (GET /outputs/...), so a deployment can copy it into its result store
            job.urls = (
                f"{job.origin}/outputs/{job.id}.{ext}"
                if job.origin
                else f"https://cdn.{job.provider}.example/{job.id}.{ext}",
            )

    def _cancel(self, job: FakeJob) -> None:
        """Stop a job now: it bills no more and sends nothing more (its run loop sees the state)."""
        self.stats.cancels[job.state] += 1
        job.state = "canceled"
        job.ended = self.sim_now() if job.started is not None else None

    # --- what the API says about a job --------------------------------------------------

    def prediction(self, job: FakeJob, status: str | None = None, output: Any = ...) -> dict[str, Any]:
        """A Replicate prediction object for the job (as it is, or as `status` says)."""
        status = status or {"queued": "starting", "running": "processing", "lost": "processing"}.get(
            job.state, job.state
        )
        error = None
        if status == "failed" and job.error:
            error = {
                "content_policy_violation": "NSFW content detected in the input (safety checker)",
                "model_error": "CUDA error: the model crashed while generating",
            }.get(job.error[0], job.error[1])
        if status == "failed" and job.error and job.error[0] == UPSTREAM_TIMEOUT[0]:
            status = "aborted"  # terminated upstream before a result: not billed upstream
        if output is ...:
            output = list(job.urls) or None if status == "succeeded" else None
        base = f"/v1/predictions/{job.id}"
        run_s = job.run_s()
        return {
            "id": job.id,
            "model": f"{job.provider}/{job.model}",
            "version": version_id(job.model),
            "status": status,
            "input": {"prompt": "(kept private)"},
            "output": output,
            "error": error,
            "logs": None,
            "metrics": {} if run_s is None else {"predict_time": run_s},
            "webhook": job.webhook,
            "webhook_events_filter": list(job.events),
            "urls": {"get": base, "cancel": base + "/cancel"},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created)),
        }

    def fal_error(self, job: FakeJob) -> tuple[int, dict[str, Any]]:
        """A failed job's error as fal structures it: a model error's typed `detail` list (422),
        or a request error's `detail` + `error_type` (504 for a timeout)."""
        code, message = (job.error[0], job.error[1]) if job.error else ("model_error", "the request failed")
        if code == UPSTREAM_TIMEOUT[0]:
            return 504, {"detail": "Request timed out", "error_type": "request_timeout"}
        kind = FAL_ERROR_TYPES.get(code, "internal_server_error")
        return 422, {
            "detail": [
                {
                    "loc": ["body", "prompt"] if kind == "content_policy_violation" else ["body"],
                    "msg": message,
                    "type": kind,
                }
            ]
        }

    def fal_result(self, job: FakeJob) -> tuple[int, Any]:
        if job.state == "failed":  # the trap: COMPLETED, then the result fetch answers an error
            return self.fal_error(job)
        if job.state == "succeeded" and not job.urls:
            return 200, None  # the other trap: success with a null payload
        kind = {"image": "images", "video": "video", "audio": "audio"}.get(job.category, "images")
        files = [{"url": u, "content_type": "application/octet-stream"} for u in job.urls]
        return 200, {kind: files if kind == "images" else files[0], "seed": 42}

    def _body(self, job: FakeJob, status: str) -> bytes:
        return _json(self.prediction(job, status))

    def _early_body(self, job: FakeJob) -> bytes:
        if self.flavor == "replicate":
            return _json(self.prediction(job, "succeeded", output=None))
        return _json(
            {
                "request_id": job.id,
                "gateway_request_id": job.id,
                "status": "OK",
                "payload": None,
                "payload_error": "the result is not ready",
            }
        )

    def _final_body(self, job: FakeJob) -> bytes:
        if self.flavor == "replicate":
            return self._body(job, None if job.state != "succeeded" else "succeeded")
        if job.state == "failed":
            status, payload = self.fal_error(job)
            return _json(
                {
                    "request_id": job.id,
                    "gateway_request_id": job.id,
                    "status": "ERROR",
                    "error": f"Invalid status code: {status}",
                    "payload": payload,
                }
            )
        _status, payload = self.fal_result(job)
        doc: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id, "status": "OK", "payload": payload}
        if payload is None:
            doc["payload_error"] = "payload could not be serialised"
        return _json(doc)

    def _forged_body(self, job: FakeJob) -> bytes:
        evil = f"https://evil.example/{job.id}.png"
        if self.flavor == "replicate":
            return _json(self.prediction(job, "succeeded", output=[evil]))
        return _json({"request_id": job.id, "status": "OK", "payload": {"images": [{"url": evil}]}})

    # --- webhooks ----------------------------------------------------------------------------

    def _next_msg(self) -> str:
        self._msg += 1
        return f"msg_{self._msg:08d}"

    def _deliver(
        self,
        job: FakeJob,
        body: bytes,
        delay_s: float,
        kind: str,
        *,
        msg_id: str | None = None,
        ts_offset: float = 0.0,
        forged: bool = False,
        only_if_running: bool = False,
    ) -> None:
        job.pending += 1
        self._spawn(
            self._send(job, body, delay_s, kind, msg_id or self._next_msg(), ts_offset, forged, only_if_running)
        )

    async def _send(
        self,
        job: FakeJob,
        body: bytes,
        delay_s: float,
        kind: str,
        msg_id: str,
        ts_offset: float,
        forged: bool,
        only_if_running: bool,
    ) -> None:
        try:
            await self.sleep_sim(delay_s)
            if only_if_running and job.state not in ("queued", "running"):
                return
            self.stats.sent[kind] += 1
            for pause in [*self.pauses(), None]:
                await self._until_up()
                ts = int(time.time() + ts_offset)
                if self.flavor == "replicate":
                    secret = self.keys.forger_secret if forged else self.keys.secrets[job.provider]
                    headers = webhooks.signed_headers(secret, msg_id, ts, body)
                else:
                    seed = self.keys.forger_seed if forged else self.keys.seeds[job.provider]
                    headers = webhooks.ed25519_headers(seed, job.id, FAL_USER, ts, body)
                headers["content-type"] = "application/json"
                sent = time.monotonic()
                try:
                    resp = await self._client().post(str(job.webhook), content=body, headers=headers)
                    status = resp.status_code
                except httpx.HTTPError:
                    status = 0  # no answer
                self._answered(kind, sent, status)
                if 0 < status < 500:
                    return  # a 2xx or 4xx answer ends a delivery
                if pause is not None:
                    await asyncio.sleep(pause)
            self.stats.dropped[f"{kind}_undeliverable"] += 1
            self._gave_up(kind)
        finally:
            job.pending -= 1

    # the delivery's retry policy and what is noted of it (simulations.faults overrides these)

    def pauses(self) -> list[float]:
        """Wall seconds before each retry of a delivery answered 5xx or not at all."""
        return [0.2 * (i + 1) for i in range(DELIVERY_ATTEMPTS - 1)]

    async def _until_up(self) -> None:
        """Before each attempt: wait while the provider is down (never, here)."""

    def _answered(self, kind: str, sent: float, status: int) -> None:
        """One attempt's answer (0: none), `sent` on the monotonic clock."""

    def _gave_up(self, kind: str) -> None:
        """A delivery dropped after its last attempt."""

    def _model_of_version(self, version: Any) -> str:
        """The catalogue model a `version` names: a 64-hex version id (version_id), `owner/name`,
        `owner/name:version`, or a bare catalogue model id; "" when it names none."""
        if not isinstance(version, str) or not version:
            return ""
        name, _sep, vid = version.partition(":")
        model = name.rsplit("/", 1)[-1]
        if not _sep and len(name) == 64 and "/" not in name:
            return next((m for m in self.catalog.ids() if version_id(m) == name), "")
        if vid and vid != version_id(model):
            return ""
        return model

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=32))
        return self._http

    # --- the HTTP API ---------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        want = f"Bearer {TOKEN}" if self.flavor == "replicate" else f"Key {TOKEN}"
        return request.headers.get("authorization") == want

    async def _submit_answer(self, status: int, got: Any, origin: str = "") -> Response:
        if status == -1:  # a stall past the caller's timeout: no job was made
            await asyncio.sleep(self.stall_s)
            return JSONResponse({"detail": "timed out"}, status_code=504)
        if status == 429:
            return JSONResponse(got, status_code=429, headers={"Retry-After": str(got["retry_after"])})
        if status != 200:
            return JSONResponse(got, status_code=status)
        job = got
        if self.flavor == "replicate":
            return JSONResponse(self.prediction(job), status_code=201)
        base = f"{origin.rstrip('/')}/rivya/{job.provider}/requests/{job.id}"
        return JSONResponse(
            {
                "request_id": job.id,
                "gateway_request_id": job.id,
                "status_url": base + "/status",
                "response_url": base,
                "cancel_url": base + "/cancel",
                "queue_position": 0,
            }
        )

    def _app(self) -> Starlette:
        def unauthorized() -> JSONResponse:
            return JSONResponse({"detail": "Unauthenticated"}, status_code=401)

        async def body_json(request: Request) -> Any:
            try:
                return json.loads(await request.body())
            except ValueError:
                return None

        async def rep_create(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            doc = await body_json(request)
            if not isinstance(doc, dict) or not isinstance(doc.get("input"), dict):
                return JSONResponse({"detail": "input is required"}, status_code=422)
            events = doc.get("webhook_events_filter", list(DEFAULT_EVENTS))
            if not isinstance(events, list) or not events or not set(events) <= set(REPLICATE_EVENTS):
                return JSONResponse(
                    {"detail": "webhook_events_filter must list start, output, logs, completed"}, status_code=422
                )
            p = request.path_params
            model = p.get("name") or self._model_of_version(doc.get("version"))
            spec = self.catalog.get(model)
            deadline = parse_cancel_after(request.headers.get("cancel-after"))
            if deadline == -1.0:
                return JSONResponse({"detail": "Cancel-After is not a duration such as 30s, 5m or 1h"}, status_code=422)
            status, got = self._create(
                spec.provider if spec else "",
                model,
                doc.get("webhook"),
                tuple(e for e in REPLICATE_EVENTS if e in events),
                str(request.base_url),
                deadline,
            )
            return await self._submit_answer(status, got)

        async def rep_secret(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            # one account-wide secret, as Replicate has: the fake signs every provider with its own,
            # so it answers with the secret of the provider named in `?provider=` (default: the first)
            name = request.query_params.get("provider") or self.provider_names[0]
            if name not in self.keys.secrets:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            return JSONResponse({"key": self.keys.secrets[name]})

        async def fal_jwks(_request: Request) -> Response:
            keys = [
                {"kty": "OKP", "crv": "Ed25519", "kid": name, "use": "sig", "x": self.keys.public_key(name)}
                for name in self.provider_names
            ]
            return JSONResponse({"keys": keys})

        async def rep_get(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            job = self.jobs.get(request.path_params["id"])
            if job is None or job.state == "lost":
                return JSONResponse({"detail": "Not found."}, status_code=404)
            return JSONResponse(self.prediction(job))

        async def rep_cancel(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            job = self.jobs.get(request.path_params["id"])
            if job is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            if job.state in ("queued", "running"):
                self._cancel(job)
            return JSONResponse(self.prediction(job))

        async def fal_submit(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            p = request.path_params
            doc = await body_json(request)
            if not isinstance(doc, dict):
                return JSONResponse({"detail": [{"msg": "body must be an object"}]}, status_code=422)
            status, got = self._create(
                p["app"], p["model"], request.query_params.get("fal_webhook"), origin=str(request.base_url)
            )
            return await self._submit_answer(status, got, str(request.base_url))

        def fal_job(request: Request) -> FakeJob | None:
            job = self.jobs.get(request.path_params["id"])
            return job if job is not None and job.provider == request.path_params["app"] else None

        async def fal_status(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            job = fal_job(request)
            if job is None:
                return JSONResponse({"detail": "Request not found"}, status_code=404)
            state = {"queued": "IN_QUEUE", "running": "IN_PROGRESS", "lost": "IN_PROGRESS"}.get(job.state, "COMPLETED")
            base = f"{str(request.base_url).rstrip('/')}/rivya/{job.provider}/requests/{job.id}"
            metrics = {"inference_time": job.run_s()} if state == "COMPLETED" and job.run_s() is not None else {}
            return JSONResponse(
                {
                    "status": state,
                    "request_id": job.id,
                    "response_url": base,
                    "status_url": base + "/status",
                    "cancel_url": base + "/cancel",
                    "queue_position": 0 if state == "IN_QUEUE" else None,
                    "logs": None,
                    "metrics": metrics,
                },
                status_code=202 if state != "COMPLETED" else 200,
            )

        async def fal_result(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            job = fal_job(request)
            if job is None:
                return JSONResponse({"detail": "Request not found"}, status_code=404)
            if job.state in ("queued", "running", "lost"):
                return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
            if job.state in ("canceled", "aborted"):
                return JSONResponse({"detail": "Request was cancelled"}, status_code=400)
            status, payload = self.fal_result(job)
            headers = (
                {"X-Fal-Error-Type": payload["error_type"]}
                if isinstance(payload, dict) and payload.get("error_type")
                else None
            )
            return Response(_json(payload), status_code=status, media_type="application/json", headers=headers)

        async def fal_cancel(request: Request) -> Response:
            if not self._authorized(request):
                return unauthorized()
            job = fal_job(request)
            if job is None:
                return JSONResponse({"detail": "Request not found"}, status_code=404)
            if job.state in ("queued", "running"):
                self._cancel(job)
                return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

        async def output(request: Request) -> Response:
            jid, _dot, ext = request.path_params["name"].partition(".")
            job = self.jobs.get(jid)
            if job is None or job.state != "succeeded" or not job.urls or OUTPUT_TYPES.get(ext) is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            return Response(output_bytes(job.id), media_type=OUTPUT_TYPES[ext])

        async def health(_request: Request) -> Response:
            return JSONResponse({"ok": True, "flavor": self.flavor, "jobs": len(self.jobs), "quiet": self.quiet()})

        if self.flavor == "replicate":
            routes = [
                Route(REPLICATE_SECRET_PATH, rep_secret, methods=["GET"]),
                Route("/v1/models/{owner}/{name}/predictions", rep_create, methods=["POST"]),
                Route("/v1/models/{name}/predictions", rep_create, methods=["POST"]),
                Route("/v1/predictions", rep_create, methods=["POST"]),
                Route("/v1/predictions/{id}", rep_get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", rep_cancel, methods=["POST"]),
            ]
        else:
            routes = [
                Route(FAL_JWKS_PATH, fal_jwks, methods=["GET"]),
                Route("/rivya/{app}/requests/{id}/status", fal_status, methods=["GET"]),
                Route("/rivya/{app}/requests/{id}/cancel", fal_cancel, methods=["PUT"]),
                Route("/rivya/{app}/requests/{id}", fal_result, methods=["GET"]),
                Route("/rivya/{app}/{model}", fal_submit, methods=["POST"]),
            ]
        return Starlette(
            routes=[
                Route("/healthz", health, methods=["GET"]),
                Route("/outputs/{name}", output, methods=["GET"]),
                *routes,
            ]
        )


def parse_cancel_after(value: str | None) -> float | None:
    """A Cancel-After header's seconds (`90s`, `5m`, `1h`, `1h30m`); None when absent, -1.0 when
    it is not such a duration."""
    if value is None:
        return None
    text = value.strip()
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or parts is None:
        return -1.0
    h, m, sec = parts.groups()
    return int(h or 0) * 3600.0 + int(m or 0) * 60.0 + float(sec or 0)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
