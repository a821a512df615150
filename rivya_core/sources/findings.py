"""Findings only an imported source can have, as set-based SQL over the contract database.

The audit runs them with its own checks (rivya_core.audit); on a database this project's
service wrote they find nothing (no cancel is imported, no grant is kept). Each returns the
offending rows:

- `canceled_not_refunded`: a task the source canceled (`upstream_canceled`) that was charged
  and never refunded (the ShipAny template does not refund a cancel);
- `refund_onto_expired_grant`: credits put back onto a grant that had already expired, so no
  balance counts them (the importer writes the refund and, at once, their expiry);
- `grant_below_zero`: a grant whose remaining credits the source shows below zero.

A task refunded twice is the audit's `double_refund`, a consume whose task the source lacks its
`consume_without_task`, a success with no output its `success_without_urls`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, exists, select

from ..domain import EntryType, TaskStatus
from ..stores.schema import ai_task, credit_ledger, source_grant

CANCELED = "upstream_canceled"
LOST_REFUND_KEY = "%:lost-refund:%"

KINDS: dict[str, str] = {
    "canceled_not_refunded": "Canceled task charged and not refunded",
    "refund_onto_expired_grant": "Refund put onto an already-expired grant (credits lost)",
    "grant_below_zero": "Grant driven below zero",
}

T, L = ai_task, credit_ledger
_L2 = credit_ledger.alias("lf2")


def _has(entry_type: str) -> Any:
    return exists().where(_L2.c.task_id == T.c.id, _L2.c.entry_type == entry_type)


def canceled_not_refunded(_c: Any) -> Select:
    return select(
        T.c.id.label("task_id"),
        T.c.external_ref,
        T.c.user_id,
        T.c.model,
        T.c.status,
        T.c.error_code,
        T.c.reserved_credits,
        T.c.created_at,
        T.c.finished_at,
    ).where(
        T.c.status == TaskStatus.FAILED.value,
        T.c.error_code == CANCELED,
        _has(EntryType.CONSUME.value),
        ~_has(EntryType.REFUND.value),
    )


def refund_onto_expired_grant(_c: Any) -> Select:
    return (
        select(
            L.c.id.label("ledger_id"),
            L.c.user_id,
            L.c.task_id,
            T.c.external_ref,
            L.c.amount,
            L.c.created_at,
            L.c.derived_from,
            L.c.note,
        )
        .select_from(L.outerjoin(T, T.c.id == L.c.task_id))
        .where(L.c.entry_type == EntryType.EXPIRE.value, L.c.idempotency_key.like(LOST_REFUND_KEY))
    )


def grant_below_zero(_c: Any) -> Select:
    g = source_grant
    return select(
        g.c.id.label("grant_id"),
        g.c.external_ref,
        g.c.user_id,
        g.c.credits,
        g.c.remaining_credits,
        g.c.scene,
        g.c.status,
        g.c.created_at,
        g.c.expires_at,
    ).where(g.c.remaining_credits < 0)


CHECKS = {
    "canceled_not_refunded": canceled_not_refunded,
    "refund_onto_expired_grant": refund_onto_expired_grant,
    "grant_below_zero": grant_below_zero,
}


def text_task_charge() -> Any:
    """A derived consume for a ShipAny text task: charged for something that is not a generation task
    (counted apart), not a charge without a task."""
    return and_(L.c.derived_from.is_not(None), L.c.derived_from.like('%"text_task/%'))
