"""What operators write (their names, reasons, incident names) is internal: it stays on the task's
timeline and in the incident, and never reaches what the customer sees (the notification, the
task's error message shown in History, the ledger note of their balance history). The customer is
told what happened to their task and to their credits, truthfully, in neutral words."""

from __future__ import annotations

import pytest

from rivya_core.policy import BillingPolicy
from rivya_core.read import incidents
from rivya_core.stores.sql import open_store
from rivya_core.support import bulk
from tests.fakes import IMAGE, callback, make_service

OPERATOR, REASON, INCIDENT = "Quentin Opsworth", "kinetica hang; upstream lost the job", "ops-incident-7741"
INTERNAL = (OPERATOR, REASON, INCIDENT, "Quentin", "kinetica hang", "upstream lost")


@pytest.fixture
def env(db_url):
    store = open_store(db_url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("vera@example.com", "Vera", grant=500)
    yield svc, clock, providers, store, user
    store.engine.dispose()


def customer_sees(store, user_id: int) -> list[str]:
    """Every field of this user's that the product shows the customer."""
    snap = store.snapshot()
    return (
        [f"{n.title} {n.body}" for n in snap.notifications if n.user_id == user_id]
        + [t.error_message or "" for t in snap.tasks if t.user_id == user_id]
        + [e.note or "" for e in snap.ledger if e.user_id == user_id]
    )


def assert_internal_stays_internal(store, user_id: int) -> None:
    seen = "\n".join(customer_sees(store, user_id))
    assert not [w for w in INTERNAL if w.lower() in seen.lower()], seen
    timeline = [e.detail for e in store.snapshot().events if e.kind == "support_action"]
    assert timeline and all(d["operator"] == OPERATOR and d["reason"] == REASON for d in timeline)


def _stuck(svc, clock, user):
    task = svc.submit(user.id, IMAGE)
    clock.advance(svc.policy.stuck_for("image"))
    return task


def _notice(store, task_id):
    [note] = [n for n in store.snapshot().notifications if n.task_id == task_id]
    return note


def test_mark_failed_tells_the_customer_what_happened_and_that_the_credits_came_back(env):
    svc, clock, providers, store, user = env
    task = _stuck(svc, clock, user)
    failed = svc.support_mark_failed(task.id, OPERATOR, REASON)
    assert_internal_stays_internal(store, user.id)
    note = _notice(store, task.id)
    assert note.body == (
        f"Your image from {task.model} could not be completed; your {task.reserved_credits} credits were refunded."
    )
    assert failed.error_message and "support" in failed.error_message


def test_mark_failed_under_a_policy_that_keeps_the_credits_says_so(db_url):
    store = open_store(db_url, create=True)
    try:
        svc, clock, providers = make_service(policy=BillingPolicy(refund_classes=frozenset()), store=store)
        user = svc.create_account("bo@example.com", "Bo", grant=500)
        task = _stuck(svc, clock, user)
        svc.support_mark_failed(task.id, OPERATOR, REASON)
        assert_internal_stays_internal(store, user.id)
        assert _notice(store, task.id).body == (
            f"Your image from {task.model} could not be completed; your "
            f"{task.reserved_credits} credits were not refunded."
        )
        assert svc.balance(user.id) == 500 - task.reserved_credits
    finally:
        store.engine.dispose()


def test_a_support_refund_note_and_a_recheck_carry_no_operator_words(env):
    svc, clock, providers, store, user = env
    svc.policy = BillingPolicy(refund_classes=frozenset())
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback(
        "lumen",
        *callback(clock, task.upstream_task_id, state="failed", error_code="model_error", failure_class="provider"),
    )
    svc.policy = BillingPolicy()  # the refund is due now
    svc.support_refund(task.id, OPERATOR, REASON)
    running = svc.submit(user.id, {**IMAGE, "prompt": "another"})
    providers["lumen"].fail(running.upstream_task_id)
    svc.support_recheck(running.id, OPERATOR, REASON)
    assert_internal_stays_internal(store, user.id)
    [refund] = [e for e in store.snapshot().ledger if e.task_id == task.id and e.entry_type == "refund"]
    assert refund.support and refund.note == "support refund"


def test_a_bulk_incident_s_name_reason_and_operator_stay_internal(env):
    svc, clock, providers, store, user = env
    tasks = [svc.submit(user.id, {**IMAGE, "prompt": f"p{i}"}) for i in range(3)]
    clock.advance(svc.policy.stuck_for("image"))
    result = bulk.execute(
        svc,
        svc.store.engine,
        "mark-failed",
        incidents.BulkFilter(status=("GENERATING",)),
        operator=OPERATOR,
        reason=REASON,
        name=INCIDENT,
    )
    assert result.acted == 3
    assert_internal_stays_internal(store, user.id)
    assert {_notice(store, t.id).body for t in tasks} == {
        f"Your image from {tasks[0].model} could not be completed; your {tasks[0].reserved_credits} "
        "credits were refunded."
    }
