"""The audit's checks: every invariant of DESIGN.md as one set-based SQL query of the rows that
break it (`audit` runs them). They are the set-based SQL form of `rivya_core.rules`
(`rules_sql`, the same names), so the audit judges a row exactly as the service decided it.

    AUDIT_KINDS   kind -> its title
    CHECKS        kind -> a function of the audit's context (`Ctx`) giving the offending rows'
                  Select, or None when the check does not apply
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy import Text as SAText

from . import rules_sql
from .domain import (
    INSUFFICIENT_CREDITS,
    CallbackOutcome,
    ChatStatus,
    EntryType,
    EventKind,
    TaskStatus,
)
from .policy import BillingPolicy
from .read.queries import ACTIVE_STATES, TERMINAL_STATES
from .sources import findings as source_findings
from .stores.schema import (
    account,
    ai_task,
    chat_message,
    chat_session,
    credit_ledger,
    notification,
    provider_callback,
    task_event,
)

AUDIT_KINDS: dict[str, str] = {
    "ledger_running_sum": "Ledger balance_after differs from the running sum",
    "negative_balance": "Negative balance_after",
    "balance_mismatch": "Account balance differs from its ledger sum",
    "failed_after_charge_without_refund": "Failed after charge without refund",
    "double_refund": "Double refund",
    "refund_exceeds_charge": "Refund exceeds charge",
    "refund_on_success": "Refund on success",
    "refund_not_due": "Refund not due under the policy",
    "charged_twice": "Charged twice",
    "upstream_without_charge": "Submitted upstream without a charge",
    "charged_after_submit": "Charged after provider submission",
    "credit_failure_inconsistent": "Failed for credits, yet charged or submitted",
    "success_without_urls": "SUCCESS without result URLs",
    "failed_without_error_code": "FAILED without an error code",
    "multiple_terminal_events": "More than one terminal transition",
    "callback_applied_twice": "Callback applied twice",
    "notification_missing": "Terminal task without its notification",
    "notification_wrong_kind": "Notification of the wrong kind",
    "notification_duplicate": "Duplicate outcome notification",
    "stuck_past_timeout": "Stuck past the timeout",
    "consume_without_task": "Charge without a task",
    "chat_reserve_not_settled": "Chat reserve not settled",
    "chat_overcharge": "Chat charged more than reserved",
    "chat_refund_mismatch": "Chat settlement does not net to the charge",
    **source_findings.KINDS,  # found only in a database imported from a production source
}


@dataclass(frozen=True)
class _Ctx:
    policy: BillingPolicy
    now: datetime
    dialect: str
    chat_grace_s: float


L, T, N, M = credit_ledger, ai_task, notification, chat_message
_L2 = credit_ledger.alias("l2")
_TASK_COLS = (
    T.c.id.label("task_id"),
    T.c.user_id,
    T.c.model,
    T.c.category,
    T.c.status,
    T.c.reserved_credits,
    T.c.upstream_task_id,
    T.c.error_code,
    T.c.failure_class,
    T.c.created_at,
    T.c.submitted_at,
    T.c.finished_at,
)
_LEDGER_COLS = (
    L.c.id.label("ledger_id"),
    L.c.user_id,
    L.c.entry_type,
    L.c.amount,
    L.c.balance_after,
    L.c.task_id,
    L.c.chat_message_id,
    L.c.idempotency_key,
    L.c.created_at,
    L.c.note,
    L.c.support,
)


def _has_entry(entry_type: str, task_col=T.c.id):
    return exists().where(_L2.c.task_id == task_col, _L2.c.entry_type == entry_type)


def _empty_url_list(col, dialect: str):
    if dialect in ("sqlite", "postgresql"):
        typeof = func.json_type if dialect == "sqlite" else func.json_typeof
        length = case((typeof(col) == "array", func.json_array_length(col)), else_=0)
        return or_(col.is_(None), length == 0)
    return or_(col.is_(None), cast(col, SAText).in_(["[]", "null", ""]))


# --- the checks: each returns the offending rows, or None when it does not apply ---------


def ledger_running_sum(c: _Ctx) -> Select:
    # The window reads only columns of the covering (user_id, id, amount, balance_after)
    # index; the table is read for the mismatching rows alone.
    w = select(
        L.c.id,
        L.c.balance_after,
        func.sum(L.c.amount).over(partition_by=L.c.user_id, order_by=L.c.id).label("running_sum"),
    ).subquery()
    return (
        select(*_LEDGER_COLS, w.c.running_sum)
        .select_from(w.join(L, L.c.id == w.c.id))
        .where(w.c.running_sum != w.c.balance_after)
    )


def negative_balance(c: _Ctx) -> Select:
    return select(*_LEDGER_COLS).where(L.c.balance_after < 0)


def balance_mismatch(c: _Ctx | None = None) -> Select:
    sums = select(L.c.user_id, func.sum(L.c.amount).label("ledger_sum")).group_by(L.c.user_id).subquery()
    ledger_sum = func.coalesce(sums.c.ledger_sum, 0)
    return (
        select(account.c.id.label("user_id"), account.c.email, account.c.balance, ledger_sum.label("ledger_sum"))
        .select_from(account.outerjoin(sums, sums.c.user_id == account.c.id))
        .where(account.c.balance != ledger_sum)
    )


def failed_after_charge_without_refund(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(
        rules_sql.refund_due(
            T.c.status, T.c.failure_class, _has_entry(EntryType.CONSUME), _has_entry(EntryType.REFUND), c.policy
        )
    )


def _is_charge():
    """Ledger rows that are task charges. They are most of the ledger, so they are read in
    one pass over the table (or the task index) rather than through the (entry_type, amount)
    index, where each was a random table read (3-4x the CPU at a million tasks): the type is
    compared as an expression, which no index serves."""
    return (L.c.entry_type + "") == EntryType.CONSUME


def _per_task(entry_type: str, having) -> Select:
    of_type = _is_charge() if entry_type == EntryType.CONSUME else L.c.entry_type == entry_type
    return (
        select(
            L.c.task_id,
            func.min(L.c.user_id).label("user_id"),
            func.count().label("entries"),
            func.sum(L.c.amount).label("total"),
        )
        .where(of_type, L.c.task_id.is_not(None))
        .group_by(L.c.task_id)
        .having(having)
    )


def double_refund(c: _Ctx) -> Select:
    return _per_task(EntryType.REFUND, func.count() > 1)


def refund_exceeds_charge(c: _Ctx) -> Select:
    r = _per_task(EntryType.REFUND, literal(True)).subquery()
    charged = func.coalesce(
        select(-func.sum(_L2.c.amount))
        .where(_L2.c.task_id == r.c.task_id, _L2.c.entry_type == EntryType.CONSUME)
        .scalar_subquery(),
        0,
    )
    return select(r.c.task_id, r.c.user_id, r.c.total.label("refunded"), charged.label("charged")).where(
        r.c.total > charged
    )


def _refunds_with_task() -> Select:
    return (
        select(*_LEDGER_COLS, T.c.status, T.c.failure_class, T.c.error_code)
        .select_from(L.join(T, T.c.id == L.c.task_id))
        .where(L.c.entry_type == EntryType.REFUND)
    )


def _courtesy():
    """A courtesy re-run's refund (rules.courtesy_refund): allowed whatever the re-run's state."""
    return rules_sql.courtesy_refund(L.c.support, T.c.rerun_of.is_not(None))


def refund_on_success(c: _Ctx) -> Select:
    return _refunds_with_task().where(T.c.status == TaskStatus.SUCCESS, ~_courtesy())


def refund_not_due(c: _Ctx) -> Select:
    """Refunds the rules do not allow (a refund on a delivered task is refund_on_success)."""
    allowed = rules_sql.refund_allowed(T.c.status, T.c.failure_class, L.c.support, c.policy, T.c.rerun_of.is_not(None))
    return _refunds_with_task().where(T.c.status != TaskStatus.SUCCESS, ~allowed)


def charged_twice(c: _Ctx) -> Select:
    return _per_task(EntryType.CONSUME, func.count() > 1)


def upstream_without_charge(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(T.c.upstream_task_id.is_not(None), ~_has_entry(EntryType.CONSUME))


def charged_after_submit(c: _Ctx) -> Select:
    return (
        select(*_TASK_COLS, L.c.created_at.label("charged_at"))
        .select_from(T.join(L, and_(L.c.task_id == T.c.id, _is_charge())))
        .where(T.c.submitted_at.is_not(None), L.c.created_at > T.c.submitted_at)
    )


def credit_failure_inconsistent(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(
        T.c.error_code == INSUFFICIENT_CREDITS, or_(T.c.upstream_task_id.is_not(None), _has_entry(EntryType.CONSUME))
    )


def success_without_urls(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(T.c.status == TaskStatus.SUCCESS, _empty_url_list(T.c.result_urls, c.dialect))


def failed_without_error_code(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(
        T.c.status == TaskStatus.FAILED, or_(T.c.error_code.is_(None), T.c.error_code == "")
    )


def multiple_terminal_events(c: _Ctx) -> Select:
    # Grouped by an expression, so SQLite sorts the terminal events alone instead of walking
    # every event through the (task_id, id) index with a table read each to test its kind.
    terminal = [EventKind.SUCCEEDED, EventKind.FAILED]
    task_id = task_event.c.task_id + 0
    return (
        select(task_id.label("task_id"), func.count().label("terminal_events"))
        .where(task_event.c.kind.in_(terminal))
        .group_by(task_id)
        .having(func.count() > 1)
    )


def callback_applied_twice(c: _Ctx) -> Select:
    """A task that more than one provider callback was applied to: a redelivery (or a delivery
    racing a poll) must be recorded as a duplicate, never applied again."""
    cb = provider_callback
    return (
        select(cb.c.task_id.label("task_id"), func.count().label("applied_callbacks"))
        .where(cb.c.outcome == str(CallbackOutcome.APPLIED), cb.c.task_id.is_not(None))
        .group_by(cb.c.task_id)
        .having(func.count() > 1)
    )


def _expected_kind():
    return rules_sql.outcome_notification(T.c.status, T.c.error_code)


_NOTE_TASK_COLS = (T.c.id.label("task_id"), T.c.user_id, T.c.status, T.c.error_code)


def notification_missing(c: _Ctx) -> Select:
    none = ~exists().where(N.c.task_id == T.c.id)
    return select(*_NOTE_TASK_COLS, _expected_kind().label("expected_kind")).where(
        T.c.status.in_(TERMINAL_STATES), none
    )


def notification_wrong_kind(c: _Ctx) -> Select:
    expected = _expected_kind()
    return (
        select(N.c.id.label("notification_id"), *_NOTE_TASK_COLS, N.c.kind, expected.label("expected_kind"))
        .select_from(N.join(T, T.c.id == N.c.task_id))
        # the status compared as an expression: one pass over the notifications, each task
        # by its key, instead of every finished task through the status index first
        .where((T.c.status + "").in_(TERMINAL_STATES), N.c.kind != expected)
    )


def notification_duplicate(c: _Ctx) -> Select:
    several = (
        select(N.c.task_id).where(N.c.task_id.is_not(None)).group_by(N.c.task_id).having(func.count() > 1).subquery()
    )
    matching = select(func.count()).where(N.c.task_id == T.c.id, N.c.kind == _expected_kind()).scalar_subquery()
    q = (
        select(*_NOTE_TASK_COLS, _expected_kind().label("expected_kind"), matching.label("notifications"))
        .select_from(several.join(T, T.c.id == several.c.task_id))
        .where(T.c.status.in_(TERMINAL_STATES))
        .subquery()
    )
    return select(q).where(q.c.notifications > 1)


def stuck_past_timeout(c: _Ctx) -> Select:
    default = c.now - timedelta(seconds=c.policy.timeout_for("\0"))
    per_category = {cat: c.now - timedelta(seconds=c.policy.timeout_for(cat)) for cat in c.policy.timeout_s}
    cutoff = case(per_category, value=T.c.category, else_=default) if per_category else literal(default)
    started = func.coalesce(T.c.submitted_at, T.c.created_at)
    return select(*_TASK_COLS, started.label("started_at")).where(T.c.status.in_(ACTIVE_STATES), started < cutoff)


def consume_without_task(c: _Ctx) -> Select:
    no_task = ~exists().where(T.c.id == L.c.task_id)
    return select(*_LEDGER_COLS).where(
        _is_charge(), or_(L.c.task_id.is_(None), no_task), ~source_findings.text_task_charge()
    )


_MSG_COLS = (
    M.c.id.label("message_id"),
    M.c.session_id,
    chat_session.c.user_id,
    M.c.status,
    M.c.reserved_credits,
    M.c.charged_credits,
    M.c.created_at,
    M.c.settled_at,
)


def _messages() -> Select:
    return select(*_MSG_COLS).select_from(M.outerjoin(chat_session, chat_session.c.id == M.c.session_id))


def chat_reserve_not_settled(c: _Ctx) -> Select:
    cutoff = c.now - timedelta(seconds=c.chat_grace_s)
    return _messages().where(M.c.status == ChatStatus.RESERVED, M.c.created_at < cutoff)


def chat_overcharge(c: _Ctx) -> Select | None:
    if c.policy.chat_allow_overrun:
        return None
    return _messages().where(M.c.charged_credits > M.c.reserved_credits)


def chat_refund_mismatch(c: _Ctx) -> Select:
    chat_types = [EntryType.CHAT_RESERVE, EntryType.CHAT_CHARGE, EntryType.CHAT_REFUND]
    agg = (
        select(
            L.c.chat_message_id,
            func.sum(L.c.amount).label("net"),
            func.sum(case((L.c.entry_type == EntryType.CHAT_REFUND, 1), else_=0)).label("refunds"),
        )
        .where(L.c.entry_type.in_(chat_types), L.c.chat_message_id.is_not(None))
        .group_by(L.c.chat_message_id)
        .subquery()
    )
    net, refunds = func.coalesce(agg.c.net, 0), func.coalesce(agg.c.refunds, 0)
    return (
        select(*_MSG_COLS, net.label("ledger_net"), refunds.label("chat_refunds"))
        .select_from(
            M.outerjoin(chat_session, chat_session.c.id == M.c.session_id).outerjoin(
                agg, agg.c.chat_message_id == M.c.id
            )
        )
        .where(M.c.status != ChatStatus.RESERVED, or_(net != -func.coalesce(M.c.charged_credits, 0), refunds > 1))
    )


CHECKS: dict[str, Callable[[_Ctx], Select | None]] = {
    kind: source_findings.CHECKS.get(kind) or globals()[kind] for kind in AUDIT_KINDS
}
