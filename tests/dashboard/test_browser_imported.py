"""The dashboard on a database imported from a ShipAny-style source, in headless Chromium: every
page opens without an exception, the original id shows beside ours and finds the task, and what
the source never recorded is said to be so."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from rivya_core.sources.shipany import import_shipany
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine
from tests.dashboard.conftest import app_pages, open_settled, serve, settle
from tests.shipany_source import build_source, hand_written

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def imported_server(tmp_path_factory):
    """(served app, {original id: our id}, planted) on a database imported from the hand-written source."""
    tmp = tmp_path_factory.mktemp("imported-app")
    w, planted = hand_written()
    src = f"sqlite:///{tmp / 'shipany.db'}"
    build_source(src, w)
    into = f"sqlite:///{tmp / 'imported.db'}"
    import_shipany(src, into)
    engine = make_engine(into, read_only=True)
    with engine.connect() as conn:
        ids = {ref: i for i, ref in conn.execute(select(schema.ai_task.c.id, schema.ai_task.c.external_ref))}
    engine.dispose()
    for served in serve({"RIVYA_DB_URL": into, "RIVYA_DEMO": "0"}, tmp / "server.log"):
        yield served, ids, planted


def test_every_page_opens_on_the_imported_database(imported_server, browser):
    server, ids, planted = imported_server
    task = ids[planted.canceled]
    page = open_settled(browser, server)
    for path, title in app_pages():
        path = f"{path}?task={task}" if path == "task_inspector" else path
        page.goto(f"{server}/{path}", timeout=60_000)
        settle(page)
        name = path.split("?")[0] or "overview"
        assert page.locator('[data-testid="stException"]').count() == 0, f"{name}: exception box"
        assert "Traceback" not in page.inner_text("body"), f"{name}: traceback on the page"
        assert page.locator("h1").first.inner_text().strip() == title, f"{name}: title"
        assert "Traceback" not in server.log_text(), f"{name}: traceback in the server log"
        if name == "overview":
            expect(page.get_by_text("not recorded by this source").first).to_be_visible()
        if name == "task_inspector":
            expect(page.locator("h2").first).to_contain_text(f"original id {planted.canceled}")


def test_the_inspector_finds_a_task_by_its_original_id(imported_server, browser):
    server, ids, planted = imported_server
    page = open_settled(browser, f"{server}/task_inspector")
    search = page.get_by_label("Find a task")
    search.fill(planted.refunded_after_expiry)
    search.press("Enter")
    header = page.locator("h2").first
    expect(header).to_contain_text(
        f"Task #{ids[planted.refunded_after_expiry]} · original id {planted.refunded_after_expiry}", timeout=60_000
    )
    settle(page)
    expect(page.get_by_text("refunded onto a grant that had already expired").first).to_be_visible()
