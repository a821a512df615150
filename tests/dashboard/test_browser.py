"""End to end: `streamlit run app.py` on a free port, every page opened in headless Chromium.

The app starts on an absent SQLite database, so the first page load also
exercises the demo seeding. Each page must show its title and no exception box
or traceback. Screenshots go to $RIVYA_ARTIFACTS (default: pytest's temp dir).
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail_in_ci

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


def _app_pages() -> list[tuple[str, str]]:
    """(URL path, title) of every page in app.py's PAGES, read from its source (importing app.py runs it)."""
    tree = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    rows = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PAGES" for t in node.targets))
    return [("" if i == 0 else Path(path).stem, title) for i, (path, title, *_rest) in enumerate(rows)]


PAGES = _app_pages()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("streamlit did not become healthy")


class Served(str):
    """The base URL of a served app (a str), with `.log`: the file holding the server's stdout and stderr."""

    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _serve(env_extra: dict[str, str], log: Path | None = None):
    """`streamlit run app.py` on a free port with env_extra; yields the base URL (a Served, whose
    .log is the server's output), stops it afterwards."""
    port = _free_port()
    if log is None:
        import tempfile

        log = Path(tempfile.mkdtemp(prefix="rivya-streamlit-")) / "server.log"
    out = open(log, "wb")
    env = {**os.environ, **env_extra}
    for key in ("RIVYA_OPERATORS", "RIVYA_VIEWERS"):
        if key not in env_extra:
            env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    base = Served(f"http://127.0.0.1:{port}")
    base.log = log
    try:
        _wait_healthy(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    yield from _serve({"RIVYA_DB_URL": f"sqlite:///{tmp / 'rivya.db'}", "RIVYA_DEMO": "1"}, tmp / "server.log")


@pytest.fixture(scope="module")
def signed_server(tmp_path_factory):
    """The app with access control on (one operator), on the small known database."""
    from tests.dashboard.seed import seed

    url = f"sqlite:///{tmp_path_factory.mktemp('signin') / 'seeded.db'}"
    seed(url)
    yield from _serve({"RIVYA_DB_URL": url, "RIVYA_DEMO": "0", "RIVYA_OPERATORS": "olga:correct-horse"})


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        skip_or_fail_in_ci(f"{CHROMIUM} is absent (install Debian's chromium to run the browser test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _settle(page) -> None:
    """Wait until the script run has finished (Streamlit's running indicator gone)."""
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=120_000)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)


def test_every_page_opens_without_an_exception(server, browser, tmp_path_factory):
    shots = Path(os.environ.get("RIVYA_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server, timeout=60_000)
    _settle(page)  # the first load seeds the demo database
    assert len(PAGES) == 11  # every page of app.py, User and Incidents included
    for path, title in PAGES:
        path = f"{path}?task=1" if path == "task_inspector" else path
        page.goto(f"{server}/{path}", timeout=60_000)
        _settle(page)
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


def _sign_in(page, user: str, password: str) -> None:
    page.get_by_role("textbox", name="User").fill(user)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_refuses_a_wrong_password_and_lets_an_operator_act(signed_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(signed_server, timeout=60_000)
    page.wait_for_selector("h1:has-text('Sign in')", timeout=120_000)
    assert page.locator("[data-testid='stMetric']").count() == 0  # nothing read before signing in
    _sign_in(page, "olga", "wrong")
    page.wait_for_selector("text=Unknown user or wrong password.", timeout=60_000)
    assert page.locator("h1").first.inner_text().strip() == "Sign in"
    _sign_in(page, "olga", "correct-horse")
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
    _settle(page)
    shown, settled = [], []
    for _ in range(5):
        page.get_by_role("link", name="Overview").first.click()
        page.wait_for_selector("h1:has-text('Overview')", timeout=60_000)
        _settle(page)
        recent = page.locator('[data-testid="stDataFrame"]').last
        recent.wait_for(timeout=60_000)
        seen = len(server.log_text())
        t0 = time.monotonic()
        _open_first_row(page, recent, "h2:has-text('Task #')")
        shown.append(time.monotonic() - t0)  # the task's header and status on screen
        _settle(page)
        settled.append(time.monotonic() - t0)  # the whole page drawn, the script run over
        assert "task_inspector?task=" in page.url
        assert len(context.pages) == 1  # no new tab
        assert "Traceback" not in server.log_text()[seen:]
    page.screenshot(path=str(tmp_path_factory.mktemp("nav") / "inspector_from_table.png"), full_page=True)
    for name, times in (("task header shown", shown), ("page settled", settled)):
        times.sort()
        print(f"\ntable -> inspector, {name} (s): median {times[len(times) // 2]:.2f}, "
              f"min {times[0]:.2f}, max {times[-1]:.2f} over {len(times)}")
    context.close()
