"""The lifecycle service against fakes of its ports: every rule of the guide."""

from __future__ import annotations

import json

import pytest

from rivya_core.domain import (
    ActionRefused,
    CallbackOutcome,
    ChatStatus,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    SupportAction,
    TaskStatus,
    TurnClosed,
    ValidationError,
)
from rivya_core.policy import BillingPolicy
from rivya_core.rules import MarkFailedRefusal, RecheckRefusal, RefundRefusal, SupportRefusal
from tests.fakes import IMAGE, OLD_SECRET, SECRET, callback, make_service


def events(svc, task_id):
    return [e.kind for e in svc.store.snapshot().events if e.task_id == task_id]


def ledger(svc, task_id=None, user_id=None):
    rows = svc.store.snapshot().ledger
    return [r for r in rows if (task_id is None or r.task_id == task_id) and (user_id is None or r.user_id == user_id)]


def notifications(svc, task_id):
    return [n.kind for n in svc.store.snapshot().notifications if n.task_id == task_id]


@pytest.fixture
def env():
    svc, clock, providers = make_service()
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    return svc, clock, providers, user


# --- submit -------------------------------------------------------------------------


def test_submit_charges_before_submission_and_moves_to_generating(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    assert task.status == TaskStatus.GENERATING
    assert task.upstream_task_id == "lumen-job-1"
    assert events(svc, task.id) == ["created", "charged", "submitted"]
    [consume] = ledger(svc, task.id)
    assert consume.entry_type == "consume" and consume.amount == -task.reserved_credits
    assert svc.balance(user.id) == 100 - task.reserved_credits


def test_rejected_request_writes_nothing(env):
    svc, clock, providers, user = env
    before = svc.store.snapshot()
    with pytest.raises(ValidationError) as err:
        svc.submit(user.id, {"model": "no-such-model", "prompt": "x"})
    assert err.value.code == "model_not_found"
    after = svc.store.snapshot()
    assert (len(after.tasks), len(after.ledger)) == (len(before.tasks), len(before.ledger))
    assert providers["lumen"].submits == 0


def test_unknown_user_writes_nothing(env):
    svc, *_ = env
    with pytest.raises(NotFound):
        svc.submit(999, IMAGE)
    assert svc.store.snapshot().tasks == []


def test_shortfall_fails_for_billing_without_calling_upstream():
    svc, clock, providers = make_service()
    poor = svc.create_account("poor@example.com", "Poor", grant=1)
    task = svc.submit(poor.id, {"model": "lumen-pro", "prompt": "a castle"})
    assert task.status == TaskStatus.FAILED
    assert (task.error_code, task.failure_class) == ("insufficient_credits", "billing")
    assert task.upstream_task_id is None and providers["lumen"].submits == 0
    assert [r.entry_type for r in ledger(svc, task.id)] == []
    assert notifications(svc, task.id) == ["insufficient_credits"]
    assert svc.balance(poor.id) == 1


@pytest.mark.parametrize("fault,klass", [("refused", "provider"), ("error", "provider"), ("timeout", "infrastructure")])
def test_submit_failure_after_charge_is_refunded(fault, klass):
    svc, clock, providers = make_service(BillingPolicy(submit_retries=0))
    user = svc.create_account("b@example.com", "B", grant=50)
    providers["lumen"].submit_faults = [fault]
    task = svc.submit(user.id, IMAGE)
    assert task.status == TaskStatus.FAILED and task.failure_class == klass
    assert task.error_code == f"submit_{fault}"
    assert sorted(r.entry_type for r in ledger(svc, task.id)) == ["consume", "refund"]
    assert svc.balance(user.id) == 50
    assert notifications(svc, task.id) == ["generation_failed"]


def test_submit_retry_recovers_from_one_fault(env):
    svc, clock, providers, user = env
    providers["lumen"].submit_faults = ["error"]
    task = svc.submit(user.id, IMAGE)
    assert task.status == TaskStatus.GENERATING and providers["lumen"].submits == 2


def test_heavier_duplicate_run_warns_or_blocks():
    svc, clock, providers = make_service()
    user = svc.create_account("d@example.com", "D", grant=100)
    first = svc.submit(user.id, IMAGE)
    second = svc.submit(user.id, IMAGE)
    assert "duplicate_warning" in events(svc, second.id) and "duplicate_warning" not in events(svc, first.id)
    blocking, _, _ = make_service(BillingPolicy(duplicate_runs="block"))
    u = blocking.create_account("e@example.com", "E", grant=100)
    blocking.submit(u.id, IMAGE)
    with pytest.raises(ValidationError) as err:
        blocking.submit(u.id, IMAGE)
    assert err.value.code == "duplicate_run"
    assert len(blocking.store.snapshot().tasks) == 1


# --- callbacks -------------------------------------------------------------------------


def test_signed_success_callback_settles_and_notifies(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    result = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id))
    assert result.outcome == CallbackOutcome.APPLIED and result.task_id == task.id
    done = svc.task(task.id)
    assert done.status == TaskStatus.SUCCESS and done.result_urls and done.settled_at
    assert notifications(svc, task.id) == ["generation_success"]
    assert events(svc, task.id)[-3:] == ["callback", "succeeded", "notified"]


