"""End to end in Chromium: the Overview's alert strip opens a prepared bulk filter; a bulk dry run,
execute, execute again (no second effect); the server log stays free of tracebacks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on the small known database; yields (base URL, database URL, server log path)."""
    from tests.dashboard.seed import seed

    tmp = tmp_path_factory.mktemp("support")
    url = f"sqlite:///{tmp / 'seeded.db'}"
    seed(url)
    log = tmp / "server.log"
    port = _free_port()
    env = {**os.environ, "RIVYA_DB_URL": url, "RIVYA_DEMO": "0"}
    for key in ("RIVYA_OPERATORS", "RIVYA_VIEWERS"):
        env.pop(key, None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("streamlit did not start") from None
                time.sleep(0.3)
        yield base, url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (install Debian's chromium to run the browser test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _settle(page) -> None:
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=120_000)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)


def _shots(tmp_path_factory) -> Path:
    shots = Path(os.environ.get("RIVYA_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _support_events(url):
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("select task_id, detail from task_event where kind = 'support_action'")).all()
    engine.dispose()
    return found


def _metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_alert_strip_opens_a_prepared_bulk_filter_in_the_same_tab(served, browser, tmp_path_factory):
    base, url, log = served
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(base, timeout=60_000)
    _settle(page)
    page.wait_for_selector("text=1 alert(s)", timeout=60_000)
    link = page.get_by_role("link", name="Prepare bulk re-check")
    assert link.get_attribute("target") in (None, "", "_self")
    link.click()
    page.wait_for_selector("h1:has-text('Incidents')", timeout=60_000)
    _settle(page)
    assert len(browser.contexts[-1].pages) == 1  # no new tab
    assert "model=vid-pro" in page.url
    scope = page.locator("text=Scope:").first.inner_text()
    assert "model=vid-pro" in scope and "status=GENERATING" in scope
    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("text=Tasks matched", timeout=60_000)
    _settle(page)
    assert _metric(page, "Tasks matched") == "1"
    page.screenshot(path=str(_shots(tmp_path_factory) / "incidents-from-alert.png"), full_page=True)
    assert "Traceback" not in log.read_text()


def test_bulk_dry_run_execute_then_execute_again(served, browser, tmp_path_factory):
    base, url, log = served
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{base}/incidents?action=refund&provider=pixa&status=FAILED", timeout=60_000)
    _settle(page)
    page.get_by_role("textbox", name="Incident name").fill("pixa outage")
    page.get_by_role("textbox", name="Incident name").press("Enter")
    _settle(page)
    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("text=Tasks matched", timeout=60_000)
    _settle(page)
    assert (_metric(page, "Tasks matched"), _metric(page, "Would act on"),
            _metric(page, "Credits back to users")) == ("1", "1", "10")
    assert _support_events(url) == []
    page.get_by_role("textbox", name="Operator").fill("sam")
    page.get_by_role("textbox", name="Reason (kept on every task's timeline)").fill("pixa was down")
    page.get_by_role("textbox", name="Reason (kept on every task's timeline)").press("Enter")
    _settle(page)
    page.get_by_role("button", name="Execute incident").click()
    page.wait_for_selector("text=1 acted on", timeout=60_000)
    _settle(page)
    [(task_id, detail)] = _support_events(url)
    assert task_id == 2 and '"incident": 1' in detail and '"operator": "sam"' in detail

    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("text=Already handled", timeout=60_000)
    _settle(page)
    assert (_metric(page, "Already handled"), _metric(page, "Would act on")) == ("1", "0")
    page.get_by_role("button", name="Execute incident").click()
    page.wait_for_selector("text=1 already handled by an earlier run", timeout=60_000)
    _settle(page)
    assert len(_support_events(url)) == 1  # the second run changed nothing
    page.screenshot(path=str(_shots(tmp_path_factory) / "incidents-executed-twice.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in log.read_text()


def test_user_page_filters_stick(served, browser, tmp_path_factory):
    base, url, log = served
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{base}/user", timeout=60_000)
    _settle(page)
    box = page.get_by_role("textbox", name="Find a user")
    box.fill("ana@")
    box.press("Enter")
    page.wait_for_selector("text=Ana Lima · ana@example.com · account #1", timeout=60_000)
    _settle(page)
    page.wait_for_selector("text=2 task(s)", timeout=60_000)
    grid = page.locator('[data-testid="stDataFrame"]').first
    page.get_by_role("button", name="Failed").first.click()
    page.wait_for_selector("text=1 task(s)", timeout=60_000)
    _settle(page)
    assert page.get_by_role("textbox", name="Find a user").input_value() == "ana@"  # the search sticks
    assert "user=1" in page.url
    page.screenshot(path=str(_shots(tmp_path_factory) / "user-page-filtered.png"), full_page=True)
    grid.wait_for(timeout=30_000)  # the task links are drawn on the grid's canvas; AppTest checks their URLs
    page.get_by_role("button", name="Failed").first.click()  # off again: both tasks
    page.wait_for_selector("text=2 task(s)", timeout=60_000)
    _settle(page)
    assert len(browser.contexts[-1].pages) == 1
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in log.read_text()
