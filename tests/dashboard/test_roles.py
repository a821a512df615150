"""Viewers read, operators act: every control that writes (support actions, "Run the audit now",
simulation runs, realtime runs, cleaning up runs) is drawn only for an operator, and an operator's
audit run is stored."""

from __future__ import annotations

import pytest

from tests.dashboard.conftest import texts

VIEWER = {"user": "vera", "role": "viewer"}
OPERATOR = {"user": "olga", "role": "operator"}


@pytest.fixture
def signed(monkeypatch, open_page):
    monkeypatch.setenv("RIVYA_VIEWERS", "vera:pw1")
    monkeypatch.setenv("RIVYA_OPERATORS", "olga:pw2")
    return open_page


def _labels(at) -> list[str]:
    return [b.label for b in at.button]


def _audit_runs(url: str) -> int:
    from sqlalchemy import func, inspect, select

    from rivya_core import db
    from rivya_core.schema import audit_run

    engine = db.open_reader(url)
    try:
        if not inspect(engine).has_table(audit_run.name):
            return 0
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(audit_run))
    finally:
        engine.dispose()


def test_a_viewer_cannot_run_the_audit(signed, seeded_url):
    at = signed(seeded_url, "pages/refund_audit.py", session=VIEWER)
    assert not at.exception
    assert "Run the audit now" not in _labels(at)
    assert "needs the operator role" in "\n".join(c.value for c in at.caption)
    assert _audit_runs(seeded_url) == 0


def test_an_operator_runs_the_audit_and_it_is_stored(signed, seeded_url):
    at = signed(seeded_url, "pages/refund_audit.py", session=OPERATOR)
    assert not at.exception
    next(b for b in at.button if b.label == "Run the audit now").click().run()
    assert not at.exception, texts(at)
    assert _audit_runs(seeded_url) == 1


def test_an_audit_run_that_cannot_be_stored_is_one_message_and_the_page_still_shows(signed, seeded_url):
    import sqlite3

    from rivya_core import db
    from rivya_core.schema import audit_run

    engine = db.make_engine(seeded_url)
    audit_run.create(engine, checkfirst=True)
    engine.dispose()
    conn = sqlite3.connect(seeded_url.removeprefix("sqlite:///"))
    conn.execute("CREATE TRIGGER keep_out BEFORE INSERT ON audit_run BEGIN SELECT RAISE(ABORT, 'no audits here'); END")
    conn.commit()
    conn.close()
    at = signed(seeded_url, "pages/refund_audit.py", session=OPERATOR)
    next(b for b in at.button if b.label == "Run the audit now").click().run()
    assert not at.exception, texts(at)
    [error] = [e.value for e in at.error]
    assert "could not be stored" in error and "no audits here" in error and "\n" not in error
    assert any(m.label == "Findings" for m in at.metric)  # the rest of the page is still drawn
    assert _audit_runs(seeded_url) == 0
