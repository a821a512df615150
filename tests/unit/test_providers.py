"""The real provider clients against recorded request/response shapes (respx), the
ED25519 verifier, and provider configuration (never printed)."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from rivya_core import webhooks
from rivya_core.domain import FailureClass
from rivya_core.ports import ProviderError, ProviderFault, UpstreamState, UpstreamStatus
from rivya_core.providers.config import ProviderConfigError, load_providers, parse_providers
from rivya_core.providers.fal import FalClient
from rivya_core.providers.replicate import ReplicateClient
from tests.fakes import SECRET

R = "https://api.replicate.test/v1"
F = "https://queue.fal.test"
HOOK = "https://rivya.test/webhooks/lumen"
SEED = "11" * 32  # an ED25519 private seed (hex), for tests only
OTHER_SEED = "22" * 32
NOW = 1_760_000_000


def prediction(status, output=None, error=None, pid="ufawqhfynnddngldkgtslldrkq"):
    return {
        "id": pid,
        "version": "5c7d",
        "status": status,
        "input": {"prompt": "x"},
        "output": output,
        "error": error,
        "logs": None,
        "metrics": {},
        "created_at": "2025-01-01T00:00:00Z",
        "urls": {"get": f"{R}/predictions/{pid}", "cancel": f"{R}/predictions/{pid}/cancel"},
    }


@pytest.fixture
def replicate():
    client = ReplicateClient(
        "lumen",
        "r8_secret_token",
        base_url=R,
        webhook_url=HOOK,
        webhook_secrets=[SECRET],
        models={"lumen-flash": "acme/flash"},
        retries=1,
    )
    with respx.mock(base_url=R, assert_all_called=False) as mock:
        yield client, mock


@pytest.fixture
def fal():
    client = FalClient(
        "kinetica",
        "fal_secret_key",
        app="acme/kin",
        base_url=F,
        webhook_url=HOOK,
        public_keys=[webhooks.ed25519_public_key(SEED)],
        retries=1,
    )
    with respx.mock(base_url=F, assert_all_called=False) as mock:
        yield client, mock


# --- Replicate-style predictions --------------------------------------------------------


def test_replicate_create_sends_input_webhook_filter_and_bearer(replicate):
    client, mock = replicate
    route = mock.post("/models/acme/flash/predictions").respond(201, json=prediction("starting"))
    assert client.submit("task-7", "lumen-flash", "a fox", {"steps": 4}) == "ufawqhfynnddngldkgtslldrkq"
    req = route.calls.last.request
    assert req.headers["authorization"] == "Bearer r8_secret_token"
    body = json.loads(req.content)
    assert body == {
        "input": {"prompt": "a fox", "steps": 4},
        "webhook": HOOK + "?ref=task-7",
        "webhook_events_filter": ["start", "completed"],
    }


def test_replicate_create_by_version_id(replicate):
    client, mock = replicate
    client.models["lumen-pro"] = "a" * 64
    route = mock.post("/predictions").respond(201, json=prediction("starting", pid="p2"))
    assert client.submit("task-8", "lumen-pro", "x", {}) == "p2"
    assert json.loads(route.calls.last.request.content)["version"] == "a" * 64


@pytest.mark.parametrize("status, kind", [(422, "refused"), (401, "refused"), (500, "error"), (503, "error")])
def test_replicate_create_errors_map_to_provider_errors(replicate, status, kind):
    client, mock = replicate
    route = mock.post("/models/acme/flash/predictions").respond(status, json={"detail": "no"})
    with pytest.raises(ProviderError) as err:
        client.submit("task-1", "lumen-flash", "x", {})
    assert err.value.kind == kind and "r8_secret_token" not in err.value.message
    assert route.call_count == (2 if status == 503 else 1)  # only "not now" answers are retried on create


def test_replicate_create_timeout_is_not_retried(replicate):
    client, mock = replicate
    route = mock.post("/models/acme/flash/predictions").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(ProviderError) as err:
        client.submit("task-1", "lumen-flash", "x", {})
    assert err.value.kind == "timeout" and route.call_count == 1


@pytest.mark.parametrize(
    "pred, expected",
    [
        (prediction("starting"), UpstreamStatus("queued")),
        (prediction("processing"), UpstreamStatus("running")),
        (
            prediction("succeeded", ["https://replicate.delivery/a.png", "https://replicate.delivery/b.png"]),
            UpstreamStatus("succeeded", ("https://replicate.delivery/a.png", "https://replicate.delivery/b.png")),
        ),
        (
            prediction("succeeded", "https://replicate.delivery/v.mp4"),
            UpstreamStatus("succeeded", ("https://replicate.delivery/v.mp4",)),
        ),
        (prediction("succeeded", None), UpstreamStatus("succeeded", ())),
        (
            prediction("failed", error="CUDA out of memory"),
            UpstreamStatus("failed", (), "model_error", "CUDA out of memory", "provider"),
        ),
        (
            prediction("failed", error="NSFW content detected"),
            UpstreamStatus("failed", (), "content_policy_violation", "NSFW content detected", "user"),
        ),
        (
            prediction("canceled"),
            UpstreamStatus("failed", (), "upstream_canceled", "The prediction was canceled upstream.", "provider"),
        ),
        (
            prediction("aborted"),
            UpstreamStatus(
                "failed", (), "upstream_aborted", "The prediction was aborted before it ran.", "infrastructure"
            ),
        ),
        (prediction("weird"), UpstreamStatus("unknown")),
    ],
)
def test_replicate_every_state(replicate, pred, expected):
    client, mock = replicate
    mock.get(f"/predictions/{pred['id']}").respond(200, json=pred)
    got = client.status(pred["id"])
    assert got == expected
    assert type(got.state) is UpstreamState
    assert got.failure_class is None or type(got.failure_class) is FailureClass


def test_statuses_and_faults_are_typed_and_unknown_ones_refused():
    st = UpstreamStatus("failed", failure_class="user")
    assert st.state is UpstreamState.FAILED and st.failure_class is FailureClass.USER
    assert UpstreamStatus(UpstreamState.RUNNING).state == "running"  # equal to the string
    err = ProviderError("timeout", "slow")
    assert err.kind is ProviderFault.TIMEOUT and err.code == "submit_timeout"
    with pytest.raises(ValueError, match="upstream state 'done'"):
        UpstreamStatus("done")
    with pytest.raises(ValueError, match="provider fault 'oops'"):
        ProviderError("oops", "x")


def test_replicate_get_retries_a_server_error_then_answers(replicate):
    client, mock = replicate
    route = mock.get("/predictions/p").mock(
        side_effect=[httpx.Response(500), httpx.Response(200, json=prediction("processing", pid="p"))]
    )
    assert client.status("p").state == "running" and route.call_count == 2


def test_replicate_unreachable_status_is_unknown_to_the_core(replicate):
    client, mock = replicate
    mock.get("/predictions/p").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ProviderError):
        client.status("p")  # the lifecycle reads a ProviderError from status() as "unknown"
    mock.get("/predictions/q").respond(404, json={"detail": "Not found."})
    assert client.status("q").state == "unknown"


def test_replicate_cancel(replicate):
    client, mock = replicate
    mock.post("/predictions/p/cancel").respond(200, json=prediction("canceled", pid="p"))
    assert client.cancel("p").answer == "canceled"  # more in tests/unit/test_upstream_cancel.py


def test_replicate_webhook_is_standard_webhooks_over_the_prediction():
    client = ReplicateClient("lumen", "t", base_url=R, webhook_secrets=[SECRET])
    body = json.dumps(prediction("succeeded", ["https://replicate.delivery/a.png"], pid="p9")).encode()
    headers = webhooks.signed_headers(SECRET, "msg_1", NOW, body)
    assert client.callbacks.verify(headers, body, NOW) == "msg_1"
    assert client.callbacks.parse(body) == ("p9", UpstreamStatus("succeeded", ("https://replicate.delivery/a.png",)))
    assert client.callbacks.parse(b'{"id": "p9", "status": "nope"}').startswith("prediction status")
    with pytest.raises(webhooks.WebhookError):
        client.callbacks.verify(headers, body + b" ", NOW)


# --- fal-style queue -------------------------------------------------------------------


def test_fal_submit_sends_webhook_query_and_key(fal):
    client, mock = fal
    route = mock.post("/acme/kin/kinetica-v1").respond(
        200,
        json={
            "request_id": "024ca5b1",
            "gateway_request_id": "024ca5b1",
            "status_url": f"{F}/acme/kin/requests/024ca5b1/status",
        },
    )
    assert client.submit("task-3", "kinetica-v1", "a wave", {"seconds": 5}) == "024ca5b1"
    req = route.calls.last.request
    assert req.headers["authorization"] == "Key fal_secret_key"
    assert req.url.params["fal_webhook"] == HOOK + "?ref=task-3"
    assert json.loads(req.content) == {"prompt": "a wave", "seconds": 5}


def test_fal_submit_refused(fal):
    client, mock = fal
    mock.post("/acme/kin/kinetica-v1").respond(422, json={"detail": [{"msg": "field required"}]})
    with pytest.raises(ProviderError) as err:
        client.submit("task-3", "kinetica-v1", "x", {})
    assert err.value.kind == "refused"


@pytest.mark.parametrize("state, expected", [("IN_QUEUE", "queued"), ("IN_PROGRESS", "running")])
def test_fal_waiting_states(fal, state, expected):
    client, mock = fal
    mock.get("/acme/kin/requests/r1/status").respond(202, json={"status": state, "queue_position": 3})
    assert client.status("r1") == UpstreamStatus(expected)


def test_fal_completed_fetches_the_result(fal):
    client, mock = fal
    mock.get("/acme/kin/requests/r1/status").respond(200, json={"status": "COMPLETED", "logs": None})
    mock.get("/acme/kin/requests/r1").respond(200, json={"video": {"url": "https://fal.media/v.mp4"}, "seed": 4})
    assert client.status("r1") == UpstreamStatus("succeeded", ("https://fal.media/v.mp4",))


def test_fal_trap_completed_then_result_4xx_is_a_provider_failure(fal):
    client, mock = fal
    mock.get("/acme/kin/requests/r1/status").respond(200, json={"status": "COMPLETED"})
    mock.get("/acme/kin/requests/r1").respond(422, json={"detail": "Invalid status code: 422"})
    st = client.status("r1")
    assert (st.state, st.error_code, st.failure_class) == ("failed", "upstream_result_error", "provider")


def test_fal_trap_success_with_null_payload_has_no_urls(fal):
    client, mock = fal
    mock.get("/acme/kin/requests/r1/status").respond(200, json={"status": "COMPLETED"})
    mock.get("/acme/kin/requests/r1").respond(200, content=b"null", headers={"content-type": "application/json"})
    assert client.status("r1") == UpstreamStatus("succeeded", ())


def test_fal_completed_with_error_and_result_5xx(fal):
    client, mock = fal
    mock.get("/acme/kin/requests/r1/status").respond(200, json={"status": "COMPLETED", "error": "runner crashed"})
    assert client.status("r1").state == "failed"
    mock.get("/acme/kin/requests/r2/status").respond(200, json={"status": "COMPLETED"})
    mock.get("/acme/kin/requests/r2").respond(503)
    assert client.status("r2").state == "unknown"  # asked again later


def test_fal_cancel(fal):
    client, mock = fal
    mock.put("/acme/kin/requests/r1/cancel").respond(202, json={"status": "CANCELLATION_REQUESTED"})
    assert client.cancel("r1").answer == "canceled"


def _fal_delivery(doc, seed=SEED, ts=NOW, rid="r1"):
    body = json.dumps(doc).encode()
    return webhooks.ed25519_headers(seed, rid, "user-1", ts, body), body


def test_fal_webhook_ok_error_and_null_payload():
    client = FalClient("kinetica", "k", app="acme/kin", public_keys=[webhooks.ed25519_public_key(SEED)])
    ok = {
        "request_id": "r1",
        "gateway_request_id": "r1",
        "status": "OK",
        "payload": {"images": [{"url": "https://fal.media/a.png", "width": 1024}]},
    }
    headers, body = _fal_delivery(ok)
    wid = client.callbacks.verify(headers, body, NOW)
    assert wid.startswith("r1:") and client.callbacks.verify(headers, body, NOW) == wid  # a redelivery: same id
    assert client.callbacks.parse(body) == ("r1", UpstreamStatus("succeeded", ("https://fal.media/a.png",)))
    null = {"request_id": "r1", "status": "OK", "payload": None, "payload_error": "not JSON serialisable"}
    assert client.callbacks.parse(json.dumps(null).encode()) == ("r1", UpstreamStatus("succeeded", ()))
    err = {"request_id": "r1", "status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": []}}
    rid, st = client.callbacks.parse(json.dumps(err).encode())
    assert (rid, st.state, st.failure_class, st.error_message) == (
        "r1",
        "failed",
        "provider",
        "Invalid status code: 422",
    )
    assert isinstance(client.callbacks.parse(b'{"request_id": "r1", "status": "MAYBE"}'), str)


# --- the ED25519 verifier ------------------------------------------------------------------


def test_ed25519_valid_tampered_wrong_key_stale_and_rotation():
    keys = [webhooks.ed25519_public_key(SEED)]
    headers, body = _fal_delivery({"request_id": "r1", "status": "OK", "payload": {}})
    assert webhooks.verify_ed25519(keys, headers, body, NOW) == "r1"
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.verify_ed25519(keys, headers, body.replace(b"OK", b"ERROR"), NOW)  # tampered body
    assert err.value.code == "bad_signature"
    for name in ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp"):
        forged = {**headers, name: headers[name] + "1"}  # tampered header
        with pytest.raises(webhooks.WebhookError) as err:
            webhooks.verify_ed25519(keys, forged, body, NOW)
        assert err.value.code == "bad_signature"
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.verify_ed25519([webhooks.ed25519_public_key(OTHER_SEED)], headers, body, NOW)  # wrong key
    assert err.value.code == "bad_signature"
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.verify_ed25519(keys, headers, body, NOW + 301)  # stale
    assert err.value.code == "stale"
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.verify_ed25519(keys, headers, body, NOW - 301)  # from the future
    assert err.value.code == "stale"
    rotated = [webhooks.ed25519_public_key(OTHER_SEED), *keys]  # key rotation
    assert webhooks.verify_ed25519(rotated, headers, body, NOW + 300) == "r1"


def test_ed25519_bad_headers_and_keys():
    keys = [webhooks.ed25519_public_key(SEED)]
    headers, body = _fal_delivery({"request_id": "r1", "status": "OK", "payload": {}})
    for drop in webhooks.FAL_HEADERS:
        with pytest.raises(webhooks.WebhookError) as err:
            webhooks.verify_ed25519(keys, {k: v for k, v in headers.items() if k != drop}, body, NOW)
        assert err.value.code == "missing_headers"
    for bad in ("zz", "ab" * 10):
        with pytest.raises(webhooks.WebhookError) as err:
            webhooks.verify_ed25519(keys, {**headers, "x-fal-webhook-signature": bad}, body, NOW)
        assert err.value.code == "bad_signature"
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.verify_ed25519(keys, {**headers, "x-fal-webhook-timestamp": "soon"}, body, NOW)
    assert err.value.code == "malformed"
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.verify_ed25519(["not-a-key"], headers, body, NOW)
    assert err.value.code == "bad_secret" and "not-a-key" not in err.value.message


# --- configuration ------------------------------------------------------------------------

CONFIG = f"""
[providers.lumen]
api = "replicate"
base_url = "{R}"
token = "r8_very_secret"
webhook_url = "{HOOK}"
webhook_secrets = ["{SECRET}"]
models = {{ "lumen-flash" = "acme/flash" }}