def test_key_rotation_accepts_old_and_new_secret():
    svc, clock, providers = make_service(secrets={"lumen": [SECRET, OLD_SECRET]})
    user = svc.create_account("r@example.com", "R", grant=100)
    a, b = svc.submit(user.id, IMAGE), svc.submit(user.id, {**IMAGE, "prompt": "another"})
    assert svc.handle_callback("lumen", *callback(clock, a.upstream_task_id, secret=OLD_SECRET)).outcome == "applied"
    assert svc.handle_callback("lumen", *callback(clock, b.upstream_task_id, msg_id="m2")).outcome == "applied"


def _unchanged(svc, task_id, user_id, before_balance):
    task = svc.task(task_id)
    assert task.status == TaskStatus.GENERATING
    assert svc.balance(user_id) == before_balance
    assert notifications(svc, task_id) == []


def test_forged_callback_changes_nothing_but_its_record(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    bal = svc.balance(user.id)
    forged = callback(clock, task.upstream_task_id, secret="whsec_" + "Zm9yZ2VkLWtleS0wMTIzNDU2Nzg5")
    assert svc.handle_callback("lumen", *forged).outcome == CallbackOutcome.REJECTED_SIGNATURE
    headers, body = callback(clock, task.upstream_task_id)
    tampered = body.replace(b"out.png", b"evil.png")
    assert svc.handle_callback("lumen", headers, tampered).outcome == CallbackOutcome.REJECTED_SIGNATURE
    _unchanged(svc, task.id, user.id, bal)
    assert [c.signature_valid for c in svc.store.snapshot().callbacks] == [False, False]


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_and_future_callbacks_are_rejected(env, offset):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    bal = svc.balance(user.id)
    now = int((clock.now() - __import__("datetime").datetime(1970, 1, 1)).total_seconds())
    result = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, ts=now + offset))
    assert result.outcome == CallbackOutcome.REJECTED_STALE
    _unchanged(svc, task.id, user.id, bal)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"data": {"state": "succeeded"}}',
        b'{"data": {"upstream_task_id": "x", "state": "exploded"}}',
    ],
)
def test_malformed_bodies_are_recorded_not_applied(env, body):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    bal = svc.balance(user.id)
    result = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, body=body))
    assert result.outcome == CallbackOutcome.MALFORMED
    _unchanged(svc, task.id, user.id, bal)


def test_oversized_body_refused_before_parsing_and_stored_bounded(env):
    svc, clock, providers, user = env
    body = b"{" + b" " * 200_000 + b"}"
    result = svc.handle_callback("lumen", *callback(clock, "x", body=body))
    assert result.outcome == CallbackOutcome.MALFORMED
    assert len(svc.store.snapshot().callbacks[0].body) <= 4096


