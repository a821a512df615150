"""Untrusted text is shown as text: every page opened in Chromium on a database whose every
outside string (names, emails, prompts, callback error codes and messages, result URLs,
notification and chat text) and whose ?db= parameter carry Markdown/HTML images and links
pointing at a canary server on loopback. The canary must receive zero requests, and no page may
hold a link or image aimed at it (result URLs are offered only through the scheme-checked link
column, drawn by the table, never as Markdown)."""

from __future__ import annotations

import http.server
import threading
from datetime import datetime
from urllib.parse import quote

import pytest
from sqlalchemy import insert, update

from rivya_core.stores import db, schema
from simulations.live import free_port
from tests.dashboard.conftest import app_pages, serve, settle, sign_in
from tests.dashboard.seed import seed

pytestmark = pytest.mark.browser


class _Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        type(self).hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def canary():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Canary)
    _Canary.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hostile(canary: str, where: str) -> str:
    """Every way Markdown or HTML could make a browser fetch or link: images, links, autolinks,
    raw HTML, Streamlit's colour directive, LaTeX, an e-mail autolink, a line that starts a block."""
    return (
        f"{where} ![i]({canary}/img/{where}) [click]({canary}/link/{where}) {canary}/bare/{where} "
        f"<img src='{canary}/html/{where}'> :red[{where}] $x^2$ mail@canary.test\n# {where}"
    )


def _seed_hostile(url: str, canary: str) -> None:
    seed(url)
    h = lambda where: hostile(canary, where)  # noqa: E731
    engine = db.make_engine(url)
    with engine.begin() as conn:
        for uid in (1, 2):
            conn.execute(
                update(schema.account)
                .where(schema.account.c.id == uid)
                .values(name=h(f"name{uid}"), email=h(f"email{uid}"))
            )
        conn.execute(update(schema.ai_task).values(prompt=h("prompt"), upstream_task_id=h("upstream")))
        conn.execute(
            update(schema.ai_task)
            .where(schema.ai_task.c.id == 2)
            .values(error_code=h("code"), error_message=h("message"))
        )
        conn.execute(
            update(schema.ai_task)
            .where(schema.ai_task.c.id == 1)
            .values(result_urls=[f"{canary}/result.png", f"javascript:fetch('{canary}/js')", h("result")])
        )
        conn.execute(update(schema.notification).values(title=h("title"), body=h("body")))
        conn.execute(update(schema.provider_callback).values(body=h("callback"), detail=h("detail")))
        at = datetime(2026, 4, 1, 12, 30)
        conn.execute(
            insert(schema.chat_session).values(id=1, user_id=1, model="chat-s", title=h("session"), created_at=at)
        )
        conn.execute(
            insert(schema.chat_message).values(
                id=1, session_id=1, role="user", content=h("chat"), reserved_credits=0, status="settled", created_at=at
            )
        )
    engine.dispose()


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory, canary):
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'hostile.db'}"
    _seed_hostile(url, canary)
    return url


@pytest.fixture(scope="module")
def open_server(hostile_db):
    yield from serve({"RIVYA_DB_URL": hostile_db, "RIVYA_DEMO": "0"})


@pytest.fixture(scope="module")
def signed_server(hostile_db):
    yield from serve(
        {
            "RIVYA_DB_URL": hostile_db,
            "RIVYA_DEMO": "0",
            "RIVYA_OPERATORS": "olga:correct-horse",
            "RIVYA_VIEWERS": "vera:pw1",
        }
    )


def _paths(canary: str) -> list[str]:
    db_param = quote(hostile(canary, "dbparam"), safe="")
    paths = [path for path, _title in app_pages()]
    paths += [
        "task_inspector?task=1",
        "task_inspector?task=2",
        "task_inspector?task=" + quote(hostile(canary, "query")),
        "ledger?user=1",
        "notifications?user=1",
        f"?db={db_param}",
        f"task_inspector?task=2&db={db_param}",
        f"simulation_lab?db={db_param}",
        f"refund_audit?db={db_param}",
    ]
    return paths


def _aimed_at(page, canary: str) -> list[str]:
    found = page.eval_on_selector_all(
        "a[href], img[src], [style*='url(']",
        "(els, c) => els.map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('style'))"
        ".filter(v => v && v.includes(c))",
        canary,
    )
    return found


def _visit_every_page(page, base: str, canary: str) -> None:
    for path in _paths(canary):
        page.goto(f"{base}/{path}", timeout=60_000)
        settle(page)
        for expander in page.locator("[data-testid='stExpander'] summary").all():
            expander.click()  # open every expander: their bodies render only when open
        page.wait_for_timeout(300)
        assert page.locator('[data-testid="stException"]').count() == 0, path
        assert _aimed_at(page, canary) == [], path


def test_no_page_fetches_or_links_hostile_text_in_open_mode(open_server, browser, canary):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    _visit_every_page(page, open_server, canary)
    page.goto(f"{open_server}/task_inspector?task=2", timeout=60_000)
    settle(page)
    assert "message ![i](" in page.inner_text("body")  # shown, as typed
    page.close()
    assert _Canary.hits == []


@pytest.mark.parametrize("user, password", [("vera", "pw1"), ("olga", "correct-horse")])
def test_no_page_fetches_or_links_hostile_text_aftersign_in(signed_server, browser, canary, user, password):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    db_param = quote(hostile(canary, "signin"), safe="")
    page.goto(f"{signed_server}/?db={db_param}", timeout=60_000)
    page.wait_for_selector("h1:has-text('Sign in')", timeout=120_000)
    sign_in(page, user, password)
    page.wait_for_selector("h1:has-text('Overview')", timeout=60_000)
    settle(page)
    assert _aimed_at(page, canary) == []
    _visit_every_page(page, signed_server, canary)
    page.close()
    assert _Canary.hits == []
