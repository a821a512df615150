"""What support's checklist concludes about a task or chat turn, as pure rules (`read.diagnose`
explains with them, the pages colour with them).

    Verdict, NextAction, verdict_severity(verdict) -> Severity   what the checklist concludes, and its colour
    stuck_next_action(StuckReads) -> NextAction   a stuck task's next action from what its reads found
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Verdict(StrEnum):
    """The state of a task or chat turn as support's checklist concludes it (`diagnose`)."""

    WAITING = "waiting"
    GENERATING = "generating"
    STUCK = "stuck"
    STUCK_PAST_TIMEOUT = "stuck_past_timeout"
    DELIVERED = "delivered"
    SUCCESS_WITHOUT_URLS = "success_without_urls"
    DELIVERED_BUT_REFUNDED = "delivered_but_refunded"
    FAILED_FOR_CREDITS = "failed_for_credits"
    FAILED_FOR_CREDITS_BUT_CHARGED = "failed_for_credits_but_charged"
    REFUND_DUE = "refund_due"
    REFUND_INCONSISTENT = "refund_inconsistent"
    FAILED_NEVER_CHARGED = "failed_never_charged"
    FAILED_REFUNDED = "failed_refunded"
    FAILED_USER_CREDITS_KEPT = "failed_user_credits_kept"
    FAILED_CREDITS_KEPT = "failed_credits_kept"
    CHAT_RESERVED = "chat_reserved"
    CHAT_RESERVATION_OVERDUE = "chat_reservation_overdue"
    CHAT_SETTLEMENT_MISMATCH = "chat_settlement_mismatch"
    CHAT_FAILED_REFUNDED = "chat_failed_refunded"
    CHAT_REFUSED = "chat_refused"
    CHAT_SETTLED = "chat_settled"
    CHAT_SETTLED_REFUNDED = "chat_settled_refunded"


VERDICT_TEXT: Mapping[Verdict, str] = {
    Verdict.WAITING: "waiting to be submitted — within normal time",
    Verdict.GENERATING: "still generating — within normal time",
    Verdict.STUCK: "stuck — past the stuck threshold",
    Verdict.STUCK_PAST_TIMEOUT: "stuck — past the timeout",
    Verdict.DELIVERED: "delivered",
    Verdict.SUCCESS_WITHOUT_URLS: "SUCCESS without result URLs",
    Verdict.DELIVERED_BUT_REFUNDED: "delivered, but refunded",
    Verdict.FAILED_FOR_CREDITS: "failed for credits — never charged",
    Verdict.FAILED_FOR_CREDITS_BUT_CHARGED: "failed for credits — but charged",
    Verdict.REFUND_DUE: "failed, refund due",
    Verdict.REFUND_INCONSISTENT: "failed, refund inconsistent",
    Verdict.FAILED_NEVER_CHARGED: "failed — never charged",
    Verdict.FAILED_REFUNDED: "failed, refunded",
    Verdict.FAILED_USER_CREDITS_KEPT: "failed — user-correctable, credits kept under the policy",
    Verdict.FAILED_CREDITS_KEPT: "failed, credits kept under the policy",
    Verdict.CHAT_RESERVED: "reserved — awaiting settlement",
    Verdict.CHAT_RESERVATION_OVERDUE: "reservation not settled — past the grace period",
    Verdict.CHAT_SETTLEMENT_MISMATCH: "settlement mismatch",
    Verdict.CHAT_FAILED_REFUNDED: "failed, reservation refunded",
    Verdict.CHAT_REFUSED: "refused — nothing charged",
    Verdict.CHAT_SETTLED: "settled",
    Verdict.CHAT_SETTLED_REFUNDED: "settled, difference refunded",
}


class Severity(StrEnum):
    """How much a conclusion asks of support, the colour pages draw it in: ok (nothing to do, all
    checks out), info (normal, or the user's to act on), warn (support should look), fail (money or
    an invariant is wrong, or the task is past its timeout)."""

    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


