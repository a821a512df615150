"""Upstream cancel: a task we give up on (timeout, support mark failed) has its job stopped at the
provider, the answer on its timeline, and a late success never undoes the failure; the clients'
cancel answers, the Cancel-After deadline and reported run seconds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest
import respx

from rivya_core import upstream_cancel
from rivya_core.catalog import default_catalog
from rivya_core.clock import ManualClock
from rivya_core.domain import TaskStatus
from rivya_core.lifecycle import LifecycleService
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.ports import CancelAnswer, ProviderError, UpstreamCancel, UpstreamStatus
from rivya_core.providers.fal import FalClient
from rivya_core.providers.replicate import ReplicateClient
from rivya_core.read.diagnose import checklist_for_task
from rivya_core.stores.memory import MemoryStore
from tests.fakes import IMAGE, SECRET, FakeProvider, callback

R = "https://api.replicate.test/v1"
F = "https://queue.fal.test"


@dataclass
class CancelingProvider(FakeProvider):
    cancels: list[str] = field(default_factory=list)
    answer: UpstreamCancel | Exception = UpstreamCancel(CancelAnswer.CANCELED, "stopped")

    def cancel(self, upstream_task_id: str) -> UpstreamCancel:
        self.cancels.append(upstream_task_id)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _service(policy=DEFAULT_POLICY):
    clock = ManualClock()
    catalog = default_catalog()
    providers = {name: CancelingProvider(name) for name in catalog.providers()}
    svc = LifecycleService(
        MemoryStore(), clock, providers, catalog, policy, secrets={name: [SECRET] for name in providers}
    )
    user = svc.create_account("ada@example.com", "Ada", grant=100)
    return svc, clock, providers, user


def _time_out(svc, clock, task):
    clock.advance(svc.policy.timeout_for("image"))
    while svc.task(task.id).status == TaskStatus.GENERATING:
        svc.poll()
        clock.advance(svc.policy.poll_interval_s)
    return svc.task(task.id)


def _events(svc, task_id, kind=None):
    return [e for e in svc.store.snapshot().events if e.task_id == task_id and (kind is None or e.kind == kind)]


def test_a_timed_out_task_has_its_job_canceled_and_the_answer_on_its_timeline():
    svc, clock, providers, user = _service()
    task = svc.submit(user.id, IMAGE)
    failed = _time_out(svc, clock, task)
    assert (failed.status, failed.error_code) == ("FAILED", "timeout")
    assert providers["lumen"].cancels == [task.upstream_task_id]
    [ev] = _events(svc, task.id, "upstream_cancel")
    assert ev.detail == {
        "answer": "canceled",
        "detail": "stopped",
        "upstream_task_id": task.upstream_task_id,
        "reason": "timeout",
    }
    kinds = [e.kind for e in _events(svc, task.id)]
    assert kinds.index("failed") < kinds.index("upstream_cancel")
    assert svc.balance(user.id) == 100  # refunded, as before


def test_support_mark_failed_cancels_the_job_and_keeps_the_timeline_in_order():
    svc, clock, providers, user = _service()
    task = svc.submit(user.id, IMAGE)
    clock.advance(svc.policy.stuck_for("image") + 1)
    svc.support_mark_failed(task.id, "Dana", "upstream lost the job")
    assert providers["lumen"].cancels == [task.upstream_task_id]
    events = _events(svc, task.id)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert [e.detail["reason"] for e in events if e.kind == "upstream_cancel"] == ["marked_failed_by_operator"]


def test_a_late_success_callback_is_a_late_duplicate_and_the_failure_and_refund_stand():
    svc, clock, providers, user = _service()
    task = svc.submit(user.id, IMAGE)
    _time_out(svc, clock, task)
    headers, body = callback(clock, task.upstream_task_id, "succeeded", msg_id="msg_late")
    result = svc.handle_callback("lumen", headers, body)
    assert (result.outcome, result.reason) == ("duplicate", upstream_cancel.LATE_SUCCESS)
    after = svc.task(task.id)
    assert (after.status, after.result_urls) == ("FAILED", None)
    assert svc.balance(user.id) == 100
    # the checklist tells support the user was refunded and the output came late
    snap = svc.store.snapshot()
    rows = lambda xs: [x.__dict__ | {"kind": str(getattr(x, "kind", ""))} for x in xs if x.task_id == task.id]  # noqa: E731
    detail = {
        "task": after.__dict__ | {"status": str(after.status)},
        "events": rows(snap.events),
        "ledger": [e.__dict__ | {"entry_type": str(e.entry_type)} for e in snap.ledger if e.task_id == task.id],
        "callbacks": [c.__dict__ for c in snap.callbacks if c.task_id == task.id],
        "notifications": rows(snap.notifications),
        "chat_message": None,
    }
    item = checklist_for_task(detail, svc.policy, clock.now()).item("upstream_cancel")
    assert item.status == "warn"
    assert "refunded 2 credits" in item.answer and "arrived late" in item.answer and "canceled" in item.answer


def test_a_provider_that_cannot_be_reached_is_recorded_and_the_task_stays_failed():
    svc, clock, providers, user = _service()
    providers["lumen"].answer = ProviderError("timeout", "lumen: no answer within the timeout")
    task = svc.submit(user.id, IMAGE)
    assert _time_out(svc, clock, task).status == "FAILED"
    [ev] = _events(svc, task.id, "upstream_cancel")
    assert ev.detail["answer"] == "error" and "no answer" in ev.detail["detail"]


def test_a_client_without_cancel_is_recorded_as_unsupported():
    svc, clock, providers, user = _service()
    plain = FakeProvider("lumen")
    svc.providers["lumen"] = plain
    task = svc.submit(user.id, IMAGE)
    _time_out(svc, clock, task)
    assert [e.detail["answer"] for e in _events(svc, task.id, "upstream_cancel")] == ["unsupported"]


def test_no_cancel_when_the_policy_turns_it_off_or_the_provider_failed_the_job_itself():
    svc, clock, providers, user = _service(replace(DEFAULT_POLICY, upstream_cancel=False))
    task = svc.submit(user.id, IMAGE)
    _time_out(svc, clock, task)
    assert providers["lumen"].cancels == [] and not _events(svc, task.id, "upstream_cancel")

    svc, clock, providers, user = _service()
    task = svc.submit(user.id, IMAGE)
    headers, body = callback(clock, task.upstream_task_id, "failed", error_code="model_error", failure_class="provider")
    svc.handle_callback("lumen", headers, body)
    assert svc.task(task.id).status == "FAILED" and providers["lumen"].cancels == []


def test_the_policy_key_is_checked():
    from rivya_core.policy import BillingPolicy, PolicyError

    with pytest.raises(PolicyError, match="upstream_cancel"):
        BillingPolicy.from_dict({"upstream_cancel": "yes"})
    for bad in (0, -1, float("nan"), float("inf"), "1"):
        with pytest.raises(PolicyError, match="credit_value"):
            BillingPolicy.from_dict({"credit_value": bad})


# --- the clients ------------------------------------------------------------------------


def _prediction(status, pid="p1", predict_time=None, output=None):
    return {
        "id": pid,
        "status": status,
        "output": output,
        "error": None,
        "metrics": {} if predict_time is None else {"predict_time": predict_time},
    }


@pytest.fixture
def replicate():
    client = ReplicateClient(
        "lumen", "t", base_url=R, webhook_url="https://rivya.test/webhooks/lumen", webhook_secrets=[SECRET], retries=0
    )
    with respx.mock(base_url=R, assert_all_called=False) as mock:
        yield client, mock


@pytest.mark.parametrize(
    "code, doc, answer",
    [
        (200, _prediction("canceled", predict_time=3.5), "canceled"),
        (200, _prediction("processing"), "canceled"),
        (200, _prediction("succeeded", output=["https://x.test/a.png"]), "already_finished"),
        (404, {"detail": "Not found."}, "unknown"),
        (500, {"detail": "boom"}, "error"),
    ],
)
def test_replicate_cancel_answers(replicate, code, doc, answer):
    client, mock = replicate
    mock.post("/predictions/p1/cancel").respond(code, json=doc)
    got = client.cancel("p1")
    assert got.answer == answer and f"HTTP {code}" in got.detail
    if answer == "canceled" and doc["status"] == "canceled":
        assert got.run_s == 3.5


def test_replicate_submission_carries_cancel_after_from_the_category_timeout(replicate):
    client, mock = replicate
    route = mock.post("/models/lumen-flash/predictions").respond(201, json=_prediction("starting"))
    svc = LifecycleService(MemoryStore(), ManualClock(), {"lumen": client}, default_catalog())
    user = svc.create_account("a@example.com", "A", grant=10)
    svc.submit(user.id, IMAGE)
    assert route.calls.last.request.headers["cancel-after"] == "900s"  # image: 15 minutes
    off = ReplicateClient("lumen", "t", base_url=R, retries=0)
    LifecycleService(
        MemoryStore(), ManualClock(), {"lumen": off}, default_catalog(), replace(DEFAULT_POLICY, upstream_cancel=False)
    )
    off.submit("task-9", "lumen-flash", "x", {})
    assert "cancel-after" not in route.calls.last.request.headers


def test_reported_run_seconds_are_stored_on_the_task(replicate):
    client, mock = replicate
    mock.post("/models/lumen-flash/predictions").respond(201, json=_prediction("starting"))
    svc = LifecycleService(MemoryStore(), ManualClock(), {"lumen": client}, default_catalog())
    user = svc.create_account("a@example.com", "A", grant=10)
    task = svc.submit(user.id, IMAGE)
    body = json.dumps(_prediction("succeeded", predict_time=4.25, output=["https://x.test/a.png"])).encode()
    from rivya_core import webhooks

    ts = (
        int(svc.clock.now().timestamp())
        if svc.clock.now().tzinfo
        else int((svc.clock.now() - __import__("datetime").datetime(1970, 1, 1)).total_seconds())
    )
    svc.handle_callback("lumen", webhooks.signed_headers(SECRET, "msg_1", ts, body), body)
    done = svc.task(task.id)
    assert (done.status, done.provider_run_s) == ("SUCCESS", 4.25)
    # a bad metrics value is not a number of seconds
    for bad in ("4", -1, True, None):
        doc = _prediction("succeeded", output=["https://x.test/a.png"])
        doc["metrics"] = {"predict_time": bad}
        assert client.callbacks.parse(json.dumps(doc).encode())[1].run_s is None


@pytest.fixture
def fal():
    client = FalClient("kinetica", "k", app="acme/kin", base_url=F, retries=0)
    with respx.mock(base_url=F, assert_all_called=False) as mock:
        yield client, mock


@pytest.mark.parametrize(
    "code, doc, answer",
    [
        (202, {"status": "CANCELLATION_REQUESTED"}, "canceled"),
        (400, {"status": "ALREADY_COMPLETED"}, "already_finished"),
        (404, {"status": "NOT_FOUND"}, "unknown"),
        (503, {"detail": "later"}, "error"),
    ],
)
def test_fal_cancel_answers(fal, code, doc, answer):
    client, mock = fal
    mock.put("/acme/kin/requests/r1/cancel").respond(code, json=doc)
    got = client.cancel("r1")
    assert got.answer == answer and got.detail.startswith(f"HTTP {code}")


def test_fal_reports_inference_time_from_the_status_or_the_payload(fal):
    client, mock = fal
    mock.get("/acme/kin/requests/r1/status").respond(
        200, json={"status": "COMPLETED", "metrics": {"inference_time": 12.5}}
    )
    mock.get("/acme/kin/requests/r1").respond(200, json={"video": {"url": "https://fal.media/v.mp4"}})
    assert client.status("r1").run_s == 12.5
    mock.get("/acme/kin/requests/r2/status").respond(200, json={"status": "COMPLETED"})
    mock.get("/acme/kin/requests/r2").respond(
        200, json={"images": [{"url": "https://fal.media/a.png"}], "timings": {"inference": 0.75}}
    )
    assert client.status("r2") == UpstreamStatus("succeeded", ("https://fal.media/a.png",), run_s=0.75)


def test_cancel_after_header_is_whole_seconds():
    assert upstream_cancel.cancel_after_header(900.0) == "900s"
    assert upstream_cancel.cancel_after_header(0.2) == "1s"
    assert upstream_cancel.cancel_after_s(replace(DEFAULT_POLICY, upstream_cancel=False), "image") is None
