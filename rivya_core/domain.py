"""The lifecycle's vocabulary: states, allowed moves, row shapes and typed errors.

Plain dataclasses and enums only: no database, no clock, no SimPy. Field names
are the column names of the data contract (DESIGN.md), so a row read from any
store maps onto these one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar


class TaskStatus(StrEnum):
    WAITING = "WAITING"
    GENERATING = "GENERATING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


ACTIVE = frozenset({TaskStatus.WAITING, TaskStatus.GENERATING})
TERMINAL = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED})

ALLOWED_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.WAITING: frozenset({TaskStatus.GENERATING, TaskStatus.FAILED}),
    TaskStatus.GENERATING: frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED}),
    TaskStatus.SUCCESS: frozenset(),
    TaskStatus.FAILED: frozenset(),
}


_SOURCES: dict[TaskStatus, frozenset[TaskStatus]] = {
    new: frozenset(s for s, targets in ALLOWED_MOVES.items() if new in targets) for new in TaskStatus
}


def sources_of(new: TaskStatus) -> frozenset[TaskStatus]:
    """The states a task may be in for a move to `new` to be legal (computed once per state: a
    compare-and-set move asks this on every step)."""
    return _SOURCES.get(new, frozenset())


class Category(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    CHAT = "chat"


class FailureClass(StrEnum):
    USER = "user"
    PROVIDER = "provider"
    INFRASTRUCTURE = "infrastructure"
    BILLING = "billing"


class EntryType(StrEnum):
    GRANT = "grant"
    CONSUME = "consume"
    REFUND = "refund"
    CHAT_RESERVE = "chat_reserve"
    CHAT_REFUND = "chat_refund"
    CHAT_CHARGE = "chat_charge"
    ADJUSTMENT = "adjustment"
    EXPIRE = "expire"  # credits left on a grant when it expired (imported sources, rivya_core.sources)


class NotificationKind(StrEnum):
    GENERATION_SUCCESS = "generation_success"
    GENERATION_FAILED = "generation_failed"
    INSUFFICIENT_CREDITS = "insufficient_credits"


class CallbackOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    DEFERRED = "deferred"
    REJECTED_SIGNATURE = "rejected_signature"
    REJECTED_STALE = "rejected_stale"
    UNKNOWN_TASK = "unknown_task"
    MALFORMED = "malformed"
    PROGRESS = "progress"  # a valid "still running" report: recorded, nothing changes


# A webhook id counts as seen once a delivery carrying it was applied or deferred: a later delivery
# with the same id is a duplicate (the stores decide it; the SQL store inside the callback's INSERT).
WEBHOOK_SEEN_OUTCOMES = frozenset({CallbackOutcome.APPLIED, CallbackOutcome.DEFERRED})


class ChatStatus(StrEnum):
    RESERVED = "reserved"
    SETTLED = "settled"
    REFUSED = "refused"
    FAILED = "failed"


E = TypeVar("E", bound=StrEnum)


def known(enum: type[E], value: Any) -> E | Any:
    """The member of enum whose value is value, or value unchanged when this version does not
    know it (a row read as stored stays readable; the audit reports the unknown value)."""
    try:
        return enum(value)
    except ValueError:
        return value


# Error codes the lifecycle itself writes on ai_task.error_code.
INSUFFICIENT_CREDITS = "insufficient_credits"
TIMEOUT = "timeout"
NO_RESULT_URLS = "no_result_urls"
MARKED_FAILED = "marked_failed_by_operator"
INTERRUPTED = "interrupted"
OUTPUT_COPY_FAILED = "output_copy_failed"  # the outputs could not be copied into our result store


# --- rows -----------------------------------------------------------------


@dataclass
class Account:
    id: int
    email: str
    name: str
    created_at: datetime
    balance: int = 0


@dataclass
class Task:
    id: int
    user_id: int
    model: str
    category: Category
    prompt: str
    params: dict[str, Any]
    status: TaskStatus
    billing_type: str
    reserved_credits: int
    provider: str
    created_at: datetime
    upstream_task_id: str | None = None
    result_urls: list[str] | None = None
    error_code: str | None = None
    error_message: str | None = None
    failure_class: FailureClass | None = None
    chat_message_id: int | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    settled_at: datetime | None = None
    next_check_at: datetime | None = None
    check_attempts: int = 0
    rerun_of: int | None = None  # the task support re-ran this one from (ai_task.rerun_of)
    provider_run_s: float | None = None  # billable run seconds the provider reported (ai_task.provider_run_s)

    def __post_init__(self) -> None:
        # rows come from stores and callers as plain strings: typed here, once per row built. A
        # value this version does not know stays as read (the audit reports it) rather than
        # making the row unreadable.
        self.status = known(TaskStatus, self.status)
        self.category = known(Category, self.category)
        if self.failure_class is not None:
            self.failure_class = known(FailureClass, self.failure_class)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class LedgerEntry:
    id: int
    user_id: int
    entry_type: str
    amount: int
    balance_after: int
    idempotency_key: str
    created_at: datetime
    task_id: int | None = None
    chat_message_id: int | None = None
    note: str | None = None
    support: bool = False  # issued by a support action (a goodwill refund), not by the service's rules


@dataclass
class Notification:
    id: int
    user_id: int
    kind: str
    title: str
    body: str
    created_at: datetime
    task_id: int | None = None
    read_at: datetime | None = None
    idempotency_key: str | None = None


@dataclass
class TaskEvent:
    id: int
    task_id: int
    at: datetime
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProviderCallback:
    id: int
    provider: str
    received_at: datetime
    signature_valid: bool
    outcome: str
    body: str
    webhook_id: str | None = None
    upstream_task_id: str | None = None
    task_id: int | None = None
    detail: str | None = None


@dataclass
class ParkedCallback:
    """A signed, well-formed callback for an upstream id no task holds yet (the provider
    answered the submission and called back before our write of the upstream id).
    Kept until a task takes that upstream id, then applied to it."""

    id: int
    callback_id: int  # its provider_callback row
    provider: str
    upstream_task_id: str
    received_at: datetime
    state: str  # succeeded | failed | running
    webhook_id: str | None = None
    result_urls: list[str] | None = None
    error_code: str | None = None
    error_message: str | None = None
    failure_class: str | None = None
    task_ref: str | None = None  # our reference from the webhook URL, when it carried one
    claimed_task_id: int | None = None
    claimed_at: datetime | None = None


@dataclass
class ChatSession:
    id: int
    user_id: int
    model: str
    title: str
    created_at: datetime


@dataclass
class ChatMessage:
    id: int
    session_id: int
    role: str
    content: str
    created_at: datetime
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reserved_credits: int = 0
    charged_credits: int | None = None
    status: str = ChatStatus.RESERVED
    settled_at: datetime | None = None


# --- typed errors -------------------------------------------------------------


class RivyaError(Exception):
    """Base of every error the core raises on purpose.

    `code` is stable (tests, the CLI and pages key on it), `message` can be read
    to a user, `user_correctable` says whether the user can fix it themselves.
    """

    code = "rivya_error"
    user_correctable = False

    def __init__(self, message: str, *, code: str | None = None, user_correctable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if user_correctable is not None:
            self.user_correctable = user_correctable

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "user_correctable": self.user_correctable}


class ValidationError(RivyaError):
    code = "invalid_request"
    user_correctable = True


class InsufficientCredits(RivyaError):
    code = INSUFFICIENT_CREDITS
    user_correctable = True


class NotFound(RivyaError):
    code = "not_found"


class TaskEvicted(NotFound):
    """A task a streaming store wrote out and then forgot (the simulation's run
    buffer): its full row is in the database, not in memory. Carries what the
    store still remembers, so a late callback can be recorded as a repeat.
    Raised instead of handing out a hollow row; nothing was written."""

    code = "task_evicted"

    def __init__(self, task_id: int, status: str, provider: str, message: str | None = None):
        super().__init__(message or f"task {task_id} was finished, written out and evicted from memory")
        self.task_id, self.status, self.provider = task_id, status, provider


class ActionRefused(RivyaError):
    """A support action the rules do not allow (refund not due, task not stuck…). `reason` is
    which refusal it was, a machine-readable code (rivya_core.rules: RefundRefusal,
    MarkFailedRefusal, RecheckRefusal, SupportRefusal): pages, the CLI and tests key on it,
    never on the message's wording."""

    code = "action_refused"

    def __init__(self, message: str, *, reason: StrEnum | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reason": None if self.reason is None else str(self.reason)}


class TurnClosed(RivyaError):
    """A chat turn that is no longer holding a reservation: it was settled or
    failed already (code chat_already_settled / chat_already_failed) or never
    reserved anything (chat_not_reserved). Nothing was written."""

    code = "chat_not_reserved"

    def __init__(self, message_id: int, status: str):
        codes: dict[str, str] = {ChatStatus.SETTLED: "chat_already_settled", ChatStatus.FAILED: "chat_already_failed"}
        code = codes.get(status, "chat_not_reserved")
        super().__init__(f"chat message {message_id} is already {status}; nothing was changed", code=code)
        self.status = status


class IdempotencyConflict(RivyaError):
    """A ledger write whose idempotency key is already used by an entry with another
    user, kind or amount. Nothing was written."""

    code = "idempotency_key_reused"


def replayed_entry(existing: LedgerEntry, user_id: int, entry_type: str, amount: int) -> LedgerEntry:
    """The entry a keyed write replays: the same user, kind and amount get the original
    back; anything else reusing the key is refused (as payment APIs do)."""
    asked = (user_id, str(entry_type), amount)
    if (existing.user_id, str(existing.entry_type), existing.amount) != asked:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was used for {existing.entry_type} of "
            f"{existing.amount} to account {existing.user_id}; refused {entry_type} of {amount} to account {user_id}"
        )
    return existing