VERDICT_SEVERITY: Mapping[Verdict, Severity] = {
    Verdict.WAITING: Severity.INFO,
    Verdict.GENERATING: Severity.INFO,
    Verdict.STUCK: Severity.WARN,
    Verdict.STUCK_PAST_TIMEOUT: Severity.FAIL,
    Verdict.DELIVERED: Severity.OK,
    Verdict.SUCCESS_WITHOUT_URLS: Severity.FAIL,
    Verdict.DELIVERED_BUT_REFUNDED: Severity.FAIL,
    Verdict.FAILED_FOR_CREDITS: Severity.INFO,
    Verdict.FAILED_FOR_CREDITS_BUT_CHARGED: Severity.FAIL,
    Verdict.REFUND_DUE: Severity.FAIL,
    Verdict.REFUND_INCONSISTENT: Severity.FAIL,
    Verdict.FAILED_NEVER_CHARGED: Severity.OK,
    Verdict.FAILED_REFUNDED: Severity.OK,
    Verdict.FAILED_USER_CREDITS_KEPT: Severity.INFO,
    Verdict.FAILED_CREDITS_KEPT: Severity.OK,
    Verdict.CHAT_RESERVED: Severity.INFO,
    Verdict.CHAT_RESERVATION_OVERDUE: Severity.WARN,
    Verdict.CHAT_SETTLEMENT_MISMATCH: Severity.FAIL,
    Verdict.CHAT_FAILED_REFUNDED: Severity.OK,
    Verdict.CHAT_REFUSED: Severity.INFO,
    Verdict.CHAT_SETTLED: Severity.OK,
    Verdict.CHAT_SETTLED_REFUNDED: Severity.OK,
}


def verdict_severity(verdict: Verdict) -> Severity:
    """The one mapping from a verdict to how it is drawn (every page's verdict box)."""
    return VERDICT_SEVERITY[verdict]


class NextAction(StrEnum):
    """What support does next about it."""

    NOTHING = "nothing"
    WAIT = "wait"
    RECHECK_UPSTREAM = "recheck_upstream"
    RECHECK_LATER = "recheck_later"  # stuck, but the provider failed the latest status reads
    WAIT_FOR_INCIDENT = "wait_for_incident"  # stuck, found nothing, and a named provider incident covers it
    MARK_FAILED = "mark_failed"
    ISSUE_REFUND = "issue_refund"
    INVESTIGATE_LEDGER = "investigate_ledger"
    TELL_USER_TOP_UP = "tell_user_top_up"
    TELL_USER_CORRECT = "tell_user_correct"
    SETTLE_OR_FAIL_TURN = "settle_or_fail_turn"


ACTION_TEXT: Mapping[NextAction, str] = {
    NextAction.NOTHING: "nothing to do",
    NextAction.WAIT: "nothing to do (wait)",
    NextAction.RECHECK_UPSTREAM: "re-check upstream",
    NextAction.RECHECK_LATER: "re-check later: the provider failed the latest status reads (upstream "
    "unreachable or erring) — look for a provider incident first",
    NextAction.WAIT_FOR_INCIDENT: "wait for the provider incident",  # diagnose names it
    NextAction.MARK_FAILED: "mark failed",  # diagnose says why and what it does to the credits
    NextAction.ISSUE_REFUND: "issue the due refund",
    NextAction.INVESTIGATE_LEDGER: "investigate the ledger",
    NextAction.TELL_USER_TOP_UP: "tell the user to top up credits",
    NextAction.TELL_USER_CORRECT: "tell the user how to correct the request",  # diagnose adds how
    NextAction.SETTLE_OR_FAIL_TURN: "settle or fail the turn (release the reservation)",
}


@dataclass(frozen=True)
class StuckReads:
    """What the upstream reads said of a task past its stuck threshold (diagnose gathers it)."""

    last_state: str | None  # what the latest read since the task became stuck found; None: no read since
    unreachable: bool  # every status read since the provider last answered failed
    incident: str | None  # a named provider incident covering the task's provider, if any
    read_kind: str | None = None  # which read that was (poll, recheck, callback), and when
    read_at: datetime | None = None


FOUND_NOTHING = frozenset({"unknown", "lost"})  # the provider has no job, or no answer, for the task
STILL_WORKING = frozenset({"running", "queued"})


def stuck_next_action(reads: StuckReads) -> NextAction:
    """A stuck task's next action from what the reads found, so the checklist never loops on
    "re-check": a read that found nothing leads to mark failed, unless a named provider incident
    covers the task (then wait for it); a provider still working on the job, to waiting for the
    timeout; no read since the task became stuck, to a re-check."""
    if reads.unreachable:
        return NextAction.WAIT_FOR_INCIDENT if reads.incident else NextAction.RECHECK_LATER
    if reads.last_state in FOUND_NOTHING:
        return NextAction.WAIT_FOR_INCIDENT if reads.incident else NextAction.MARK_FAILED
    if reads.last_state in STILL_WORKING:
        return NextAction.WAIT
    return NextAction.RECHECK_UPSTREAM
