"""The lifecycle service: the guide's steps, in the guide's order.

submit:   validate -> ai_task WAITING -> spend credits -> provider submit -> GENERATING
learn:    signed callback (verify, record, apply | defer | ignore) or polling
finish:   SUCCESS with URLs, or FAILED with its class and a refund when the
          policy reverses that class; an outcome notification either way
chat:     reserve an estimate, settle on real usage, refund the difference

Each step is one unit of work on the Store; a step that loses a race
(RetryableConflict) is re-run from a fresh read. Ledger writes carry
idempotency keys derived from the task and the step, and task moves are
compare-and-set, so a replayed step never charges, refunds or notifies twice.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import limits, rules, upstream_cancel, webhooks
from .catalog import Catalog
from .clock import ManualClock, act_time
from .domain import (
    ACTIVE,
    INSUFFICIENT_CREDITS,
    INTERRUPTED,
    MARKED_FAILED,
    NO_RESULT_URLS,
    TIMEOUT,
    ActionRefused,
    CallbackOutcome,
    ChatMessage,
    ChatSession,
    ChatStatus,
    EntryType,
    EventKind,
    FailureClass,
    InsufficientCredits,
    LedgerEntry,
    NotFound,
    NotificationKind,
    ParkedCallback,
    ProviderCallback,
    Task,
    TaskEvicted,
    TaskStatus,
    TurnClosed,
    ValidationError,
    by_name,
    sources_of,
)
from .policy import DEFAULT_POLICY, BillingPolicy
from .ports import (
    CallbackFormat,
    Clock,
    Provider,
    ProviderError,
    ProviderFault,
    RetryableConflict,
    Store,
    Tx,
    UpstreamState,
    UpstreamStatus,
)
from .rules import Refusal, SupportRefusal
from .validation import NormalizedRequest, validate, validate_chat_model

T = TypeVar("T")

# The enums' members as plain class attributes (domain.by_name): read about twenty times a task.
_Status, _Event, _Outcome, _Upstream = (by_name(e) for e in (TaskStatus, EventKind, CallbackOutcome, UpstreamState))

MAX_CALLBACK_BODY = 64 * 1024
STORED_BODY_LIMIT = 4096
PARKED_DETAIL = "no task has this upstream id yet: parked, applied when a task takes it"
WEBHOOK_SEEN = "webhook id already seen"
MAX_RETRIES = 20
RETRY_BASE_SECONDS = 0.002
RETRY_CAP_SECONDS = 0.25


def consume_key(task_id: int) -> str:
    return f"consume:task:{task_id}"


def refund_key(task_id: int) -> str:
    return f"refund:task:{task_id}"


def notify_key(task_id: int) -> str:
    return f"notify:task:{task_id}"


@dataclass
class CallbackResult:  # not frozen: one a callback, and a frozen __init__ sets each field through object.__setattr__
    outcome: str
    callback_id: int
    task_id: int | None = None
    reason: str | None = None


@dataclass
class PollReport:
    checked: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    still_running: int = 0


@dataclass
class RecoveryReport:
    examined: int = 0
    actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return len(self.actions)


class LifecycleService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        providers: Mapping[str, Provider],
        catalog: Catalog,
        policy: BillingPolicy = DEFAULT_POLICY,
        secrets: Mapping[str, list[str]] | None = None,
        callbacks_enabled: bool = True,
        judge_clock: Clock | None = None,
        retry_seed: int = 0,
    ):
        self.store = store
        self.clock = clock
        # what support judges ages against (clock.judging_now for the database; default: `clock`)
        self.judge_clock = judge_clock or clock
        self.providers = dict(providers)
        self.catalog = catalog
        self.policy = policy
        self._secrets = {k: list(v) for k, v in (secrets or {}).items()}
        self.callbacks_enabled = callbacks_enabled
        # unit-of-work retries: the jitter has its own Random (never the global one), seedable for runs
        self.retry_rng = random.Random(retry_seed)
        self.retry_base = RETRY_BASE_SECONDS
        self.retry_cap = RETRY_CAP_SECONDS
        self.sleep: Callable[[float], None] = time.sleep
        self.retry_counts: Counter[int] = Counter()
        self.retries_total = 0
        upstream_cancel.arm(self.providers.values(), policy, catalog)  # Cancel-After on the clients that send it
        self._local = threading.local()  # per thread: the current unit's upstream cancels

    def __repr__(self) -> str:  # never show secrets
        return f"LifecycleService(providers={sorted(self.providers)}, policy={self.policy.name!r})"

    # --- plumbing -------------------------------------------------------------

    def _tx(self, step: Callable[[Tx], T]) -> T:
        """Run one unit of work; a lost race is re-run after a jittered exponential pause
        ("full jitter": uniform in [0, min(cap, base * 2**attempt)]). How many retries each
        unit needed is counted in `retry_counts` (retries -> units) and `retries_total`."""
        local = self._local
        for attempt in range(MAX_RETRIES):
            local.cancels = None  # jobs this unit gives up on (upstream_cancel.defer), asked to stop once it commits
            try:
                with self.store.begin() as tx:
                    result = step(tx)
            except RetryableConflict:
                if attempt == MAX_RETRIES - 1:
                    self._count_retries(attempt)
                    raise
                self.sleep(self.retry_rng.uniform(0.0, min(self.retry_cap, self.retry_base * 2 ** attempt)))
                continue
            if local.cancels:
                jobs, local.cancels = local.cancels, None
                upstream_cancel.send(self, jobs)
            if attempt:
                self._count_retries(attempt)
            else:  # the usual case, inlined (four units a task)
                self.retry_counts[0] += 1
            return result
        raise AssertionError("unreachable")

    def _count_retries(self, retries: int) -> None:
        self.retry_counts[retries] += 1
        self.retries_total += retries

    @property
    def clock(self) -> Clock:
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        # the time of a step, as a bound method: asked ~14 times a task, so one frame fewer each
        self._now: Callable[[], datetime] = clock.now

    def _event(self, tx: Tx, task_id: int, event: EventKind, /, **detail: Any) -> None:
        tx.add_event(task_id, event._value_, detail, self._now())  # _value_: .value is a descriptor call

    # --- accounts -------------------------------------------------------------

    def create_account(self, email: str, name: str, grant: int = 0):
        if not isinstance(email, str) or not email.strip() or len(email) > 320:
            raise ValidationError("an account needs a non-empty e-mail address of at most 320 characters",
                                  code="email_invalid")
        if not isinstance(name, str) or len(name) > 200:
            raise ValidationError("an account name is text of at most 200 characters", code="name_invalid")
        if not isinstance(grant, int) or not limits.LIMITS["whole_credits"].ok(grant):
            raise ValidationError(f"a sign-up grant must be {limits.describe('whole_credits')} credits",
                                  code="grant_invalid")

        def step(tx: Tx):
            if tx.account_by_email(email) is not None:
                raise ValidationError(f"an account with email {email!r} already exists", code="account_exists")
            acct = tx.add_account(email, name, self._now())
            if grant:
                tx.post(acct.id, EntryType.GRANT, grant, f"grant:signup:{acct.id}", self._now(), note="sign-up grant")
            return tx.get_account(acct.id)

        return self._tx(step)

    def grant(self, user_id: int, amount: int, note: str = "top-up", key: str | None = None) -> LedgerEntry:
        if not isinstance(amount, int) or amount == 0 or not limits.LIMITS["whole_credits"].ok(amount):
            raise ValidationError(f"a grant must be {limits.describe('whole_credits')} credits, not 0",
                                  code="grant_invalid")

        def step(tx: Tx) -> LedgerEntry:
            if tx.get_account(user_id) is None:
                raise NotFound(f"no account {user_id}")
            k = key or f"grant:{user_id}:{uuid.uuid4().hex}"  # pass a key to make a grant replayable
            return tx.post(user_id, EntryType.GRANT, amount, k, self._now(), note=note).entry

        return self._tx(step)

    # --- 1-4: submit ----------------------------------------------------------

    def submit(self, user_id: int, request: Any, *, chat_message_id: int | None = None) -> Task:
        req = validate(self.catalog, request)                       # 1. validate (raises, writes nothing)
        credits = self.policy.price(req.model, req.base_credits)
        task = self._tx(lambda tx: self._create(tx, user_id, req, credits, chat_message_id))  # 2. ai_task WAITING
        if not self._tx(lambda tx: self._charge(tx, task.id)):      # 3. spend before submission
            return self.task(task.id)
        return self._submit_upstream(task.id, task)                 # 4. provider job, GENERATING

    def _heavier_duplicate(self, tx: Tx, user_id: int, req: NormalizedRequest, credits: int) -> Task | None:
        """A running task of this user with the same prompt that this one outweighs; raises when
        the policy blocks such a run (before anything is written)."""
        now = self._now()
        running = tx.user_tasks(user_id, statuses=ACTIVE, since=now - timedelta(seconds=self.policy.duplicate_window_s),
                                limit=50)
        dup = None
        if running:  # most submissions: no running task of this user in the window
            new = rules.Run(0, req.model, req.prompt, credits, now)
            dup = next((t for t in running if rules.heavier_duplicate(new, _run_of(t), self.policy)), None)
        if dup is not None and self.policy.duplicate_runs == "block":
            raise ValidationError(
                f"task {dup.id} with the same prompt is still running; wait for it before a heavier duplicate run",
                code="duplicate_run")
        return dup

    def _create(self, tx: Tx, user_id: int, req: NormalizedRequest, credits: int,
                chat_message_id: int | None, rerun_of: int | None = None) -> Task:
        if tx.get_account(user_id) is None:
            raise NotFound(f"no account {user_id}")
        duplicate = self._heavier_duplicate(tx, user_id, req, credits)  # may refuse: nothing written yet
        task = tx.insert_task(Task(
            id=0, user_id=user_id, model=req.model, category=req.category, prompt=req.prompt,
            params=dict(req.params), status=_Status.WAITING, billing_type=req.billing_type,
            reserved_credits=credits, provider=req.provider, created_at=self._now(),
            chat_message_id=chat_message_id, rerun_of=rerun_of))
        self._event(tx, task.id, _Event.CREATED, model=req.model, credits=credits, billing_type=req.billing_type)
        if duplicate is not None:
            self._event(tx, task.id, _Event.DUPLICATE_WARNING, running_task_id=duplicate.id)
        return task

    def _charge(self, tx: Tx, task_id: int) -> bool:
        """Spend the task's credits. False when the task ended here (shortfall)."""
        task = tx.get_task(task_id, for_update=True)
        if task is None or task.status != _Status.WAITING:
            return False
        if tx.entry(consume_key(task_id)) is not None:
            return True
        try:
            res = tx.post(task.user_id, EntryType.CONSUME, -task.reserved_credits, consume_key(task_id),
                          self._now(), task_id=task_id, chat_message_id=task.chat_message_id)
        except InsufficientCredits:
            self._event(tx, task_id, _Event.CHARGE_REFUSED, needed=task.reserved_credits,
                        balance=tx.balance(task.user_id))
            self._finish_failed(tx, task, INSUFFICIENT_CREDITS,
                                f"{task.reserved_credits} credits needed, {tx.balance(task.user_id)} available",
                                FailureClass.BILLING, path="charge")
            return False
        self._event(tx, task_id, _Event.CHARGED, amount=task.reserved_credits,
                    balance_after=res.entry.balance_after)
        return True

    def _submit_upstream(self, task_id: int, task: Task | None = None) -> Task:
        """`task`: the row as created, when the caller has it (the fields sent upstream never change)."""
        task = task if task is not None else self.task(task_id)
        provider = self.providers.get(task.provider)
        error: ProviderError | None = None
        upstream_id: str | None = None
        if provider is None:
            error = ProviderError(ProviderFault.ERROR, f"no client for provider {task.provider!r} in this environment")
        else:
            for _ in range(1 + self.policy.submit_retries):
                try:
                    upstream_id = provider.submit(rules.task_ref(task.id), task.model, task.prompt, task.params)
                    error = None
                    break
                except ProviderError as exc:
                    error = exc

        def step(tx: Tx) -> Task:
            current = tx.get_task(task_id, for_update=True)
            if current is None or current.status != _Status.WAITING:
                return current
            if error is not None:
                self._event(tx, task_id, _Event.SUBMIT_FAILED, fault=error.kind, message=error.message)
                self._finish_failed(tx, current, error.code, error.message,
                                    rules.submit_failure_class(error.kind), path="submit")
            else:
                self._mark_generating(tx, current, upstream_id)
            return tx.get_task(task_id)

        return self._tx(step)

    def _mark_generating(self, tx: Tx, task: Task, upstream_id: str) -> None:
        now = self._now()
        first_check = rules.first_check_in(task.category, self.callbacks_enabled, self.policy)
        tx.update_task(task.id, sources_of(_Status.GENERATING), status=_Status.GENERATING, upstream_task_id=upstream_id,
                       submitted_at=now, next_check_at=now + timedelta(seconds=first_check), check_attempts=0)
        self._event(tx, task.id, _Event.SUBMITTED, upstream_task_id=upstream_id, provider=task.provider)
        self._claim_parked(tx, task.id, task.provider, upstream_id)

    # --- 5a: callbacks ----------------------------------------------------------

    def handle_callback(self, provider: str, headers: Mapping[str, str], body: bytes,
                        task_ref: str | None = None) -> CallbackResult:
        """Verify, record and route one delivery. `task_ref`: our own reference for the task
        when the webhook URL carried it (unsigned: it only links a parked callback to its task)."""
        now = self._now()
        provider = str(provider)[:50]
        raw = bytes(body) if isinstance(body, (bytes, bytearray)) else b""
        stored = raw[:STORED_BODY_LIMIT].decode("utf-8", "replace")
        record = ProviderCallback(id=0, provider=provider, received_at=now, signature_valid=False,
                                  outcome=_Outcome.MALFORMED, body=stored)

        def reject(outcome: CallbackOutcome, reason: str) -> CallbackResult:
            cb = self._tx(lambda tx: tx.add_callback(replace(record, outcome=outcome, detail=reason)))
            return CallbackResult(outcome, cb.id, None, reason)

        if not isinstance(body, (bytes, bytearray)) or len(raw) > MAX_CALLBACK_BODY:
            return reject(_Outcome.MALFORMED, f"body is not bytes or over {MAX_CALLBACK_BODY} bytes")
        fmt: CallbackFormat | None = getattr(self.providers.get(provider), "callbacks", None)
        secrets = self._secrets.get(provider)
        if fmt is None and not secrets:
            return reject(_Outcome.REJECTED_SIGNATURE, "no webhook secret configured for this provider")
        headers = headers if headers.__class__ is dict or isinstance(headers, Mapping) else {}  # dict: no ABC check
        now_ts = now.timestamp() if now.tzinfo else _epoch(now)
        try:
            webhook_id = fmt.verify(headers, raw, now_ts) if fmt else webhooks.verify(secrets, headers, raw, now_ts)
            record.webhook_id = webhook_id[:200]
        except webhooks.WebhookError as exc:
            outcome = {"stale": _Outcome.REJECTED_STALE,
                       "malformed": _Outcome.MALFORMED}.get(exc.code, _Outcome.REJECTED_SIGNATURE)
            return reject(outcome, exc.message)
        record.signature_valid = True
        parsed = _parse_with(fmt, raw) if fmt else _parse_callback(raw)
        if isinstance(parsed, str):
            return reject(_Outcome.MALFORMED, parsed)
        record.upstream_task_id = parsed.upstream_task_id[:200]
        ref = task_ref[:100] if isinstance(task_ref, str) and task_ref else None

        def step(tx: Tx) -> CallbackResult:  # builds its own row: a retried attempt starts clean
            upstream_id = parsed.upstream_task_id
            try:
                task = tx.task_by_upstream(provider, upstream_id, for_update=True)  # found: its row lock orders us
                if task is None:  # look again under the upstream lock, against _mark_generating's claim
                    tx.lock_upstream(provider, upstream_id)
                    task = tx.task_by_upstream(provider, upstream_id, for_update=True)
            except TaskEvicted as gone:
                return self._late(tx, record, parsed, gone)
            if task is None:
                return self._park(tx, record, parsed, ref)
            if task.terminal:
                cb = tx.add_callback(replace(record, task_id=task.id, outcome=_Outcome.DUPLICATE,
                                             detail=upstream_cancel.late_detail(task, parsed.state)
                                             or _already(task.status)))
            else:  # the insert itself turns a webhook id already applied or deferred into a duplicate
                cb = tx.add_callback_unless_seen(replace(record, task_id=task.id, outcome=_callback_outcome(parsed)),
                                                 WEBHOOK_SEEN)
            outcome = _OUTCOMES.get(cb.outcome) or CallbackOutcome(cb.outcome)  # the Enum call is slow
            self._take(tx, task, parsed, record.webhook_id, outcome, cb.id)
            return CallbackResult(outcome, cb.id, task.id, cb.detail)

        return self._tx(step)

    def _route(self, tx: Tx, task: Task, parsed: _Parsed, webhook_id: str | None) -> tuple[CallbackOutcome, str | None]:
        """What a valid callback does to its task: nothing (duplicate, progress), defer or apply."""
        if task.terminal:
            return _Outcome.DUPLICATE, _already(task.status)
        if webhook_id and tx.webhook_seen(task.provider, webhook_id):
            return _Outcome.DUPLICATE, WEBHOOK_SEEN
        return _callback_outcome(parsed), None

    def _late(self, tx: Tx, record: ProviderCallback, parsed: _Parsed, gone: TaskEvicted) -> CallbackResult:
        """A valid callback for a task the store wrote out and forgot: the task is
        finished, so the callback is a repeat, recorded as for a task still held."""
        outcome, detail = _Outcome.DUPLICATE, _already(gone.status)
        cb = tx.add_callback(replace(record, task_id=gone.task_id, outcome=outcome, detail=detail))
        self._callback_event(tx, gone.task_id, parsed, record.webhook_id, outcome, cb.id)
        return CallbackResult(outcome, cb.id, gone.task_id, detail)

    def _callback_event(self, tx: Tx, task_id: int, parsed: _Parsed, webhook_id: str | None,
                        outcome: CallbackOutcome, callback_id: int, **extra: Any) -> None:
        self._event(tx, task_id, _Event.CALLBACK, webhook_id=webhook_id, outcome=str(outcome),
                    state=parsed.state, callback_id=callback_id, **extra)

    def _take(self, tx: Tx, task: Task, parsed: _Parsed, webhook_id: str | None, outcome: CallbackOutcome,
              callback_id: int, **extra: Any) -> None:
        self._callback_event(tx, task.id, parsed, webhook_id, outcome, callback_id, **extra)
        if outcome == _Outcome.DEFERRED:
            self._defer(tx, task)
        elif outcome == _Outcome.APPLIED:
            self._apply_status(tx, task, parsed, path="callback")

    def _park(self, tx: Tx, record: ProviderCallback, parsed: _Parsed, ref: str | None) -> CallbackResult:
        """A valid callback for an upstream id no task holds yet: kept, and applied by
        _mark_generating when a task takes that id (the provider answered before our write)."""
        owner = self._task_for_ref(tx, record.provider, ref)
        cb = tx.add_callback(replace(record, task_id=owner, outcome=_Outcome.UNKNOWN_TASK,
                                     detail=PARKED_DETAIL))
        tx.park_callback(ParkedCallback(
            id=0, callback_id=cb.id, provider=record.provider, upstream_task_id=parsed.upstream_task_id,
            received_at=record.received_at, state=parsed.state, webhook_id=record.webhook_id,
            result_urls=list(parsed.result_urls) or None, error_code=parsed.error_code,
            error_message=parsed.error_message, failure_class=parsed.failure_class, task_ref=ref))
        return CallbackResult(cb.outcome, cb.id, owner, PARKED_DETAIL)

    @staticmethod
    def _task_for_ref(tx: Tx, provider: str, ref: str | None) -> int | None:
        """The still-waiting task of this provider that our reference names, if any."""
        if not ref or not ref.startswith("task-") or not ref[5:].isdigit():
            return None
        task = tx.get_task(int(ref[5:]))
        return task.id if task and task.provider == provider and task.status == _Status.WAITING else None

    def _claim_parked(self, tx: Tx, task_id: int, provider: str, upstream_id: str) -> list[tuple[int, str]]:
        """Apply, in arrival order, the callbacks that came before this task had its upstream id;
        (callback id, outcome) of each."""
        tx.lock_upstream(provider, upstream_id)
        claimed = []
        for p in tx.claim_parked(provider, upstream_id, task_id, self._now()):
            parsed = _Parsed(p.upstream_task_id, _STATES.get(p.state, p.state), tuple(p.result_urls or ()),
                             p.error_code, p.error_message, _CLASSES.get(p.failure_class, p.failure_class))
            task = tx.get_task(task_id, for_update=True)
            outcome, detail = self._route(tx, task, parsed, p.webhook_id)
            tx.settle_callback(p.callback_id, task_id, outcome, detail or "parked until the upstream id was stored")
            self._take(tx, task, parsed, p.webhook_id, outcome, p.callback_id, parked=True)
            claimed.append((p.callback_id, str(outcome)))
        return claimed

    # --- 5b: polling and re-checks ---------------------------------------------

    def poll(self, limit: int = 1000) -> PollReport:
        report = PollReport()
        due = self._tx(lambda tx: tx.tasks_due_for_check(self._now(), limit))
        for task in due:
            before = task.status
            after = self._check(task.id, _Event.RECHECK if task.check_attempts else _Event.POLL)
            report.checked += 1
            if after is None or after.status == before:
                report.still_running += 1
            elif after.status == _Status.SUCCESS:
                report.succeeded += 1
            elif after.error_code == TIMEOUT:
                report.timed_out += 1
            else:
                report.failed += 1
        return report

    def recheck(self, task_id: int, reason: str = "recheck") -> Task:
        task = self.task(task_id)
        if task.status != _Status.GENERATING:
            return task
        return self._check(task_id, _Event.RECHECK, reason=reason)

    def _check(self, task_id: int, kind: EventKind, reason: str | None = None) -> Task | None:
        task = self.task(task_id)
        if task.status != _Status.GENERATING:
            return task
        status, fault = self._read_upstream(task)
        path = "polling" if kind == _Event.POLL else "recheck"

        def step(tx: Tx) -> Task | None:
            current = tx.get_task(task_id, for_update=True)
            if current is None:
                return None
            if fault is not None:  # the read failed: on the timeline, then handled as "unknown"
                self._event(tx, task_id, _Event.POLL_ERROR, error_kind=fault.kind, message=fault.message,
                            path=path)
            detail: dict[str, Any] = {"state": status.state}
            if reason:
                detail["reason"] = reason
            if current.status != _Status.GENERATING:  # lost a race with a callback: a recorded no-op
                self._event(tx, task_id, kind, **detail, result=f"no-op: task already {current.status}")
                return current
            self._event(tx, task_id, kind, **detail)
            if self._apply_status(tx, current, status, path=path):
                return tx.get_task(task_id)
            elapsed = (self._now() - (current.submitted_at or current.created_at)).total_seconds()
            limit = self.policy.timeout_for(current.category)
            if status.state == _Upstream.SUCCEEDED and rules.rechecks_spent(current.check_attempts, self.policy):
                self._finish_failed(tx, current, NO_RESULT_URLS, "the provider reported success but never "
                                    "delivered result URLs", FailureClass.PROVIDER, path=path)
            elif elapsed >= limit:
                self._finish_failed(tx, current, TIMEOUT, f"no result after {int(elapsed)} s (limit {int(limit)} s)",
                                    FailureClass.INFRASTRUCTURE, path=path)
            else:
                self._schedule_next_check(tx, current)
            return tx.get_task(task_id)

        return self._tx(step)

    def _upstream_status(self, task: Task) -> UpstreamStatus:
        return self._read_upstream(task)[0]

    def _read_upstream(self, task: Task) -> tuple[UpstreamStatus, ProviderError | None]:
        """The provider's status of the task's job; a provider error reads as "unknown" and is
        returned beside it, so the caller can record it."""
        provider = self.providers.get(task.provider)
        if provider is None or not task.upstream_task_id:
            return UpstreamStatus(_Upstream.UNKNOWN), None
        try:
            return provider.status(task.upstream_task_id), None
        except ProviderError as exc:
            return UpstreamStatus(_Upstream.UNKNOWN), exc

    def _schedule_next_check(self, tx: Tx, task: Task) -> None:
        """Deferred tasks follow the re-check backoff; then plain polling takes over."""
        delay, attempts = rules.next_check(task.check_attempts, self.policy)
        tx.update_task(task.id, [_Status.GENERATING], next_check_at=self._now() + timedelta(seconds=delay),
                       check_attempts=attempts)

    def _apply_status(self, tx: Tx, task: Task, status: UpstreamStatus | _Parsed, path: str) -> bool:
        """Finish a GENERATING task when what the provider says settles it (a failure, or
        success with URLs); True when it did. Anything else changes nothing here."""
        if status.run_s is not None and status.state in (_Upstream.FAILED, _Upstream.SUCCEEDED):
            tx.update_task(task.id, None, provider_run_s=status.run_s)  # what the provider bills (rivya_core.cost)
        if status.state == _Upstream.FAILED:
            self._finish_failed(tx, task, status.error_code or "provider_failed",
                                status.error_message or "the provider reported a failure",
                                status.failure_class or FailureClass.PROVIDER, path=path)
            return True
        if status.state == _Upstream.SUCCEEDED and status.result_urls:
            self._finish_success(tx, task, list(status.result_urls), path=path)
            return True
        return False

    def _defer(self, tx: Tx, task: Task) -> None:
        """An early callback (done, but no URLs yet): start the re-check backoff."""
        delay, attempts = rules.deferral(self.policy)
        tx.update_task(task.id, [_Status.GENERATING], next_check_at=self._now() + timedelta(seconds=delay),
                       check_attempts=attempts)
        self._event(tx, task.id, _Event.DEFERRED, path="callback", next_check_in_s=delay)

    # --- 6-7: finishing ----------------------------------------------------------

    def _finish_success(self, tx: Tx, task: Task, urls: list[str], path: str) -> None:
        now = self._now()
        if not urls:
            raise AssertionError("SUCCESS without result URLs")
        if not tx.update_task(task.id, sources_of(_Status.SUCCESS), status=_Status.SUCCESS, result_urls=urls,
                              finished_at=now, settled_at=now, next_check_at=None):
            return
        self._event(tx, task.id, _Event.SUCCEEDED, path=path, result_urls=len(urls))
        self._notify(tx, task, rules.outcome_notification(_Status.SUCCESS, None), "Your generation is ready",
                     f"{task.category.capitalize()} from {task.model} finished and is in your history.")

    def _finish_failed(self, tx: Tx, task: Task, code: str, message: str, failure_class: str, path: str) -> None:
        now = self._now()
        if not tx.update_task(task.id, sources_of(_Status.FAILED), status=_Status.FAILED, error_code=code[:80],
                              error_message=message[:2000], failure_class=str(failure_class), finished_at=now,
                              settled_at=now, next_check_at=None):
            return
        self._event(tx, task.id, _Event.FAILED, path=path, error_code=code, failure_class=str(failure_class))
        if upstream_cancel.gives_up(task, code, self.policy):
            upstream_cancel.defer(self._local, task, code, now)
        refund = self._refund_if_due(tx, task, failure_class)
        kind = rules.outcome_notification(_Status.FAILED, code)
        if kind == NotificationKind.INSUFFICIENT_CREDITS:
            self._notify(tx, task, kind, "Not enough credits",
                         f"{task.reserved_credits} credits are needed for {task.model}; nothing was charged.")
        elif path == "support":  # support's words stay on the timeline: the user is told what happened
            charge = tx.entry(consume_key(task.id))
            self._notify(tx, task, kind, *rules.support_failure_notice(
                task.category, task.model, -charge.amount if charge else 0, refund.amount if refund else 0))
        else:
            self._notify(tx, task, kind, "Your generation failed", f"{task.model}: {message[:300]}")

    def _refund_if_due(self, tx: Tx, task: Task, failure_class: str, *,
                       support_note: str | None = None) -> LedgerEntry | None:
        """Reverse a failed task's charge when the rules say so. `support_note`: a support action
        issues it (after refund_refusal allowed it); the row then carries support=True."""
        charge = tx.entry(consume_key(task.id))
        facts = rules.RefundFacts(_Status.FAILED, failure_class, charged=charge is not None, refunded=False)
        refusal = rules.refund_refusal(facts, self.policy)
        if refusal == rules.RefundRefusal.NEVER_CHARGED:
            return None
        if refusal == rules.RefundRefusal.POLICY_KEEPS and support_note is None:
            self._event(tx, task.id, _Event.REFUND_SKIPPED, reason=f"policy keeps credits for {failure_class} failures")
            return None
        res = tx.post(task.user_id, EntryType.REFUND, -charge.amount, refund_key(task.id), self._now(),
                      task_id=task.id, chat_message_id=task.chat_message_id, support=support_note is not None,
                      note=support_note or f"refund: {failure_class} failure after reservation")
        if res.created:
            self._event(tx, task.id, _Event.REFUNDED, amount=-charge.amount,
                        reason="support" if support_note is not None else "policy")
        return res.entry

    def _notify(self, tx: Tx, task: Task, kind: NotificationKind, title: str, body: str) -> None:
        if tx.add_notification(task.user_id, kind, title, body, self._now(), task_id=task.id,
                               idempotency_key=notify_key(task.id)):
            self._event(tx, task.id, _Event.NOTIFIED, notification=kind.value)

    # --- 8: chat -------------------------------------------------------------------

    def open_chat(self, user_id: int, model: str, title: str = "New chat") -> ChatSession:
        validate_chat_model(self.catalog, model)

        def step(tx: Tx) -> ChatSession:
            if tx.get_account(user_id) is None:
                raise NotFound(f"no account {user_id}")
            return tx.add_session(user_id, model, str(title)[:300] or "New chat", self._now())

        return self._tx(step)

    def chat_turn_reserve(self, session_id: int, content: str, prompt_tokens: int, max_output_tokens: int) -> ChatMessage:
        for name, value in (("prompt_tokens", prompt_tokens), ("max_output_tokens", max_output_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"{name} must be a non-negative whole number", code="param_invalid")

        def session_of(tx: Tx) -> ChatSession:
            session = tx.get_session(session_id)
            if session is None:
                raise NotFound(f"no chat session {session_id}")
            return session

        session = self._tx(session_of)
        spec = validate_chat_model(self.catalog, session.model)
        estimate = self.policy.chat_reservation(spec.chat_credits(prompt_tokens, max_output_tokens))

        def step(tx: Tx) -> ChatMessage:
            msg = tx.add_message(ChatMessage(id=0, session_id=session_id, role="user", content=str(content)[:20000],
                                             created_at=self._now(), prompt_tokens=prompt_tokens,
                                             reserved_credits=estimate, status=ChatStatus.RESERVED))
            tx.post(session.user_id, EntryType.CHAT_RESERVE, -estimate, f"chat_reserve:msg:{msg.id}", self._now(),
                    chat_message_id=msg.id, note=f"reserve for {session.model}")
            return tx.get_message(msg.id)

        try:
            return self._tx(step)
        except InsufficientCredits as exc:
            self._tx(lambda tx: tx.add_message(ChatMessage(
                id=0, session_id=session_id, role="user", content=str(content)[:20000], created_at=self._now(),
                prompt_tokens=prompt_tokens, reserved_credits=0, charged_credits=0, status=ChatStatus.REFUSED)))
            raise InsufficientCredits(f"this turn needs up to {estimate} credits: {exc.message}") from None

    def chat_turn_settle(self, message_id: int, prompt_tokens: int, completion_tokens: int) -> ChatMessage:
        """Settle a reserved turn on its real usage, exactly once: the row is locked and
        moved compare-and-set. A replay with the same usage returns the settled turn; any
        other action on a closed turn is refused (TurnClosed) and changes nothing."""
        def step(tx: Tx) -> ChatMessage:
            msg, session = self._reserved_message(tx, message_id)
            if msg.status != ChatStatus.RESERVED:
                if msg.status == ChatStatus.SETTLED and \
                        (msg.prompt_tokens, msg.completion_tokens) == (prompt_tokens, completion_tokens):
                    return msg
                raise TurnClosed(msg.id, msg.status)
            spec = validate_chat_model(self.catalog, session.model)
            actual = spec.chat_credits(prompt_tokens, completion_tokens)
            charged, overrun = self.policy.chat_settlement(actual, msg.reserved_credits)
            if overrun:
                try:
                    tx.post(session.user_id, EntryType.CHAT_CHARGE, -overrun,
                            f"chat_charge:msg:{msg.id}", self._now(), chat_message_id=msg.id, note="usage over reservation")
                    charged += overrun
                except InsufficientCredits:
                    pass  # the overrun cannot be covered: the charge stays at the reservation
            self._chat_refund(tx, session.user_id, msg, msg.reserved_credits - charged, "unused reservation")
            self._close_turn(tx, msg.id, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                             charged_credits=charged, status=ChatStatus.SETTLED)
            return tx.get_message(msg.id)

        return self._tx(step)

    def chat_turn_fail(self, message_id: int, reason: str = "chat turn failed") -> ChatMessage:
        """Fail a reserved turn and release its whole reservation, exactly once. A replay
        returns the failed turn; a settled turn is refused (TurnClosed)."""
        def step(tx: Tx) -> ChatMessage:
            msg, session = self._reserved_message(tx, message_id)
            if msg.status != ChatStatus.RESERVED:
                if msg.status == ChatStatus.FAILED:
                    return msg
                raise TurnClosed(msg.id, msg.status)
            self._chat_refund(tx, session.user_id, msg, msg.reserved_credits, str(reason)[:200])
            self._close_turn(tx, msg.id, charged_credits=0, status=ChatStatus.FAILED)
            return tx.get_message(msg.id)

        return self._tx(step)

    def _reserved_message(self, tx: Tx, message_id: int) -> tuple[ChatMessage, ChatSession]:
        msg = tx.get_message(message_id, for_update=True) if limits.LIMITS["id"].ok(message_id) else None
        if msg is None:
            raise NotFound(f"no chat message {message_id!r}")
        return msg, tx.get_session(msg.session_id)

    def _close_turn(self, tx: Tx, message_id: int, **fields: Any) -> None:
        if not tx.update_message(message_id, [ChatStatus.RESERVED], settled_at=self._now(), **fields):
            raise RetryableConflict(f"chat message {message_id} moved under a locked read")  # re-run: rolls back

    def _chat_refund(self, tx: Tx, user_id: int, msg: ChatMessage, amount: int, note: str) -> None:
        if amount > 0:
            tx.post(user_id, EntryType.CHAT_REFUND, amount, f"chat_refund:msg:{msg.id}", self._now(),
                    chat_message_id=msg.id, note=note)

    # --- support actions --------------------------------------------------------------

    def support_refund(self, task_id: int, operator: str, reason: str, *, incident_id: int | None = None) -> Task:
        operator, reason = _operator(operator, reason)
        return self._refused_or(self._tx(lambda tx: self._acting(tx, task_id)._refund_step(
            tx, task_id, operator, reason, incident_id)))

    def _refund_step(self, tx: Tx, task_id: int, operator: str, reason: str,
                     incident_id: int | None) -> Task | Refusal:
        task = self._task_in(tx, task_id, for_update=True)
        refusal = self.refund_refusal(tx, task)
        if refusal:
            self._support_event(tx, task_id, operator, "refund", reason, refusal, incident_id)
            return refusal
        self._refund_if_due(tx, task, task.failure_class, support_note=rules.SUPPORT_REFUND_NOTE)
        self._support_event(tx, task_id, operator, "refund", reason, "refunded", incident_id)
        return tx.get_task(task_id)

    def support_many(self, action: str, task_ids: list[int], operator: str, reason: str, *,
                     incident_id: int | None = None) -> list[tuple[int, Task | Refusal]]:
        """`refund` or `mark-failed` on several tasks in one unit of work (a bulk incident's chunk):
        the very steps, refusals and events of support_refund / support_mark_failed, one commit.
        Returns (task id, the task after, or the refusal) per task."""
        operator, reason = _operator(operator, reason)
        step = {"refund": LifecycleService._refund_step, "mark-failed": LifecycleService._mark_failed_step}[action]
        ids = list(task_ids)
        return self._tx(lambda tx: [(i, step(self._acting(tx, i), tx, i, operator, reason, incident_id)) for i in ids])

    def act_time(self, latest: datetime | None = None) -> datetime:
        """When an operator's act done now is recorded (clock.act_time at the judging clock)."""
        return act_time(self.judge_clock.now(), latest)

    def _acting(self, tx: Tx, task_id: int) -> LifecycleService:
        """This service on the clock of an operator's act on the task (clock.act_time): the judging
        clock, never before the task's latest event, so everything the act writes (its events, a
        refund, a notification) keeps the task's timeline in order. The task's row is locked first:
        no other write to the task lands between this read and the act."""
        self._task_in(tx, task_id, for_update=True)
        acting = copy.copy(self)
        acting.clock = ManualClock(self.act_time(max((e.at for e in tx.task_events(task_id)), default=None)))
        return acting

    def refund_refusal(self, tx: Tx, task: Task) -> Refusal | None:
        """Why a refund of this task is not due, or None when it is."""
        charge = tx.entry(consume_key(task.id))
        return self.refund_refusal_for(task, charge is not None, tx.entry(refund_key(task.id)) is not None)

    def refund_refusal_for(self, task: Task, charged: bool, refunded: bool) -> Refusal | None:
        """refund_refusal over facts already read (whether the task was charged, refunded):
        the form bulk dry runs use for thousands of tasks at once."""
        facts = rules.RefundFacts(task.status, task.failure_class, charged, refunded)
        code = rules.refund_refusal(facts, self.policy)
        return None if code is None else Refusal(code, rules.refund_refusal_text(code, facts, self.policy))

    def credits_outcome(self, task: Task) -> str:
        """What happened to the task's credits, in the operator's words (rules.credits_outcome)."""
        def read(tx: Tx) -> tuple[LedgerEntry | None, LedgerEntry | None]:
            return tx.entry(consume_key(task.id)), tx.entry(refund_key(task.id))

        charge, refund = self._tx(read)
        facts = rules.RefundFacts(task.status, task.failure_class, charge is not None, refund is not None)
        return rules.credits_outcome(facts, -charge.amount if charge else 0, refund.amount if refund else 0,
                                     self.policy)

    def _stuck_facts(self, task: Task) -> rules.StuckFacts:
        """The task's age judged at judge_clock (the same moment the pages and the checklist judge it at)."""
        age = (self.judge_clock.now() - (task.submitted_at or task.created_at)).total_seconds()
        return rules.StuckFacts(task.status, age, self.policy.stuck_for(task.category))

    def recheck_refusal(self, task: Task) -> Refusal | None:
        """Why support cannot re-check this task upstream, or None when it can (rules.recheck_refusal).
        A WAITING task is re-checked once it is stuck: the provider is asked for a job under the
        task's reference, as `recover` does for one task."""
        facts = self._stuck_facts(task)
        code = rules.recheck_refusal(facts, task.provider in self.providers)
        return None if code is None else Refusal(
            code, rules.stuck_refusal_text(code, facts, "are re-checked", task.provider))

    def mark_failed_refusal(self, task: Task) -> Refusal | None:
        """Why support cannot mark this task failed now, or None when it is stuck (rules.mark_failed_refusal)."""
        facts = self._stuck_facts(task)
        code = rules.mark_failed_refusal(facts)
        return None if code is None else Refusal(code, rules.stuck_refusal_text(code, facts, "can be marked failed"))

    def support_recheck(self, task_id: int, operator: str, reason: str, *, incident_id: int | None = None) -> Task:
        operator, reason = _operator(operator, reason)
        me = self._tx(lambda tx: self._acting(tx, task_id))
        task = me.task(task_id)
        refusal = me.recheck_refusal(task)
        found = None
        if refusal is None and task.status == _Status.WAITING:  # interrupted before the provider answered
            found = me._recover_one(task)
            task = me.task(task_id)
        elif refusal is None:
            task = me._check(task_id, _Event.RECHECK, reason=f"support: {operator}")
        result = refusal or (f"upstream checked; task is {task.status}" + (f" ({found})" if found else ""))
        me._tx(lambda tx: me._support_event(tx, task_id, operator, "recheck", reason, result, incident_id))
        return self._refused_or(refusal or task)

    def support_mark_failed(self, task_id: int, operator: str, reason: str, *,
                            incident_id: int | None = None) -> Task:
        operator, reason = _operator(operator, reason)
        return self._refused_or(self._tx(lambda tx: self._acting(tx, task_id)._mark_failed_step(
            tx, task_id, operator, reason, incident_id)))

    def _mark_failed_step(self, tx: Tx, task_id: int, operator: str, reason: str,
                          incident_id: int | None) -> Task | Refusal:
        task = self._task_in(tx, task_id, for_update=True)
        refusal = self.mark_failed_refusal(task)
        if refusal:
            self._support_event(tx, task_id, operator, "mark_failed", reason, refusal, incident_id)
            return refusal
        self._finish_failed(tx, task, MARKED_FAILED, rules.MARKED_FAILED_MESSAGE, rules.MARKED_FAILED_CLASS,
                            path="support")
        self._support_event(tx, task_id, operator, "mark_failed", reason, "marked failed", incident_id)
        return tx.get_task(task_id)

    def _support_event(self, tx: Tx, task_id: int, operator: str, action: str, reason: str,
                       result: str | Refusal, incident_id: int | None = None) -> None:
        """detail: operator, action, reason, result (a sentence); a refused action adds `refusal`, its code."""
        extra: dict[str, Any] = {} if incident_id is None else {"incident": int(incident_id)}
        if isinstance(result, Refusal):
            extra["refusal"] = str(result.code)
            result = f"refused: {result.text}"
        self._event(tx, task_id, _Event.SUPPORT_ACTION, operator=operator, action=action, reason=reason,
                    result=result, **extra)

    @staticmethod
    def _refused_or(result: Task | Refusal) -> Task:
        if isinstance(result, Refusal):
            raise ActionRefused(result.text, reason=result.code)
        return result

    # --- crash recovery --------------------------------------------------------------

    def recover(self, grace_s: float = 0.0, limit: int = 100_000) -> RecoveryReport:
        """Bring every task interrupted between steps (and untouched for grace_s)
        to a consistent state. Idempotent: a second run finds nothing to do."""
        grace_s = limits.check("grace_s", grace_s, "recover: grace_s")
        report = RecoveryReport()
        cutoff = self._now() - timedelta(seconds=grace_s)
        stale = self._tx(lambda tx: tx.active_tasks_older_than(cutoff, limit))
        for task in stale:
            report.examined += 1
            action = self._recover_one(task)
            if action:
                report.actions.append({"task_id": task.id, "action": action})
        # A chat turn whose usage never came back holds its reservation: release it whole.
        for msg in self._tx(lambda tx: tx.reserved_messages_older_than(cutoff, limit)):
            report.examined += 1
            try:
                self.chat_turn_fail(msg.id, "interrupted: usage never reported, reservation released")
            except TurnClosed:
                continue  # settled (or failed) meanwhile by its own turn: nothing to release
            report.actions.append({"chat_message_id": msg.id, "action": "released the chat reservation"})
        return report

    def _recover_one(self, task: Task) -> str | None:
        if task.status == _Status.GENERATING:
            overdue = (self._now() - (task.submitted_at or task.created_at)).total_seconds() >= \
                self.policy.timeout_for(task.category)
            if task.provider in self.providers:
                status = self._upstream_status(task)
                settles = status.state == _Upstream.FAILED or (status.state == _Upstream.SUCCEEDED and status.result_urls)
                if not (overdue or settles):
                    return None  # still running upstream: polling carries on; a re-check here would
                    #              spend the task's re-check backoff, so a second recover would differ
                after = self._check(task.id, _Event.RECHECK, reason="recovery")
                return f"re-checked upstream: {after.status}" if after and after.status != task.status else None
            if overdue:
                self._tx(lambda tx: self._fail_interrupted(tx, task.id, TIMEOUT, "no result within the timeout"))
                return "failed: past the timeout with no provider client to ask"
            return None
        # WAITING: created, maybe charged, maybe submitted without the id stored.
        provider = self.providers.get(task.provider)
        charged = self._tx(lambda tx: tx.entry(consume_key(task.id))) is not None
        if provider is not None and charged:
            upstream = provider.find(rules.task_ref(task.id))
            if upstream:
                self._tx(lambda tx: self._adopt_upstream(tx, task.id, upstream))
                return "stored the upstream id found at the provider"
            parked = self._tx(lambda tx: tx.parked_upstream_for_ref(task.provider, rules.task_ref(task.id)))
            if parked:  # a signed callback for our reference: the provider has the job
                self._tx(lambda tx: self._adopt_upstream(tx, task.id, parked))
                return "stored the upstream id of a callback parked under this task's reference"
        if provider is not None and self.policy.recover_resubmit:
            if not charged and not self._tx(lambda tx: self._charge(tx, task.id)):
                return "charge refused: failed for credits"
            after = self._submit_upstream(task.id)
            return f"resumed: {after.status}"
        self._tx(lambda tx: self._fail_interrupted(tx, task.id, INTERRUPTED,
                                                   "the task was interrupted before it reached the provider"))
        return "failed: interrupted before submission" + (" (refunded)" if charged else "")

    def _adopt_upstream(self, tx: Tx, task_id: int, upstream_id: str) -> None:
        task = tx.get_task(task_id, for_update=True)
        if task and task.status == _Status.WAITING:
            self._mark_generating(tx, task, upstream_id)
            self._event(tx, task_id, _Event.RECOVERED, what="adopted upstream id")

    def _fail_interrupted(self, tx: Tx, task_id: int, code: str, message: str) -> None:
        task = tx.get_task(task_id, for_update=True)
        if task and task.status in ACTIVE:
            self._event(tx, task_id, _Event.RECOVERED, what=message)
            self._finish_failed(tx, task, code, message, FailureClass.INFRASTRUCTURE, path="recovery")

    # --- reads ---------------------------------------------------------------------

    def task(self, task_id: int) -> Task:
        return self._tx(lambda tx: self._task_in(tx, task_id))

    @staticmethod
    def _task_in(tx: Tx, task_id: int, for_update: bool = False) -> Task:
        task = tx.get_task(task_id, for_update=for_update) if limits.LIMITS["id"].ok(task_id) else None
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        return task

    def balance(self, user_id: int) -> int:
        return self._tx(lambda tx: tx.balance(user_id))


# --- helpers -------------------------------------------------------------------------


@dataclass
class _Parsed:  # read, never changed; not frozen: a frozen dataclass sets each field through object.__setattr__
    upstream_task_id: str
    state: UpstreamState
    result_urls: tuple[str, ...]
    error_code: str | None
    error_message: str | None
    failure_class: FailureClass | None
    run_s: float | None = None  # billable run seconds the provider reported (rivya_core.cost)


_STATES = {s.value: s for s in (_Upstream.SUCCEEDED, _Upstream.FAILED, _Upstream.RUNNING)}
_OUTCOMES = {o.value: o for o in CallbackOutcome}
_CLASSES = {c.value: c for c in FailureClass if c is not FailureClass.BILLING}


def _parse_callback(raw: bytes) -> _Parsed | str:
    """The callback body, or the reason it is malformed. Every field is type-checked
    before it is compared or hashed: any JSON value of the wrong shape is malformed."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "body is not JSON"
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return "body has no data object"
    upstream, state = data.get("upstream_task_id"), data.get("state")
    if not isinstance(upstream, str) or not upstream or len(upstream) > 200:
        return "data.upstream_task_id missing or not a string"
    if not isinstance(state, str) or state not in _STATES:
        return "data.state is not succeeded, failed or running"
    urls = data.get("result_urls")
    urls = [] if urls is None else urls
    if not isinstance(urls, list) or not all(isinstance(u, str) and 0 < len(u) <= 2000 for u in urls) or len(urls) > 50:
        return "data.result_urls is not a list of URLs"
    klass = data.get("failure_class")
    if klass is not None and (not isinstance(klass, str) or klass not in _CLASSES):
        return "data.failure_class is not user, provider or infrastructure"
    code, message = data.get("error_code"), data.get("error_message")
    if code is not None and not isinstance(code, str) or message is not None and not isinstance(message, str):
        return "data.error_code / error_message are not strings"
    return _Parsed(upstream, _STATES[state], tuple(urls), code and code[:80], message and message[:2000],
                   klass and _CLASSES[klass])


def _already(status: str) -> str:
    """Why a callback for a finished task is a duplicate."""
    return f"task already {status}"


def _callback_outcome(parsed: _Parsed) -> CallbackOutcome:
    """An early callback (success without URLs yet) is deferred; a "still running" report
    is progress (nothing changes); a result applies."""
    if parsed.state == _Upstream.SUCCEEDED and not parsed.result_urls:
        return _Outcome.DEFERRED
    if parsed.state not in (_Upstream.SUCCEEDED, _Upstream.FAILED):
        return _Outcome.PROGRESS
    return _Outcome.APPLIED


def _run_of(task: Task) -> rules.Run:
    return rules.Run(task.id, task.model, task.prompt, task.reserved_credits, task.created_at)


def _parse_with(fmt: CallbackFormat, raw: bytes) -> _Parsed | str:
    """A provider's own callback body, through its client's parser."""
    got = fmt.parse(raw)
    if isinstance(got, str):
        return got
    upstream_id, st = got
    return _Parsed(upstream_id, st.state, tuple(st.result_urls), st.error_code, st.error_message, st.failure_class,
                   st.run_s)


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - datetime(1970, 1, 1)).total_seconds()


def _operator(operator: Any, reason: Any) -> tuple[str, str]:
    if not isinstance(operator, str) or not operator.strip():
        raise ActionRefused("a support action needs the operator's name", reason=SupportRefusal.NO_OPERATOR)
    if not isinstance(reason, str) or not reason.strip():
        raise ActionRefused("a support action needs a reason", reason=SupportRefusal.NO_REASON)
    return operator.strip()[:100], reason.strip()[:500]
