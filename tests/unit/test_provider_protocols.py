"""fal's structured errors, fal's submission URLs, Retry-After: the clients over httpx.MockTransport."""

from __future__ import annotations

import json

import httpx
import pytest

from rivya_core.domain import FailureClass
from rivya_core.ports import ProviderError, UpstreamState
from rivya_core.providers.config import parse_providers
from rivya_core.providers.fal import FalClient, classify
from rivya_core.providers.http import retry_after_s
from rivya_core.providers.keys import FAL_JWKS_URL
from rivya_core.providers.replicate import ReplicateClient

Q = "https://queue.fal.run"


@pytest.mark.parametrize(
    "detail, error_type, message, expected",
    [
        # the type decides, whatever the words say
        (
            [{"type": "content_policy_violation", "msg": "flagged", "loc": ["body", "prompt"]}],
            None,
            "flagged",
            ("content_policy_violation", FailureClass.USER),
        ),
        ([{"type": "image_too_large", "msg": "too big"}], None, "too big", ("invalid_input", FailureClass.USER)),
        ([{"type": "value_error.missing", "msg": "field required"}], None, "x", ("invalid_input", FailureClass.USER)),
        (
            [{"type": "internal_server_error", "msg": "NSFW safety checker crashed"}],
            None,
            "NSFW safety checker crashed",
            ("model_error", FailureClass.PROVIDER),
        ),
        ([{"type": "generation_timeout"}], None, "", ("model_error", FailureClass.PROVIDER)),
        (
            "Request timed out",
            "request_timeout",
            "Request timed out",
            ("upstream_timeout", FailureClass.INFRASTRUCTURE),
        ),
        (None, "startup_timeout", "", ("upstream_timeout", FailureClass.INFRASTRUCTURE)),
        (None, "runner_disconnected", "", ("upstream_unavailable", FailureClass.INFRASTRUCTURE)),
        ([{"type": "something_new"}], None, "content policy", ("upstream_error", FailureClass.PROVIDER)),
        # no structure at all: the message is the only fallback
        (None, None, "NSFW content detected", ("content_policy_violation", FailureClass.USER)),
        (None, None, "CUDA out of memory", ("upstream_error", FailureClass.PROVIDER)),
    ],
)
def test_fal_errors_are_classified_from_the_structured_error(detail, error_type, message, expected):
    assert classify(detail, error_type, message) == expected


def _fal(handler, **kw) -> FalClient:
    return FalClient("kinetica", "k", app="acme/kin", transport=httpx.MockTransport(handler), retries=0, **kw)


def test_webhook_error_payload_detail_type_decides():
    client = _fal(lambda r: httpx.Response(500))
    body = {
        "request_id": "r1",
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {
            "detail": [
                {"loc": ["body", "prompt"], "msg": "The content was flagged.", "type": "content_policy_violation"}
            ]
        },
    }
    rid, st = client.callbacks.parse(json.dumps(body).encode())
    assert rid == "r1" and st.state == UpstreamState.FAILED
    assert (st.error_code, st.failure_class, st.error_message) == (
        "content_policy_violation",
        FailureClass.USER,
        "The content was flagged.",
    )
    body["payload"] = {"detail": "Request timed out", "error_type": "request_timeout"}
    _rid, st = client.callbacks.parse(json.dumps(body).encode())
    assert (st.error_code, st.failure_class) == ("upstream_timeout", FailureClass.INFRASTRUCTURE)


def test_result_fetch_error_type_header_and_typed_detail():
    answers = {}

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "COMPLETED"})
        return answers["result"]

    client = _fal(handler)
    answers["result"] = httpx.Response(
        504, headers={"X-Fal-Error-Type": "request_timeout"}, json={"detail": "Request timed out"}
    )
    st = client.status("r1")
    assert (st.state, st.error_code, st.failure_class) == (
        UpstreamState.FAILED,
        "upstream_timeout",
        FailureClass.INFRASTRUCTURE,
    )
    answers["result"] = httpx.Response(422, json={"detail": [{"type": "content_policy_violation", "msg": "no"}]})
    assert client.status("r1").failure_class == FailureClass.USER
    answers["result"] = httpx.Response(422, json={"detail": "gone"})  # unstructured: the documented trap
    assert client.status("r1").error_code == "upstream_result_error"
    answers["result"] = httpx.Response(503)  # no answer of the job's: ask later
    assert client.status("r1").state == UpstreamState.UNKNOWN