def test_unknown_upstream_and_other_providers_ids(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    bal = svc.balance(user.id)
    assert svc.handle_callback("lumen", *callback(clock, "nope")).outcome == CallbackOutcome.UNKNOWN_TASK
    # a valid kinetica callback naming a lumen task's id does not touch it
    assert svc.handle_callback("kinetica", *callback(clock, task.upstream_task_id)).outcome == "unknown_task"
    assert svc.handle_callback("nobody", *callback(clock, task.upstream_task_id)).outcome == "rejected_signature"
    _unchanged(svc, task.id, user.id, bal)


def test_missing_or_doubled_headers(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    bal = svc.balance(user.id)
    headers, body = callback(clock, task.upstream_task_id)
    del headers["webhook-signature"]
    assert svc.handle_callback("lumen", headers, body).outcome == CallbackOutcome.REJECTED_SIGNATURE
    headers, body = callback(clock, task.upstream_task_id)
    headers["Webhook-Id"] = "other"
    assert svc.handle_callback("lumen", headers, body).outcome == CallbackOutcome.MALFORMED
    _unchanged(svc, task.id, user.id, bal)


def test_duplicate_webhook_id_has_no_effect(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, msg_id="same"))
    again = svc.handle_callback(
        "lumen",
        *callback(
            clock, task.upstream_task_id, state="failed", error_code="boom", failure_class="provider", msg_id="same"
        ),
    )
    assert again.outcome == CallbackOutcome.DUPLICATE
    assert svc.task(task.id).status == TaskStatus.SUCCESS
    assert notifications(svc, task.id) == ["generation_success"]


def test_early_callback_is_deferred_then_rechecked_on_backoff(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    early = svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, urls=()))
    assert early.outcome == CallbackOutcome.DEFERRED
    assert svc.task(task.id).status == TaskStatus.GENERATING
    clock.advance(svc.policy.recheck_backoff_s[0])
    svc.poll()  # upstream still running: next backoff step
    assert svc.task(task.id).check_attempts == 2
    providers["lumen"].succeed(task.upstream_task_id)
    clock.advance(svc.policy.recheck_backoff_s[1])
    report = svc.poll()
    assert report.succeeded == 1
    assert svc.task(task.id).status == TaskStatus.SUCCESS
    kinds = events(svc, task.id)
    assert kinds.index("deferred") < kinds.index("recheck") < kinds.index("succeeded")
    assert [e.detail["path"] for e in svc.store.snapshot().events if e.kind == "succeeded"] == ["recheck"]


def test_success_without_urls_forever_fails_after_rechecks(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id, urls=())
    svc.handle_callback("lumen", *callback(clock, task.upstream_task_id, urls=()))
    for delay in svc.policy.recheck_backoff_s:
        clock.advance(delay)
        svc.poll()
    clock.advance(svc.policy.poll_interval_s)
    svc.poll()
    done = svc.task(task.id)
    assert done.status == TaskStatus.FAILED and done.error_code == "no_result_urls"
    assert done.result_urls is None


@pytest.mark.parametrize("klass,refunded", [("user", False), ("provider", True), ("infrastructure", True)])
def test_failure_refund_follows_policy(env, klass, refunded):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback(
        "lumen",
        *callback(clock, task.upstream_task_id, state="failed", error_code="content_policy", failure_class=klass),
    )
    failed = svc.task(task.id)
    assert failed.status == TaskStatus.FAILED and failed.failure_class == klass
    refunds = [r for r in ledger(svc, task.id) if r.entry_type == "refund"]
    assert len(refunds) == (1 if refunded else 0)
    assert svc.balance(user.id) == (100 if refunded else 100 - task.reserved_credits)
    assert notifications(svc, task.id) == ["generation_failed"]
    assert ("refund_skipped" in events(svc, task.id)) is (not refunded)


def test_policy_without_infrastructure_refunds():
    svc, clock, providers = make_service(BillingPolicy(refund_classes=frozenset({"provider"})))
    user = svc.create_account("p@example.com", "P", grant=100)
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback(
        "lumen",
        *callback(clock, task.upstream_task_id, state="failed", error_code="lost", failure_class="infrastructure"),
    )
    assert [r.entry_type for r in ledger(svc, task.id)] == ["consume"]


