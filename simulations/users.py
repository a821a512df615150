"""The user population: Faker accounts, arrivals, a model mix, chat, behaviours.

Accounts get names and emails from a Faker seeded from the run's own stream,
starting balances from the scenario's distribution (some start near zero and
run out), top-ups after a refusal. Arrivals follow a flat, daily or bursty
process; each arrival is a generation, a chat turn or a tool-backed chat turn.
Behaviours a support desk knows: retrying a failed prompt, resubmitting while a
task is still running, heavy duplicate runs, and heeding or ignoring the
checklist's recheck signals.

Every arrival draws all of its random numbers up front, in a fixed order, from
its own streams, so what happens to one task never shifts another's draws.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import simpy
from faker import Faker

from rivya_core.catalog import Catalog, ModelSpec
from rivya_core.domain import TERMINAL, FailureClass, InsufficientCredits, RivyaError, TaskStatus
from rivya_core.validation import GenerationRequest, Reference

from .scenarios import Scenario
from .streams import Streams

PROMPT_POOL = 400


@dataclass
class Intent:
    """One arrival, fully drawn (read, never changed). Not frozen: a frozen dataclass sets each of
    these 15 fields through object.__setattr__, which made building one cost several times more."""

    user: int
    kind: str  # generation | chat | tool_chat
    request: GenerationRequest | None
    chat_model: str = ""
    content: str = ""
    prompt_tokens: int = 0
    max_output_tokens: int = 0
    completion_tokens: int = 0
    chat_fails: bool = False
    chat_delay_s: float = 0.0
    retry: bool = False
    resubmit: bool = False
    duplicate_heavy: bool = False
    heed: bool = True
    topup: bool = False


class Population:
    def __init__(
        self,
        env: simpy.Environment,
        svc: Any,
        catalog: Catalog,
        scenario: Scenario,
        streams: Streams,
        read_task: Callable[[int], Any],
        pin: Callable[[int, bool], None],
    ):
        self.env = env
        self.svc = svc
        self.catalog = catalog
        self.sc = scenario
        self.streams = streams
        self.read_task = read_task
        self.pin = pin
        self.user_ids: list[int] = []
        self.sessions: dict[tuple[int, str], int] = {}
        self.failures: Counter = Counter()  # (user, prompt) -> failed count
        self.stats: Counter = Counter()
        self.arrived = 0
        self.arrivals_by_kind: Counter = Counter()  # generation | chat | tool_chat
        self.task_sources: Counter = Counter()  # what made each task: see RunSummary.tasks_explained
        self.arrivals_done = False
        self.open_chats = 0
        self._topups = 0
        gen = [m for m in catalog.models if m.runtime == "async_task" and m.direct_generation]
        self.models = {c: [m for m in gen if m.category == c] for c in ("image", "video", "audio")}
        self.chat_models = [m for m in catalog.models if m.runtime == "chat"]
        self.tool_chat_models = [m for m in self.chat_models if m.tool_models]
        m = scenario.mix
        self._kinds = ("image", "video", "audio", "chat", "tool_chat")
        self._kind_weights = [
            m.image,
            m.video,
            m.audio,
            m.chat if self.chat_models else 0,
            m.tool_chat if self.tool_chat_models else 0,
        ]
        # draw()'s four streams, looked up once (Streams.get returns the same Random every time)
        self._draw_streams = tuple(streams.get(n) for n in ("users", "mix", "sizes", "behaviour"))
        fake = Faker("en_US")
        fake.seed_instance(streams.get("faker").getrandbits(32))
        self.fake = fake
        self.prompts = [fake.sentence(nb_words=9).rstrip(".") for _ in range(PROMPT_POOL)]

    # --- accounts -------------------------------------------------------------------

    def create_accounts(self) -> None:
        pop = self.sc.population
        rng = self.streams.get("balances")
        for i in range(pop.users):
            first, last = self.fake.first_name(), self.fake.last_name()
            email = f"{first}.{last}.{i}@{self.fake.free_email_domain()}".lower()
            broke = rng.random() < pop.broke_fraction
            u = rng.random()
            balance = int((pop.broke_balance if broke else pop.balance).draw(u))
            acc = self.svc.create_account(email, f"{first} {last}", grant=balance)
            self.user_ids.append(acc.id)

    # --- arrivals ----------------------------------------------------------------------

    def arrivals(self, stop_at: float, max_tasks: int):
        a = self.sc.arrivals
        rng = self.streams.get("arrivals")
        rate = a.rate_per_hour / 3600.0
        next_burst = a.burst_every_s
        while True:
            if a.pattern == "daily":
                peak = rate * (1 + a.daily_amplitude)
                gap = rng.expovariate(peak) if peak > 0 else math.inf
                accept = rng.random()
                t = self.env.now + gap
                level = rate * (1 + a.daily_amplitude * math.sin(2 * math.pi * (t / 86400.0 - 0.25)))
                keep = accept * peak <= level
            else:
                gap = rng.expovariate(rate) if rate > 0 else math.inf
                keep = True
            burst = a.pattern == "bursts" and self.env.now + gap >= next_burst
            if burst:
                gap = next_burst - self.env.now
                next_burst += a.burst_every_s
            if self.env.now + gap >= stop_at or (max_tasks and self.arrived >= max_tasks):
                break
            yield self.env.timeout(gap)
            for _ in range(a.burst_size if burst else int(keep)):
                if max_tasks and self.arrived >= max_tasks:
                    break
                self.arrive(self.draw())
        self.arrivals_done = True

    def draw(self) -> Intent:
        """Every random number of one arrival, always in the same order."""
        users, mixr, sizes, beh = self._draw_streams
        m = self.sc.mix
        user = self.user_ids[users.randrange(len(self.user_ids))]
        kind = mixr.choices(self._kinds, self._kind_weights)[0]
        pick = mixr.random()
        prompt = self.prompts[mixr.randrange(PROMPT_POOL)]
        s = [sizes.random() for _ in range(4)]
        b = [beh.random() for _ in range(6)]
        bh = self.sc.behaviour
        flags = dict(
            retry=b[0] < bh.retry_failed,
            resubmit=b[1] < bh.resubmit_running,
            duplicate_heavy=b[2] < bh.duplicate_heavy,
            heed=b[3] < bh.heed_recheck,
            topup=b[4] < self.sc.population.topup_probability,
        )
        if kind in ("chat", "tool_chat"):
            pool = self.chat_models if kind == "chat" else self.tool_chat_models
            spec = _pick(pool, pick, m.models)
            max_out = min(m.chat_max_output_tokens, _param_max(spec, "max_output_tokens", m.chat_max_output_tokens))
            pt = int(m.chat_prompt_tokens.draw(s[0]))
            overrun = s[2] < m.chat_overrun
            ct = max_out + 1 + int(s[1] * 200) if overrun else max(1, int(s[1] * max_out))
            tool_req = None
            if kind == "tool_chat":
                tool_req = GenerationRequest(spec.tool_models[0][1], prompt, {})
            return Intent(
                user,
                kind,
                tool_req,
                spec.id,
                prompt,
                pt,
                max_out,
                ct,
                b[5] < m.chat_failure,
                1.0 + 20.0 * s[3],
                **flags,
            )
        pool = self.models.get(kind) or [m for ms in self.models.values() for m in ms]
        spec = _pick(pool, pick, m.models)
        return Intent(user, "generation", _request(spec, prompt, s), **flags)

    def arrive(self, intent: Intent) -> None:
        self.arrived += 1
        self.arrivals_by_kind[intent.kind] += 1
        if intent.kind == "generation":
            task = self.submit(intent.user, intent.request, intent.topup, source="generation")
            if task is not None and (intent.retry or intent.resubmit or intent.duplicate_heavy):
                self.pin(task.id, True)
                self.env.process(self.watch(intent, task.id, 0))
        else:
            self.env.process(self.chat_turn(intent))

    def submit(self, user: int, request: GenerationRequest, topup: bool = False, *, source: str, **kw: Any):
        try:
            task = self.svc.submit(user, request, **kw)
        except RivyaError as exc:
            self.stats[f"rejected:{exc.code}"] += 1
            return None
        self.stats["submitted"] += 1
        self.task_sources[source] += 1
        if task.status == TaskStatus.FAILED and task.failure_class == FailureClass.BILLING and topup:
            self.top_up(user)
        return task

    def top_up(self, user: int) -> None:
        self._topups += 1
        self.svc.grant(user, self.sc.population.topup_amount, note="top-up", key=f"topup-{self._topups}")
        self.stats["topups"] += 1

    # --- behaviours ----------------------------------------------------------------------

    def watch(self, intent: Intent, task_id: int, attempt: int):
        """A user who keeps an eye on a task: resubmits, rechecks or retries."""
        bh = self.sc.behaviour
        acted = False
        try:
            while True:
                yield self.env.timeout(bh.patience_s)
                task = self.read_task(task_id)
                if task is None:
                    return
                if task.status in TERMINAL:
                    break
                if acted or self.arrivals_done:
                    continue
                acted = True
                if intent.duplicate_heavy:
                    self.stats["duplicate_heavy"] += 1
                    self.submit(
                        intent.user,
                        _heavier(self.catalog.get(intent.request.model), intent.request),
                        source="duplicate_heavy",
                    )
                if intent.resubmit:
                    if intent.heed:
                        self.stats["user_recheck"] += 1
                        try:
                            self.svc.recheck(task_id, reason="user_recheck")
                        except RivyaError:
                            pass
                    else:
                        self.stats["resubmit_running"] += 1
                        self.submit(intent.user, intent.request, source="resubmit")
            if task.status != TaskStatus.FAILED or not intent.retry or attempt >= bh.max_retries or self.arrivals_done:
                return
            key = (intent.user, intent.request.prompt)
            self.failures[key] += 1
            if task.failure_class == FailureClass.BILLING:
                return
            if intent.heed and (self.failures[key] >= 2 or task.failure_class == FailureClass.USER):
                self.stats["retry_withheld"] += 1  # the recheck signal says: do not rerun unchanged
                return
            self.stats["retry"] += 1
            again = self.submit(intent.user, intent.request, source="retry")
            if again is not None:
                self.pin(again.id, True)
                self.env.process(self.watch(intent, again.id, attempt + 1))
        finally:
            self.pin(task_id, False)

    # --- chat --------------------------------------------------------------------------

    def chat_turn(self, it: Intent):
        self.open_chats += 1
        try:
            sid = self.sessions.get((it.user, it.chat_model))
            if sid is None:
                sid = self.svc.open_chat(it.user, it.chat_model, it.content[:60]).id
                self.sessions[(it.user, it.chat_model)] = sid
            try:
                msg = self.svc.chat_turn_reserve(sid, it.content, it.prompt_tokens, it.max_output_tokens)
            except InsufficientCredits:
                self.stats["chat_refused"] += 1
                if it.topup:
                    self.top_up(it.user)
                return
            self.stats[it.kind] += 1
            if it.kind == "tool_chat" and it.request is not None:
                self.submit(it.user, it.request, source="tool_chat", chat_message_id=msg.id)
            yield self.env.timeout(it.chat_delay_s)
            if it.chat_fails:
                self.svc.chat_turn_fail(msg.id, "model_error")
            else:
                self.svc.chat_turn_settle(msg.id, it.prompt_tokens, it.completion_tokens)
        finally:
            self.open_chats -= 1


def _param_max(spec: ModelSpec, name: str, fallback: int) -> int:
    p = spec.param(name)
    return int(p.max) if p is not None and p.max is not None else fallback


def _pick(pool: list[ModelSpec], u: float, weights: dict[str, float]) -> ModelSpec:
    """A model of the pool: evenly, or by the scenario's weights (one uniform draw either way)."""
    w = [float(weights.get(m.id, 0.0)) for m in pool] if weights else []
    total = sum(w)
    if total <= 0:
        return pool[int(u * len(pool))]
    x = u * total
    for spec, wi in zip(pool, w, strict=True):
        x -= wi
        if x < 0:
            return spec
    return next(spec for spec, wi in zip(reversed(pool), reversed(w), strict=True) if wi > 0)


