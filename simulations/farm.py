"""The mock provider farm: one simulated provider per catalogue provider.

Each MockProvider implements rivya_core.ports.Provider on a SimPy clock: a
`simpy.Resource` of `capacity` slots (a queue forms beyond it), a generation
time per category, submission faults raised as ProviderError, outcome faults
with realistic error codes and classes, and callbacks sent as real signed
Standard Webhooks requests (headers + raw JSON bytes) through a delivery
`simpy.Store`, the way SimPy's examples model network latency. `status()`
answers only what the provider knows at that simulated moment.

Every draw about one job comes from one Random keyed by (provider, task_ref),
in a fixed order and number whatever the scenario configures (JOB_DRAWS), so a
job's latency and faults do not depend on how many jobs came before it, nor on
which faults are switched on.

With `record_jobs` on (the runner turns it on), the farm remembers which jobs
changed (submitted, started, finished) and `job_rows()` hands them to the
batch writer as `upstream_job` rows: the provider's own knowledge, persisted
in the same transactions as the tasks, so a recorded provider can answer for
the farm once the run is over (simulations/recorded.py).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from rivya_core import webhooks
from rivya_core.ports import ProviderError, UpstreamStatus
from rivya_core.stores import jsontext

from .clock import SimClock
from .scenarios import Outage, ProviderConfig
from .streams import Streams

STALE_EXTRA_S = 420.0  # a stale delivery arrives this long after it was signed
# A job's draws, in order: 3 submit faults (refused, error, timeout), the generation
# time, 5 outcome faults, 7 callback faults, the early callback's moment, 4 delays.
JOB_DRAWS = (("submit", 3), ("latency", 1), ("outcome", 5), ("callback", 7), ("early_at", 1), ("delays", 4))

CONTENT_POLICY = ("content_policy_violation", "The prompt or reference was refused by the provider's content policy.", "user")
MODEL_ERROR = ("model_error", "The model failed while generating (internal error).", "provider")
UPSTREAM_TIMEOUT = ("upstream_timeout", "The provider timed out while generating.", "infrastructure")
OUTAGE_FAILURE = ("service_unavailable", "The provider is unavailable (outage).", "provider")


def drawn_outcome(cfg: Any, outage: Any, u: list[float]) -> tuple[str, tuple[str, str, str] | None, bool]:
    """What a provider job ends as, from its config, the outage in force (or None) and five uniform
    draws: (state "succeeded" | "failed" | "lost", error or None, whether it carries result URLs).
    The in-process farm and the farm served over HTTP both decide with it."""
    if outage is not None and outage.mode == "fail":
        return "failed", OUTAGE_FAILURE, False
    if (outage is not None and outage.mode == "hang") or u[0] < cfg.lost_job:
        return "lost", None, False
    if u[1] < cfg.content_policy:
        return "failed", CONTENT_POLICY, False
    if u[2] < cfg.model_error:
        return "failed", MODEL_ERROR, False
    if u[3] < cfg.upstream_timeout:
        return "failed", UPSTREAM_TIMEOUT, False
    return "succeeded", None, u[4] >= cfg.no_urls


@dataclass
class Job:
    upstream_id: str
    task_ref: str
    model: str
    category: str
    submitted_at: float
    state: str = "queued"          # queued | running | succeeded | failed | lost
    done_at: float | None = None
    result_urls: tuple[str, ...] = ()
    error: tuple[str, str, str] | None = None
    pending_deliveries: int = 0
    lose_next: int = 0             # scripted: drop the next N callbacks
    provider: str = ""
    started_at: float | None = None
    recorded: bool = False         # an upstream_job row exists (later writes update it)
    last_sent: tuple[str, Any] | None = None  # (message id, body) of the latest callback: scripted repeats
    rng: random.Random | None = field(default=None, repr=False, compare=False)  # past its submit draws


@dataclass
class Delivery:
    provider: str
    headers: dict[str, str]
    body: bytes
    kind: str                      # final, early, duplicate, progress, forged, stale, malformed
    job: Job | None = None


@dataclass
class FarmStats:
    sent: Counter = field(default_factory=Counter)     # deliveries by kind
    dropped: Counter = field(default_factory=Counter)  # lost callbacks
    submit_faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)


class MockProvider:
    """One upstream service. `category_of(model)` maps a model id to its category."""

    def __init__(self, name: str, env: simpy.Environment, clock: SimClock, cfg: ProviderConfig, streams: Streams,
                 secret: str, category_of: Callable[[str], str], farm: Farm):
        self.name = name
        self.env = env
        self.clock = clock
        self.cfg = cfg
        self.streams = streams
        self.secret = secret
        self.category_of = category_of
        self.farm = farm
        self.slots = simpy.Resource(env, capacity=cfg.capacity)
        self.jobs: dict[str, Job] = {}
        self.by_ref: dict[str, str] = {}
        self.outages: list[Outage] = []
        self._n = 0
        self._msg = 0
        self.scripted: dict[str, dict[str, Any]] = {}   # task_ref -> forced outcome/gen_s

    # --- the Provider port -----------------------------------------------------------

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        if task_ref in self.by_ref:
            return self.by_ref[task_ref]
        fault = self.scripted.get(task_ref, {}).get("submit_fault")
        if fault:
            self.farm.stats.submit_faults[fault] += 1
            raise ProviderError(fault, f"{self.name}: submission {fault}")
        outage = self._outage()
        if outage is not None and outage.mode in ("submit_error", "submit_refused"):
            kind = outage.mode.removeprefix("submit_")
            self.farm.stats.submit_faults[kind] += 1
            raise ProviderError(kind, f"{self.name}: upstream unavailable ({kind})")
        rng = self._job_rng(task_ref)
        u_submit = [rng.random() for _ in range(3)]
        for kind, p, u in (("refused", self.cfg.submit_refused, u_submit[0]),
                           ("error", self.cfg.submit_error, u_submit[1]),
                           ("timeout", self.cfg.submit_timeout, u_submit[2])):
            if p and u < p:
                self.farm.stats.submit_faults[kind] += 1
                raise ProviderError(kind, f"{self.name}: submission {kind}")
        self._n += 1
        upstream_id = f"{self.name}-{self._n:08d}"
        job = Job(upstream_id, task_ref, model, self.category_of(model), self.env.now, provider=self.name,
                  rng=rng)
        self.jobs[upstream_id] = job
        self.by_ref[task_ref] = upstream_id
        self.farm.touch(job)
        self.env.process(self._run(job))
        return upstream_id

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        job = self.jobs.get(upstream_task_id)
        if job is None or job.state == "lost":
            return UpstreamStatus("unknown")
        if job.state == "succeeded":
            return UpstreamStatus("succeeded", job.result_urls)
        if job.state == "failed":
            code, msg, cls = job.error or MODEL_ERROR
            return UpstreamStatus("failed", error_code=code, error_message=msg, failure_class=cls)
        return UpstreamStatus(job.state)

    def find(self, task_ref: str) -> str | None:
        return self.by_ref.get(task_ref)

    # --- a job's life ------------------------------------------------------------------

    def _outage(self) -> Outage | None:
        now = self.env.now
        for o in self.outages:
            if o.start_s <= now < o.end_s:
                return o
        return None

    def _job_rng(self, task_ref: str) -> random.Random:
        """The one Random of a job (JOB_DRAWS): one keyed seed per job, not one per purpose."""
        return self.streams.keyed(f"job:{self.name}", task_ref)

    def _run(self, job: Job):
        cfg = self.cfg
        rng, job.rng = job.rng, None
        if rng is None:  # a job made without submit(): skip the submit draws
            rng = self._job_rng(job.task_ref)
            for _ in range(3):
                rng.random()
        forced = self.scripted.get(job.task_ref, {})
        # every draw is made up front, in a fixed order, whatever the outcome
        u_gen = rng.random()
        gen_s = forced.get("gen_s") or cfg.gen_range(job.category).draw(u_gen)
        u_outcome = [rng.random() for _ in range(5)]
        cb_u = {k: rng.random() for k in ("early", "lost", "duplicate", "reorder", "forged", "stale", "malformed")}
        early_at = rng.uniform(0.2, 0.8)
        delays = [cfg.callback_delay_s.draw(rng.random()) for _ in range(4)]
        if forced.get("queue_s"):
            yield self.env.timeout(forced["queue_s"])
        with self.slots.request() as req:
            yield req
            job.state = "running"
            start = job.started_at = self.env.now
            self.farm.touch(job)
            if self.farm.callbacks_enabled and cfg.reorder and cb_u["reorder"] < cfg.reorder:
                # a progress callback that is overtaken by the final one
                self._send(job, self._next_msg(), self._body(job, "task.progress", "running"),
                           delay=gen_s + delays[3] + 5.0, kind="progress")
            if self.farm.callbacks_enabled and cfg.early and cb_u["early"] < cfg.early:
                self.env.process(self._early(job, gen_s * early_at))
            yield self.env.timeout(gen_s)
        self._decide(job, u_outcome, forced)
        job.done_at = self.env.now
        self.farm.touch(job)
        self.farm.stats.outcomes[job.state if job.error is None else job.error[0]] += 1
        if job.state == "lost" or not self.farm.callbacks_enabled or forced.get("auto_callbacks") is False:
            return
        ok = job.state == "succeeded"
        body = self._body(job, "task.succeeded" if ok else "task.failed", job.state)
        if cb_u["lost"] < cfg.lost or job.lose_next > 0:
            job.lose_next = max(0, job.lose_next - 1)
            self.farm.stats.dropped["final"] += 1
        elif cb_u["stale"] < cfg.stale:
            self._send(job, self._next_msg(), body, delay=delays[0] + STALE_EXTRA_S, kind="stale")
        else:
            msg = self._next_msg()
            self._send(job, msg, body, delay=delays[0], kind="final")
            if cb_u["duplicate"] < cfg.duplicate:
                self._send(job, msg, body, delay=delays[0] + delays[1], kind="duplicate")
        if cb_u["forged"] < cfg.forged:
            fake = self._body(job, "task.succeeded", "succeeded", urls=(f"https://evil.example/{job.upstream_id}.png",))
            self._send(job, self._next_msg(), fake, delay=delays[2], kind="forged", secret=self.farm.forger_secret)
        if cb_u["malformed"] < cfg.malformed:
            bad = (b'{"type": "task.succeeded", "data": ' if start % 2 else b'{"type": "task.succeeded"}')
            self._send(job, self._next_msg(), bad, delay=delays[2], kind="malformed", raw=True)

    def _decide(self, job: Job, u: list[float], forced: dict[str, Any]) -> None:
        cfg = self.cfg
        outage = self._outage()
        if forced.get("outcome") == "succeeded":
            job.state, job.result_urls = "succeeded", self._urls(job)
        elif forced.get("outcome") == "failed":
            job.state, job.error = "failed", forced.get("error") or MODEL_ERROR
        elif forced.get("outcome") == "lost":
            job.state = "lost"
        elif forced.get("outcome") == "no_urls":
            job.state, job.result_urls = "succeeded", ()
        else:
            job.state, job.error, with_urls = drawn_outcome(cfg, outage, u)
            job.result_urls = self._urls(job) if with_urls else ()

    def _urls(self, job: Job) -> tuple[str, ...]:
        ext = {"image": "png", "video": "mp4", "audio": "mp3"}.get(job.category, "bin")
        return (f"https://cdn.{self.name}.example/{job.upstream_id}.{ext}",)

    def _early(self, job: Job, after_s: float):
        yield self.env.timeout(after_s)
        if job.state in ("queued", "running"):
            self._send(job, self._next_msg(), self._body(job, "task.succeeded", "succeeded", urls=()),
                       delay=0.0, kind="early")

    def send_early_now(self, job: Job) -> None:
        """Scripted: an early 'succeeded' callback without URLs, right now."""
        self._send(job, self._next_msg(), self._body(job, "task.succeeded", "succeeded", urls=()), 0.0, "early")

    def send_progress_now(self, job: Job) -> None:
        """Scripted: a 'running' progress callback, right now."""
        self._send(job, self._next_msg(), self._body(job, "task.progress", "running"), 0.0, "progress")

    def send_repeat_now(self, job: Job) -> None:
        """Scripted: the latest callback again, same webhook id and body (a duplicate delivery)."""
        if job.last_sent is None:
            self.send_final_now(job)
            return
        msg_id, body = job.last_sent
        self._send(job, msg_id, body, 0.0, "duplicate")

    def send_final_now(self, job: Job) -> None:
        ok = job.state == "succeeded"
        self._send(job, self._next_msg(), self._body(job, "task.succeeded" if ok else "task.failed", job.state),
                   0.0, "final")

    # --- callbacks -----------------------------------------------------------------------

    def _next_msg(self) -> str:
        self._msg += 1
        return f"msg_{self.name}_{self._msg:08d}"

    def _body(self, job: Job, type_: str, state: str, urls: tuple[str, ...] | None = None) -> dict[str, Any]:
        err = job.error if state == "failed" else None
        return {"type": type_, "data": {
            "upstream_task_id": job.upstream_id, "state": state,
            "result_urls": list(job.result_urls if urls is None else urls),
            "error_code": err[0] if err else None, "error_message": err[1] if err else None,
            "failure_class": err[2] if err else None}}

    def _send(self, job: Job, msg_id: str, body: Any, delay: float, kind: str, *,
              secret: str | None = None, raw: bool = False) -> None:
        data = body if raw else jsontext.compact(body).encode()
        if kind in ("final", "early", "progress"):
            job.last_sent = (msg_id, body)
        ts = self.clock.timestamp()
        headers = webhooks.signed_headers(secret or self.secret, msg_id, ts, data)
        job.pending_deliveries += 1
        self.farm.stats.sent[kind] += 1
        self.env.process(self.farm.network(Delivery(self.name, headers, data, kind, job), delay))


class Farm:
    """All providers plus the delivery Store and the process that hands each
    arriving callback to `deliver(provider, headers, body)` (the service)."""

    def __init__(self, env: simpy.Environment, clock: SimClock, streams: Streams, provider_names: list[str],
                 config_for: Callable[[str], ProviderConfig], category_of: Callable[[str], str],
                 callbacks_enabled: bool, outages: tuple[Outage, ...] = ()):
        self.env = env
        self.clock = clock
        self.callbacks_enabled = callbacks_enabled
        self.record_jobs = False
        self._changed: dict[str, Job] = {}   # jobs changed since the last job_rows(), in order
        self.stats = FarmStats()
        self.inbox = simpy.Store(env)
        self.deliver: Callable[[str, dict[str, str], bytes], Any] | None = None
        secrets_rng = streams.get("secrets")
        self.forger_secret = webhooks.generate_secret(streams.get("forger"))  # a key no provider holds
        self.providers: dict[str, MockProvider] = {}
        for name in sorted(provider_names):
            secret = webhooks.generate_secret(secrets_rng)
            self.providers[name] = MockProvider(name, env, clock, config_for(name), streams, secret, category_of, self)
        for o in outages:
            if o.provider in self.providers:
                self.providers[o.provider].outages.append(o)
        env.process(self._dispatch())

    @property
    def secrets(self) -> dict[str, list[str]]:
        return {name: [p.secret] for name, p in self.providers.items()}

    def network(self, delivery: Delivery, delay: float):
        yield self.env.timeout(delay)
        yield self.inbox.put(delivery)

    def _dispatch(self):
        while True:
            d = yield self.inbox.get()
            if self.deliver:
                self.deliver(d.provider, d.headers, d.body)
            if d.job is not None:
                d.job.pending_deliveries -= 1

    def touch(self, job: Job) -> None:
        if self.record_jobs:
            self._changed[job.upstream_id] = job

    def job_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """upstream_job rows of the jobs changed since the last call: (new, changed)."""
        new: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        for job in self._changed.values():
            (changed if job.recorded else new).append(self._job_row(job))
            job.recorded = True
        self._changed.clear()
        return new, changed

    def _job_row(self, job: Job) -> dict[str, Any]:
        code, message, klass = (job.error or MODEL_ERROR) if job.state == "failed" else (None, None, None)
        at = self.clock.at
        return {"provider": job.provider, "upstream_task_id": job.upstream_id, "task_ref": job.task_ref,
                "model": job.model, "state": job.state, "result_urls": list(job.result_urls) or None,
                "error_code": code, "error_message": message, "failure_class": klass,
                "submitted_at": at(job.submitted_at),
                "started_at": None if job.started_at is None else at(job.started_at),
                "done_at": None if job.done_at is None else at(job.done_at)}

    def job_for_ref(self, task_ref: str) -> Job | None:
        for p in self.providers.values():
            uid = p.by_ref.get(task_ref)
            if uid is not None:
                return p.jobs[uid]
        return None

    def quiet(self, provider: str, upstream_id: str | None) -> bool:
        """True when the provider will send nothing more about this job."""
        if upstream_id is None:
            return True
        job = self.providers[provider].jobs.get(upstream_id) if provider in self.providers else None
        return job is None or (job.done_at is not None and job.pending_deliveries == 0
                               and job.state != "running")

    def forget(self, provider: str, upstream_id: str) -> None:
        p = self.providers.get(provider)
        if p is None:
            return
        job = p.jobs.pop(upstream_id, None)
        if job is not None:
            p.by_ref.pop(job.task_ref, None)
