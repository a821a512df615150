"""The troubleshooting checklist on crafted task stories, chat turns, and the recheck signals."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from rivya_core import verdicts
from rivya_core.domain import NotFound
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.read.chat_checklist import diagnose_chat_message
from rivya_core.read.diagnose import diagnose
from rivya_core.read.signals import recheck_signals

from .dbrows import T0, Rows, make_engine

V, A = verdicts.Verdict, verdicts.NextAction

S = timedelta(seconds=1)


@pytest.fixture
def db(db_url):
    engine = make_engine(db_url)
    rows = Rows(engine)
    rows.uid = rows.account()
    rows.grant(rows.uid, 1000)
    yield rows
    engine.dispose()


def submitted(db, tid, at=T0):
    db.event(tid, "created", at=at)
    db.event(tid, "charged", at=at)
    db.event(tid, "submitted", at=at + S)


def test_success_via_callback(db):
    tid = db.success(db.uid, upstream="up-1")
    submitted(db, tid)
    db.callback(tid, "up-1", "applied", at=T0 + 60 * S)
    db.event(tid, "callback", at=T0 + 60 * S, outcome="applied", state="succeeded")
    db.event(tid, "succeeded", at=T0 + 60 * S, path="callback", result_urls=1)
    d = diagnose(db.engine, tid, now=T0 + 120 * S)
    assert (d.verdict_code, d.action_code, d.task_type) == (V.DELIVERED, A.NOTHING, "image")
    assert d.item("credits").status == "ok" and "before submission" in d.item("credits").answer
    assert d.item("credits").evidence[0]["idempotency_key"] == f"consume:task:{tid}"
    assert d.item("callbacks").status == "ok" and "applied ×1" in d.item("callbacks").answer
    assert "via callback" in d.item("history").answer
    assert d.item("notification").status == "ok"
    assert d.item("refund").status == "ok"
    assert d.signals == []


def test_early_callback_deferred_then_rechecked(db):
    tid = db.success(db.uid, upstream="up-2")
    submitted(db, tid)
    db.callback(tid, "up-2", "deferred", at=T0 + 30 * S)
    db.event(tid, "callback", at=T0 + 30 * S, outcome="deferred", state="succeeded")
    db.event(tid, "deferred", at=T0 + 30 * S, path="callback", next_check_in_s=5)
    db.event(tid, "recheck", at=T0 + 35 * S, state="running")
    db.event(tid, "recheck", at=T0 + 50 * S, state="succeeded")
    db.event(tid, "succeeded", at=T0 + 50 * S, path="recheck", result_urls=1)
    d = diagnose(db.engine, tid)
    assert d.verdict_code == V.DELIVERED
    assert d.item("callbacks").answer == "1 callback: deferred ×1." and d.item("callbacks").status == "info"
    assert "deferred ×1" in d.item("polling").answer and "recheck ×2" in d.item("polling").answer
    assert d.item("polling").answer.endswith("last upstream state: succeeded.")
    assert "via recheck" in d.item("history").answer


def test_failed_and_refunded(db):
    tid = db.failed(db.uid, failure_class="provider", error_code="provider_error")
    d = diagnose(db.engine, tid)
    assert (d.verdict_code, d.action_code) == (V.FAILED_REFUNDED, A.NOTHING)
    assert d.item("refund").status == "ok" and d.item("failure").answer.startswith("Provider failure")
    assert [e["entry_type"] for e in d.item("refund").evidence] == ["consume", "refund"]


def test_failed_refund_due(db):
    tid = db.failed(db.uid, failure_class="infrastructure", error_code="timeout", refund=False)
    d = diagnose(db.engine, tid)
    assert (d.verdict_code, d.action_code) == (V.REFUND_DUE, A.ISSUE_REFUND)
    assert d.item("refund").status == "fail" and "10 credits due" in d.item("refund").answer
    assert [s.kind for s in d.signals] == ["credits_without_output"]
    # a policy that keeps infrastructure failures changes the answer
    keep = replace(DEFAULT_POLICY, name="keep", refund_classes=frozenset())
    d = diagnose(db.engine, tid, keep)
    assert d.verdict_code == V.FAILED_CREDITS_KEPT and d.item("refund").status == "ok"


def test_user_failure_tells_the_user_what_to_fix(db):
    tid = db.failed(db.uid, failure_class="user", error_code="prompt_too_long", refund=False)
    d = diagnose(db.engine, tid)
    assert d.action_code == A.TELL_USER_CORRECT and d.next_action == "tell the user to shorten the prompt"
    assert d.item("failure").answer.startswith("User-correctable")
    assert d.verdict_code == V.FAILED_USER_CREDITS_KEPT


def test_support_goodwill_refund_is_not_a_problem(db):
    tid = db.failed(db.uid, failure_class="user", error_code="content_policy", refund=False)
    db.ledger(db.uid, "refund", 10, task_id=tid, key=f"refund:task:{tid}", note="kim: goodwill", support=True)
    d = diagnose(db.engine, tid)
    assert d.item("refund").status == "info" and "goodwill" in d.item("refund").answer
    assert d.verdict_code == V.FAILED_REFUNDED


def test_insufficient_credits(db):
    tid = db.broke(db.uid, credits=5000)
    d = diagnose(db.engine, tid)
    assert (d.verdict_code, d.action_code) == (V.FAILED_FOR_CREDITS, A.TELL_USER_TOP_UP)
    assert d.item("credits").status == "ok" and "never called" in d.item("credits").answer
    assert d.item("notification").status == "ok" and d.item("refund").answer == "No: never charged."


def test_missing_notification_is_a_failed_item(db):
    tid = db.success(db.uid, notify=False)
    assert diagnose(db.engine, tid).item("notification").status == "fail"


@pytest.mark.parametrize(
    "minutes, verdict, action",
    [
        (1, V.GENERATING, A.WAIT),
        (8, V.STUCK, A.RECHECK_UPSTREAM),
        (20, V.STUCK_PAST_TIMEOUT, A.MARK_FAILED),
    ],
)
def test_running_task_by_age(db, minutes, verdict, action):
    tid = db.task(db.uid, status="GENERATING", upstream="up-run", submitted_at=T0)
    db.ledger(db.uid, "consume", -10, task_id=tid, key=f"consume:task:{tid}")
    submitted(db, tid)
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=minutes))
    assert (d.verdict_code, d.action_code) == (verdict, action)
    assert d.verdict == verdicts.VERDICT_TEXT[verdict] and d.next_action.startswith(verdicts.ACTION_TEXT[action])
    if action == A.MARK_FAILED:  # with what it does to the credits
        assert d.next_action.endswith("marking it failed refunds its 10 credits")
    assert d.item("history").answer.startswith("Not yet: GENERATING")
    stuck_signal = "in_progress_too_long" in [s.kind for s in d.signals]
    assert stuck_signal == (minutes > 5)
    assert (d.item("polling").status == "warn") == (minutes > 5)


def failed_read(db, tid, at, kind, path="polling"):
    """A status read the provider failed, as the lifecycle records it: poll_error, then the read as unknown."""
    db.event(tid, "poll_error", at=at, error_kind=kind, message=f"kinetica: upstream said {kind}", path=path)
    db.event(tid, "poll" if path == "polling" else "recheck", at=at, state="unknown")


@pytest.mark.parametrize(
    "minutes, verdict, action",
    [
        (4, V.GENERATING, A.WAIT),  # within normal time: polling asks again by itself
        (9, V.STUCK, A.RECHECK_LATER),  # stuck while the provider does not answer: not a re-check now
        (20, V.STUCK_PAST_TIMEOUT, A.MARK_FAILED),
    ],
)
def test_poll_errors_are_shown_and_steer_the_next_action(db, minutes, verdict, action):
    tid = db.task(db.uid, status="GENERATING", upstream="up-err", submitted_at=T0)
    db.ledger(db.uid, "consume", -10, task_id=tid, key=f"consume:task:{tid}")
    submitted(db, tid)
    db.event(tid, "poll", at=T0 + 60 * S, state="running")
    failed_read(db, tid, T0 + 150 * S, "timeout")
    failed_read(db, tid, T0 + 210 * S, "error", path="recheck")
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=minutes))
    assert (d.verdict_code, d.action_code) == (verdict, action)
    polling = d.item("polling")
    assert polling.status == "warn"
    assert "2 status reads failed (timeout ×1, error ×1)" in polling.answer
    assert "has not answered since" in polling.answer
    assert [e["detail"]["error_kind"] for e in polling.evidence if e["kind"] == "poll_error"] == ["timeout", "error"]
    if action == A.RECHECK_LATER:
        assert "provider incident" in d.next_action


def test_poll_errors_the_provider_answered_since_are_history(db):
    tid = db.task(db.uid, status="GENERATING", upstream="up-err2", submitted_at=T0)
    db.ledger(db.uid, "consume", -10, task_id=tid, key=f"consume:task:{tid}")
    submitted(db, tid)
    failed_read(db, tid, T0 + 60 * S, "timeout")
    db.event(tid, "poll", at=T0 + 120 * S, state="running")
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=9))
    assert (d.verdict_code, d.action_code) == (V.STUCK, A.RECHECK_UPSTREAM)
    polling = d.item("polling")
    assert polling.status == "info" and "1 status read failed (timeout ×1)" in polling.answer
    assert "answered since" in polling.answer and "last upstream state: running" in polling.answer


def test_tool_backed_chat(db):
    mid = db.chat_settled(db.uid, reserved=12, charged=8)
    tid = db.success(db.uid, chat_message_id=mid, category="video", model="vid-1")
    d = diagnose(db.engine, tid)
    assert d.task_type == "tool-backed chat" and f"chat message #{mid}" in d.item("task_type").answer
    assert d.verdict_code == V.DELIVERED
    c = diagnose_chat_message(db.engine, mid)
    assert c.task_type == "tool-backed chat" and c.verdict_code == V.CHAT_SETTLED_REFUNDED
    assert c.item("tool_tasks").status == "ok" and f"task #{tid}: delivered" in c.item("tool_tasks").answer


def test_chat_turns(db):
    mid = db.chat_settled(db.uid, reserved=10, charged=10)
    assert diagnose_chat_message(db.engine, mid).verdict_code == V.CHAT_SETTLED
    sid = db.session(db.uid)
    open_mid = db.message(sid, reserved=7, status="reserved", at=T0)
    db.ledger(db.uid, "chat_reserve", -7, msg_id=open_mid)
    d = diagnose_chat_message(db.engine, open_mid, now=T0 + timedelta(minutes=1))
    assert d.verdict_code == V.CHAT_RESERVED and d.task_type == "chat settlement"
    d = diagnose_chat_message(db.engine, open_mid, now=T0 + timedelta(hours=1))
    assert d.verdict_code == V.CHAT_RESERVATION_OVERDUE and d.item("credits").status == "warn"
    bad = db.chat_settled(db.uid, reserved=10, charged=4)
    db.ledger(db.uid, "chat_refund", 6, msg_id=bad, key="chat_refund:twice")
    d = diagnose_chat_message(db.engine, bad)
    assert (d.verdict_code, d.item("credits").status) == (V.CHAT_SETTLEMENT_MISMATCH, "fail")


@pytest.mark.parametrize("missing", [10**9, -3, "7"])
def test_missing_ids_raise_not_found(db, missing):
    with pytest.raises(NotFound):
        diagnose(db.engine, missing)
    with pytest.raises(NotFound):
        diagnose_chat_message(db.engine, missing)


def test_to_dict_and_render_text(db):
    tid = db.failed(db.uid, refund=False)
    d = diagnose(db.engine, tid)
    data = json.loads(json.dumps(d.to_dict()))
    assert data["verdict_code"] == "refund_due" and data["verdict"] == "failed, refund due" and len(data["items"]) == 8
    text = d.render_text()
    assert "Verdict: failed, refund due" in text and "Next action: issue the due refund" in text
    assert "[FAIL] Should credits be reversed" in text


# --- recheck signals -------------------------------------------------------------------------------


def kinds(signals):
    return sorted(s.kind for s in signals)


def test_no_signals_for_a_healthy_user(db):
    db.success(db.uid)
    db.failed(db.uid)
    assert recheck_signals(db.engine, db.uid, now=T0 + timedelta(hours=1)) == []


def test_same_prompt_failing_repeatedly(db):
    db.failed(db.uid, prompt="neon city")
    db.failed(db.uid, prompt="neon city", at=T0 + 5 * S)
    db.failed(db.uid, prompt="other")
    sig = recheck_signals(db.engine, db.uid)
    assert kinds(sig) == ["same_prompt_failing"] and len(sig[0].evidence) == 2 and "2 times" in sig[0].message
    assert recheck_signals(db.engine, db.uid, prompt="other") == []


def test_in_progress_too_long_and_credits_without_output(db):
    tid = db.task(db.uid, status="GENERATING", upstream="u", submitted_at=T0)
    db.ledger(db.uid, "consume", -10, task_id=tid, key=f"consume:task:{tid}")
    assert recheck_signals(db.engine, db.uid, now=T0 + timedelta(minutes=2)) == []
    sig = recheck_signals(db.engine, db.uid, now=T0 + timedelta(minutes=30))
    assert kinds(sig) == ["credits_without_output", "in_progress_too_long"]
    assert all(s.evidence[0]["task_id"] == tid for s in sig)


def test_heavier_duplicate_run(db):
    first = db.task(db.uid, status="GENERATING", prompt="a whale", credits=10, upstream="u1", submitted_at=T0)
    db.task(
        db.uid,
        status="GENERATING",
        prompt="a whale",
        credits=20,
        upstream="u2",
        at=T0 + 60 * S,
        submitted_at=T0 + 60 * S,
    )
    db.task(db.uid, status="SUCCESS", prompt="a whale", credits=30, at=T0 + timedelta(hours=2), urls=["x"])
    sig = recheck_signals(db.engine, db.uid, now=T0 + 90 * S)
    assert kinds(sig) == ["heavier_duplicate"] and sig[0].evidence[0]["task_id"] == first
    assert len(sig[0].evidence) == 2  # the running task and the heavier twin inside the window


def test_about_to_run_a_duplicate(db):
    db.task(db.uid, status="GENERATING", prompt="a whale", model="img-basic", upstream="u1", submitted_at=T0)
    sig = recheck_signals(db.engine, db.uid, now=T0 + 30 * S, prompt="a whale", model="img-basic")
    assert kinds(sig) == ["heavier_duplicate"] and "still in progress" in sig[0].message
    assert recheck_signals(db.engine, db.uid, now=T0 + 30 * S, prompt="a whale", model="other") == []


def test_signal_inputs_are_parameters(db):
    db.failed(db.uid, prompt="x")
    db.failed(db.uid, prompt="x")
    assert recheck_signals(db.engine, db.uid, prompt="x' OR '1'='1") == []


# --- after a re-check: the next action uses what it found -------------------------------------


def _stuck_with_reads(db, *reads, provider="alpha"):
    """A GENERATING image task charged 10 credits, submitted at T0 (stuck after 5 min, past the
    timeout after 15), with the given (minutes, kind, state) upstream reads."""
    tid = db.task(
        db.uid, status="GENERATING", upstream=f"up-{len(reads)}-{provider}", submitted_at=T0, provider=provider
    )
    db.ledger(db.uid, "consume", -10, task_id=tid, key=f"consume:task:{tid}")
    submitted(db, tid)
    for minutes, kind, state in reads:
        db.event(tid, kind, at=T0 + timedelta(minutes=minutes), state=state)
    return tid


def _incident(db, name, *, provider="alpha", minutes=7, finished=True):
    from rivya_core.stores.schema import incident

    at = T0 + timedelta(minutes=minutes)
    return db._insert(
        incident,
        name=name,
        action="recheck",
        filter={"provider": provider},
        operator="sam",
        reason="provider down",
        created_at=at,
        finished_at=at if finished else None,
        runs=1,
        matched=1,
        acted=1,
        refused=0,
        credits_moved=0,
    )


def test_a_recheck_that_found_nothing_leads_to_mark_failed_with_its_refund(db):
    tid = _stuck_with_reads(db, (6, "recheck", "unknown"))
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert (d.verdict_code, d.action_code) == (V.STUCK, A.MARK_FAILED)
    assert "found nothing" in d.next_action and "refunds its 10 credits" in d.next_action
    keep = replace(DEFAULT_POLICY, name="keep", refund_classes=frozenset())
    d = diagnose(db.engine, tid, keep, now=T0 + timedelta(minutes=8))
    assert d.action_code == A.MARK_FAILED and "policy 'keep' keeps its 10 credits" in d.next_action


def test_a_read_before_the_task_was_stuck_is_no_answer_yet(db):
    tid = _stuck_with_reads(db, (2, "poll", "unknown"))
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert (d.verdict_code, d.action_code) == (V.STUCK, A.RECHECK_UPSTREAM)


def test_a_provider_that_still_runs_the_job_means_wait_until_the_timeout(db):
    tid = _stuck_with_reads(db, (6, "recheck", "running"))
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert (d.verdict_code, d.action_code) == (V.STUCK, A.WAIT)
    assert "still reports it running" in d.next_action and "timeout" in d.next_action


def test_an_open_incident_on_the_provider_means_wait_for_it_by_name(db):
    tid = _stuck_with_reads(db, (6, "recheck", "unknown"))
    _incident(db, "alpha outage 12:07")
    _incident(db, "beta outage", provider="beta")
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert (d.verdict_code, d.action_code) == (V.STUCK, A.WAIT_FOR_INCIDENT)
    assert "alpha outage 12:07" in d.next_action and "beta" not in d.next_action


def test_an_incident_that_already_acted_on_the_task_no_longer_covers_it(db):
    tid = _stuck_with_reads(db, (6, "recheck", "unknown"))
    inc = _incident(db, "alpha outage 12:07")
    db.event(
        tid,
        "support_action",
        at=T0 + timedelta(minutes=7),
        operator="sam",
        action="recheck",
        reason="provider down",
        result="upstream checked; task is GENERATING",
        incident=inc,
    )
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert d.action_code == A.MARK_FAILED


def test_a_degraded_provider_means_wait_for_its_incident(db):
    for i in range(12):  # the last hour: alpha failed 12 of 12 tasks, against none the day before
        db.failed(db.uid, at=T0 - timedelta(minutes=50) + timedelta(minutes=i), upstream=f"upd-{i}")
    tid = _stuck_with_reads(db, (6, "recheck", "unknown"))
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert (d.verdict_code, d.action_code) == (V.STUCK, A.WAIT_FOR_INCIDENT)
    assert "alpha" in d.next_action and "failed in the last hour" in d.next_action


def test_unreachable_with_an_incident_waits_for_it(db):
    tid = _stuck_with_reads(db, (6, "poll_error", None), (6, "poll", "unknown"))
    _incident(db, "alpha outage 12:07")
    d = diagnose(db.engine, tid, now=T0 + timedelta(minutes=8))
    assert d.action_code == A.WAIT_FOR_INCIDENT


def test_a_providers_url_past_its_retention_is_flagged(db):
    """Replicate deletes API outputs about an hour after the prediction ends: a SUCCESS whose
    URL is still the provider's is a dead link after that, and the checklist says so."""
    url = "https://replicate.delivery/pbxt/abc123/out.png"
    tid = db.success(db.uid, upstream="up-ret", urls=[url])
    submitted(db, tid)
    db.event(tid, "succeeded", at=T0 + 60 * S, path="callback", result_urls=1)
    fresh = diagnose(db.engine, tid, now=T0 + 30 * 60 * S).item("history")
    assert fresh.status == "ok"
    late = diagnose(db.engine, tid, now=T0 + 2 * 3600 * S).item("history")
    assert late.status == "warn" and "past the time the provider keeps outputs" in late.answer
    assert late.evidence[0]["expired"] == [url]
    ours = db.success(db.uid, upstream="up-ours", urls=["https://rivya.example.com/results/9/0-ab.png"])
    assert diagnose(db.engine, ours, now=T0 + 48 * 3600 * S).item("history").status == "ok"
