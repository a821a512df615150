"""The three ports the lifecycle service talks to: Clock, Provider, Store.

The simulation plugs in a SimPy clock and the mock provider farm; tests plug
in fakes; a live deployment plugs in wall time, real provider clients and the
SQL store. The service never knows which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from .domain import (
    Account,
    ChatMessage,
    ChatSession,
    FailureClass,
    LedgerEntry,
    Notification,
    ParkedCallback,
    ProviderCallback,
    RivyaError,
    Task,
    TaskEvent,
    known,
)

# --- Clock ----------------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, naive UTC."""


# --- Provider -------------------------------------------------------------------


class ProviderFault(StrEnum):
    """How a submission (or a status read) failed to reach a provider's job."""

    REFUSED = "refused"  # the provider said no (a 4xx): resubmitting will not help
    ERROR = "error"  # the provider erred or could not be reached
    TIMEOUT = "timeout"  # no answer within the timeout


class UpstreamState(StrEnum):
    """What a provider says of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the provider does not know the job, or could not be asked


E = TypeVar("E", bound=StrEnum)


def _member(enum: type[E], value: Any, what: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(enum)}") from None


class ProviderError(RivyaError):
    """A submission that did not produce an upstream job (or a status read that failed).
    `kind` is a ProviderFault; an unknown kind is a ValueError (a client bug)."""

    code = "provider_error"

    def __init__(self, kind: str, message: str):
        kind = _member(ProviderFault, kind, "provider fault")
        super().__init__(message, code=f"submit_{kind}")
        self.kind: ProviderFault = kind


@dataclass(frozen=True)
class UpstreamStatus:
    """What the provider knows about a job right now. `state` is an UpstreamState (a plain
    string is typed on construction; an unknown one is a ValueError, a client bug);
    `failure_class` a FailureClass when it names one."""

    state: UpstreamState
    result_urls: tuple[str, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    failure_class: FailureClass | None = None
    run_s: float | None = None  # billable run seconds, when the provider reports them (rivya_core.cost)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", _member(UpstreamState, self.state, "upstream state"))
        if self.failure_class is not None:
            object.__setattr__(self, "failure_class", known(FailureClass, self.failure_class))


class CancelAnswer(StrEnum):
    """What a provider answered when asked to stop a job (rivya_core.upstream_cancel)."""

    CANCELED = "canceled"  # stopped (or its stop was requested)
    ALREADY_FINISHED = "already_finished"  # it had ended: nothing to stop
    UNKNOWN = "unknown"  # the provider does not know the job
    ERROR = "error"  # no usable answer (HTTP error, timeout)
    UNSUPPORTED = "unsupported"  # this provider client cannot cancel


@dataclass(frozen=True)
class UpstreamCancel:
    """A provider's answer to a cancel: `answer` a CancelAnswer, `detail` its words (HTTP status,
    the provider's status), `run_s` the seconds billed when the answer says."""

    answer: CancelAnswer
    detail: str = ""
    run_s: float | None = None


class CallbackFormat(Protocol):
    """How a provider API signs and shapes its webhooks (rivya_core.providers). A provider
    client that has one as `.callbacks` has its deliveries verified and read with it;
    without one the core's Standard Webhooks secrets and its own body format apply."""

    def verify(self, headers: Mapping[str, str], body: bytes, now_ts: float) -> str:
        """The delivery's id when the signature holds; raises webhooks.WebhookError
        (code bad_signature, stale, malformed or missing_headers) otherwise."""

    def parse(self, body: bytes) -> tuple[str, UpstreamStatus] | str:
        """(upstream id, what the delivery says), or why the body is malformed."""


class Provider(Protocol):
    name: str

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        """Start a job and return its upstream id. `task_ref` is our idempotency
        key: submitting the same ref twice returns the same job. Raises
        ProviderError."""

    def status(self, upstream_task_id: str) -> UpstreamStatus: ...

    def find(self, task_ref: str) -> str | None:
        """Upstream id of the job started for task_ref, if any (crash recovery)."""

    # optional: cancel(upstream_task_id) -> UpstreamCancel, asking the provider to stop a job the
    # service gave up on (rivya_core.upstream_cancel); a client without it is answered UNSUPPORTED


# --- Store ----------------------------------------------------------------------


@dataclass
class PostResult:
    entry: LedgerEntry
    created: bool  # False: the idempotency key existed, nothing was written


@dataclass
class Snapshot:
    """All rows of a store, for audits and dumps of small stores."""

    accounts: list[Account] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    events: list[TaskEvent] = field(default_factory=list)
    callbacks: list[ProviderCallback] = field(default_factory=list)
    sessions: list[ChatSession] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)


