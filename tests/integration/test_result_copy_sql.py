"""Outputs copied before SUCCESS on the SQL stores (SQLite and PostgreSQL): the copy, the
provider's URLs on the persisted timeline, and a refused copy failed and refunded."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from rivya_core.domain import EventKind, TaskStatus
from rivya_core.results import OUTPUT_COPY_FAILED, LocalFolderStore, ResultCopier, SafeFetcher
from simulations.live import ServerThread
from tests.fakes import IMAGE, callback

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 512


@pytest.fixture(scope="module")
def cdn():
    async def png(_request):
        return Response(PNG, media_type="image/png")

    async def html(_request):
        return Response("<p>no</p>", media_type="text/html")

    with ServerThread(Starlette(routes=[Route("/out.png", png), Route("/page.html", html)])) as srv:
        yield srv.url


def test_callback_copy_then_success_on_sql(sql_user_env, cdn, tmp_path):
    svc, clock, _providers, store, user = sql_user_env
    results = LocalFolderStore(tmp_path / "results")
    svc.results = ResultCopier(results, SafeFetcher(allow_hosts=frozenset({"127.0.0.1"})))
    task = svc.submit(user.id, IMAGE)
    source = f"{cdn}/out.png"
    headers, body = callback(clock, task.upstream_task_id, urls=[source])
    assert svc.handle_callback("lumen", headers, body).outcome == "applied"
    done = svc.task(task.id)
    assert done.status == TaskStatus.SUCCESS and results.owns(done.result_urls[0])
    with store.begin() as tx:
        copies = [e.detail for e in tx.task_events(task.id) if e.kind == EventKind.OUTPUT_COPY]
    assert copies == [{"provider_urls": [source], "copied": 1, "path": "callback"}]


def test_refused_copy_fails_and_refunds_on_sql(sql_user_env, cdn, tmp_path):
    svc, clock, providers, _store, user = sql_user_env
    svc.results = ResultCopier(
        LocalFolderStore(tmp_path / "results"), SafeFetcher(allow_hosts=frozenset({"127.0.0.1"}))
    )
    before = svc.balance(user.id)
    task = svc.submit(user.id, IMAGE)
    providers["lumen"].succeed(task.upstream_task_id, [f"{cdn}/page.html"])
    done = svc.recheck(task.id)
    assert (done.status, done.error_code, done.failure_class) == (
        TaskStatus.FAILED,
        OUTPUT_COPY_FAILED,
        "infrastructure",
    )
    assert svc.balance(user.id) == before
