"""The lifecycle's business rules, each written once, as pure functions over typed facts.

The service decides with them, `diagnose` explains with them, the simulation's
KPIs count with them and the tests call them. The audit checks the same rules
over whole tables: `rivya_core.rules_sql` holds their set-based SQL form under
the same names, and a test holds the two forms equal on every combination of
facts. Nothing here reads a store, a database or a clock.

    task_ref(task_id) -> "task-{id}"          the reference a provider job is submitted and found under
    submit_failure_class(fault) -> FailureClass     a failed submission's class, by the provider fault
    refund_refusal(facts, policy) -> RefundRefusal | None   why a refund is not due (None: it is due)
    mark_failed_refusal(facts) / recheck_refusal(facts, has_client) -> MarkFailedRefusal / RecheckRefusal | None
    Refusal(code, text)                        a support action's refusal: the code to key on, the sentence to show
    refund_allowed(status, failure_class, support, policy, rerun) -> bool   may a refund row exist at all
    courtesy_refund(support, rerun) -> bool    a courtesy re-run's charge given back at once by support
    credits_outcome(facts, charged, refunded, policy) -> str   a task's credits after an act, for the operator
    rerun_refusal(facts) -> RerunRefusal | None   why support may not re-run a task for its user now
    reprocess_refusal(facts) -> ReprocessRefusal | None   why a stored callback cannot be re-processed
    outcome_notification(status, error_code) -> NotificationKind | None   what a settled task tells its user
    support_failure_notice(category, model, charged, refunded)   what a task support marked failed tells its user
    mark_failed_refund(charged, refunded, policy) -> int   the credits marking a task failed gives back
    credit_flows(sums_by_type) -> CreditFlows   ledger sums per entry type as flows that add up
    first_check_in(category, callbacks_enabled, policy) / next_check(attempts, policy) / deferral(policy)
    heavier_duplicate(new, running, policy) -> bool   a new run outweighing a running same-prompt run

What support's checklist concludes (Verdict, NextAction, Severity) is in `rivya_core.verdicts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum

from .credits import ChatFigures
from .domain import ACTIVE, INSUFFICIENT_CREDITS, EntryType, FailureClass, NotificationKind, TaskStatus
from .policy import BillingPolicy

# --- submission -----------------------------------------------------------------------------


def task_ref(task_id: int) -> str:
    """The client reference a task's provider job is submitted under, and found again by after a crash."""
    return f"task-{task_id}"


SUBMIT_FAILURE_CLASS: Mapping[str, FailureClass] = {
    "refused": FailureClass.PROVIDER,
    "error": FailureClass.PROVIDER,
    "timeout": FailureClass.INFRASTRUCTURE,
}


def submit_failure_class(fault: str) -> FailureClass:
    """A submission the provider refused or erred on is the provider's failure; a timeout, ours."""
    return SUBMIT_FAILURE_CLASS.get(str(fault), FailureClass.PROVIDER)


# --- refunds ----------------------------------------------------------------------------------


class RefundRefusal(StrEnum):
    """Why a task's credits are not reversed."""

    NOT_FAILED = "not_failed"
    NEVER_CHARGED = "never_charged"
    ALREADY_REFUNDED = "already_refunded"
    POLICY_KEEPS = "policy_keeps"


@dataclass(frozen=True)
class RefundFacts:
    status: str
    failure_class: str | None
    charged: bool
    refunded: bool


def refund_refusal(facts: RefundFacts, policy: BillingPolicy) -> RefundRefusal | None:
    """Why a refund of this task is not due, or None when it is: a failed task that was
    charged, not yet refunded, whose failure class the policy reverses."""
    if facts.status != TaskStatus.FAILED:
        return RefundRefusal.NOT_FAILED
    if not facts.charged:
        return RefundRefusal.NEVER_CHARGED
    if facts.refunded:
        return RefundRefusal.ALREADY_REFUNDED
    if not policy.refunds(facts.failure_class):
        return RefundRefusal.POLICY_KEEPS
    return None


def refund_due(facts: RefundFacts, policy: BillingPolicy) -> bool:
    return refund_refusal(facts, policy) is None


def refund_refusal_text(refusal: RefundRefusal, facts: RefundFacts, policy: BillingPolicy) -> str:
    return {
        RefundRefusal.NOT_FAILED: f"task is {facts.status}; only failed tasks are refunded",
        RefundRefusal.NEVER_CHARGED: "task was never charged",
        RefundRefusal.ALREADY_REFUNDED: "task was already refunded",
        RefundRefusal.POLICY_KEEPS: f"policy {policy.name!r} keeps credits for {facts.failure_class} failures",
    }[refusal]


