"""Dashboard test fixtures: an empty database, the small seeded one, a bad URL, an AppTest runner;
readers of what pages wrote; and for the browser tests, the app served on a free port and one
headless Chromium per module."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from rivya_core import clock
from rivya_core.stores import db
from tests.conftest import skip_or_fail_in_ci
from tests.dashboard.seed import T0, seed

APP = Path(__file__).resolve().parents[2] / "app.py"
WALL_NOW = T0 + timedelta(days=30)  # the wall clock pages see: long after the seeded activity


@pytest.fixture
def empty_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    engine.dispose()
    return url


@pytest.fixture
def seeded_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    seed(url)
    return url


@pytest.fixture
def open_page(monkeypatch):
    """open_page(url, page, session=None, **query) -> AppTest that ran app.py and then `page` against `url`,
    with the wall clock pinned at WALL_NOW (a test may pin it elsewhere with `pin_wall_clock`)."""
    monkeypatch.setenv("RIVYA_DEMO", "0")
    pin_wall_clock(monkeypatch, WALL_NOW)
    monkeypatch.delenv("RIVYA_OPERATORS", raising=False)
    monkeypatch.delenv("RIVYA_VIEWERS", raising=False)

    def _open(url: str, page: str | None = None, session: dict | None = None, **query: str) -> AppTest:
        monkeypatch.setenv("RIVYA_DB_URL", url)
        at = AppTest.from_file(str(APP), default_timeout=60)
        for key, value in (session or {}).items():
            at.session_state[key] = value
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        if page:
            at.switch_page(page).run()
        return at

    return _open


def _app_page_rows() -> list[tuple[str, str]]:
    """(file, title) of every page in app.py's PAGES, read from its source (importing app.py runs it)."""
    tree = ast.parse(APP.read_text(encoding="utf-8"))
    rows = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PAGES" for t in node.targets)
    )
    return [(path, title) for path, title, *_rest in rows]


PAGE_TITLES = dict(_app_page_rows())  # page file -> the title it shows, for every page of app.py


def app_pages() -> list[tuple[str, str]]:
    """(URL path, title) of every page of app.py, in its order (the first is served at "")."""
    return [("" if i == 0 else Path(path).stem, title) for i, (path, title) in enumerate(PAGE_TITLES.items())]


def metrics(at: AppTest) -> dict[str, str]:
    """The page's st.metric values by label."""
    return {m.label: m.value for m in at.metric}


def pin_wall_clock(monkeypatch, at) -> None:
    monkeypatch.setattr(clock, "wall_now", lambda: at)


def texts(at: AppTest) -> str:
    """Every text-bearing element of the page, joined, for `in` assertions."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


# --- reading what pages wrote -------------------------------------------------------------


def support_events(url: str) -> list[tuple[int, dict]]:
    """(task id, detail) of every support_action event, in id order."""
    from sqlalchemy import select

    from rivya_core.stores import schema

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(schema.task_event.c.task_id, schema.task_event.c.detail)
                .where(schema.task_event.c.kind == "support_action")
                .order_by(schema.task_event.c.id)
            ).all()
    finally:
        engine.dispose()
    return [(r.task_id, r.detail) for r in rows]


def audit_runs(url: str) -> int:
    """How many audit runs the database holds (0 when it has no audit_run table)."""
    from sqlalchemy import func, inspect, select

    from rivya_core.stores.schema import audit_run

    engine = db.open_reader(url)
    try:
        if not inspect(engine).has_table(audit_run.name):
            return 0
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(audit_run))
    finally:
        engine.dispose()


# --- the app served, in headless Chromium --------------------------------------------------

ROOT = APP.parent
CHROMIUM = Path("/usr/bin/chromium")


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


def serve(env_extra: dict[str, str], log: Path | None = None) -> Iterator[Served]:
    """`streamlit run app.py` on a free port with env_extra (access control off unless it names
    users); yields the base URL (a Served, whose .log is the server's output), stops it afterwards."""
    from simulations.live import free_port, stop_process

    port = free_port()
    if log is None:
        import tempfile

        log = Path(tempfile.mkdtemp(prefix="rivya-streamlit-")) / "server.log"
    out = open(log, "wb")
    env = {**os.environ, **env_extra}
    for key in ("RIVYA_OPERATORS", "RIVYA_VIEWERS"):
        if key not in env_extra:
            env.pop(key, None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = Served(f"http://127.0.0.1:{port}")
    base.log = log
    try:
        _wait_healthy(base, proc)
        yield base
    finally:
        stop_process(proc)
        out.close()


@pytest.fixture(scope="module")
def seeded_server(tmp_path_factory):
    """(served app, database URL): the small known database, access control off, no demo data."""
    tmp = tmp_path_factory.mktemp("seeded-app")
    url = f"sqlite:///{tmp / 'seeded.db'}"
    seed(url)
    for served in serve({"RIVYA_DB_URL": url, "RIVYA_DEMO": "0"}, tmp / "server.log"):
        yield served, url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), one per test module."""
    if not CHROMIUM.exists():
        skip_or_fail_in_ci(f"{CHROMIUM} is absent (install Debian's chromium to run the browser tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def settle(page) -> None:
    """Wait until the script run has finished: the app says its script is not running (a widget
    change marks it `rerunRequested` at once, before the running indicator shows) and the running
    indicator is gone."""
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=120_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)


def choose(page, label: str, option: str, *, exact: bool = True, timeout_s: float = 90) -> None:
    """Pick `option` in the Streamlit selectbox labelled `label`. A click on a box that a rerun is
    redrawing opens nothing, or the options it had before; so settle, open, and when the option is
    not offered within a few seconds close the list and try again, until `timeout_s`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_s
    while True:
        settle(page)
        page.get_by_role("combobox", name=label, exact=True).click()
        offered = (
            page.get_by_role("option", name=option, exact=True)
            if exact
            else page.get_by_role("option").filter(has_text=option)
        )
        try:
            offered.first.click(timeout=5_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
            page.keyboard.press("Escape")


def open_settled(browser, url: str, height: int = 1000):
    """A new page of `browser` on `url`, once the script run has finished."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url, timeout=60_000)
    settle(page)
    return page


def sign_in(page, user: str, password: str) -> None:
    page.get_by_role("textbox", name="User").fill(user)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
