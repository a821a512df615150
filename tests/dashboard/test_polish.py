"""The dashboard's rough edges, each pinned by a test: an idle Live tasks page, readable ages, credits that
add up, the sign-in gate on every page, the policy a database is judged with, reads that never queue
behind a writer, and every page on PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import streamlit as st
from sqlalchemy import update

from rivya_core.read import reports
from rivya_core.stores import db, schema
from tests.dashboard.conftest import PAGE_TITLES, metrics, pin_wall_clock, texts
from tests.dashboard.seed import T0, seed

ROOT = Path(__file__).resolve().parents[2]
ALL_PAGES = PAGE_TITLES  # every page of app.py


def shown_table(element):
    """What the user sees in a st.dataframe: the Styler's display values when it has them."""
    styler = element.proto.arrow_data.styler
    if styler.display_values:
        return pa.ipc.open_stream(styler.display_values).read_pandas()
    return element.value


def finish_active_tasks(url: str) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            update(schema.ai_task)
            .where(schema.ai_task.c.id.in_([3, 4]))
            .values(
                status="FAILED",
                error_code="timeout",
                failure_class="infrastructure",
                finished_at=schema.ai_task.c.created_at,
            )
        )
    engine.dispose()


# --- Live tasks -------------------------------------------------------------------------


def test_durations_read_like_people_write_them():
    assert reports.format_duration(118) == "1 min 58 s"
    assert reports.format_duration(42.4) == "42 s"
    assert reports.format_duration(120) == "2 min"
    assert reports.format_duration(7080) == "1 h 58 min"
    assert reports.format_duration(90061) == "1 d 1 h"
    assert reports.format_duration(None) == "—" and reports.format_duration(float("nan")) == "—"


def test_live_tasks_shows_ages_for_humans(open_page, seeded_url):
    at = open_page(seeded_url, "pages/live_tasks.py")
    assert not at.exception
    table = shown_table(at.dataframe[0])
    row = table[table["id"].astype(str) == "3"].iloc[0]
    assert row["age_s"] == "1 h 58 min"  # submitted at 12:10, latest activity 14:08
    assert row["stuck_after_s"].endswith(("min", "s", "h"))
    waiting = table[table["id"].astype(str) == "4"].iloc[0]
    assert waiting["upstream_task_id"] == "—"  # a waiting task has no upstream id yet: a dash, not "None"


def test_live_ages_use_the_wall_clock_while_the_database_is_live(open_page, seeded_url, monkeypatch):
    pin_wall_clock(monkeypatch, T0 + timedelta(hours=3))  # 15:00, less than a day after the last event (14:08)
    at = open_page(seeded_url, "pages/live_tasks.py")
    assert not at.exception
    assert "Ages judged at 2026-04-01 15:00:00 UTC (wall clock: the database is live)" in texts(at)
    table = shown_table(at.dataframe[0])
    assert table[table["id"].astype(str) == "3"].iloc[0]["age_s"] == "2 h 50 min"  # submitted at 12:10


def test_event_details_read_as_a_sentence():
    assert reports.describe_detail({"outcome": "applied", "attempt": 2}) == "outcome: applied · attempt: 2"
    assert reports.describe_detail({"result_urls": ["a", "b"], "error_code": None}) == (
        "result urls: a, b · error code: —"
    )
    assert reports.describe_detail({}) == "—" and reports.describe_detail(None) == "—"