def credits_outcome(facts: RefundFacts, charged: int, refunded: int, policy: BillingPolicy) -> str:
    """What happened to a task's credits, for the operator who just acted on it: "refunded N
    credits", or no refund and why (`facts.refunded` is ignored: `refunded` is the amount)."""
    if refunded:
        return f"refunded {refunded} credits"
    if not charged:
        return "no refund: nothing was charged"
    if facts.status != TaskStatus.FAILED:
        return f"{charged} credits charged; a refund is decided when the task fails"
    facts = RefundFacts(facts.status, facts.failure_class, True, False)
    code = refund_refusal(facts, policy)
    if code is None:
        return f"no refund yet: {charged} credits are due"
    return f"no refund: {refund_refusal_text(code, facts, policy)}"


def refund_allowed(
    status: str, failure_class: str | None, support: bool, policy: BillingPolicy, rerun: bool = False
) -> bool:
    """May a task refund row exist: a support refund (its own fact on the row) on a failed task,
    a failed task whose class the policy reverses, or a courtesy re-run's refund in any state
    (`rerun`: the task is a re-run, ai_task.rerun_of set). (Once per charged task is `refund_refusal`'s.)"""
    return courtesy_refund(support, rerun) or (
        status == TaskStatus.FAILED and (bool(support) or policy.refunds(failure_class))
    )


def courtesy_refund(support: bool, rerun: bool) -> bool:
    """A support refund on a re-run task: support re-ran the task as a courtesy and gave its charge
    back at once (before the run settles), so it is allowed whatever the re-run's state."""
    return bool(support) and bool(rerun)


# --- the other support actions' refusals -------------------------------------------------------


class MarkFailedRefusal(StrEnum):
    """Why support may not mark a task failed."""

    NOT_ACTIVE = "not_active"  # already settled: only waiting or generating tasks
    NOT_STUCK_YET = "not_stuck_yet"  # younger than its category's stuck threshold


class RecheckRefusal(StrEnum):
    """Why support may not re-check a task upstream."""

    NOT_ACTIVE = "not_active"
    NO_PROVIDER_CLIENT = "no_provider_client"  # this environment has no client for the task's provider
    NOT_STUCK_YET = "not_stuck_yet"  # a waiting task's submission may still be in flight


class SupportRefusal(StrEnum):
    """Why a support action (one task or a bulk incident) is refused before its own rule is asked."""

    NO_OPERATOR = "no_operator"
    NO_REASON = "no_reason"
    SOURCE_BUSY = "source_busy"  # the database is being written by a run: no action may run on it now


@dataclass(frozen=True)
class Refusal:
    """A support action's refusal: `code` is what pages, the CLI, events and tests key on;
    `text` the sentence shown to people."""

    code: StrEnum
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class StuckFacts:
    status: str
    age_s: float  # since submission, else creation, at the clock support judges with
    stuck_after_s: float  # the policy's stuck threshold for the task's category


def mark_failed_refusal(facts: StuckFacts) -> MarkFailedRefusal | None:
    """Support marks a task failed only while it waits or generates, once it is stuck."""
    if facts.status not in ACTIVE:
        return MarkFailedRefusal.NOT_ACTIVE
    if facts.age_s < facts.stuck_after_s:
        return MarkFailedRefusal.NOT_STUCK_YET
    return None


def recheck_refusal(facts: StuckFacts, has_client: bool) -> RecheckRefusal | None:
    """Support re-checks a waiting or generating task whose provider has a client here; a waiting
    one only once it is stuck (before that its submission may be in flight)."""
    if facts.status not in ACTIVE:
        return RecheckRefusal.NOT_ACTIVE
    if not has_client:
        return RecheckRefusal.NO_PROVIDER_CLIENT
    if facts.status == TaskStatus.WAITING and facts.age_s < facts.stuck_after_s:
        return RecheckRefusal.NOT_STUCK_YET
    return None


def stuck_refusal_text(
    refusal: MarkFailedRefusal | RecheckRefusal, facts: StuckFacts, action: str, provider: str = ""
) -> str:
    if refusal == MarkFailedRefusal.NOT_ACTIVE:  # the same value in both enums
        return f"task is {facts.status}; only waiting or generating tasks {action}"
    if refusal == RecheckRefusal.NO_PROVIDER_CLIENT:
        return f"no client for provider {provider!r} in this environment"
    return f"task is {int(facts.age_s)} s old; it counts as stuck after {int(facts.stuck_after_s)} s"