[providers.kinetica]
api = "fal"
key = "fal_very_secret"
app = "acme/kin"
public_keys = ["{webhooks.ed25519_public_key(SEED)}"]
"""


def test_config_from_env_text_file_and_secrets_toml(tmp_path):
    from_text = load_providers({"RIVYA_PROVIDERS": CONFIG}, tmp_path / "none.toml")
    path = tmp_path / "providers.toml"
    path.write_text(CONFIG)
    from_file = load_providers({"RIVYA_PROVIDERS": str(path)}, tmp_path / "none.toml")
    from_secrets = load_providers({}, path)
    assert from_text == from_file == from_secrets
    assert sorted(from_text) == ["kinetica", "lumen"]
    assert load_providers({}, tmp_path / "none.toml") == {}
    clients = {n: s.client() for n, s in from_text.items()}
    assert isinstance(clients["lumen"], ReplicateClient) and isinstance(clients["kinetica"], FalClient)
    shown = repr(from_text) + repr(clients) + repr([c.callbacks for c in clients.values()])
    for secret in ("r8_very_secret", "fal_very_secret", SECRET, webhooks.ed25519_public_key(SEED)):
        assert secret not in shown


@pytest.mark.parametrize(
    "change, says",
    [
        ('api = "replicate"', "api must be one of"),
        ('token = "r8_very_secret"', "needs `token`"),
        ('models = { "lumen-flash" = "acme/flash" }', "unknown key(s): modles"),
        (f'webhook_secrets = ["{SECRET}"]', "webhook_secrets"),
        (f'webhook_url = "{HOOK}"', "webhook_url must be an http(s) URL"),
    ],
)
def test_config_errors_name_the_key_never_the_value(change, says):
    bad = {
        'api = "replicate"': 'api = "openai"',
        'token = "r8_very_secret"': 'token = ""',
        'models = { "lumen-flash" = "acme/flash" }': "modles = {}",
        f'webhook_secrets = ["{SECRET}"]': 'webhook_secrets = ["whsec_!!not-base64!!"]',
        f'webhook_url = "{HOOK}"': 'webhook_url = "ftp://r8_very_secret"',
    }[change]
    with pytest.raises(ProviderConfigError) as err:
        load_providers({"RIVYA_PROVIDERS": CONFIG.replace(change, bad)})
    assert says in err.value.message
    assert "r8_very_secret" not in err.value.message and "not-base64" not in err.value.message


def test_parse_providers_refuses_a_non_table():
    with pytest.raises(ProviderConfigError):
        parse_providers({"providers": ["x"]}, "t")


# --- the fal traps through the lifecycle ---------------------------------------------------


def _fal_service(mock):
    from datetime import datetime

    from rivya_core.catalog import default_catalog
    from rivya_core.clock import ManualClock
    from rivya_core.lifecycle import LifecycleService
    from rivya_core.stores.memory import MemoryStore

    catalog = default_catalog()
    model = next(
        m for m in catalog.models if m.provider == "kinetica" and m.runtime == "async_task" and m.direct_generation
    )
    client = FalClient(
        "kinetica",
        "k",
        app="acme/kin",
        base_url=F,
        webhook_url=HOOK,
        public_keys=[webhooks.ed25519_public_key(SEED)],
        retries=0,
    )
    clock = ManualClock(datetime.fromtimestamp(NOW, tz=None).replace(year=2025))
    svc = LifecycleService(MemoryStore(), clock, {"kinetica": client}, catalog)
    user = svc.create_account("k@example.com", "K", grant=10_000)
    mock.post(url__regex=r"/acme/kin/.*").respond(200, json={"request_id": "r1"})
    task = svc.submit(user.id, {"model": model.id, "prompt": "a wave crashing on rocks", "params": {}})
    return svc, clock, user, task


def test_fal_trap_completed_then_4xx_ends_failed_provider_and_refunded(fal):
    _client, mock = fal
    svc, clock, user, task = _fal_service(mock)
    assert task.status == "GENERATING" and svc.balance(user.id) == 10_000 - task.reserved_credits
    mock.get("/acme/kin/requests/r1/status").respond(200, json={"status": "COMPLETED"})
    mock.get("/acme/kin/requests/r1").respond(422, json={"detail": "Invalid status code: 422"})
    done = svc.recheck(task.id)
    assert (done.status, done.error_code, done.failure_class) == ("FAILED", "upstream_result_error", "provider")
    assert svc.balance(user.id) == 10_000


def test_fal_trap_null_payload_is_never_success(fal):
    _client, mock = fal
    svc, clock, user, task = _fal_service(mock)
    null = {"request_id": "r1", "status": "OK", "payload": None, "payload_error": "not serialisable"}
    ts = int((clock.now() - __import__("datetime").datetime(1970, 1, 1)).total_seconds())
    headers, body = _fal_delivery(null, ts=ts)
    assert svc.handle_callback("kinetica", headers, body).outcome == "deferred"
    mock.get("/acme/kin/requests/r1/status").respond(200, json={"status": "COMPLETED"})
    mock.get("/acme/kin/requests/r1").respond(200, content=b"null", headers={"content-type": "application/json"})
    for _ in range(40):
        clock.advance(30)
        svc.poll()
    done = svc.task(task.id)
    assert done.status == "FAILED" and done.error_code == "no_result_urls" and not done.result_urls
    assert svc.balance(user.id) == 10_000


def test_fal_a_request_another_process_submitted_is_found_under_its_models_app():
    """A model served from another fal application than `app` (fal asks a request's status under
    the endpoint id without its subpath): a process that did not submit it (the receiver's
    polling sweep, a restart) holds no handle, and must still find it there, not report it lost."""
    client = FalClient("kinetica", "k", app="acme/kin", base_url=F, models={"vid-v2": "other/video/v2/text"}, retries=1)
    with respx.mock(base_url=F, assert_all_called=False) as mock:
        mock.get("/acme/kin/requests/r9/status").respond(404, json={"detail": "Request not found"})
        mock.put("/acme/kin/requests/r9/cancel").respond(404, json={"detail": "Request not found"})
        mock.get("/other/video/requests/r9/status").respond(200, json={"status": "COMPLETED"})
        mock.get("/other/video/requests/r9").respond(200, json={"video": {"url": "https://fal.media/v.mp4"}})
        cancel = mock.put("/other/video/requests/r9/cancel").respond(400, json={"status": "ALREADY_COMPLETED"})
        assert client.status("r9") == UpstreamStatus("succeeded", ("https://fal.media/v.mp4",))
        assert client.cancel("r9").answer == "already_finished" and cancel.called
        # a request no application knows stays unknown (asked again later), never failed
        for app in ("acme/kin", "other/video"):
            mock.get(f"/{app}/requests/gone/status").respond(404, json={"detail": "Request not found"})
        assert client.status("gone").state == "unknown"
