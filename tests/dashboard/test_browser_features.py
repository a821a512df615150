"""Re-run for the user and the webhook delivery log in headless Chromium: search, pick, act, see the
result linked; the server log free of tracebacks."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from rivya_core.stores import db, schema
from tests.dashboard.conftest import choose, open_settled, serve, settle
from tests.dashboard.support_seed import HOSTILE_ERROR, support_seed

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def support_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("support-app")
    url = f"sqlite:///{tmp / 'support.db'}"
    ids = support_seed(url)
    for served in serve({"RIVYA_DB_URL": url, "RIVYA_DEMO": "0"}, tmp / "server.log"):
        yield served, url, ids


def _rows(url, stmt):
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(stmt).all()
    finally:
        engine.dispose()


def _tracebacks(log: str) -> list[str]:
    return [chunk[:400] for chunk in log.split("Traceback (most recent call last)")[1:]]


def test_find_a_task_rerun_it_and_follow_the_link_to_the_new_task(support_server, browser):
    served, url, ids = support_server
    page = open_settled(browser, f"{served}/task_inspector")
    search = page.get_by_label("Find a task")
    search.fill("vera@example.com")
    search.press("Enter")
    page.wait_for_selector("text=2 tasks match", timeout=60_000)
    choose(page, "Task", f"#{ids['failed']} · FAILED", exact=False)
    page.wait_for_selector(f"text=Task #{ids['failed']} — FAILED", timeout=60_000)
    settle(page)
    page.get_by_role("tab", name="Support actions").click()
    settle(page)
    page.get_by_label("Re-run by (your name)").fill("Dana")
    page.get_by_label("Reason for the re-run").fill("Vera asked for another try")
    page.get_by_role("button", name=f"Re-run task #{ids['failed']} for the user").click()
    new_id = ids["holder"] + 1
    page.wait_for_selector(f"text=created task #{new_id}", timeout=60_000)
    settle(page)
    page.screenshot(path=str(served.log.parent / "rerun.png"), full_page=True)
    [row] = _rows(url, select(schema.ai_task.c.rerun_of).where(schema.ai_task.c.id == new_id))
    assert row.rerun_of == ids["failed"]
    page.get_by_role("button", name=f"Open task #{new_id}").click()
    page.wait_for_selector(f"text=Task #{new_id} — FAILED", timeout=60_000)
    settle(page)
    assert page.get_by_role("button", name=f"Re-run of task #{ids['failed']}").is_visible()
    page.get_by_role("button", name=f"Re-run of task #{ids['failed']}").click()
    page.wait_for_selector(f"text=Task #{ids['failed']} — FAILED", timeout=60_000)
    settle(page)
    assert page.get_by_role("button", name=f"Re-run as task #{new_id} (FAILED)").is_visible()
    assert _tracebacks(served.log_text()) == []


def test_open_the_delivery_log_filter_and_reprocess_a_parked_callback(support_server, browser):
    served, url, ids = support_server
    page = open_settled(browser, f"{served}/deliveries")
    page.wait_for_selector("text=Body as received", timeout=60_000)
    settle(page)
    assert HOSTILE_ERROR in page.locator('[data-testid="stCode"]').first.inner_text()  # the malformed body, as text
    assert page.locator("a[href='http://evil.example']").count() == 0
    choose(page, "Outcome", "unknown_task")
    page.keyboard.press("Escape")
    page.wait_for_selector("text=Deliveries 1–2 of 2", timeout=60_000)
    choose(page, "Delivery", f"#{ids['parked']} · unknown_task", exact=False)
    page.wait_for_selector(f"text=Task #{ids['holder']} now holds this upstream id", timeout=60_000)
    settle(page)  # the form of the delivery shown before is gone
    page.get_by_label("Operator name").fill("Dana")
    page.get_by_label("Reason (kept on the task's timeline)").fill("provider called back before our write")
    page.get_by_role("button", name=f"Re-process callback #{ids['parked']}").click()
    page.wait_for_selector(f"text=re-processed for task #{ids['holder']}", timeout=60_000)
    settle(page)
    page.screenshot(path=str(served.log.parent / "deliveries.png"), full_page=True)
    [row] = _rows(url, select(schema.ai_task.c.status).where(schema.ai_task.c.id == ids["holder"]))
    assert row.status == "SUCCESS"
    page.get_by_role("button", name=f"Open task #{ids['holder']}").click()
    page.wait_for_selector(f"text=Task #{ids['holder']} — SUCCESS", timeout=60_000)
    assert _tracebacks(served.log_text()) == []