class RerunRefusal(StrEnum):
    """Why support may not re-run a task for its user now (the guide's "recheck before running
    again": a run of the same prompt that is still going must finish first)."""

    ORIGINAL_RUNNING = "original_running"  # the task itself still waits or generates
    DUPLICATE_RUNNING = "duplicate_running"  # another run of the user's, same model and prompt, still runs
    NO_PROVIDER_CLIENT = "no_provider_client"  # no client here for the model's provider: it would fail at submission
    REQUEST_INVALID = "request_invalid"  # the task's model, prompt and params no longer pass validation


@dataclass(frozen=True)
class RerunFacts:
    status: str  # the original task's status
    running_twins: tuple[int, ...]  # the user's other running tasks with the same model and prompt
    has_client: bool  # this environment has a client for the task's provider


def rerun_refusal(facts: RerunFacts) -> RerunRefusal | None:
    """A task is re-run only once neither it nor a same-model, same-prompt run of its user is still
    waiting or generating, and where its provider can be asked (else the re-run could only fail)."""
    if facts.status in ACTIVE:
        return RerunRefusal.ORIGINAL_RUNNING
    if facts.running_twins:
        return RerunRefusal.DUPLICATE_RUNNING
    if not facts.has_client:
        return RerunRefusal.NO_PROVIDER_CLIENT
    return None


def rerun_refusal_text(refusal: RerunRefusal, facts: RerunFacts, provider: str = "") -> str:
    if refusal == RerunRefusal.ORIGINAL_RUNNING:
        return (
            f"the task is still {facts.status}: wait for it, re-check it upstream, or mark it failed once "
            "it is stuck, before running it again"
        )
    if refusal == RerunRefusal.REQUEST_INVALID:
        return "the task's request no longer passes validation; nothing was created"
    if refusal == RerunRefusal.DUPLICATE_RUNNING:
        twins = ", ".join(f"#{t}" for t in facts.running_twins[:10])
        return f"a run of the same model and prompt is still in progress ({twins}): wait for it before running again"
    return (
        f"no client for provider {provider!r} in this environment: a re-run would fail at submission and "
        "tell the user their generation failed; nothing was created"
    )


class ReprocessRefusal(StrEnum):
    """Why support may not re-process a recorded provider callback."""

    NOT_PARKED = "not_parked"  # only a parked (unknown_task) callback waits for its task
    NO_TASK_YET = "no_task_yet"  # no task holds its upstream id yet: it stays parked
    BODY_UNREADABLE = "body_unreadable"  # recorded before parking: its stored body no longer parses


@dataclass(frozen=True)
class ReprocessFacts:
    outcome: str  # provider_callback.outcome as recorded now
    parked: bool  # it has a parked copy (parked_callback)
    claimed: bool  # that copy was claimed by a task already (applied once: a repeat is a duplicate)
    task_found: bool  # a task holds its upstream id at its provider now


def reprocess_refusal(facts: ReprocessFacts) -> ReprocessRefusal | None:
    """A callback parked for an upstream id no task held (or recorded as unknown_task before parking
    existed) is re-processed once a task holds that id. One already claimed is not refused: its
    re-process is recorded as a duplicate and changes nothing."""
    if not facts.parked and facts.outcome != "unknown_task":
        return ReprocessRefusal.NOT_PARKED
    if facts.claimed:
        return None
    if not facts.task_found:
        return ReprocessRefusal.NO_TASK_YET
    return None


# --- notifications ------------------------------------------------------------------------------


def outcome_notification(status: str, error_code: str | None) -> NotificationKind | None:
    """The one notification a settled task sends its user; None while it runs."""
    if status == TaskStatus.SUCCESS:
        return NotificationKind.GENERATION_SUCCESS
    if status == TaskStatus.FAILED:
        if error_code == INSUFFICIENT_CREDITS:
            return NotificationKind.INSUFFICIENT_CREDITS
        return NotificationKind.GENERATION_FAILED
    return None


# What operators write (names, reasons, incident names) is internal: it stays on the task's timeline
# (the support_action event) and in the incident. What the customer sees of a support act (the
# notification, the task's error message in History, the ledger note) is said in these words.
MARKED_FAILED_CLASS = FailureClass.INFRASTRUCTURE  # a task support gives up on: not the user's fault
MARKED_FAILED_MESSAGE = "stopped by support: it did not finish in the expected time"
SUPPORT_REFUND_NOTE = "support refund"


def mark_failed_refund(charged: int, refunded: bool, policy: BillingPolicy) -> int:
    """Credits marking a task failed gives back: its charge, when it was charged, not refunded yet,
    and the policy reverses the class support fails it with (MARKED_FAILED_CLASS); else 0."""
    facts = RefundFacts(TaskStatus.FAILED, MARKED_FAILED_CLASS, charged > 0, refunded)
    return charged if refund_refusal(facts, policy) is None else 0


