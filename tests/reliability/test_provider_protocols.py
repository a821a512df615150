"""The providers' protocols to the letter, over real HTTP on 127.0.0.1 (never the internet):
the official `replicate` client drives `serve-provider`; webhook_events_filter, version ids,
Retry-After on 429; fal's JWKS fetched, cached and refetched on rotation; Replicate's signing
secret read from the API."""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rivya_core import webhooks
from rivya_core.providers.fal import FalClient
from rivya_core.providers.keys import JwksKeys
from rivya_core.providers.replicate import ReplicateClient
from simulations.httpfarm import TOKEN, FakeProvider, version_id
from simulations.live import ServerThread
from simulations.scenarios import ProviderConfig, load_scenario

SPEED = 600.0
MODEL = "lumen-flash"  # a replicate-served catalogue model (provider lumen)


def _quiet_scenario():
    return dataclasses.replace(load_scenario("baseline"), farm=ProviderConfig(), providers={}, outages=())


def _wait(cond, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Capture:
    """A webhook receiver on loopback that records every delivery's body."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

        async def hook(request: Request) -> Response:
            import json

            doc = json.loads(await request.body())
            with self.lock:
                self.bodies.append(doc)
            return Response(status_code=200)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def statuses(self) -> list[str]:
        with self.lock:
            return [b["status"] for b in self.bodies]


@pytest.fixture(scope="module")
def fake_replicate():
    fake = FakeProvider("replicate", _quiet_scenario(), speed=SPEED)
    with ServerThread(fake.app) as server:
        yield fake, server.url


def test_official_replicate_client_creates_waits_reads_output(fake_replicate):
    fake, url = fake_replicate
    client = replicate.Client(api_token=TOKEN, base_url=url)
    pred = client.predictions.create(model=f"lumen/{MODEL}", input={"prompt": "a lighthouse at dusk"})
    assert pred.status == "starting" and pred.id in fake.jobs
    pred.wait()
    assert pred.status == "succeeded"
    assert isinstance(pred.output, list) and pred.output[0] == f"{url}/outputs/{pred.id}.png"
    got = httpx.get(pred.output[0])  # the fake serves its outputs, so a deployment can copy them
    assert got.status_code == 200 and got.headers["content-type"] == "image/png" and got.content
    again = client.predictions.get(pred.id)
    assert again.output == pred.output and again.version == version_id(MODEL)


@pytest.mark.parametrize("version", [version_id(MODEL), f"lumen/{MODEL}:{version_id(MODEL)}", f"lumen/{MODEL}"])
def test_official_client_by_version_id_and_owner_name_version(fake_replicate, version):
    fake, url = fake_replicate
    client = replicate.Client(api_token=TOKEN, base_url=url)
    pred = client.predictions.create(version=version, input={"prompt": f"by version {version[:12]}"})
    pred.wait()
    assert pred.status == "succeeded" and fake.jobs[pred.id].model == MODEL


def test_a_version_that_names_no_model_is_refused(fake_replicate):
    _fake, url = fake_replicate
    client = replicate.Client(api_token=TOKEN, base_url=url)
    with pytest.raises(ReplicateError):
        client.predictions.create(version=f"lumen/{MODEL}:{'0' * 64}", input={"prompt": "wrong version"})
    with pytest.raises(ReplicateError):
        client.predictions.create(version="f" * 64, input={"prompt": "unknown version id"})


def test_official_client_cancels_a_running_prediction():
    fake = FakeProvider("replicate", _quiet_scenario(), speed=0.001)  # a job that runs for hours
    with ServerThread(fake.app) as server:
        client = replicate.Client(api_token=TOKEN, base_url=server.url)
        pred = client.predictions.create(model=f"lumen/{MODEL}", input={"prompt": "never finishes"})
        pred.cancel()
        pred.reload()
        assert pred.status == "canceled" and fake.jobs[pred.id].state == "canceled"


def test_official_client_reads_the_default_webhook_secret(fake_replicate):
    fake, url = fake_replicate
    client = replicate.Client(api_token=TOKEN, base_url=url)
    assert client.webhooks.default.secret().key == fake.keys.secrets[fake.provider_names[0]]


@pytest.mark.parametrize(
    "events, expected",
    [(["completed"], ["succeeded"]), (["start", "completed"], ["starting", "succeeded"]), (None, ["succeeded"])],
)  # default: output and completed
def test_webhook_events_filter_is_honoured(fake_replicate, events, expected):
    fake, url = fake_replicate
    cap = Capture()
    with ServerThread(cap.app) as recv:
        client = replicate.Client(api_token=TOKEN, base_url=url)
        params = {"webhook": f"{recv.url}/hook?ref=filter-{events}"}
        if events is not None:
            params["webhook_events_filter"] = events
        pred = client.predictions.create(model=f"lumen/{MODEL}", input={"prompt": "filtered"}, **params)
        pred.wait()
        _wait(lambda: fake.jobs[pred.id].pending == 0 and "succeeded" in cap.statuses())
        assert cap.statuses() == expected
        assert fake.prediction(fake.jobs[pred.id])["webhook_events_filter"] == (events or ["output", "completed"])


def test_429_carries_retry_after_and_our_client_waits_for_it():
    fake = FakeProvider("replicate", _quiet_scenario(), speed=SPEED, rate_limit_per_s=1.0)
    with ServerThread(fake.app) as server:
        raw = httpx.post(
            f"{server.url}/v1/models/lumen/{MODEL}/predictions",
            json={"input": {"prompt": "a"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert raw.status_code == 201
        throttled = httpx.post(
            f"{server.url}/v1/models/lumen/{MODEL}/predictions",
            json={"input": {"prompt": "b"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        client = ReplicateClient("lumen", TOKEN, base_url=f"{server.url}/v1", retries=2)
        waits: list[float] = []
        client.api.sleep = lambda s: (waits.append(s), time.sleep(s))
        ids = {client.submit(f"task-{i}", MODEL, "throttled", {}) for i in range(2)}
        assert len(ids) == 2 and fake.stats.submit_faults["throttled"] >= 2
        assert waits and all(w >= 1.0 for w in waits)  # the server's Retry-After, not the 0.2 s backoff


def test_replicate_secret_is_fetched_when_none_is_configured(fake_replicate):
    fake, url = fake_replicate
    name = fake.provider_names[0]
    client = ReplicateClient(name, TOKEN, base_url=f"{url}/v1")
    body = b'{"id": "p1", "status": "processing"}'
    headers = webhooks.signed_headers(fake.keys.secrets[name], "msg_1", int(time.time()), body)
    assert client.callbacks.verify(headers, body, time.time()) == "msg_1"
    assert client.callbacks.verify(headers, body, time.time()) == "msg_1"
    assert client.callbacks.fetched.fetches == 1  # cached, not read per delivery
    forged = webhooks.signed_headers(fake.keys.forger_secret, "msg_2", int(time.time()), body)
    with pytest.raises(webhooks.WebhookError):
        client.callbacks.verify(forged, body, time.time())
    assert client.callbacks.fetched.fetches == 1  # re-read at most once a minute


class JwksServer:
    """A loopback JWKS endpoint whose key set a test rotates."""

    def __init__(self, seeds: list[str]):
        self.seeds = seeds
        self.hits = 0

        async def jwks(_request: Request) -> Response:
            self.hits += 1
            return JSONResponse(
                {
                    "keys": [{"kty": "OKP", "crv": "Ed25519", "x": webhooks.ed25519_public_key(s)} for s in self.seeds]
                    + [{"kty": "RSA", "n": "x", "e": "AQAB"}]
                }
            )

        self.app = Starlette(routes=[Route("/.well-known/jwks.json", jwks, methods=["GET"])])


def _fal_delivery(seed: str, rid: str = "req-1") -> tuple[dict[str, str], bytes]:
    body = b'{"request_id": "%s", "status": "OK", "payload": {"images": [{"url": "https://x.example/a.png"}]}}' % (
        rid.encode()
    )
    return webhooks.ed25519_headers(seed, rid, "user", int(time.time()), body), body


def test_fal_keys_come_from_the_jwks_cached_and_refetched_on_rotation():
    old, new, evil = "11" * 32, "22" * 32, "33" * 32
    srv = JwksServer([old])
    with ServerThread(srv.app) as server:
        client = FalClient("kinetica", "k", app="acme/kin", jwks_url=f"{server.url}/.well-known/jwks.json")
        clock = [1000.0]
        client.callbacks.jwks._clock = lambda: clock[0]
        for _ in range(3):
            headers, body = _fal_delivery(old)
            assert client.callbacks.verify(headers, body, time.time()).startswith("req-1:")
        assert srv.hits == 1  # fetched once, cached
        srv.seeds = [new]  # fal rotates its key
        clock[0] += 61
        headers, body = _fal_delivery(new, "req-2")
        assert client.callbacks.verify(headers, body, time.time()).startswith("req-2:")
        assert srv.hits == 2  # an unknown key: refetched at once
        headers, body = _fal_delivery(evil, "req-3")
        for _ in range(5):  # forged: refused, and no fetch storm
            with pytest.raises(webhooks.WebhookError) as err:
                client.callbacks.verify(headers, body, time.time())
            assert err.value.code == "bad_signature"
        assert srv.hits == 2
        clock[0] += 24 * 3600  # the cache expires after 24 h
        headers, body = _fal_delivery(new, "req-4")
        client.callbacks.verify(headers, body, time.time())
        assert srv.hits == 3


def test_a_jwks_that_cannot_be_fetched_keeps_the_keys_held():
    seed = "44" * 32
    srv = JwksServer([seed])
    with ServerThread(srv.app) as server:
        keys = JwksKeys(f"{server.url}/.well-known/jwks.json", min_refetch_s=0)
        assert keys.current() == [webhooks.ed25519_public_key(seed)]
    assert keys.refresh() is False  # the server is gone: nothing changes
    assert keys.current() == [webhooks.ed25519_public_key(seed)]


def test_fal_client_uses_the_jwks_the_fake_publishes():
    fake = FakeProvider("fal", _quiet_scenario(), speed=SPEED)
    with ServerThread(fake.app) as server:
        name = "kinetica"
        client = FalClient(
            name, TOKEN, app=f"rivya/{name}", base_url=server.url, jwks_url=f"{server.url}/.well-known/jwks.json"
        )
        headers, body = _fal_delivery(fake.keys.seeds[name])
        assert client.callbacks.verify(headers, body, time.time()).startswith("req-1:")


@pytest.fixture
def fal_client_at(monkeypatch):
    """The official fal client pointed at a fake on loopback (its queue host is a module constant)."""
    import fal_client
    import fal_client.client

    def at(url: str):
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{url}/")
        return fal_client.SyncClient(key=TOKEN)

    return at


def test_official_fal_client_submits_polls_and_reads_the_result(fal_client_at):
    fake = FakeProvider("fal", _quiet_scenario(), speed=SPEED)
    with ServerThread(fake.app) as server:
        client = fal_client_at(server.url)
        handle = client.submit("rivya/kinetica/kinetica-v2", arguments={"prompt": "a wave"})
        assert handle.request_id in fake.jobs and handle.status_url.startswith(server.url)
        result = handle.get(interval=0.02)
        assert result["video"]["url"] == f"{server.url}/outputs/{handle.request_id}.mp4"
        # and our client reads the same request through the URLs fal answered with
        ours = FalClient("kinetica", TOKEN, app="rivya/kinetica", base_url=server.url)
        rid = ours.submit("task-fal-2", "kinetica-v2", "a second wave", {})
        assert ours.handle(rid)["status_url"].startswith(server.url)
        _wait(lambda: ours.status(rid).state.value == "succeeded")


def test_official_fal_client_cancels_and_reads_typed_errors(fal_client_at):
    import fal_client

    fake = FakeProvider("fal", _quiet_scenario(), speed=0.001)
    with ServerThread(fake.app) as server:
        client = fal_client_at(server.url)
        handle = client.submit("rivya/kinetica/kinetica-v2", arguments={"prompt": "never finishes"})
        handle.cancel()
        assert fake.jobs[handle.request_id].state == "canceled"
    failing = dataclasses.replace(_quiet_scenario(), farm=ProviderConfig(content_policy=1.0))
    fake = FakeProvider("fal", failing, speed=SPEED)
    with ServerThread(fake.app) as server:
        client = fal_client_at(server.url)
        handle = client.submit("rivya/kinetica/kinetica-v2", arguments={"prompt": "refused"})
        with pytest.raises(fal_client.client.FalClientHTTPError) as err:
            handle.get(interval=0.02)
        assert err.value.status_code == 422 and err.value.message[0]["type"] == "content_policy_violation"
        ours = FalClient("kinetica", TOKEN, app="rivya/kinetica", base_url=server.url)
        st = ours.status(handle.request_id)
        assert (st.error_code, st.failure_class.value) == ("content_policy_violation", "user")


def test_the_receiver_fetches_webhook_keys_at_start(fake_replicate):
    """Replicate's signing secret (none configured) is read from the API when the receiver starts,
    before any delivery."""
    from rivya_core.catalog import default_catalog
    from rivya_core.clock import WallClock
    from rivya_core.lifecycle import LifecycleService
    from rivya_core.receiver import create_app
    from rivya_core.stores.memory import MemoryStore

    fake, url = fake_replicate
    name = fake.provider_names[0]
    client = ReplicateClient(name, TOKEN, base_url=f"{url}/v1", webhook_url="http://127.0.0.1:9/webhooks/x")
    svc = LifecycleService(MemoryStore(), WallClock(), {name: client}, default_catalog())
    with ServerThread(create_app(svc, poll_every=None)):
        _wait(lambda: client.callbacks.fetched.fetches == 1)
    body = b'{"id": "p1", "status": "processing"}'
    headers = webhooks.signed_headers(fake.keys.secrets[name], "msg_9", int(time.time()), body)
    assert client.callbacks.verify(headers, body, time.time()) == "msg_9"
    assert client.callbacks.fetched.fetches == 1
