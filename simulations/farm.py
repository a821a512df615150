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

Billing (rivya_core.cost): each job is billed the seconds it ran (`billed_s`), successes and
failures alike. A job we cancel (`cancel()`, the service's upstream cancel) stops at once, sends
nothing more and is billed the seconds it ran (none when it was still queued); a job whose
`Cancel-After` deadline passes (`deadline_for`, set by the runner from the policy's timeout when
the policy cancels upstream) is aborted unbilled if it had not started, or stopped and billed up to
the deadline. A lost job is a hung one: it bills on until it is canceled, reaches its deadline or
the provider's own run limit (PROVIDER_MAX_RUN_S). `billing` sums, per model, the seconds and
outputs billed and what stopping jobs saved against letting them run. None of this draws from a
Random: the draws of a job are those of JOB_DRAWS, unchanged.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from rivya_core import webhooks
from rivya_core.ports import CancelAnswer, ProviderError, UpstreamCancel, UpstreamStatus
from rivya_core.stores import jsontext

from .clock import SimClock
from .scenarios import Outage, ProviderConfig
from .streams import Streams

STALE_EXTRA_S = 420.0  # a stale delivery arrives this long after it was signed
PROVIDER_MAX_RUN_S = 1800.0  # a provider stops a prediction after 30 minutes of running (Replicate's limit)
# A job's draws, in order: 3 submit faults (refused, error, timeout), the generation
# time, 5 outcome faults, 7 callback faults, the early callback's moment, 4 delays.
JOB_DRAWS = (("submit", 3), ("latency", 1), ("outcome", 5), ("callback", 7), ("early_at", 1), ("delays", 4))

CONTENT_POLICY = (
    "content_policy_violation",
    "The prompt or reference was refused by the provider's content policy.",
    "user",
)
MODEL_ERROR = ("model_error", "The model failed while generating (internal error).", "provider")
UPSTREAM_TIMEOUT = ("upstream_timeout", "The provider timed out while generating.", "infrastructure")
OUTAGE_FAILURE = ("service_unavailable", "The provider is unavailable (outage).", "provider")
CANCELED = ("upstream_canceled", "The job was canceled upstream.", "provider")
# A job that had hung (the provider lost it) and was then stopped: its record says so, so that
# calibration still counts it lost
HUNG_CANCELED = ("upstream_canceled", "The job hung and was canceled upstream.", "provider")
ABORTED = ("upstream_aborted", "The job reached its deadline before it ran.", "infrastructure")


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
    state: str = "queued"  # queued | running | succeeded | failed | lost
    done_at: float | None = None
    result_urls: tuple[str, ...] = ()
    error: tuple[str, str, str] | None = None
    pending_deliveries: int = 0
    lose_next: int = 0  # scripted: drop the next N callbacks
    provider: str = ""
    started_at: float | None = None
    recorded: bool = False  # an upstream_job row exists (later writes update it)
    last_sent: tuple[str, Any] | None = None  # (message id, body) of the latest callback: scripted repeats
    rng: random.Random | None = field(default=None, repr=False, compare=False)  # past its submit draws
    deadline: float | None = None  # Cancel-After: the simulated moment upstream stops the job
    gen_s: float = 0.0  # how long it would run
    canceled_at: float | None = None
    billed: bool = False  # its bill is in Farm.billing
    would_deliver: bool = False  # its drawn outcome delivers an output (what a per-output cancel saves)
    proc: Any = field(default=None, repr=False, compare=False)

    def run_s(self) -> float | None:
        """The seconds it ran, as the provider reports them once it has ended (Replicate's
        `metrics.predict_time`): None until then, 0 for a job that never left the queue."""
        end = self.done_at if self.done_at is not None else self.canceled_at
        if end is None or self.state not in ("succeeded", "failed"):
            return None
        return 0.0 if self.started_at is None else round(max(0.0, end - self.started_at), 3)


@dataclass
class Bill:
    """What a model's jobs were billed, and what stopping some of them saved."""

    jobs: int = 0
    run_s: float = 0.0
    outputs: int = 0
    canceled: int = 0  # stopped by our cancel or by their deadline
    saved_s: float = 0.0
    saved_outputs: int = 0


@dataclass
class Delivery:
    provider: str
    headers: dict[str, str]
    body: bytes
    kind: str  # final, early, duplicate, progress, forged, stale, malformed
    job: Job | None = None


@dataclass
class FarmStats:
    sent: Counter = field(default_factory=Counter)  # deliveries by kind
    dropped: Counter = field(default_factory=Counter)  # lost callbacks
    submit_faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    cancels: Counter = field(default_factory=Counter)  # cancel answers: canceled | already_finished | unknown


class MockProvider:
    """One upstream service. `category_of(model)` maps a model id to its category."""

    def __init__(
        self,
        name: str,
        env: simpy.Environment,
        clock: SimClock,
        cfg: ProviderConfig,
        streams: Streams,
        secret: str,
        category_of: Callable[[str], str],
        farm: Farm,
    ):
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
        self.scripted: dict[str, dict[str, Any]] = {}  # task_ref -> forced outcome/gen_s

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
        for kind, p, u in (
            ("refused", self.cfg.submit_refused, u_submit[0]),
            ("error", self.cfg.submit_error, u_submit[1]),
            ("timeout", self.cfg.submit_timeout, u_submit[2]),
        ):
            if p and u < p:
                self.farm.stats.submit_faults[kind] += 1
                raise ProviderError(kind, f"{self.name}: submission {kind}")
        self._n += 1
        upstream_id = f"{self.name}-{self._n:08d}"
        job = Job(upstream_id, task_ref, model, self.category_of(model), self.env.now, provider=self.name, rng=rng)
        if self.farm.deadline_for is not None:
            job.deadline = self.env.now + self.farm.deadline_for(job.category)
        self.jobs[upstream_id] = job
        self.by_ref[task_ref] = upstream_id
        self.farm.touch(job)
        job.proc = self.env.process(self._run(job))
        return upstream_id

    def cancel(self, upstream_task_id: str) -> UpstreamCancel:
        """Stop a job (the service gave up on it): a queued or running job stops now and sends
        nothing more; a hung (lost) job stops billing; a finished one is left as it is."""
        job = self.jobs.get(upstream_task_id)
        if job is None:
            self.farm.stats.cancels["unknown"] += 1
            return UpstreamCancel(CancelAnswer.UNKNOWN, "no such job")
        if job.state in ("queued", "running", "lost"):
            was = job.state
            self._stop(job, CANCELED, canceled=True)
            if job.proc is not None and job.proc.is_alive:
                job.proc.interrupt("canceled")
            self.farm.stats.cancels["canceled"] += 1
            return UpstreamCancel(CancelAnswer.CANCELED, f"was {was}")
        self.farm.stats.cancels["already_finished"] += 1
        return UpstreamCancel(CancelAnswer.ALREADY_FINISHED, f"already {job.state}")

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        job = self.jobs.get(upstream_task_id)
        if job is None or job.state == "lost":
            return UpstreamStatus("unknown")
        if job.state == "succeeded":
            return UpstreamStatus("succeeded", job.result_urls, run_s=job.run_s())
        if job.state == "failed":
            code, msg, cls = job.error or MODEL_ERROR
            return UpstreamStatus("failed", error_code=code, error_message=msg, failure_class=cls, run_s=job.run_s())
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
        job.gen_s = gen_s
        job.would_deliver = forced.get("outcome") == "succeeded" or (
            "outcome" not in forced and drawn_outcome(cfg, None, u_outcome)[2]
        )
        try:
            yield from self._work(job, gen_s, u_outcome, cb_u, early_at, delays, forced)
        except simpy.Interrupt:
            return  # canceled (cancel() stopped and billed it): nothing more is sent

    def _work(
        self,
        job: Job,
        gen_s: float,
        u_outcome: list[float],
        cb_u: dict[str, float],
        early_at: float,
        delays: list[float],
        forced: dict[str, Any],
    ):
        cfg = self.cfg
        if forced.get("queue_s"):
            yield self.env.timeout(forced["queue_s"])
        with self.slots.request() as req:
            yield req
            if job.deadline is not None and self.env.now >= job.deadline:
                self._stop(job, ABORTED)  # its deadline passed in the queue: aborted, never ran, not billed
                return
            job.state = "running"
            start = job.started_at = self.env.now
            self.farm.touch(job)
            if self.farm.callbacks_enabled and cfg.reorder and cb_u["reorder"] < cfg.reorder:
                # a progress callback that is overtaken by the final one
                self._send(
                    job,
                    self._next_msg(),
                    self._body(job, "task.progress", "running"),
                    delay=gen_s + delays[3] + 5.0,
                    kind="progress",
                )
            if self.farm.callbacks_enabled and cfg.early and cb_u["early"] < cfg.early:
                self.env.process(self._early(job, gen_s * early_at))
            if job.deadline is not None and start + gen_s > job.deadline:
                yield self.env.timeout(job.deadline - start)
                self._stop(job, CANCELED, canceled=True)  # its deadline passed while it ran: stopped, billed so far
                return
            yield self.env.timeout(gen_s)
        self._decide(job, u_outcome, forced)
        job.done_at = self.env.now
        self.farm.touch(job)
        self.farm.stats.outcomes[job.state if job.error is None else job.error[0]] += 1
        if job.state != "lost":  # a lost job hangs on, billing, until stopped (cancel, deadline, run limit)
            self.farm.bill(job, self.env.now)
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
            bad = b'{"type": "task.succeeded", "data": ' if start % 2 else b'{"type": "task.succeeded"}'
            self._send(job, self._next_msg(), bad, delay=delays[2], kind="malformed", raw=True)

    def _stop(self, job: Job, error: tuple[str, str, str], canceled: bool = False) -> None:
        """The job ends now, failed with `error`, billed the seconds it ran; nothing more is sent."""
        now = self.env.now
        hung = job.state == "lost"
        if hung and error == CANCELED:
            error = HUNG_CANCELED
        job.state, job.error, job.result_urls = "failed", error, ()
        if canceled:
            job.canceled_at = now
        if not hung:
            job.done_at = now
            self.farm.stats.outcomes[error[0]] += 1
        self.farm.touch(job)
        self.farm.bill(job, now, stopped=True, hung=hung)

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
            self._send(
                job, self._next_msg(), self._body(job, "task.succeeded", "succeeded", urls=()), delay=0.0, kind="early"
            )

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
        self._send(
            job, self._next_msg(), self._body(job, "task.succeeded" if ok else "task.failed", job.state), 0.0, "final"
        )

    # --- callbacks -----------------------------------------------------------------------

    def _next_msg(self) -> str:
        self._msg += 1
        return f"msg_{self.name}_{self._msg:08d}"

    def _body(self, job: Job, type_: str, state: str, urls: tuple[str, ...] | None = None) -> dict[str, Any]:
        err = job.error if state == "failed" else None
        data = {
            "upstream_task_id": job.upstream_id,
            "state": state,
            "result_urls": list(job.result_urls if urls is None else urls),
            "error_code": err[0] if err else None,
            "error_message": err[1] if err else None,
            "failure_class": err[2] if err else None,
        }
        if state == job.state and (run_s := job.run_s()) is not None:
            data["run_s"] = run_s  # a final answer says what the job is billed
        return {"type": type_, "data": data}

    def _send(
        self, job: Job, msg_id: str, body: Any, delay: float, kind: str, *, secret: str | None = None, raw: bool = False
    ) -> None:
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

    def __init__(
        self,
        env: simpy.Environment,
        clock: SimClock,
        streams: Streams,
        provider_names: list[str],
        config_for: Callable[[str], ProviderConfig],
        category_of: Callable[[str], str],
        callbacks_enabled: bool,
        outages: tuple[Outage, ...] = (),
    ):
        self.env = env
        self.clock = clock
        self.callbacks_enabled = callbacks_enabled
        self.record_jobs = False
        self._changed: dict[str, Job] = {}  # jobs changed since the last job_rows(), in order
        self.stats = FarmStats()
        self.billing: dict[str, Bill] = {}  # model -> what its jobs were billed
        # category -> seconds after submission at which upstream stops a job (Cancel-After); None: no deadline
        self.deadline_for: Callable[[str], float] | None = None
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

    def bill(self, job: Job, end: float, *, stopped: bool = False, hung: bool = False) -> None:
        """Add a job's bill, once: the seconds it ran until `end` (a hung job: at most to its
        deadline and the run limit). `stopped`: ended by a cancel or its deadline, so what it would
        have run on (to its end, or a hung job to the run limit) counts as saved."""
        if job.billed:
            return
        job.billed = True
        b = self.billing.setdefault(job.model, Bill())
        b.jobs += 1
        start = job.started_at
        if start is None:
            ran, would = 0.0, job.gen_s
        elif hung:
            limit = start + PROVIDER_MAX_RUN_S
            if job.deadline is not None:
                limit = min(limit, job.deadline)
            ran, would = max(0.0, min(end, limit) - start), PROVIDER_MAX_RUN_S
        else:
            ran, would = max(0.0, end - start), job.gen_s
        b.run_s += ran
        if job.state == "succeeded" and job.result_urls:
            b.outputs += len(job.result_urls)
        if stopped:
            b.canceled += 1
            b.saved_s += max(0.0, would - ran)
            b.saved_outputs += int(job.would_deliver)

    def settle_bills(self) -> None:
        """Bill the jobs still hanging when the run ends (as if left alone: to their deadline or the
        run limit), so a run's bill does not depend on whether the writer forgot them first."""
        for p in self.providers.values():
            for job in p.jobs.values():
                if job.state == "lost" and not job.billed:
                    self._bill_hung(job)

    def _bill_hung(self, job: Job) -> None:
        start = job.started_at if job.started_at is not None else job.submitted_at
        cut = job.deadline is not None and job.deadline < start + PROVIDER_MAX_RUN_S
        self.bill(job, start + PROVIDER_MAX_RUN_S, stopped=cut, hung=True)

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
        return {
            "provider": job.provider,
            "upstream_task_id": job.upstream_id,
            "task_ref": job.task_ref,
            "model": job.model,
            "state": job.state,
            "result_urls": list(job.result_urls) or None,
            "error_code": code,
            "error_message": message,
            "failure_class": klass,
            "submitted_at": at(job.submitted_at),
            "started_at": None if job.started_at is None else at(job.started_at),
            "done_at": None if job.done_at is None else at(job.done_at),
        }

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
        return job is None or (job.done_at is not None and job.pending_deliveries == 0 and job.state != "running")

    def forget(self, provider: str, upstream_id: str) -> None:
        p = self.providers.get(provider)
        if p is None:
            return
        job = p.jobs.pop(upstream_id, None)
        if job is not None:
            p.by_ref.pop(job.task_ref, None)
            if job.state == "lost" and not job.billed:
                self._bill_hung(job)