def balance_after(balance: int, amount: int) -> int:
    """The balance a ledger row of amount leaves on an account holding balance. The never-overdraw
    rule of the data contract (balance_after is never negative): a row that would leave less than
    zero is refused with InsufficientCredits, and nothing is written. Every store calls this."""
    after = balance + int(amount)
    if after < 0:
        raise InsufficientCredits(f"balance {balance} cannot cover {-amount} credits (short by {-after})")
    return after


class SchemaMissing(RivyaError):
    code = "schema_missing"


class StoreUnavailable(RivyaError):
    code = "store_unavailable"


class SupportAction(StrEnum):
    """A support action on one task: the task inspector, the CLI, bulk incidents and alerts'
    suggestions all name it by this value (`incident.action` stores it). The lifecycle runs it
    (`LifecycleService.support`, the one dispatch of support actions)."""

    RECHECK = "recheck"
    REFUND = "refund"
    MARK_FAILED = "mark-failed"

    @property
    def event_name(self) -> str:
        """`detail.action` of the support_action event it writes."""
        return self.value.replace("-", "_")

    @property
    def words(self) -> str:
        """The action in a sentence ("mark failed")."""
        return {"recheck": "re-check"}.get(self.value, self.value.replace("-", " "))

    @classmethod
    def parse(cls, value: str) -> SupportAction:
        """The action value names; ValidationError (code support_action_unknown) for anything else."""
        try:
            return cls(value)
        except ValueError:
            raise ValidationError(
                f"support action {value!r} is not one of {', '.join(cls)}", code="support_action_unknown"
            ) from None