def _request(spec: ModelSpec, prompt: str, s: list[float]) -> GenerationRequest:
    params: dict[str, Any] = {}
    dur = spec.pricing.duration_param
    if dur and (p := spec.param(dur)) is not None and p.min is not None and p.max is not None:
        value = p.min + (p.max - p.min) * s[0]
        params[dur] = int(value) if p.type == "int" else round(value, 1)
    refs: list[Reference] = []
    for r in spec.references:
        if not r.required and s[1] > 0.3:
            continue
        size = int(r.max_size_bytes * (0.05 + 0.5 * s[2]))
        if r.kind == "audio":
            d = round(10 + 300 * s[3], 1)
            refs.append(Reference("audio", "upload.mp3", size, d, d))
        else:
            refs.append(Reference(r.kind, f"upload.{'png' if r.kind == 'image' else 'mp4'}", size))
    return GenerationRequest(spec.id, prompt[: spec.prompt_max], params, tuple(refs))


def _heavier(spec: ModelSpec | None, req: GenerationRequest) -> GenerationRequest:
    """The same prompt again, asking for more (a longer duration where there is one)."""
    params = dict(req.params)
    if spec is not None and spec.pricing.duration_param and (p := spec.param(spec.pricing.duration_param)):
        if p.max is not None:
            params[p.name] = int(p.max) if p.type == "int" else float(p.max)
    return GenerationRequest(req.model, req.prompt, params, req.references)