# --- polling ---------------------------------------------------------------------------


def test_polling_only_environment_completes_by_poll():
    svc, clock, providers = make_service(callbacks_enabled=False)
    user = svc.create_account("q@example.com", "Q", grant=100)
    task = svc.submit(user.id, IMAGE)
    clock.advance(svc.policy.poll_interval_s)
    assert svc.poll().still_running == 1
    providers["lumen"].succeed(task.upstream_task_id)
    clock.advance(svc.policy.poll_interval_s)
    assert svc.poll().succeeded == 1
    assert [e.detail["path"] for e in svc.store.snapshot().events if e.kind == "succeeded"] == ["polling"]


def test_lost_callback_is_caught_by_safety_net_poll(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id)  # its callback never arrives
    clock.advance(svc.policy.stuck_for("image") - 1)
    assert svc.poll().checked == 0
    clock.advance(1)
    assert svc.poll().succeeded == 1


def test_hard_timeout_fails_and_refunds(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    clock.advance(svc.policy.timeout_for("image"))
    svc.poll()
    while svc.task(task.id).status == TaskStatus.GENERATING:
        clock.advance(svc.policy.poll_interval_s)
        svc.poll()
    failed = svc.task(task.id)
    assert (failed.error_code, failed.failure_class) == ("timeout", "infrastructure")
    assert svc.balance(user.id) == 100


def test_poll_losing_to_callback_is_a_recorded_noop(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id)
    # the callback lands while the poll is asking upstream: the poll then finds the task finished
    providers["lumen"].on_status = lambda: svc.handle_callback("lumen", *callback(clock, task.upstream_task_id))
    assert svc.recheck(task.id).status == TaskStatus.SUCCESS
    assert notifications(svc, task.id) == ["generation_success"]
    noops = [e for e in svc.store.snapshot().events if e.kind == "recheck"]
    assert noops and noops[-1].detail["result"].startswith("no-op")


def test_a_provider_error_on_a_status_read_is_recorded_and_changes_nothing_else(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    balance, entries = svc.balance(user.id), len(ledger(svc))
    providers["lumen"].status_faults = ["timeout", "error"]
    clock.advance(svc.policy.stuck_for("image"))
    assert svc.poll().still_running == 1
    svc.recheck(task.id, reason="support asked")
    errors = [e for e in svc.store.snapshot().events if e.task_id == task.id and e.kind == "poll_error"]
    assert [(e.detail["error_kind"], e.detail["path"]) for e in errors] == [
        ("timeout", "polling"),
        ("error", "recheck"),
    ]
    assert errors[0].detail["message"] == "status read: upstream said timeout"
    after = svc.task(task.id)
    assert after.status == TaskStatus.GENERATING and after.error_code is None
    assert (svc.balance(user.id), len(ledger(svc))) == (balance, entries)
    assert notifications(svc, task.id) == []
    providers["lumen"].succeed(task.upstream_task_id)  # the next read that answers settles it as usual
    assert svc.recheck(task.id).status == TaskStatus.SUCCESS
    assert len([e for e in svc.store.snapshot().events if e.kind == "poll_error"]) == 2


# --- chat --------------------------------------------------------------------------------


def test_chat_reserves_then_settles_and_refunds_difference(env):
    svc, clock, providers, user = env
    session = svc.open_chat(user.id, "parley-chat", "Help")
    msg = svc.chat_turn_reserve(session.id, "hello", prompt_tokens=2000, max_output_tokens=4000)
    assert msg.status == ChatStatus.RESERVED and msg.reserved_credits > 0
    assert svc.balance(user.id) == 100 - msg.reserved_credits
    settled = svc.chat_turn_settle(msg.id, prompt_tokens=2000, completion_tokens=500)
    assert settled.status == ChatStatus.SETTLED and settled.charged_credits <= msg.reserved_credits
    assert svc.balance(user.id) == 100 - settled.charged_credits
    assert svc.chat_turn_settle(msg.id, 2000, 500) == settled  # a replay returns the settlement
    rows = [r.entry_type for r in svc.store.snapshot().ledger if r.chat_message_id == msg.id]
    assert rows == ["chat_reserve", "chat_refund"]


def test_a_closed_chat_turn_is_settled_or_failed_exactly_once(env):
    svc, clock, providers, user = env
    session = svc.open_chat(user.id, "parley-chat")
    settled = svc.chat_turn_reserve(session.id, "a", 2000, 4000)
    failed = svc.chat_turn_reserve(session.id, "b", 2000, 4000)
    svc.chat_turn_settle(settled.id, 2000, 500)
    svc.chat_turn_fail(failed.id)
    before = svc.store.snapshot()
    for act, code in (
        (lambda: svc.chat_turn_settle(settled.id, 2000, 3000), "chat_already_settled"),
        (lambda: svc.chat_turn_fail(settled.id), "chat_already_settled"),
        (lambda: svc.chat_turn_settle(failed.id, 2000, 500), "chat_already_failed"),
    ):
        with pytest.raises(TurnClosed) as err:
            act()
        assert err.value.code == code
    assert svc.chat_turn_fail(failed.id).status == ChatStatus.FAILED  # a replay of the failure
    after = svc.store.snapshot()
    assert (after.ledger, after.messages) == (before.ledger, before.messages)
    assert svc.recover(grace_s=0).actions == []


def test_chat_overrun_capped_unless_policy_allows():
    for allow in (False, True):
        svc, clock, providers = make_service(BillingPolicy(chat_allow_overrun=allow))
        user = svc.create_account("c@example.com", "C", grant=1000)
        session = svc.open_chat(user.id, "parley-chat")
        msg = svc.chat_turn_reserve(session.id, "hi", prompt_tokens=10, max_output_tokens=10)
        settled = svc.chat_turn_settle(msg.id, prompt_tokens=10, completion_tokens=100_000)
        if allow:
            assert settled.charged_credits > msg.reserved_credits
        else:
            assert settled.charged_credits == msg.reserved_credits
        assert svc.balance(user.id) == 1000 - settled.charged_credits


def test_chat_refused_when_balance_cannot_cover(env):
    svc, clock, providers, user = env
    session = svc.open_chat(user.id, "parley-chat")
    with pytest.raises(InsufficientCredits):
        svc.chat_turn_reserve(session.id, "long", prompt_tokens=10_000_000, max_output_tokens=10_000_000)
    assert svc.balance(user.id) == 100
    assert [m.status for m in svc.store.snapshot().messages] == ["refused"]


def test_failed_chat_turn_refunds_whole_reservation(env):
    svc, clock, providers, user = env
    msg = svc.chat_turn_reserve(svc.open_chat(user.id, "parley-chat").id, "x", 100, 100)
    svc.chat_turn_fail(msg.id)
    assert svc.balance(user.id) == 100


def test_tool_backed_chat_task_is_billed_on_task_path(env):
    svc, clock, providers, user = env
    msg = svc.chat_turn_reserve(svc.open_chat(user.id, "parley-chat").id, "draw a cat", 100, 100)
    task = svc.submit(user.id, {**IMAGE, "prompt": "a cat"}, chat_message_id=msg.id)
    assert task.chat_message_id == msg.id
    assert [r.entry_type for r in ledger(svc, task.id)] == ["consume"]


# --- support ------------------------------------------------------------------------------


def test_support_refund_only_when_due(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    with pytest.raises(ActionRefused) as running:
        svc.support_refund(task.id, "sam", "user asked")
    assert running.value.reason == RefundRefusal.NOT_FAILED and "GENERATING" in running.value.message
    svc.handle_callback(
        "lumen", *callback(clock, task.upstream_task_id, state="failed", error_code="nsfw", failure_class="user")
    )
    with pytest.raises(ActionRefused) as kept:
        svc.support_refund(task.id, "sam", "user asked")
    assert kept.value.reason == RefundRefusal.POLICY_KEEPS
    assert kept.value.to_dict()["reason"] == "policy_keeps"
    actions = [e.detail for e in svc.store.snapshot().events if e.kind == "support_action"]
    assert [a["operator"] for a in actions] == ["sam", "sam"]
    assert [a["refusal"] for a in actions] == ["not_failed", "policy_keeps"]  # the code on the timeline
    assert all(a["result"].startswith("refused: ") for a in actions)  # the sentence, as before
    with pytest.raises(ActionRefused) as anonymous:
        svc.support_refund(task.id, " ", "why")
    assert anonymous.value.reason == SupportRefusal.NO_OPERATOR
    with pytest.raises(ActionRefused) as unexplained:
        svc.support_refund(task.id, "sam", "")
    assert unexplained.value.reason == SupportRefusal.NO_REASON


def test_support_recheck_refusals_carry_their_codes(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    lumen = svc.providers.pop("lumen")
    with pytest.raises(ActionRefused) as no_client:
        svc.support_recheck(task.id, "sam", "look")
    assert no_client.value.reason == RecheckRefusal.NO_PROVIDER_CLIENT
    svc.providers["lumen"] = lumen
    providers["lumen"].succeed(task.upstream_task_id)
    assert svc.support_recheck(task.id, "sam", "look").status == TaskStatus.SUCCESS
    with pytest.raises(ActionRefused) as settled:
        svc.support_recheck(task.id, "sam", "again")
    assert settled.value.reason == RecheckRefusal.NOT_ACTIVE
    events = [e.detail for e in svc.store.snapshot().events if e.kind == "support_action"]
    assert [e.get("refusal") for e in events] == ["no_provider_client", None, "not_active"]


def test_support_refund_issues_a_due_refund_once():
    svc, clock, providers = make_service(BillingPolicy(refund_classes=frozenset()))
    user = svc.create_account("s@example.com", "S", grant=100)
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback(
        "lumen", *callback(clock, task.upstream_task_id, state="failed", error_code="x", failure_class="provider")
    )
    svc.policy = BillingPolicy()  # the policy now reverses provider failures: the refund is due
    svc.support_refund(task.id, "sam", "policy changed")
    with pytest.raises(ActionRefused) as again:
        svc.support_refund(task.id, "sam", "again")
    assert again.value.reason == RefundRefusal.ALREADY_REFUNDED
    assert svc.balance(user.id) == 100


def test_support_mark_failed_only_when_stuck(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    with pytest.raises(ActionRefused) as young:
        svc.support_mark_failed(task.id, "sam", "looks stuck")
    assert young.value.reason == MarkFailedRefusal.NOT_STUCK_YET
    clock.advance(svc.policy.stuck_for("image"))
    failed = svc.support_mark_failed(task.id, "sam", "looks stuck")
    assert failed.status == TaskStatus.FAILED and failed.error_code == "marked_failed_by_operator"
    with pytest.raises(ActionRefused) as settled:
        svc.support_mark_failed(task.id, "sam", "again")
    assert settled.value.reason == MarkFailedRefusal.NOT_ACTIVE
    assert svc.balance(user.id) == 100


def test_one_dispatch_runs_each_support_action_by_its_name(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    before = svc.store.snapshot()
    with pytest.raises(ValidationError) as unknown:
        svc.support("delete", task.id, "sam", "cleanup")
    assert unknown.value.code == "support_action_unknown" and svc.store.snapshot() == before
    with pytest.raises(ActionRefused) as young:
        svc.support("mark-failed", task.id, "sam", "looks stuck")
    assert young.value.reason == MarkFailedRefusal.NOT_STUCK_YET
    clock.advance(svc.policy.stuck_for("image"))
    failed = svc.support(SupportAction.MARK_FAILED, task.id, "sam", "looks stuck")
    assert failed.status == TaskStatus.FAILED
    actions = [e.detail["action"] for e in svc._tx(lambda tx: tx.task_events(task.id)) if e.kind == "support_action"]
    assert actions == ["mark_failed", "mark_failed"]


def test_support_recheck_applies_upstream_result(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id)
    assert svc.support_recheck(task.id, "sam", "user says missing").status == TaskStatus.SUCCESS
    with pytest.raises(ActionRefused):
        svc.support_recheck(task.id, "sam", "again")


# --- recovery -------------------------------------------------------------------------------


def test_recover_adopts_upstream_id_when_crash_hid_it(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    # simulate a crash after the provider accepted but before the id was stored
    with svc.store.begin() as tx:
        tx.update_task(task.id, None, status="WAITING", upstream_task_id=None, submitted_at=None)
    clock.advance(1)
    report = svc.recover()
    assert report.actions[0]["action"].startswith("stored the upstream id")
    assert svc.task(task.id).upstream_task_id == task.upstream_task_id
    assert svc.recover().changed == 0
    assert len([r for r in ledger(svc, task.id) if r.entry_type == "consume"]) == 1


def test_callback_body_json_detail_is_plain_json(env):
    svc, clock, providers, user = env
    task = svc.submit(user.id, IMAGE)
    svc.handle_callback("lumen", *callback(clock, task.upstream_task_id))
    for e in svc.store.snapshot().events:
        json.dumps(e.detail)


def test_recover_releases_a_chat_reservation_left_open(env):
    svc, clock, providers, user = env
    msg = svc.chat_turn_reserve(svc.open_chat(user.id, "parley-chat").id, "hi", 1000, 1000)
    clock.advance(60)
    report = svc.recover(grace_s=30)
    assert report.actions == [{"chat_message_id": msg.id, "action": "released the chat reservation"}]
    assert svc.balance(user.id) == 100
    assert svc.recover(grace_s=30).changed == 0


def test_grant_key_reused_with_other_parameters_is_refused(env):
    svc, clock, providers, user = env
    other = svc.create_account("bo@example.com", "Bo")
    first = svc.grant(user.id, 50, key="topup-123")
    assert svc.grant(user.id, 50, key="topup-123") == first  # a replay returns the original
    before = svc.store.snapshot()
    for uid, amount in ((other.id, 10), (user.id, 10), (other.id, 50)):
        with pytest.raises(IdempotencyConflict) as err:
            svc.grant(uid, amount, key="topup-123")
        assert err.value.code == "idempotency_key_reused" and "topup-123" in err.value.message
    after = svc.store.snapshot()
    assert (after.ledger, after.accounts) == (before.ledger, before.accounts)


@pytest.mark.parametrize(
    "email, grant, code",
    [
        ("x@example.com", 1.5, "grant_invalid"),
        ("x@example.com", -1, "grant_invalid"),
        ("x@example.com", True, "grant_invalid"),
        ("x@example.com", "5", "grant_invalid"),
        ("x@example.com", 10**30, "grant_invalid"),
        ("", 0, "email_invalid"),
        ("   ", 0, "email_invalid"),
        (None, 0, "email_invalid"),
        (["a@b"], 0, "email_invalid"),
    ],
)
def test_create_account_refuses_bad_email_or_grant(email, grant, code):
    svc, clock, providers = make_service()
    with pytest.raises(ValidationError) as err:
        svc.create_account(email, "X", grant=grant)
    assert err.value.code == code
    assert svc.store.snapshot().accounts == [] and svc.store.snapshot().ledger == []


def test_create_account_twice_is_account_exists(env):
    svc, clock, providers, user = env
    with pytest.raises(ValidationError) as err:
        svc.create_account("ada@example.com", "Ada again", grant=5)
    assert err.value.code == "account_exists"


@pytest.mark.parametrize("amount", [0, -5, 1.5, 10**30, True, float("inf")])
def test_a_grant_out_of_range_is_refused_and_writes_nothing(env, amount):
    svc, clock, providers, user = env
    before = svc.store.snapshot().ledger
    with pytest.raises(ValidationError) as err:
        svc.grant(user.id, amount)
    assert err.value.code == "grant_invalid" and svc.store.snapshot().ledger == before


@pytest.mark.parametrize("grace", [float("nan"), float("inf"), 1e308, -1])
def test_recover_refuses_a_grace_out_of_range(env, grace):
    svc, clock, providers, user = env
    with pytest.raises(ValidationError) as err:
        svc.recover(grace_s=grace)
    assert "grace_s" in err.value.message and "\n" not in err.value.message