def support_failure_notice(category: str, model: str, charged: int, refunded: int) -> tuple[str, str]:
    """(title, body) of the notification a task marked failed by support sends its user: what
    happened to the task and to its credits, truthfully (refunded, kept, or never charged)."""
    if refunded:
        money = f"your {refunded} credits were refunded."
    elif charged:
        money = f"your {charged} credits were not refunded."
    else:
        money = "nothing was charged."
    return "Your generation could not be completed", f"Your {category} from {model} could not be completed; {money}"


# --- credits ----------------------------------------------------------------------------------------

# Which flow each entry type's amount belongs to; charges are stored negative and shown positive.
FLOW_OF: Mapping[str, str] = {
    EntryType.GRANT: "granted",
    EntryType.ADJUSTMENT: "granted",
    EntryType.CONSUME: "task_charged",
    EntryType.REFUND: "task_refunded",
    EntryType.CHAT_RESERVE: "chat_reserved",
    EntryType.CHAT_CHARGE: "chat_overrun",
    EntryType.CHAT_REFUND: "chat_refunded",
}
_OUTFLOWS = frozenset({"task_charged", "chat_reserved", "chat_overrun"})


@dataclass(frozen=True)
class CreditFlows:
    """Credits by flow, adding up to what is left in balances:
    granted − task_charged + task_refunded − chat_charged + other = balance,
    where chat_charged is what users were finally charged for chat (credits.ChatFigures:
    reservations + overrun − refunds)."""

    granted: int = 0  # grants and adjustments
    task_charged: int = 0  # consume
    task_refunded: int = 0  # refund
    chat_reserved: int = 0  # chat_reserve (gross reservations)
    chat_overrun: int = 0  # chat_charge (beyond a reservation)
    chat_refunded: int = 0  # chat_refund (unused reservations returned)
    other: int = 0  # an entry type this version does not know

    @property
    def chat(self) -> ChatFigures:
        return ChatFigures(reserved=self.chat_reserved, overrun=self.chat_overrun, refunded=self.chat_refunded)

    @property
    def chat_charged(self) -> int:
        return self.chat.charged

    @property
    def charged(self) -> int:
        """Tasks and chat, as finally charged."""
        return self.task_charged + self.chat_charged

    @property
    def balance(self) -> int:
        return self.granted - self.task_charged + self.task_refunded - self.chat_charged + self.other

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "chat_charged": self.chat_charged, "balance": self.balance}


def credit_flows(sums_by_type: Mapping[str, int]) -> CreditFlows:
    """Ledger amounts summed per entry type, as flows."""
    flows = dict.fromkeys((f for f in CreditFlows.__dataclass_fields__), 0)
    for entry_type, amount in sums_by_type.items():
        flow = FLOW_OF.get(entry_type, "other")
        flows[flow] += -int(amount or 0) if flow in _OUTFLOWS else int(amount or 0)
    return CreditFlows(**flows)


# --- checks upstream ------------------------------------------------------------------------------


def first_check_in(category: str, callbacks_enabled: bool, policy: BillingPolicy) -> float:
    """Seconds from submission to the first upstream check: the polling interval when no
    callback will come, else the category's stuck threshold (a callback is expected first)."""
    return policy.poll_interval_s if not callbacks_enabled else policy.stuck_for(category)


def deferral(policy: BillingPolicy) -> tuple[float, int]:
    """(seconds to the next check, check attempts) after an early callback: the backoff starts."""
    return policy.recheck_backoff_s[0], 1


def next_check(check_attempts: int, policy: BillingPolicy) -> tuple[float, int]:
    """(seconds to the next check, check attempts after it) for a task still running upstream:
    a deferred task walks the re-check backoff; then (or never deferred) plain polling."""
    backoff = policy.recheck_backoff_s
    if 0 < check_attempts < len(backoff):
        return backoff[check_attempts], check_attempts + 1
    return policy.poll_interval_s, check_attempts


def rechecks_spent(check_attempts: int, policy: BillingPolicy) -> bool:
    return check_attempts >= len(policy.recheck_backoff_s)


# --- duplicate runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """The facts of a run that decide whether another one duplicates it."""

    task_id: int
    model: str
    prompt: str
    credits: int
    created_at: datetime


def heavier_duplicate(new: Run, running: Run, policy: BillingPolicy) -> bool:
    """`new` repeats `running` (same model and prompt, started within the duplicate window
    after it) and costs at least as much: warned or blocked as the policy's `duplicate_runs` says."""
    gap = (new.created_at - running.created_at).total_seconds()
    return (
        new.task_id != running.task_id
        and new.model == running.model
        and new.prompt == running.prompt
        and 0 <= gap <= policy.duplicate_window_s
        and policy.is_heavier_duplicate(new.credits, running.credits)
    )
