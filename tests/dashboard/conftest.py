"""Dashboard test fixtures: an empty database, the small seeded one, a bad URL, and an AppTest runner."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from rivya_core import clock, db
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


def pin_wall_clock(monkeypatch, at) -> None:
    monkeypatch.setattr(clock, "wall_now", lambda: at)


def texts(at: AppTest) -> str:
    """Every text-bearing element of the page, joined, for `in` assertions."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)