class EventKind(StrEnum):
    """task_event.kind: the steps of a task's story, in the order they happen."""

    CREATED = "created"
    CHARGED = "charged"
    CHARGE_REFUSED = "charge_refused"
    SUBMITTED = "submitted"
    SUBMIT_FAILED = "submit_failed"
    CALLBACK = "callback"  # detail: webhook_id, outcome, state
    DEFERRED = "deferred"  # early callback; detail: attempt, next_check_in_s
    RECHECK = "recheck"  # upstream status re-read; detail: state, reason
    POLL = "poll"  # polling sweep read; detail: state
    POLL_ERROR = "poll_error"  # a status read the provider failed; detail: error_kind, message, path
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # detail: error_code, failure_class
    REFUNDED = "refunded"  # detail: amount, reason
    REFUND_SKIPPED = "refund_skipped"  # policy keeps the credits; detail: reason
    NOTIFIED = "notified"  # detail: kind
    SUPPORT_ACTION = "support_action"  # detail: operator, action, reason, result; refusal (its code) when refused
    RECOVERED = "recovered"  # crash-recovery sweep; detail: what
    DUPLICATE_WARNING = "duplicate_warning"
    RERUN = "rerun"  # support re-ran this task; detail: rerun_task_id, courtesy
    RERUN_OF = "rerun_of"  # this task is a re-run; detail: original_task_id, courtesy
    UPSTREAM_CANCEL = "upstream_cancel"  # we asked the provider to stop a job we gave up on; detail: answer, detail
    OUTPUT_COPY = "output_copy"  # outputs copied into our result store; detail: provider_urls, copied | error
