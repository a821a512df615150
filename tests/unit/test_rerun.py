"""Re-run for the user (rivya_core.support.rerun) over the memory store with fake providers: the lifecycle's
own submit path, the links both ways, courtesy refunds, and every refusal changing nothing."""

from __future__ import annotations

import pytest

from rivya_core.domain import ActionRefused, EntryType, TaskStatus
from rivya_core.rules import RerunRefusal, SupportRefusal
from rivya_core.support import rerun
from tests import reads
from tests.fakes import IMAGE, callback, make_service

OPERATOR, REASON = "Dana Support", "user asked again after the outage"


@pytest.fixture
def env():
    svc, clock, providers = make_service()
    user = svc.create_account("u@example.com", "U", grant=100)
    return svc, clock, providers, user


def _failed(svc, clock, user, prompt="a lighthouse at dusk"):
    t = svc.submit(user.id, {**IMAGE, "prompt": prompt, "params": {"width": 512}})
    svc.handle_callback(
        "lumen",
        *callback(
            clock,
            t.upstream_task_id,
            state="failed",
            msg_id=f"f{t.id}",
            error_code="model_error",
            failure_class="provider",
        ),
    )
    return svc.task(t.id)


def _events(svc, task_id):
    return svc._tx(lambda tx: tx.task_events(task_id))


