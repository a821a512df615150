"""The rules module: each rule on its own, and its SQL form (what the audit checks) equal to it
on every combination of facts."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, create_engine, insert, select

from rivya_core import rules, rules_sql, verdicts
from rivya_core.domain import INSUFFICIENT_CREDITS, EntryType, FailureClass, NotificationKind, TaskStatus
from rivya_core.policy import BillingPolicy

STATUSES = [s.value for s in TaskStatus]
CLASSES = [None, *(c.value for c in FailureClass)]
CODES = [None, INSUFFICIENT_CREDITS, "timeout", "content_policy"]
POLICIES = [
    BillingPolicy(),
    BillingPolicy(name="all", refund_classes=frozenset(FailureClass)),
    BillingPolicy(name="none", refund_classes=frozenset()),
]
T0 = datetime(2026, 4, 1, 12, 0, 0)


@pytest.fixture(scope="module")
def facts():
    """Every combination of status, failure class, error code, charged, refunded, support and re-run, as rows."""
    md = MetaData()
    table = Table(
        "facts",
        md,
        Column("id", Integer, primary_key=True),
        Column("status", String),
        Column("failure_class", String),
        Column("error_code", String),
        Column("charged", Boolean),
        Column("refunded", Boolean),
        Column("support", Boolean),
        Column("rerun", Boolean),
    )
    engine = create_engine("sqlite://")
    md.create_all(engine)
    combos = list(
        itertools.product(STATUSES, CLASSES, CODES, (False, True), (False, True), (False, True, None), (False, True))
    )
    with engine.begin() as conn:
        conn.execute(
            insert(table),
            [
                dict(
                    zip(
                        ("status", "failure_class", "error_code", "charged", "refunded", "support", "rerun"),
                        c,
                        strict=True,
                    )
                )
                for c in combos
            ],
        )
    yield engine, table
    engine.dispose()


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_the_sql_forms_agree_with_the_rules_on_every_fact(facts, policy):
    engine, t = facts
    c = t.c
    q = select(
        c.status,
        c.failure_class,
        c.error_code,
        c.charged,
        c.refunded,
        c.support,
        c.rerun,
        rules_sql.outcome_notification(c.status, c.error_code).label("kind"),
        rules_sql.refund_due(c.status, c.failure_class, c.charged, c.refunded, policy).label("due"),
        rules_sql.refund_allowed(c.status, c.failure_class, c.support, policy, c.rerun).label("allowed"),
        rules_sql.courtesy_refund(c.support, c.rerun).label("courtesy"),
    )
    with engine.connect() as conn:
        found = conn.execute(q).all()
    assert len(found) == len(STATUSES) * len(CLASSES) * len(CODES) * 24
    for status, fc, code, charged, refunded, support, rerun, kind, due, allowed, courtesy in found:
        facts_ = rules.RefundFacts(status, fc, bool(charged), bool(refunded))
        assert kind == rules.outcome_notification(status, code)
        assert bool(due) is rules.refund_due(facts_, policy), (status, fc, charged, refunded)
        assert bool(allowed) is rules.refund_allowed(status, fc, bool(support), policy, bool(rerun)), (
            status,
            fc,
            support,
            rerun,
        )
        assert bool(courtesy) is rules.courtesy_refund(bool(support), bool(rerun)), (support, rerun)


def test_refund_refusals_in_order():
    p = BillingPolicy()
    f = rules.RefundFacts
    assert rules.refund_refusal(f("GENERATING", None, True, False), p) == rules.RefundRefusal.NOT_FAILED
    assert rules.refund_refusal(f("FAILED", "provider", False, False), p) == rules.RefundRefusal.NEVER_CHARGED
    assert rules.refund_refusal(f("FAILED", "provider", True, True), p) == rules.RefundRefusal.ALREADY_REFUNDED
    assert rules.refund_refusal(f("FAILED", "user", True, False), p) == rules.RefundRefusal.POLICY_KEEPS
    assert rules.refund_refusal(f("FAILED", "infrastructure", True, False), p) is None
    text = rules.refund_refusal_text(rules.RefundRefusal.POLICY_KEEPS, f("FAILED", "user", True, False), p)
    assert text == "policy 'default' keeps credits for user failures"


def test_rerun_refusals_in_order():
    f = rules.RerunFacts
    assert rules.rerun_refusal(f("GENERATING", (), True)) == rules.RerunRefusal.ORIGINAL_RUNNING
    assert rules.rerun_refusal(f("WAITING", (7,), False)) == rules.RerunRefusal.ORIGINAL_RUNNING
    assert rules.rerun_refusal(f("FAILED", (7,), True)) == rules.RerunRefusal.DUPLICATE_RUNNING
    assert rules.rerun_refusal(f("SUCCESS", (), False)) == rules.RerunRefusal.NO_PROVIDER_CLIENT
    assert rules.rerun_refusal(f("FAILED", (), True)) is None
    assert rules.rerun_refusal(f("SUCCESS", (), True)) is None
    text = rules.rerun_refusal_text(rules.RerunRefusal.DUPLICATE_RUNNING, f("FAILED", (7, 9), True))
    assert "#7, #9" in text and "still in progress" in text


def test_a_courtesy_refund_is_a_support_refund_on_a_rerun_in_any_state():
    p = BillingPolicy()
    for status in STATUSES:
        assert rules.refund_allowed(status, None, True, p, rerun=True)
        assert rules.refund_allowed(status, None, True, p, rerun=False) is (status == "FAILED")
    assert not rules.refund_allowed("SUCCESS", None, False, p, rerun=True)  # the policy's own refund: failed only
    assert not rules.courtesy_refund(False, True) and not rules.courtesy_refund(True, False)


def test_mark_failed_and_recheck_refusals():
    f = rules.StuckFacts
    assert rules.mark_failed_refusal(f("SUCCESS", 9999, 300)) == rules.MarkFailedRefusal.NOT_ACTIVE
    assert rules.mark_failed_refusal(f("GENERATING", 299.5, 300)) == rules.MarkFailedRefusal.NOT_STUCK_YET
    assert rules.mark_failed_refusal(f("WAITING", 300, 300)) is None
    assert rules.recheck_refusal(f("FAILED", 9999, 300), True) == rules.RecheckRefusal.NOT_ACTIVE
    assert rules.recheck_refusal(f("GENERATING", 0, 300), False) == rules.RecheckRefusal.NO_PROVIDER_CLIENT
    assert rules.recheck_refusal(f("GENERATING", 0, 300), True) is None  # a running job: ask any time
    assert rules.recheck_refusal(f("WAITING", 10, 300), True) == rules.RecheckRefusal.NOT_STUCK_YET
    assert rules.recheck_refusal(f("WAITING", 300, 300), True) is None
    young = f("WAITING", 10.7, 300)
    assert (
        rules.stuck_refusal_text(rules.RecheckRefusal.NOT_STUCK_YET, young, "are re-checked")
        == "task is 10 s old; it counts as stuck after 300 s"
    )
    assert (
        rules.stuck_refusal_text(rules.MarkFailedRefusal.NOT_ACTIVE, f("SUCCESS", 0, 1), "can be marked failed")
        == "task is SUCCESS; only waiting or generating tasks can be marked failed"
    )


def test_outcome_notification():
    assert rules.outcome_notification("SUCCESS", None) == NotificationKind.GENERATION_SUCCESS
    assert rules.outcome_notification("FAILED", INSUFFICIENT_CREDITS) == NotificationKind.INSUFFICIENT_CREDITS
    assert rules.outcome_notification("FAILED", "timeout") == NotificationKind.GENERATION_FAILED
    assert rules.outcome_notification("WAITING", None) is None


def test_credit_flows_add_up_to_the_ledger_total():
    sums = {
        EntryType.GRANT: 500,
        EntryType.ADJUSTMENT: 20,
        EntryType.CONSUME: -120,
        EntryType.REFUND: 40,
        EntryType.CHAT_RESERVE: -30,
        EntryType.CHAT_CHARGE: -5,
        EntryType.CHAT_REFUND: 10,
        "bonus": 7,
    }
    f = rules.credit_flows(sums)
    assert (f.granted, f.task_charged, f.task_refunded, f.chat_reserved, f.chat_overrun, f.chat_refunded, f.other) == (
        520,
        120,
        40,
        30,
        5,
        10,
        7,
    )
    assert f.chat_charged == 25 and f.charged == 145  # chat as finally charged: 30 reserved + 5 over − 10 back
    assert f.balance == sum(sums.values())
    assert f.as_dict()["balance"] == f.balance and f.as_dict()["chat_charged"] == 25
    assert rules.credit_flows({}).balance == 0


def test_check_times_follow_the_backoff_then_polling():
    p = BillingPolicy(recheck_backoff_s=(5.0, 15.0, 45.0), poll_interval_s=30.0)
    assert rules.deferral(p) == (5.0, 1)
    assert rules.next_check(1, p) == (15.0, 2)
    assert rules.next_check(2, p) == (45.0, 3)
    assert rules.next_check(3, p) == (30.0, 3) and rules.rechecks_spent(3, p)
    assert rules.next_check(0, p) == (30.0, 0) and not rules.rechecks_spent(2, p)
    assert rules.first_check_in("image", False, p) == 30.0
    assert rules.first_check_in("image", True, p) == p.stuck_for("image")


def test_heavier_duplicate():
    p = BillingPolicy(duplicate_window_s=600)
    running = rules.Run(1, "m", "a fox", 10, T0)
    assert rules.heavier_duplicate(rules.Run(2, "m", "a fox", 10, T0 + timedelta(seconds=600)), running, p)
    assert not rules.heavier_duplicate(rules.Run(2, "m", "a fox", 9, T0 + timedelta(seconds=60)), running, p)
    assert not rules.heavier_duplicate(rules.Run(2, "m", "a fox", 10, T0 + timedelta(seconds=601)), running, p)
    assert not rules.heavier_duplicate(rules.Run(2, "n", "a fox", 10, T0), running, p)
    assert not rules.heavier_duplicate(rules.Run(2, "m", "a cat", 10, T0), running, p)
    assert not rules.heavier_duplicate(rules.Run(1, "m", "a fox", 10, T0), running, p)


def test_task_ref_and_submission_fault_classes():
    assert rules.task_ref(42) == "task-42"
    assert rules.submit_failure_class("timeout") == FailureClass.INFRASTRUCTURE
    assert rules.submit_failure_class("refused") == rules.submit_failure_class("error") == FailureClass.PROVIDER
    assert rules.submit_failure_class("anything else") == FailureClass.PROVIDER


def test_reprocess_refusals():
    f = rules.ReprocessFacts
    assert rules.reprocess_refusal(f("applied", False, False, True)) == rules.ReprocessRefusal.NOT_PARKED
    assert rules.reprocess_refusal(f("rejected_signature", False, False, True)) == rules.ReprocessRefusal.NOT_PARKED
    assert rules.reprocess_refusal(f("unknown_task", True, False, False)) == rules.ReprocessRefusal.NO_TASK_YET
    assert rules.reprocess_refusal(f("unknown_task", False, False, True)) is None  # recorded before parking
    assert rules.reprocess_refusal(f("unknown_task", True, False, True)) is None
    assert rules.reprocess_refusal(f("applied", True, True, True)) is None  # a repeat: recorded as a duplicate


def test_every_verdict_has_one_severity_and_stuck_is_never_a_success():
    S, V = verdicts.Severity, verdicts.Verdict
    assert {v: verdicts.verdict_severity(v) for v in V}.keys() == set(V)  # total: a new verdict needs its colour
    assert verdicts.verdict_severity(V.STUCK) == S.WARN
    assert verdicts.verdict_severity(V.STUCK_PAST_TIMEOUT) == S.FAIL
    assert verdicts.verdict_severity(V.REFUND_DUE) == S.FAIL
    assert verdicts.verdict_severity(V.DELIVERED) == S.OK
    assert verdicts.verdict_severity(V.GENERATING) == S.INFO
    assert {
        verdicts.verdict_severity(v)
        for v in V
        if "stuck" in v or "overdue" in v or "mismatch" in v or "inconsistent" in v or "but" in v or "without" in v
    }.isdisjoint({S.OK, S.INFO})


def test_marking_failed_refunds_what_the_policy_reverses_and_the_notice_says_it():
    keep = BillingPolicy(refund_classes=frozenset())
    assert rules.mark_failed_refund(24, False, BillingPolicy()) == 24
    assert rules.mark_failed_refund(24, True, BillingPolicy()) == 0 and rules.mark_failed_refund(0, False, keep) == 0
    assert rules.mark_failed_refund(24, False, keep) == 0
    body = rules.support_failure_notice
    assert body("video", "kinetica-v2", 24, 24)[1] == (
        "Your video from kinetica-v2 could not be completed; your 24 credits were refunded."
    )
    assert body("video", "kinetica-v2", 24, 0)[1].endswith("your 24 credits were not refunded.")
    assert body("image", "lumen-flash", 0, 0)[1].endswith("nothing was charged.")
