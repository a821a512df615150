"""Dashboard test fixtures: an empty database, the small seeded one, a bad URL, and an AppTest runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from rivya_core import db
from tests.dashboard.seed import seed

APP = Path(__file__).resolve().parents[2] / "app.py"


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
    """open_page(url, page, session=None, **query) -> AppTest that ran app.py and then `page` against `url`."""
    monkeypatch.setenv("RIVYA_DEMO", "0")
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


def texts(at: AppTest) -> str:
    """Every text-bearing element of the page, joined, for `in` assertions."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)