def test_idle_live_tasks_says_so_and_starts_a_realtime_demo(open_page, seeded_url, tmp_path, monkeypatch):
    finish_active_tasks(seeded_url)
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(tmp_path / "runs"))
    at = open_page(seeded_url, "pages/live_tasks.py")
    assert not at.exception
    assert "Nothing is running right now" in texts(at)
    button = next(b for b in at.button if b.label == "Start a realtime demo run")
    button.click().run()
    run = at.session_state["realtime_run"]
    try:
        assert not at.exception, [e.value for e in at.exception]
        made = list((tmp_path / "runs").glob("baseline-live-*.db"))
        assert len(made) == 1 and run["url"] == f"sqlite:///{made[0]}"
        assert at.session_state["db_url"] == run["url"]  # the dashboard now reads the run
        assert run["popen"].poll() in (None, 0)
        assert not db.missing_tables(db.make_engine(run["url"]))
        assert "Nothing is running right now" not in texts(at)
        from simulations.scenarios import load_scenario

        assert load_scenario(str(made[0].with_suffix(".scenario.toml"))) == load_scenario("baseline")
    finally:
        run["popen"].kill()
        run["popen"].wait()


# --- credits add up ------------------------------------------------------------------------


def test_credit_breakdown_adds_up_to_the_balance():
    by_type = {
        "grant": 100,
        "adjustment": 5,
        "consume": -30,
        "refund": 20,
        "chat_reserve": -12,
        "chat_refund": 4,
        "chat_charge": -1,
    }
    b = reports.credit_breakdown(by_type)
    # chat: 12 reserved + 1 overrun − 4 returned = 9 finally charged; reservations apart
    assert (
        b["granted"],
        b["task_charged"],
        b["task_refunded"],
        b["chat_charged"],
        b["chat_reserved"],
        b["chat_refunded"],
    ) == (105, 30, 20, 9, 12, 4)
    assert b["granted"] - b["task_charged"] + b["task_refunded"] - b["chat_charged"] == b["balance"] == 86
    assert b["other"] == 0
    assert reports.credit_breakdown({"grant": 10, "bonus": 3})["other"] == 3


def test_overview_credit_cards_add_up(open_page, seeded_url):
    m = {
        k: int(v.replace(",", ""))
        for k, v in metrics(open_page(seeded_url)).items()
        if k in ("Granted", "Charged for tasks", "Refunded for tasks", "Chat charged", "Left in balances")
    }
    assert m["Granted"] - m["Charged for tasks"] + m["Refunded for tasks"] - m["Chat charged"] == m["Left in balances"]


# --- every page goes through the gate ------------------------------------------------------


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_page_checks_sign_in_before_showing_anything(open_page, seeded_url, monkeypatch, page):
    monkeypatch.setenv("RIVYA_VIEWERS", "vera:pw1")
    at = open_page(seeded_url)
    at.switch_page(page).run()
    assert not at.exception
    assert "Sign in first" in texts(at)
    assert not at.title and not at.metric and not at.button


# --- the policy a database is judged with ----------------------------------------------------


def _record_run(url: str, policy_toml: str) -> None:
    from simulations.writer import write_sim_run

    engine = db.make_engine(url)
    toml = f"[scenario]\nseed = 7\ntasks = 4\n{policy_toml}"
    write_sim_run(
        engine,
        {
            "scenario_name": "frugal",
            "scenario_toml": toml,
            "seed": 7,
            "tasks": 4,
            "fingerprint": "f" * 64,
            "started_at": T0,
            "finished_at": T0,
            "summary": {},
        },
    )
    engine.dispose()


def test_refund_audit_judges_a_simulation_with_its_own_policy(open_page, seeded_url):
    at = open_page(seeded_url, "pages/refund_audit.py")
    assert "Failed after charge without refund — 1" in [e.label for e in at.expander]  # default policy
    _record_run(seeded_url, '[policy]\nname = "no_refunds"\nrefund_classes = []\n')
    st.cache_data.clear()  # what "Refresh data" in the sidebar does; the cache lives for 10 s otherwise
    at = open_page(seeded_url, "pages/refund_audit.py")
    assert not at.exception
    assert "Failed after charge without refund — 1" not in [e.label for e in at.expander]
    assert "recorded simulation run (scenario `frugal`, seed 7)" in texts(at)
    assert "`no_refunds`" in texts(at)


