"""End to end in Chromium: the Overview's alert strip opens a prepared bulk filter; a bulk dry run,
execute, execute again (no second effect); the server log stays free of tracebacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.dashboard.conftest import open_settled, settle, support_events

pytestmark = pytest.mark.browser


def _shots(tmp_path_factory) -> Path:
    shots = Path(os.environ.get("RIVYA_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_alert_strip_opens_a_prepared_bulk_filter_in_the_same_tab(seeded_server, browser, tmp_path_factory):
    base, url = seeded_server
    page = open_settled(browser, base, height=1100)
    page.wait_for_selector("text=1 alert(s)", timeout=60_000)
    link = page.get_by_role("link", name="Prepare bulk re-check")
    assert link.get_attribute("target") in (None, "", "_self")
    link.click()
    page.wait_for_selector("h1:has-text('Incidents')", timeout=60_000)
    settle(page)
    assert len(browser.contexts[-1].pages) == 1  # no new tab
    assert "model=vid-pro" in page.url
    scope = page.locator("text=Scope:").first.inner_text()
    assert "model=vid-pro" in scope and "status=GENERATING" in scope
    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("text=Tasks matched", timeout=60_000)
    settle(page)
    assert _metric(page, "Tasks matched") == "1"
    page.screenshot(path=str(_shots(tmp_path_factory) / "incidents-from-alert.png"), full_page=True)
    assert "Traceback" not in base.log_text()


def test_bulk_dry_run_execute_then_execute_again(seeded_server, browser, tmp_path_factory):
    base, url = seeded_server
    page = open_settled(browser, f"{base}/incidents?action=refund&provider=pixa&status=FAILED", height=1100)
    page.get_by_role("textbox", name="Incident name").fill("pixa outage")
    page.get_by_role("textbox", name="Incident name").press("Enter")
    settle(page)
    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("text=Tasks matched", timeout=60_000)
    settle(page)
    assert (_metric(page, "Tasks matched"), _metric(page, "Would act on"), _metric(page, "Credits back to users")) == (
        "1",
        "1",
        "10",
    )
    assert support_events(url) == []
    page.get_by_role("textbox", name="Operator").fill("sam")
    page.get_by_role("textbox", name="Reason (kept on every task's timeline)").fill("pixa was down")
    page.get_by_role("textbox", name="Reason (kept on every task's timeline)").press("Enter")
    settle(page)
    page.get_by_role("button", name="Execute incident").click()
    page.wait_for_selector("text=1 acted on", timeout=60_000)
    settle(page)
    assert (
        "10 credits refunded on 1 task(s)"
        in page.locator('[data-testid="stAlert"]').filter(has_text="1 acted on").first.inner_text()
    )  # the money of the run
    assert "never to the customers" in page.inner_text("body")  # the form says who sees what
    [(task_id, detail)] = support_events(url)
    assert task_id == 2 and detail["incident"] == 1 and detail["operator"] == "sam"

    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("text=Already handled", timeout=60_000)
    settle(page)
    assert (_metric(page, "Already handled"), _metric(page, "Would act on")) == ("1", "0")
    page.get_by_role("button", name="Execute incident").click()
    page.wait_for_selector("text=1 already handled by an earlier run", timeout=60_000)
    settle(page)
    assert len(support_events(url)) == 1  # the second run changed nothing
    page.screenshot(path=str(_shots(tmp_path_factory) / "incidents-executed-twice.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in base.log_text()


def test_user_page_filters_stick(seeded_server, browser, tmp_path_factory):
    base, url = seeded_server
    page = open_settled(browser, f"{base}/user", height=1100)
    box = page.get_by_role("textbox", name="Find a user")
    box.fill("ana@")
    box.press("Enter")
    page.wait_for_selector("text=Ana Lima · ana@example.com · account #1", timeout=60_000)
    settle(page)
    page.wait_for_selector("text=2 task(s)", timeout=60_000)
    grid = page.locator('[data-testid="stDataFrame"]').first
    page.get_by_role("button", name="Failed").first.click()
    page.wait_for_selector("text=1 task(s)", timeout=60_000)
    settle(page)
    assert page.get_by_role("textbox", name="Find a user").input_value() == "ana@"  # the search sticks
    assert "user=1" in page.url
    page.screenshot(path=str(_shots(tmp_path_factory) / "user-page-filtered.png"), full_page=True)
    grid.wait_for(timeout=30_000)  # the task links are drawn on the grid's canvas; AppTest checks their URLs
    page.get_by_role("button", name="Failed").first.click()  # off again: both tasks
    page.wait_for_selector("text=2 task(s)", timeout=60_000)
    settle(page)
    assert len(browser.contexts[-1].pages) == 1
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in base.log_text()


def test_the_audit_shown_says_whether_it_was_stored_and_by_whom(seeded_server, browser, tmp_path_factory):
    base, url = seeded_server
    page = open_settled(browser, base, height=1100)
    page.wait_for_selector("text=Audit computed now, not stored (run the audit to store it)", timeout=60_000)
    assert "Audit stored at" not in page.inner_text("body")
    page.get_by_role("link", name="Open the refund audit").click()
    page.wait_for_selector("h1:has-text('Refund audit')", timeout=60_000)
    page.wait_for_selector("text=Audit computed now, not stored", timeout=60_000)  # drawn once the audit ran
    settle(page)
    page.get_by_role("button", name="Run the audit now").click()
    page.wait_for_selector("text=by an operator in open mode", timeout=60_000)
    settle(page)
    assert "Audit stored at" in page.inner_text("body") and "computed now" not in page.inner_text("body")
    page.get_by_role("link", name="Overview").first.click()
    page.wait_for_selector("text=by an operator in open mode", timeout=60_000)
    settle(page)
    page.screenshot(path=str(_shots(tmp_path_factory) / "overview-audit-stored.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in base.log_text()