def test_status_and_cancel_use_the_urls_fal_returned_at_submission():
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, str(req.url)))
        if req.method == "POST":
            base = f"{Q}/other-owner/other-app/requests/r9"
            return httpx.Response(
                200,
                json={
                    "request_id": "r9",
                    "status_url": base + "/status",
                    "response_url": base,
                    "cancel_url": base + "/cancel",
                },
            )
        if req.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "COMPLETED"})
        if req.url.path.endswith("/cancel"):
            return httpx.Response(400, json={"status": "ALREADY_COMPLETED"})
        return httpx.Response(200, json={"images": [{"url": "https://v3.fal.media/a.png"}]})

    client = _fal(handler, models={"kinetica-v2": "other-owner/other-app/v2"})
    assert client.submit("task-1", "kinetica-v2", "p", {}) == "r9"
    st = client.status("r9")
    assert st.state == UpstreamState.SUCCEEDED and st.result_urls == ("https://v3.fal.media/a.png",)
    client.cancel("r9")
    asked = [u for _m, u in seen[1:]]
    assert asked == [
        f"{Q}/other-owner/other-app/requests/r9/status",
        f"{Q}/other-owner/other-app/requests/r9",
        f"{Q}/other-owner/other-app/requests/r9/cancel",
    ]
    # a request this process did not submit: asked under the configured app
    client.status("r-unknown")
    assert seen[-2][1] == f"{Q}/acme/kin/requests/r-unknown/status"


def test_submission_urls_on_another_host_are_not_followed():
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        if req.method == "POST":
            return httpx.Response(
                200,
                json={
                    "request_id": "r1",
                    "status_url": "https://evil.example/steal",
                    "response_url": "https://evil.example/steal",
                },
            )
        return httpx.Response(202, json={"status": "IN_QUEUE"})

    client = _fal(handler)
    client.submit("task-1", "kinetica-v2", "p", {})
    client.status("r1")
    assert seen[-1] == f"{Q}/acme/kin/requests/r1/status"  # the key never goes to evil.example


def test_retry_after_is_honoured_and_bounded():
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "2"})
        return httpx.Response(201, json={"id": "p1", "status": "starting"})

    client = ReplicateClient("lumen", "t", transport=httpx.MockTransport(handler), retries=2)
    waits: list[float] = []
    client.api.sleep = waits.append
    assert client.submit("task-1", "acme/flash", "p", {}) == "p1"
    assert waits == [2.0]

    too_long = ReplicateClient(
        "lumen",
        "t",
        retries=2,
        transport=httpx.MockTransport(lambda r: httpx.Response(429, headers={"Retry-After": "3600"})),
    )
    too_long.api.sleep = waits.append
    with pytest.raises(ProviderError) as err:
        too_long.submit("task-2", "acme/flash", "p", {})
    assert err.value.code == "submit_error" and waits == [2.0]  # not waited for, not hammered


def test_retry_after_parses_seconds_and_http_dates():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "7"}), now) == 7.0
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "Thu, 01 Jan 2026 12:00:30 GMT"}), now) == 30.0
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "soon"}), now) is None
    assert retry_after_s(httpx.Response(500, headers={"Retry-After": "7"}), now) is None


def test_fal_config_defaults_to_the_published_jwks_only_on_fals_own_host():
    doc = {
        "providers": {
            "a": {"api": "fal", "key": "k"},
            "b": {"api": "fal", "key": "k", "base_url": "http://127.0.0.1:9100"},
            "c": {
                "api": "fal",
                "key": "k",
                "base_url": "http://127.0.0.1:9100",
                "jwks_url": "http://127.0.0.1:9100/.well-known/jwks.json",
            },
            "d": {"api": "fal", "key": "k", "jwks_url": ""},
        }
    }
    got = parse_providers(doc, "test")
    assert got["a"].jwks_url == FAL_JWKS_URL and got["b"].jwks_url is None
    assert got["c"].jwks_url.startswith("http://127.0.0.1") and got["d"].jwks_url is None