def test_overview_and_inspector_use_the_recorded_policy(open_page, seeded_url):
    _record_run(seeded_url, '[policy]\nname = "no_refunds"\nrefund_classes = []\n')
    at = open_page(seeded_url)
    assert "recorded simulation run" in texts(at)
    assert "violation" not in texts(at).replace("no violations", "")
    at = open_page(seeded_url, "pages/task_inspector.py", task="2")
    assert not at.exception
    assert "recorded simulation run" in texts(at)


def test_other_databases_use_rivya_policy(open_page, seeded_url, monkeypatch):
    monkeypatch.setenv("RIVYA_POLICY", str(ROOT / "data" / "policies" / "no_refunds.toml"))
    at = open_page(seeded_url, "pages/refund_audit.py")
    assert not at.exception
    assert "from RIVYA_POLICY" in texts(at)
    assert "Failed after charge without refund — 1" not in [e.label for e in at.expander]


def test_an_unfinished_realtime_run_is_judged_with_its_scenario_policy(open_page, seeded_url):
    sidecar = db.sqlite_path(seeded_url).with_suffix(".scenario.toml")
    sidecar.write_text('[scenario]\nname = "frugal"\ntasks = 4\n[policy]\nname = "no_refunds"\nrefund_classes = []\n')
    at = open_page(seeded_url, "pages/refund_audit.py")
    assert not at.exception
    assert "scenario `frugal` (a realtime run still writing" in texts(at)
    assert "Failed after charge without refund — 1" not in [e.label for e in at.expander]


def test_default_policy_is_named(open_page, seeded_url):
    at = open_page(seeded_url, "pages/refund_audit.py")
    assert "the default policy" in texts(at)


# --- reads never queue behind a writer -------------------------------------------------------


def test_pages_read_while_a_writer_holds_the_sqlite_write_lock(open_page, seeded_url):
    writer = sqlite3.connect(db.sqlite_path(seeded_url), isolation_level=None, timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")  # what a realtime simulation's transactions do
    writer.execute("UPDATE account SET name = name WHERE id = 1")
    try:
        at = open_page(seeded_url, "pages/live_tasks.py")
        assert not at.exception, [e.value for e in at.exception]
        assert metrics(at)["Generating"] == "1"
        at.switch_page("pages/overview.py").run()
        assert not at.exception and metrics(at)["All tasks"] == "4"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_seeded(pg_url):
    seed(pg_url)
    return pg_url


def test_throughput_buckets_on_postgresql(pg_seeded):
    engine = db.make_engine(pg_seeded)
    try:
        flow = reports.throughput(engine)
    finally:
        engine.dispose()
    assert [(str(b), s, n) for b, s, n in flow[["bucket", "status", "tasks"]].itertuples(index=False)] == [
        ("2026-04-01 12:02:00", "SUCCESS", 1),
        ("2026-04-01 12:07:00", "FAILED", 1),
    ]


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_page_on_postgresql(open_page, pg_seeded, page):
    at = open_page(pg_seeded, page)
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == ALL_PAGES[page]
    assert "Cannot read this database" not in texts(at)
    if page == "pages/overview.py":
        m = metrics(at)
        assert (m["All tasks"], m["Charged for tasks"], m["Left in balances"]) == ("4", "70", "230")
        assert len(at.get("plotly_chart")) == 1  # the throughput chart, bucketed by date_trunc
    if page == "pages/live_tasks.py":
        assert metrics(at)["Stuck (in this view)"] == "1"


def test_tables_show_a_dash_for_missing_text(open_page, seeded_url):
    at = open_page(seeded_url)
    recent = next(d.value for d in at.dataframe if "error_code" in d.value.columns and "model" in d.value.columns)
    codes = recent.set_index("id")["error_code"]
    assert codes[1] == "—" and codes[2] == "provider_error"


def test_live_filters_offer_the_catalogue_before_any_task_runs(empty_url):
    engine = db.make_engine(empty_url)
    try:
        options = reports.filter_options(engine)
    finally:
        engine.dispose()
    assert {"image", "video", "audio", "chat"} <= set(options["category"])
    assert options["model"] and options["provider"]