class Tx(Protocol):
    """One unit of work. Everything done through a Tx commits together or not
    at all. Returned rows are detached copies: mutating them changes nothing."""

    # accounts
    def add_account(self, email: str, name: str, at: datetime) -> Account: ...
    def get_account(self, user_id: int) -> Account | None: ...
    def account_by_email(self, email: str) -> Account | None: ...

    # tasks
    def insert_task(self, task: Task) -> Task:
        """Insert; task.id == 0 means 'assign one'. Returns the stored row."""

    def get_task(self, task_id: int, *, for_update: bool = False) -> Task | None:
        """The task, or None when there is none. A store that wrote a finished task
        out and forgot it (the simulation's run buffer) raises TaskEvicted instead."""

    def task_by_upstream(self, provider: str, upstream_task_id: str, *, for_update: bool = False) -> Task | None:
        """The newest task holding this upstream id; for_update also locks its row until the unit ends.
        TaskEvicted as get_task."""

    def update_task(self, task_id: int, expect_status: Iterable[str] | None = None, **fields: Any) -> bool:
        """Compare-and-set: write fields only if the task's status is in
        expect_status (any status when None). True when the row changed."""

    def tasks_due_for_check(self, now: datetime, limit: int) -> list[Task]:
        """GENERATING tasks whose next_check_at <= now, oldest first."""

    def active_tasks_older_than(self, cutoff: datetime, limit: int) -> list[Task]:
        """WAITING or GENERATING tasks created before cutoff, oldest first."""

    def user_tasks(
        self, user_id: int, *, statuses: Iterable[str] | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[Task]:
        """A user's tasks, newest first."""

    # ledger
    def post(
        self,
        user_id: int,
        entry_type: str,
        amount: int,
        idempotency_key: str,
        at: datetime,
        *,
        task_id: int | None = None,
        chat_message_id: int | None = None,
        note: str | None = None,
        support: bool = False,
    ) -> PostResult:
        """Append a ledger row atomically: lock the account, compute
        balance_after, refuse (InsufficientCredits) if it would go below zero,
        write the row and the cached balance. An existing idempotency_key
        returns the existing row with created=False and writes nothing.
        support=True marks an entry a support action issued (credit_ledger.support).
        A task the store evicted (see get_task) takes no new entry: TaskEvicted."""

    def entry(self, idempotency_key: str) -> LedgerEntry | None: ...
    def task_entries(self, task_id: int) -> list[LedgerEntry]: ...
    def balance(self, user_id: int) -> int: ...

    # timeline, notifications, callbacks
    def add_event(self, task_id: int, kind: str, detail: dict[str, Any], at: datetime) -> None: ...
    def task_events(self, task_id: int) -> list[TaskEvent]: ...

    def add_notification(
        self,
        user_id: int,
        kind: str,
        title: str,
        body: str,
        at: datetime,
        *,
        task_id: int | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """False (and nothing written) when idempotency_key already exists."""

    def add_callback(self, cb: ProviderCallback) -> ProviderCallback: ...
    def webhook_seen(self, provider: str, webhook_id: str) -> bool:
        """True when a callback with this id was already applied or deferred."""

    def add_callback_unless_seen(self, cb: ProviderCallback, seen_detail: str) -> ProviderCallback:
        """add_callback, except that when cb's webhook id was already applied or deferred
        (webhook_seen) the row is stored as a duplicate with seen_detail; returns the stored row."""

    def get_callback(self, callback_id: int) -> ProviderCallback | None: ...
    def parked_of(self, callback_id: int) -> ParkedCallback | None:
        """The parked copy of a recorded callback (claimed or not), None when it was never parked."""

    def settle_callback(self, callback_id: int, task_id: int, outcome: str, detail: str | None) -> None:
        """Link a recorded callback to its task and give it its final outcome (a parked one)."""

    def lock_upstream(self, provider: str, upstream_task_id: str) -> None:
        """Serialise, until the unit of work ends, everyone parking or claiming callbacks of this
        upstream id (so a callback and the write of its upstream id cannot miss each other)."""

    def park_callback(self, parked: ParkedCallback) -> ParkedCallback: ...

    def claim_parked(self, provider: str, upstream_task_id: str, task_id: int, at: datetime) -> list[ParkedCallback]:
        """The unclaimed parked callbacks of this upstream id, oldest first, now claimed by task_id."""

    def parked_upstream_for_ref(self, provider: str, task_ref: str) -> str | None:
        """The upstream id of the oldest unclaimed parked callback carrying our task reference."""

    # chat
    def add_session(self, user_id: int, model: str, title: str, at: datetime) -> ChatSession: ...
    def get_session(self, session_id: int) -> ChatSession | None: ...
    def add_message(self, msg: ChatMessage) -> ChatMessage: ...
    def get_message(self, message_id: int, *, for_update: bool = False) -> ChatMessage | None: ...

    def update_message(self, message_id: int, expect_status: Iterable[str] | None = None, **fields: Any) -> bool:
        """Compare-and-set like update_task: write only if the message's status is
        in expect_status (any when None). True when the row changed; NotFound when
        there is no such message."""

    def reserved_messages_older_than(self, cutoff: datetime, limit: int) -> list[ChatMessage]:
        """Chat turns still holding a reservation, created before cutoff, oldest first."""


class Store(Protocol):
    def begin(self) -> AbstractContextManager[Tx]:
        """A unit of work. Retryable conflicts (deadlock, serialization
        failure) raise RetryableConflict so the caller can re-run the step."""

    def snapshot(self) -> Snapshot: ...


class RetryableConflict(Exception):
    """The store lost a race it can win on retry (deadlock, serialization)."""