def test_a_rerun_is_a_new_task_through_the_submit_path_linked_both_ways(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    clock.advance(60)
    new = rerun.support_rerun(svc, original.id, OPERATOR, REASON)
    assert new.id != original.id and new.rerun_of == original.id
    assert (new.model, new.prompt, new.params) == (original.model, original.prompt, original.params)
    assert new.status == TaskStatus.GENERATING and new.upstream_task_id
    assert providers["lumen"].refs[f"task-{new.id}"] == new.upstream_task_id  # submitted under its own ref
    kinds = [e.kind for e in _events(svc, new.id)]
    assert kinds[:4] == ["created", "rerun_of", "charged", "submitted"]  # charged before submission
    assert _events(svc, new.id)[1].detail == {"original_task_id": original.id, "courtesy": False}
    mine = [e for e in _events(svc, original.id) if e.kind in ("rerun", "support_action")]
    assert mine[0].detail == {"rerun_task_id": new.id, "courtesy": False}
    assert mine[1].detail["operator"] == OPERATOR and mine[1].detail["action"] == "rerun"
    assert mine[1].detail["result"] == f"re-run as task #{new.id}"
    assert svc.task(original.id).status == TaskStatus.FAILED  # the original is left as it was
    entries = svc._tx(lambda tx: tx.task_entries(new.id))
    assert [(e.entry_type, e.amount) for e in entries] == [(EntryType.CONSUME, -new.reserved_credits)]
    said = rerun.describe_rerun(svc, original.id, new)
    assert said["text"].startswith(f"Task #{new.id}, a re-run of task #{original.id}, is GENERATING")


def test_a_courtesy_rerun_gives_its_charge_back_at_once_and_is_never_refunded_twice(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    before = svc.balance(user.id)
    new = rerun.support_rerun(svc, original.id, OPERATOR, REASON, courtesy=True)
    entries = svc._tx(lambda tx: tx.task_entries(new.id))
    assert [(e.entry_type, e.amount, e.support) for e in entries] == [
        (EntryType.CONSUME, -new.reserved_credits, False),
        (EntryType.REFUND, new.reserved_credits, True),
    ]
    assert OPERATOR not in entries[1].note and REASON not in entries[1].note
    assert svc.balance(user.id) == before
    assert new.status == TaskStatus.GENERATING  # still submitted upstream
    svc.handle_callback(
        "lumen",
        *callback(
            clock,
            new.upstream_task_id,
            state="failed",
            msg_id="again",
            error_code="model_error",
            failure_class="provider",
        ),
    )
    refunds = [e for e in svc._tx(lambda tx: tx.task_entries(new.id)) if e.entry_type == EntryType.REFUND]
    assert len(refunds) == 1 and svc.balance(user.id) == before  # the policy's refund is the same entry
    assert rerun.describe_rerun(svc, original.id, svc.task(new.id))["courtesy"] is True


def test_the_user_never_sees_who_reran_it_or_why(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    new = rerun.support_rerun(svc, original.id, OPERATOR, REASON)
    svc.handle_callback(
        "lumen",
        *callback(
            clock, new.upstream_task_id, state="failed", msg_id="n", error_code="model_error", failure_class="provider"
        ),
    )
    notes = reads.task_notifications(svc.store, new.id)
    assert notes and all(OPERATOR not in n.body + n.title and REASON not in n.body + n.title for n in notes)
    task = svc.task(new.id)
    assert OPERATOR not in (task.error_message or "") and REASON not in (task.error_message or "")


@pytest.mark.parametrize("running", ["original", "twin"])
def test_refused_while_the_original_or_a_same_prompt_run_is_running(env, running):
    svc, clock, providers, user = env
    if running == "original":
        target = svc.submit(user.id, IMAGE)  # GENERATING
        code = RerunRefusal.ORIGINAL_RUNNING
    else:
        target = _failed(svc, clock, user)
        twin = svc.submit(user.id, {**IMAGE, "params": {"width": 768}})  # same model and prompt, running
        code = RerunRefusal.DUPLICATE_RUNNING
    before = svc.store.snapshot()
    with pytest.raises(ActionRefused) as err:
        rerun.support_rerun(svc, target.id, OPERATOR, REASON)
    assert err.value.reason == code
    if running == "twin":
        assert f"#{twin.id}" in err.value.message
    after = svc.store.snapshot()
    assert len(after.tasks) == len(before.tasks) and after.ledger == before.ledger
    [refused] = [e for e in after.events if e not in before.events]
    assert refused.task_id == target.id and refused.detail["refusal"] == str(code)


def test_a_second_rerun_right_after_the_first_is_refused_as_a_duplicate(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    first = rerun.support_rerun(svc, original.id, OPERATOR, REASON)
    with pytest.raises(ActionRefused) as err:
        rerun.support_rerun(svc, original.id, "Kim", "double click")
    assert err.value.reason == RerunRefusal.DUPLICATE_RUNNING and f"#{first.id}" in err.value.message


def test_refused_without_a_provider_client_nothing_is_created(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    svc.providers.pop("lumen")
    tasks = len(svc.store.snapshot().tasks)
    with pytest.raises(ActionRefused) as err:
        rerun.support_rerun(svc, original.id, OPERATOR, REASON)
    assert err.value.reason == RerunRefusal.NO_PROVIDER_CLIENT and "nothing was created" in err.value.message
    assert len(svc.store.snapshot().tasks) == tasks


def test_refused_when_the_request_no_longer_validates(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    svc._tx(lambda tx: tx.update_task(original.id, None, params={"no_such_setting": 1}))
    with pytest.raises(ActionRefused) as err:
        rerun.support_rerun(svc, original.id, OPERATOR, REASON)
    assert err.value.reason == RerunRefusal.REQUEST_INVALID and "param_unknown" in err.value.message


@pytest.mark.parametrize(
    "operator,reason,code", [("", REASON, SupportRefusal.NO_OPERATOR), (OPERATOR, "  ", SupportRefusal.NO_REASON)]
)
def test_a_rerun_needs_an_operator_and_a_reason(env, operator, reason, code):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    with pytest.raises(ActionRefused) as err:
        rerun.support_rerun(svc, original.id, operator, reason)
    assert err.value.reason == code


def test_a_rerun_the_user_cannot_pay_for_fails_for_credits_as_a_submission_would(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    balance = svc.balance(user.id)
    svc._tx(lambda tx: tx.post(user.id, EntryType.ADJUSTMENT, -balance, "spent-elsewhere", clock.now()))
    new = rerun.support_rerun(svc, original.id, OPERATOR, REASON, courtesy=True)
    assert (new.status, new.error_code, new.upstream_task_id) == (TaskStatus.FAILED, "insufficient_credits", None)
    assert svc._tx(lambda tx: tx.task_entries(new.id)) == []
    assert "failed for credits" in rerun.describe_rerun(svc, original.id, new)["text"]


def test_a_refused_submission_fails_the_rerun_and_the_policy_refunds_it(env):
    svc, clock, providers, user = env
    original = _failed(svc, clock, user)
    providers["lumen"].submit_faults = ["refused"] * (1 + svc.policy.submit_retries)
    new = rerun.support_rerun(svc, original.id, OPERATOR, REASON)
    assert (new.status, new.error_code, new.failure_class) == (TaskStatus.FAILED, "submit_refused", "provider")
    assert sum(e.amount for e in svc._tx(lambda tx: tx.task_entries(new.id))) == 0
    assert "refunded by policy" in rerun.describe_rerun(svc, original.id, new)["text"]
