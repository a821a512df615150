"""The rules of `rivya_core.rules` in set-based SQL, under the same names: what the audit
checks whole tables with. Each takes column expressions (and the policy) and returns a
SQL expression that is never NULL, so `~rule` is as safe as `rule` in a WHERE clause.
`tests/unit/test_rules.py` holds each equal to its Python form on every combination of facts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, false, literal, or_

from .domain import INSUFFICIENT_CREDITS, TaskStatus
from .policy import BillingPolicy
from .rules import outcome_notification as _py_outcome_notification


def _reverses(failure_class: Any, policy: BillingPolicy) -> Any:
    """SQL: policy.refunds(failure_class), False for a NULL class."""
    classes = sorted(str(c) for c in policy.refund_classes)
    return and_(failure_class.is_not(None), failure_class.in_(classes)) if classes else false()


def _true(flag: Any) -> Any:
    """SQL: a boolean column that is TRUE (NULL, from a row written before the column existed, is False)."""
    return flag.is_(True) if hasattr(flag, "is_") else literal(bool(flag))


def refund_allowed(status: Any, failure_class: Any, support: Any, policy: BillingPolicy, rerun: Any = False) -> Any:
    """rules.refund_allowed: a courtesy re-run's refund, or a failed task refunded by support or in a
    class the policy reverses. `rerun`: a boolean expression (e.g. `ai_task.rerun_of IS NOT NULL`)."""
    return or_(
        courtesy_refund(support, rerun),
        and_(status == TaskStatus.FAILED.value, or_(_true(support), _reverses(failure_class, policy))),
    )


def courtesy_refund(support: Any, rerun: Any) -> Any:
    """rules.courtesy_refund: a support refund on a re-run task."""
    return and_(_true(support), _true(rerun))


def refund_due(status: Any, failure_class: Any, charged: Any, refunded: Any, policy: BillingPolicy) -> Any:
    """rules.refund_due: failed, charged, not refunded, in a class the policy reverses."""
    return and_(status == TaskStatus.FAILED.value, charged, ~refunded, _reverses(failure_class, policy))


def outcome_notification(status: Any, error_code: Any) -> Any:
    """rules.outcome_notification: the notification kind a settled task sends, NULL while it runs."""

    def kind(status_value: str, code: str | None) -> str | None:
        found = _py_outcome_notification(status_value, code)
        return found.value if found is not None else None

    return case(
        (status == TaskStatus.SUCCESS.value, kind(TaskStatus.SUCCESS, None)),
        (
            and_(status == TaskStatus.FAILED.value, error_code == INSUFFICIENT_CREDITS),
            kind(TaskStatus.FAILED, INSUFFICIENT_CREDITS),
        ),
        (status == TaskStatus.FAILED.value, kind(TaskStatus.FAILED, "")),
        else_=None,
    )
