"""Outputs copied into our own result store before SUCCESS, against a loopback server that
misbehaves (slow, huge, wrong type, redirect to another host, flaky), and the SSRF guard."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from rivya_core.domain import EventKind, TaskStatus
from rivya_core.results import (
    OUTPUT_COPY_FAILED,
    CopyError,
    LocalFolderStore,
    ResultCopier,
    SafeFetcher,
)
from simulations.live import ServerThread
from tests.fakes import IMAGE, callback, make_service

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class Misbehaving:
    def __init__(self):
        self.flaky_left = 0
        self.hits: dict[str, int] = {}

        def count(request: Request) -> None:
            self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1

        async def ok(request: Request) -> Response:
            count(request)
            return Response(PNG, media_type="image/png")

        async def slow(request: Request) -> Response:
            async def drip():
                for _ in range(50):
                    yield b"x" * 10
                    await asyncio.sleep(0.1)

            return StreamingResponse(drip(), media_type="image/png")

        async def huge(request: Request) -> Response:
            async def flood():
                for _ in range(64):
                    yield b"\0" * 65536

            return StreamingResponse(flood(), media_type="video/mp4")  # no Content-Length: caught streaming

        async def huge_declared(request: Request) -> Response:
            return Response(b"\0" * 10, media_type="video/mp4", headers={"Content-Length": str(10**10)})

        async def html(request: Request) -> Response:
            return Response("<html>not an image</html>", media_type="text/html")

        async def elsewhere(request: Request) -> Response:
            port = request.url.port
            return RedirectResponse(f"http://localhost:{port}/ok.png", status_code=302)

        async def same_host(request: Request) -> Response:
            return RedirectResponse("/ok.png", status_code=302)

        async def flaky(request: Request) -> Response:
            count(request)
            if self.flaky_left > 0:
                self.flaky_left -= 1
                return Response("busy", status_code=503)
            return Response(PNG, media_type="image/png")

        self.app = Starlette(
            routes=[
                Route("/ok.png", ok),
                Route("/slow.png", slow),
                Route("/huge.mp4", huge),
                Route("/huge-declared.mp4", huge_declared),
                Route("/page.html", html),
                Route("/elsewhere.png", elsewhere),
                Route("/same-host.png", same_host),
                Route("/flaky.png", flaky),
            ]
        )


@pytest.fixture(scope="module")
def server():
    bad = Misbehaving()
    with ServerThread(bad.app) as srv:
        yield bad, srv.url


def _fetcher(**kw) -> SafeFetcher:
    kw.setdefault("allow_hosts", frozenset({"127.0.0.1"}))  # the test-only loopback allowance
    return SafeFetcher(**kw)


def test_a_good_output_is_fetched(server):
    _bad, url = server
    got = _fetcher().fetch(f"{url}/ok.png")
    assert got.content_type == "image/png" and got.file.read() == PNG and got.size == len(PNG)


@pytest.mark.parametrize(
    "path, permanent, words",
    [
        ("/slow.png", False, "did not arrive within"),
        ("/huge.mp4", True, "over"),
        ("/huge-declared.mp4", True, "over"),
        ("/page.html", True, "type 'text/html'"),
        ("/elsewhere.png", True, "another host"),
    ],
)
def test_a_misbehaving_server_is_refused(server, path, permanent, words):
    _bad, url = server
    with pytest.raises(CopyError) as err:
        _fetcher(max_bytes=1 << 20, deadline_s=1.0).fetch(f"{url}{path}")
    assert err.value.permanent is permanent and words in err.value.message


def test_a_same_host_redirect_is_followed(server):
    _bad, url = server
    assert _fetcher().fetch(f"{url}/same-host.png").file.read() == PNG


@pytest.mark.parametrize(
    "target, resolved",
    [
        ("http://127.0.0.1:9/x.png", None),  # loopback, not on the allowance
        ("http://[::1]:9/x.png", None),
        ("http://169.254.169.254/latest/meta-data", None),  # the cloud metadata address
        ("http://10.1.2.3/x.png", None),
        ("http://[::ffff:127.0.0.1]/x.png", None),
        ("http://cdn.example/x.png", ["10.0.0.7"]),  # a public-looking name that resolves inside
        ("http://cdn.example/x.png", ["93.184.216.34", "192.168.1.1"]),  # any private answer refuses
        ("file:///etc/passwd", None),
        ("http://user:pw@cdn.example/x.png", ["93.184.216.34"]),
    ],
)
def test_never_fetches_from_a_private_address(target, resolved):
    asked: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        asked.append(str(req.url))
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    fetcher = SafeFetcher(resolver=lambda host, port: resolved or [], transport=httpx.MockTransport(handler))
    with pytest.raises(CopyError) as err:
        fetcher.fetch(target)
    assert err.value.permanent and asked == []


def test_the_checked_address_is_the_one_connected_to():
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    fetcher = SafeFetcher(resolver=lambda host, port: ["93.184.216.34"], transport=httpx.MockTransport(handler))
    assert fetcher.fetch("https://cdn.example/out.png").file.read() == PNG
    [req] = seen
    assert req.url.host == "93.184.216.34" and req.headers["host"] == "cdn.example"
    assert req.extensions["sni_hostname"] == "cdn.example"


# --- the lifecycle: copied before SUCCESS, retried, failed past the deadline ----------------


def _service(tmp_path, **fetch_kw):
    svc, clock, providers = make_service()
    store = LocalFolderStore(tmp_path / "results")
    svc.results = ResultCopier(store, _fetcher(**fetch_kw), deadline_s=600)
    user = svc.create_account("copy@qa.example", "Copy", grant=1000)
    return svc, clock, providers["lumen"], store, user


def _copy_events(svc, task_id):
    with svc.store.begin() as tx:
        return [e.detail for e in tx.task_events(task_id) if e.kind == EventKind.OUTPUT_COPY]


def test_success_holds_our_copy_and_the_timeline_the_providers_url(server, tmp_path):
    _bad, url = server
    svc, clock, lumen, store, user = _service(tmp_path)
    task = svc.submit(user.id, IMAGE)
    source = f"{url}/ok.png"
    lumen.succeed(task.upstream_task_id, [source])
    clock.advance(60)
    done = svc.recheck(task.id)
    assert done.status == TaskStatus.SUCCESS
    [ours] = done.result_urls
    assert store.owns(ours) and ours.startswith("file://") and source not in done.result_urls
    key = ours.removeprefix((tmp_path / "results").resolve().as_uri() + "/")
    assert store.read(key) == PNG and key.startswith(f"{task.id}/0-{hashlib.sha256(source.encode()).hexdigest()[:16]}")
    assert _copy_events(svc, task.id) == [{"provider_urls": [source], "copied": 1, "path": "recheck"}]


def test_a_signed_callback_is_copied_before_it_applies(server, tmp_path):
    _bad, url = server
    svc, clock, _lumen, store, user = _service(tmp_path)
    task = svc.submit(user.id, IMAGE)
    headers, body = callback(clock, task.upstream_task_id, urls=[f"{url}/ok.png"])
    svc.handle_callback("lumen", headers, body)
    done = svc.task(task.id)
    assert done.status == TaskStatus.SUCCESS and all(store.owns(u) for u in done.result_urls)


def test_a_wrong_type_fails_the_task_with_its_own_code_and_refunds(server, tmp_path):
    _bad, url = server
    svc, clock, lumen, _store, user = _service(tmp_path)
    before = svc.balance(user.id)
    task = svc.submit(user.id, IMAGE)
    lumen.succeed(task.upstream_task_id, [f"{url}/page.html"])
    done = svc.recheck(task.id)
    assert done.status == TaskStatus.FAILED and done.error_code == OUTPUT_COPY_FAILED
    assert done.failure_class == "infrastructure" and svc.balance(user.id) == before  # refunded by the policy


def test_a_failed_copy_is_retried_then_succeeds(server, tmp_path):
    bad, url = server
    svc, clock, lumen, store, user = _service(tmp_path)
    task = svc.submit(user.id, IMAGE)
    bad.flaky_left = 1
    lumen.succeed(task.upstream_task_id, [f"{url}/flaky.png"])
    first = svc.recheck(task.id)
    assert first.status == TaskStatus.GENERATING and first.next_check_at is not None  # rescheduled
    clock.advance(30)
    done = svc.recheck(task.id)
    assert done.status == TaskStatus.SUCCESS and store.owns(done.result_urls[0])
    errors = [e for e in _copy_events(svc, task.id) if "error" in e]
    assert len(errors) == 1 and errors[0]["permanent"] is False


def test_outputs_that_cannot_be_copied_before_the_deadline_fail_the_task(server, tmp_path):
    bad, url = server
    svc, clock, lumen, _store, user = _service(tmp_path)
    before = svc.balance(user.id)
    task = svc.submit(user.id, IMAGE)
    bad.flaky_left = 10**6
    lumen.succeed(task.upstream_task_id, [f"{url}/flaky.png"])
    assert svc.recheck(task.id).status == TaskStatus.GENERATING
    clock.advance(300)
    assert svc.recheck(task.id).status == TaskStatus.GENERATING
    clock.advance(301)
    done = svc.recheck(task.id)
    assert done.status == TaskStatus.FAILED and done.error_code == OUTPUT_COPY_FAILED
    assert svc.balance(user.id) == before
    bad.flaky_left = 0


def test_a_parked_success_is_never_success_with_the_providers_url(server, tmp_path):
    """A callback that arrives before the upstream id is stored is applied from the park inside
    the unit of work, where nothing is fetched: it waits for the copy (the next check)."""
    _bad, url = server
    svc, clock, lumen, store, user = _service(tmp_path)
    lumen.refs["task-1"] = "lumen-job-early"
    headers, body = callback(clock, "lumen-job-early", urls=[f"{url}/ok.png"])
    assert svc.handle_callback("lumen", headers, body).outcome == "unknown_task"
    task = svc.submit(user.id, IMAGE)
    assert task.id == 1 and task.upstream_task_id == "lumen-job-early"
    assert task.status == TaskStatus.GENERATING and task.next_check_at <= clock.now()
    lumen.succeed("lumen-job-early", [f"{url}/ok.png"])
    svc.poll()
    done = svc.task(task.id)
    assert done.status == TaskStatus.SUCCESS and store.owns(done.result_urls[0])
    assert any(e.get("pending") for e in _copy_events(svc, task.id))


def test_without_a_result_store_urls_are_kept_as_given():
    svc, clock, providers = make_service()
    user = svc.create_account("plain@qa.example", "Plain", grant=100)
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id)
    assert svc.recheck(task.id).result_urls == ["https://cdn.example/out.png"]


def test_the_receiver_serves_the_result_folder_read_only(server, tmp_path):
    from rivya_core.receiver import create_app

    _bad, url = server
    svc, clock, lumen, store, user = _service(tmp_path)
    task = svc.submit(user.id, IMAGE)
    lumen.succeed(task.upstream_task_id, [f"{url}/ok.png"])
    [ours] = svc.recheck(task.id).result_urls
    key = ours.removeprefix(store.root.as_uri() + "/")
    with ServerThread(create_app(svc, poll_every=None)) as receiver:
        got = httpx.get(f"{receiver.url}/results/{key}")
        assert got.status_code == 200 and got.content == PNG and got.headers["content-type"] == "image/png"
        assert httpx.get(f"{receiver.url}/results/%2e%2e/%2e%2e/etc/passwd").status_code == 404
        assert httpx.post(f"{receiver.url}/results/{key}").status_code == 405


def test_outputs_go_to_an_s3_bucket_when_one_is_configured(server, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from rivya_core.results import copier_from_env

    _bad, url = server
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="rivya-results", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        copier = copier_from_env(
            {
                "RIVYA_RESULTS_S3_BUCKET": "rivya-results",
                "RIVYA_RESULTS_S3_PREFIX": "prod",
                "RIVYA_RESULTS_BASE_URL": "https://results.rivya.example",
            }
        )
        copier.fetcher = _fetcher()
        svc, clock, providers = make_service()
        svc.results = copier
        user = svc.create_account("s3@qa.example", "S3", grant=100)
        task = svc.submit(user.id, IMAGE)
        providers["lumen"].succeed(task.upstream_task_id, [f"{url}/ok.png"])
        [ours] = svc.recheck(task.id).result_urls
        assert ours.startswith(f"https://results.rivya.example/prod/{task.id}/0-") and ours.endswith(".png")
        key = ours.removeprefix("https://results.rivya.example/")
        obj = s3.get_object(Bucket="rivya-results", Key=key)
        assert obj["Body"].read() == PNG and obj["ContentType"] == "image/png"
        # a bucket that refuses is a transient failure: retried, the task still GENERATING
        other = svc.submit(user.id, IMAGE)
        s3.delete_object(Bucket="rivya-results", Key=key)
        s3.delete_bucket(Bucket="rivya-results")
        providers["lumen"].succeed(other.upstream_task_id, [f"{url}/ok.png"])
        assert svc.recheck(other.id).status == TaskStatus.GENERATING


def test_the_test_only_allowance_names_loopback_hosts_only(tmp_path):
    from rivya_core.domain import ValidationError
    from rivya_core.results import copier_from_env

    ok = copier_from_env({"RIVYA_RESULTS_DIR": str(tmp_path), "RIVYA_RESULTS_TEST_ALLOW_HOSTS": "127.0.0.1, ::1"})
    assert ok.fetcher.allow_hosts == frozenset({"127.0.0.1", "::1"})
    assert copier_from_env({"RIVYA_RESULTS_DIR": str(tmp_path)}).fetcher.allow_hosts == frozenset()
    with pytest.raises(ValidationError) as err:
        copier_from_env({"RIVYA_RESULTS_TEST_ALLOW_HOSTS": "127.0.0.1,10.0.0.5"})
    assert "only loopback" in err.value.message and err.value.code == "results_invalid"
