"""Support work in headless Chromium on the small known database: search, pick, act on the right
task; every page read with the server log free of tracebacks; a URL whose driver is absent.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import choose, open_settled, settle, support_events

pytestmark = pytest.mark.browser

EVERY_PAGE = [
    "",
    "live_tasks",
    "task_inspector?task=1",
    "task_inspector?task=2",
    "checklist",
    "notifications",
    "ledger",
    "refund_audit",
    "chat_settlement",
    "simulation_lab",
]


def _tracebacks(log: str) -> list[str]:
    return [chunk[:400] for chunk in log.split("Traceback (most recent call last)")[1:]]


def _search(browser, served: str, query: str, matches: str):
    """The inspector, with `query` typed into its search box, once `matches` shows."""
    page = open_settled(browser, f"{served}/task_inspector")
    search = page.get_by_label("Find a task")
    search.fill(query)
    search.press("Enter")
    page.wait_for_selector(f"text={matches}", timeout=60_000)
    return page


def test_search_pick_the_second_result_then_act_lands_on_that_task(seeded_server, browser):
    served, url = seeded_server
    before = support_events(url)
    page = _search(browser, served, "ana@example.com", "2 tasks match")
    page.wait_for_selector("text=Task #2 — FAILED", timeout=60_000)  # newest first
    choose(page, "Task", "#1 · SUCCESS · img-fast · ana@example.com · a red fox in snow")
    page.wait_for_selector("text=Task #1 — SUCCESS", timeout=60_000)
    settle(page)
    page.wait_for_timeout(1500)  # any late rerun that would jump back has happened by now
    assert page.get_by_label("Find a task").input_value() == "ana@example.com"
    assert page.locator("h2").filter(has_text="Task #").first.inner_text().startswith("Task #1 — SUCCESS")
    assert "task=1" in page.url

    page.get_by_role("tab", name="Support actions").click()
    page.get_by_text("Issue the due refund", exact=True).click()
    page.get_by_label("Operator name").fill("Dana")
    page.get_by_label("Reason (kept in the task's timeline)").fill("Ana says the fox never arrived")
    button = page.get_by_role("button", name="Run action on task #1")
    assert button.is_visible()  # the button names the task it acts on
    button.click()
    page.wait_for_selector("text=refused", timeout=60_000)
    assert (
        page.locator('[data-testid="stAlert"]')
        .filter(has_text="refused")
        .first.inner_text()
        .startswith("Issue the due refund on task #1 refused")
    )
    settle(page)
    page.wait_for_timeout(1000)
    assert page.locator('[data-testid="stAlert"]').filter(has_text="refused").first.is_visible()  # not in a hidden tab
    page.screenshot(path=str(served.log.parent / "inspector_action.png"), full_page=True)

    new = support_events(url)[len(before) :]
    assert [task for task, _ in new] == [1], new  # on the task shown, and on no other
    assert new[0][1]["action"] == "refund" and new[0][1]["operator"] == "Dana"
    assert _tracebacks(served.log_text()) == []


def test_a_deep_link_keeps_the_search_and_the_choice(seeded_server, browser):
    served, _ = seeded_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{served}/task_inspector?q=ana%40example.com&task=1", timeout=60_000)
    page.wait_for_selector("text=Task #1 — SUCCESS", timeout=60_000)
    settle(page)
    expect(page.get_by_label("Find a task")).to_have_value("ana@example.com", timeout=30_000)
    page.reload()
    page.wait_for_selector("text=Task #1 — SUCCESS", timeout=60_000)
    settle(page)
    expect(page.get_by_label("Find a task")).to_have_value("ana@example.com", timeout=30_000)
    # a new search replaces the old one at the first attempt
    search = page.get_by_label("Find a task")
    search.fill("Bo Chen")
    search.press("Enter")
    page.wait_for_selector("text=Task #4 — WAITING", timeout=60_000)
    settle(page)
    page.wait_for_timeout(1000)
    assert page.get_by_label("Find a task").input_value() == "Bo Chen"


def test_every_page_reads_without_a_traceback_in_the_server_log(seeded_server, browser):
    served, _ = seeded_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    for path in EVERY_PAGE:
        seen = len(served.log_text())
        page.goto(f"{served}/{path}", timeout=60_000)
        settle(page)
        page.wait_for_timeout(500)
        if path.startswith("task_inspector"):
            for tab in ("Checklist", "Timeline", "Ledger", "Callbacks", "Notifications"):
                page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(500)
        assert page.locator('[data-testid="stException"]').count() == 0, path
        assert _tracebacks(served.log_text()[seen:]) == [], f"{path or 'overview'}: traceback in the server log"


def test_a_url_whose_driver_is_missing_is_one_message(seeded_server, browser):
    served, _ = seeded_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seen = len(served.log_text())
    page.goto(f"{served}/?db=mysql%3A%2F%2Fsupport%40db.internal%2Frivya", timeout=60_000)
    page.wait_for_selector("text=Cannot read this database", timeout=60_000)
    settle(page)
    body = page.inner_text("body")
    assert "Traceback" not in body and "ModuleNotFoundError" not in body
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "mysql://support@db.internal/rivya" in body
    assert _tracebacks(served.log_text()[seen:]) == []


def test_search_pick_mark_failed_then_read_the_confirmation_and_what_the_customer_was_told(seeded_server, browser):
    """Bo's video (task 3) has generated for two hours: find it by his email, pick it, mark it failed
    with an internal reason, read the confirmation (with the money) and the notification he got."""
    served, url = seeded_server
    before = support_events(url)
    page = _search(browser, served, "bo@example.com", "2 tasks match")
    choose(page, "Task", "#3 · GENERATING · vid-pro · bo@example.com · waves at dusk")
    page.wait_for_selector("text=Task #3 — GENERATING", timeout=60_000)
    settle(page)
    # The verdict of task #3 (the page showed the newest match's verdict before the pick redrew it)
    verdict = page.locator('[data-testid="stAlert"]').filter(has_text="Verdict").filter(has_text="stuck").first
    verdict.wait_for(state="visible", timeout=60_000)
    assert verdict.locator('[data-testid="stAlertContentWarning"]').count() == 1

    page.get_by_role("tab", name="Support actions").click()
    assert page.get_by_text(
        "Your video from vid-pro could not be completed; your 50 credits were refunded.", exact=False
    ).first.is_visible()  # who sees what, before acting
    page.get_by_text("Mark stuck task failed", exact=True).click()
    page.get_by_label("Operator name").fill("Dana")
    page.get_by_label("Reason (kept in the task's timeline)").fill("motion hang; upstream lost the job")
    page.get_by_role("button", name="Run action on task #3").click()
    page.wait_for_selector("text=The task is now FAILED", timeout=60_000)
    settle(page)
    done = page.locator('[data-testid="stAlert"]').filter(has_text="The task is now FAILED").first
    assert done.inner_text().strip() == (
        "Mark stuck task failed on task #3: done. The task is now FAILED; refunded 50 credits."
    )

    page.get_by_role("tab", name="Notifications").click()
    told = page.get_by_text(
        "Your video from vid-pro could not be completed; your 50 credits were refunded.", exact=False
    )
    told.last.wait_for(timeout=30_000)
    panel = page.get_by_role("tabpanel", name="Notifications").inner_text()
    assert "Dana" not in panel and "hang" not in panel
    page.screenshot(path=str(served.log.parent / "inspector_mark_failed.png"), full_page=True)
    new = support_events(url)[len(before) :]
    assert [(task, d["operator"], d["reason"]) for task, d in new] == [
        (3, "Dana", "motion hang; upstream lost the job")
    ]
    assert _tracebacks(served.log_text()) == []
