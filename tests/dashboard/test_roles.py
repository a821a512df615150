"""Viewers read, operators act: every control that writes (support actions, "Run the audit now",
simulation runs, realtime runs, cleaning up runs) is drawn only for an operator, and an operator's
audit run is stored."""

from __future__ import annotations

import pytest

from tests.dashboard.conftest import audit_runs, texts

VIEWER = {"user": "vera", "role": "viewer"}
OPERATOR = {"user": "olga", "role": "operator"}


@pytest.fixture
def signed(monkeypatch, open_page):
    monkeypatch.setenv("RIVYA_VIEWERS", "vera:pw1")
    monkeypatch.setenv("RIVYA_OPERATORS", "olga:pw2")
    return open_page


def _labels(at) -> list[str]:
    return [b.label for b in at.button]


def test_a_viewer_cannot_run_the_audit(signed, seeded_url):
    at = signed(seeded_url, "pages/refund_audit.py", session=VIEWER)
    assert not at.exception
    assert "Run the audit now" not in _labels(at)
    assert "needs the operator role" in "\n".join(c.value for c in at.caption)
    assert audit_runs(seeded_url) == 0


def test_an_operator_runs_the_audit_and_it_is_stored(signed, seeded_url):
    at = signed(seeded_url, "pages/refund_audit.py", session=OPERATOR)
    assert not at.exception
    next(b for b in at.button if b.label == "Run the audit now").click().run()
    assert not at.exception, texts(at)
    assert audit_runs(seeded_url) == 1


def test_an_audit_run_that_cannot_be_stored_is_one_message_and_the_page_still_shows(signed, seeded_url):
    import sqlite3

    from rivya_core.stores import db
    from rivya_core.stores.schema import audit_run

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
    assert audit_runs(seeded_url) == 0


# --- which databases a session may read ---------------------------------------------------------


def _all_tasks(at) -> str:
    return {m.label: m.value for m in at.metric}["All tasks"]


def _source_options(at) -> list[str]:
    return list(at.selectbox(key="ds_choice").options)


@pytest.mark.parametrize("session", [VIEWER, OPERATOR])
def test_signed_in_users_cannot_read_a_database_outside_the_offered_sources(signed, seeded_url, empty_url, session):
    at = signed(seeded_url, session=session, db=empty_url)  # ?db= names a file outside data/
    assert not at.exception
    assert _all_tasks(at) == "4"  # the default database, not the one asked for
    assert "Reading the default database instead" in texts(at)
    assert "Another SQLAlchemy URL…" not in _source_options(at)


def test_an_operator_may_type_a_url_only_when_allowed(signed, monkeypatch, seeded_url, empty_url):
    monkeypatch.setenv("RIVYA_ALLOW_ANY_URL", "1")
    at = signed(seeded_url, session=OPERATOR, db=empty_url)
    assert _all_tasks(at) == "0" and "Another SQLAlchemy URL…" in _source_options(at)
    at = signed(seeded_url, session=VIEWER, db=empty_url)
    assert _all_tasks(at) == "4" and "Another SQLAlchemy URL…" not in _source_options(at)


def test_a_viewer_reads_a_configured_source(signed, monkeypatch, seeded_url, empty_url):
    monkeypatch.setenv("RIVYA_DATA_SOURCES", f'{{"team": "{empty_url}"}}')
    at = signed(seeded_url, session=VIEWER)
    assert "Source: team" in _source_options(at)
    at = signed(seeded_url, session=VIEWER, db="team")
    assert _all_tasks(at) == "0"
    at = signed(seeded_url, session=VIEWER, db=empty_url)  # the same URL, typed: it is configured
    assert _all_tasks(at) == "0"


def test_open_mode_reads_any_database_and_says_it_is_local_only(open_page, seeded_url, empty_url):
    at = open_page(seeded_url, db=empty_url)
    assert _all_tasks(at) == "0" and "Another SQLAlchemy URL…" in _source_options(at)
    assert "serve this dashboard on localhost only" in "\n".join(c.value for c in at.sidebar.caption)


# --- simulations: operators only, within quotas -------------------------------------------------

WRITING_BUTTONS = {
    "Run in the background",
    "Start realtime run",
    "Compare in the background",
    "Sweep in the background",
    "Backtest in the background",
    "Delete older runs",
    "Start a realtime demo run",
}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    folder = tmp_path / "runs"
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(folder))
    return folder


def test_a_viewer_gets_no_control_that_runs_a_simulation(signed, empty_url, runs):
    lab = signed(empty_url, "pages/simulation_lab.py", session=VIEWER)
    live = signed(empty_url, "pages/live_tasks.py", session=VIEWER)  # nothing active: the demo offer
    for at in (lab, live):
        assert not at.exception
        assert WRITING_BUTTONS.isdisjoint(_labels(at)), _labels(at)
        assert "needs the operator role" in "\n".join(c.value for c in at.caption)
    assert not runs.exists() or not list(runs.glob("*.db"))


def test_an_operator_sees_them(signed, empty_url, runs):
    lab = signed(empty_url, "pages/simulation_lab.py", session=OPERATOR)
    live = signed(empty_url, "pages/live_tasks.py", session=OPERATOR)
    assert WRITING_BUTTONS - {"Start a realtime demo run"} <= set(_labels(lab))
    assert "Start a realtime demo run" in _labels(live)


def test_an_operator_run_over_the_task_quota_is_refused_and_writes_nothing(signed, monkeypatch, empty_url, runs):
    monkeypatch.setenv("RIVYA_QUOTA_TASKS", "100")
    at = signed(empty_url, "pages/simulation_lab.py", session=OPERATOR)
    assert at.number_input[0].value > 100  # the scenario's own size
    next(b for b in at.button if b.label == "Run in the background").click().run()
    assert not at.exception
    assert "quota of 100 arrivals per run" in texts(at)
    assert not list(runs.glob("*.db")) and not list(runs.glob("jobs/*.log"))  # no job was started
    next(b for b in at.button if b.label == "Start realtime run").click().run()
    assert "quota of 100 arrivals per run" in texts(at)
    assert not list(runs.glob("*.db")) and not list(runs.glob("*.toml"))


def test_a_viewers_visit_does_not_seed_the_demo_database(signed, monkeypatch, tmp_path):
    monkeypatch.setenv("RIVYA_DEMO", "1")
    absent = tmp_path / "absent.db"
    at = signed(f"sqlite:///{absent}", session=VIEWER)
    assert not at.exception
    assert not absent.exists()
