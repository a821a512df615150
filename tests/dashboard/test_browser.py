"""End to end: `streamlit run app.py` on a free port, every page opened in headless Chromium.

The app starts on an absent SQLite database, so the first page load also
exercises the demo seeding. Each page must show its title and no exception box
or traceback. Screenshots go to $RIVYA_ARTIFACTS (default: pytest's temp dir).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.dashboard.conftest import app_pages, open_settled, serve, settle, sign_in

pytestmark = pytest.mark.browser

PAGES = app_pages()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    yield from serve({"RIVYA_DB_URL": f"sqlite:///{tmp / 'rivya.db'}", "RIVYA_DEMO": "1"}, tmp / "server.log")


@pytest.fixture(scope="module")
def signed_server(tmp_path_factory):
    """The app with access control on (one operator), on the small known database."""
    from tests.dashboard.seed import seed

    url = f"sqlite:///{tmp_path_factory.mktemp('signin') / 'seeded.db'}"
    seed(url)
    yield from serve({"RIVYA_DB_URL": url, "RIVYA_DEMO": "0", "RIVYA_OPERATORS": "olga:correct-horse"})


def test_every_page_opens_without_an_exception(server, browser, tmp_path_factory):
    shots = Path(os.environ.get("RIVYA_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    page = open_settled(browser, server)  # the first load seeds the demo database
    assert len(PAGES) == 12  # every page of app.py, User, Incidents and Webhook deliveries included
    for path, title in PAGES:
        path = f"{path}?task=1" if path == "task_inspector" else path
        page.goto(f"{server}/{path}", timeout=60_000)
        settle(page)
        name = path.split("?")[0] or "overview"
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        body = page.inner_text("body")
        assert page.locator('[data-testid="stException"]').count() == 0, f"{name}: exception box"
        assert "Traceback" not in body, f"{name}: traceback on the page"
        assert page.locator("h1").first.inner_text().strip() == title, f"{name}: title"
        assert "Traceback" not in server.log_text(), f"{name}: traceback in the server log"
    assert page.title()


def test_a_deep_link_in_a_fresh_session_goes_through_the_app(server, browser):
    page = browser.new_page()
    page.goto(f"{server}/task_inspector?task=1", timeout=60_000)
    page.wait_for_selector("text=Task #1", timeout=120_000)
    nav = page.inner_text('[data-testid="stSidebarNav"]')
    assert "Overview" in nav and "common" not in nav  # app.py's navigation, not the pages/ folder


def test_sign_in_refuses_a_wrong_password_and_lets_an_operator_act(signed_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(signed_server, timeout=60_000)
    page.wait_for_selector("h1:has-text('Sign in')", timeout=120_000)
    assert page.locator("[data-testid='stMetric']").count() == 0  # nothing read before signing in
    sign_in(page, "olga", "wrong")
    page.wait_for_selector("text=Unknown user or wrong password.", timeout=60_000)
    assert page.locator("h1").first.inner_text().strip() == "Sign in"
    sign_in(page, "olga", "correct-horse")
    page.wait_for_selector("h1:has-text('Overview')", timeout=60_000)
    assert "Signed in as olga (operator)" in page.inner_text("[data-testid='stSidebar']")
    page.get_by_role("link", name="Task inspector").click()
    page.wait_for_selector("h1:has-text('Task inspector')", timeout=60_000)
    page.get_by_label("Find a task").fill("2")
    page.get_by_label("Find a task").press("Enter")
    page.wait_for_selector("text=Task #2 — FAILED", timeout=60_000)
    page.get_by_role("tab", name="Support actions").click()
    actions = page.get_by_role("button", name="Run action")
    actions.wait_for(timeout=30_000)
    assert actions.is_visible()
    assert page.get_by_label("Operator name").input_value() == "olga"
    assert page.locator('[data-testid="stException"]').count() == 0


def _select_first_row(page, table) -> None:
    """Tick the row selector of a st.dataframe's first data row (the grid is drawn on a canvas)."""
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    page.mouse.move(box["x"] + 18, box["y"] + 53)
    page.wait_for_timeout(200)
    page.mouse.click(box["x"] + 18, box["y"] + 53)


def _open_first_row(page, table, selector: str, attempts: int = 3) -> None:
    """Select a table's first row until `selector` shows: on a busy machine the grid can take
    a click before its canvas takes selections, and then nothing happens; a person clicks again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        _select_first_row(page, table)
        try:
            page.wait_for_selector(selector, timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise


def test_a_task_row_opens_the_inspector_in_the_same_tab_quickly(server, browser, tmp_path_factory):
    """Table to inspector on the demo database: same tab, same session; the time is reported
    (BENCHMARKS.md), not asserted."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(server, timeout=60_000)
    settle(page)
    shown, settled = [], []
    for _ in range(5):
        page.get_by_role("link", name="Overview").first.click()
        page.wait_for_selector("h1:has-text('Overview')", timeout=60_000)
        settle(page)
        recent = page.locator('[data-testid="stDataFrame"]').last
        recent.wait_for(timeout=60_000)
        seen = len(server.log_text())
        t0 = time.monotonic()
        _open_first_row(page, recent, "h2:has-text('Task #')")
        shown.append(time.monotonic() - t0)  # the task's header and status on screen
        settle(page)
        settled.append(time.monotonic() - t0)  # the whole page drawn, the script run over
        assert "task_inspector?task=" in page.url
        assert len(context.pages) == 1  # no new tab
        assert "Traceback" not in server.log_text()[seen:]
    page.screenshot(path=str(tmp_path_factory.mktemp("nav") / "inspector_from_table.png"), full_page=True)
    for name, times in (("task header shown", shown), ("page settled", settled)):
        times.sort()
        print(
            f"\ntable -> inspector, {name} (s): median {times[len(times) // 2]:.2f}, "
            f"min {times[0]:.2f}, max {times[-1]:.2f} over {len(times)}"
        )
    context.close()


def test_an_action_that_changes_the_task_shows_its_outcome_where_it_ran(server, browser):
    """A re-check that finishes one of the demo's WAITING crash leftovers: the page redraws the task
    (now FAILED, with its error box above the tabs) and must still show the action's outcome, in the
    Support actions tab it ran from, not behind the Checklist tab."""
    import sqlite3

    page = open_settled(browser, server)  # the first start seeds the demo database
    db = server.log.parent / "rivya.db"
    with sqlite3.connect(db) as conn:
        waiting = conn.execute("select min(id) from ai_task where status = 'WAITING'").fetchone()[0]
    page.goto(f"{server}/task_inspector?task={waiting}", timeout=60_000)
    page.wait_for_selector(f"text=Task #{waiting} — WAITING", timeout=60_000)
    settle(page)
    seen = len(server.log_text())
    page.get_by_role("tab", name="Support actions").click()
    page.get_by_label("Operator name").fill("Olga")
    page.get_by_label("Reason (kept in the task's timeline)").fill("the user asked where the image is")
    page.get_by_role("button", name=f"Run action on task #{waiting}").click()
    page.wait_for_selector(f"text=Task #{waiting} — FAILED", timeout=60_000)
    settle(page)
    done = page.locator('[data-testid="stAlert"]').filter(has_text=f"Re-check upstream on task #{waiting}: done")
    done.first.wait_for(state="visible", timeout=60_000)  # shown in the tab it ran from, not a hidden one
    assert "Traceback" not in server.log_text()[seen:]
