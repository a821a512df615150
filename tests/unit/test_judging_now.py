"""One rule for the moment ages are judged at: the Live tasks list, the inspector's checklist, the audit,
the recheck signals and the support actions (mark failed) all agree on whether a task is stuck.

The small known database (tests/dashboard/seed.py) records its last activity at 14:08 on 2026-04-01,
when task 4 (an image, WAITING) was created; an image counts as stuck after 5 minutes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from rivya_core import clock
from rivya_core.audit import audit
from rivya_core.domain import ActionRefused
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.read import queries, reports
from rivya_core.read.diagnose import diagnose
from rivya_core.read.signals import recheck_signals
from rivya_core.stores.db import make_engine
from rivya_core.verdicts import Verdict
from rivya_core.wiring import service_for_url
from tests.dashboard.seed import seed

LATEST = datetime(2026, 4, 1, 14, 8)
TASK = 4


@pytest.fixture
def seeded(tmp_path):
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    seed(url)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def _answers(url, engine):
    """(judged at, stuck?) as each place sees task 4; the support action last (it records an event)."""
    ref = queries.reference_now(engine)
    live = reports.active_tasks(engine, now=ref.at, policy=DEFAULT_POLICY).set_index("id")
    diag = diagnose(engine, TASK, DEFAULT_POLICY)
    signals = recheck_signals(engine, 2, DEFAULT_POLICY)
    audited = audit(engine, DEFAULT_POLICY).now
    svc = service_for_url(url, policy=DEFAULT_POLICY)
    try:
        svc.support_mark_failed(TASK, "Dana", "user says it never started")
        marked = True
    except ActionRefused:
        marked = False
    finally:
        svc.store.engine.dispose()
    return {
        "reference": ref.at,
        "diagnose at": diag.now,
        "audit at": audited,
        "live says stuck": bool(live.loc[TASK, "stuck"]),
        "checklist says stuck": diag.verdict_code in (Verdict.STUCK, Verdict.STUCK_PAST_TIMEOUT),
        "signals say stuck": any(f"#{TASK}" in s.message for s in signals if s.kind == "in_progress_too_long"),
        "mark failed allowed": marked,
    }


def test_a_live_database_is_judged_at_the_wall_clock_everywhere(seeded, monkeypatch):
    url, engine = seeded
    wall = LATEST + timedelta(minutes=22)  # the database is live; task 4 has waited 22 minutes
    monkeypatch.setattr(clock, "wall_now", lambda: wall)
    got = _answers(url, engine)
    assert got == {
        "reference": wall,
        "diagnose at": wall,
        "audit at": wall,
        "live says stuck": True,
        "checklist says stuck": True,
        "signals say stuck": True,
        "mark failed allowed": True,
    }


def test_an_idle_copy_is_judged_at_its_latest_activity_everywhere(seeded, monkeypatch):
    url, engine = seeded
    wall = LATEST + timedelta(days=4)  # a copy nobody wrote to for days: its own clock stopped at 14:08
    monkeypatch.setattr(clock, "wall_now", lambda: wall)
    got = _answers(url, engine)
    assert got == {
        "reference": LATEST,
        "diagnose at": LATEST,
        "audit at": LATEST,
        "live says stuck": False,
        "checklist says stuck": False,
        "signals say stuck": False,
        "mark failed allowed": False,
    }


def test_the_rule_names_its_reason():
    wall = datetime(2026, 4, 2, 9, 0)
    live = clock.judging_now(wall - timedelta(minutes=3), wall)
    idle = clock.judging_now(wall - timedelta(days=2), wall)
    ahead = clock.judging_now(wall + timedelta(hours=1), wall)
    empty = clock.judging_now(None, wall)
    assert (live.at, idle.at, ahead.at, empty.at) == (wall, wall - timedelta(days=2), wall + timedelta(hours=1), wall)
    assert "wall clock" in live.why and "latest activity" in idle.why and "latest activity" in ahead.why
    assert idle.caption().startswith("Ages judged at 2026-03-31 09:00:00 UTC (")


# --- the time of an operator's act -----------------------------------------------------------

POLL_AT = LATEST + timedelta(minutes=10)


def _poll_then_older_rows_written_later(engine):
    """Task 3 is polled at POLL_AT; afterwards rows stamped earlier get higher ids (a simulation's
    writer drains tasks in eviction order, not in time order)."""
    from sqlalchemy import insert

    from rivya_core.stores import schema

    with engine.begin() as conn:
        conn.execute(insert(schema.task_event).values(task_id=3, at=POLL_AT, kind="poll", detail={"state": "running"}))
        conn.execute(
            insert(schema.task_event).values(task_id=1, at=LATEST - timedelta(hours=2), kind="notified", detail={})
        )
        conn.execute(
            insert(schema.credit_ledger).values(
                user_id=2,
                entry_type="grant",
                amount=5,
                balance_after=155,
                idempotency_key="g-late",
                created_at=LATEST - timedelta(hours=2),
            )
        )


def _events(engine, task_id):
    return queries.task_detail(engine, task_id)["events"]


def test_after_a_poll_at_t_acts_ages_and_incidents_are_at_t_or_later(seeded, monkeypatch):
    from rivya_core.read import incidents
    from rivya_core.stores.schema import incident
    from rivya_core.support import bulk

    url, engine = seeded
    _poll_then_older_rows_written_later(engine)
    monkeypatch.setattr(clock, "wall_now", lambda: LATEST + timedelta(days=4))  # an idle copy
    assert queries.reference_now(engine).at >= POLL_AT  # "Ages judged at"
    svc = service_for_url(url, policy=DEFAULT_POLICY)
    try:
        svc.support_mark_failed(3, "Dana", "upstream lost the job")
        after = [e for e in _events(engine, 3) if e["at"] is not None]
        assert [e["at"] for e in after] == sorted(e["at"] for e in after)  # the timeline never goes back
        assert {e["kind"]: e["at"] for e in after}["support_action"] >= POLL_AT
        result = bulk.execute(
            svc,
            svc.store.engine,
            "mark-failed",
            incidents.BulkFilter(status=("WAITING",)),
            operator="Dana",
            reason="crash leftovers",
            name="waiting 14:08",
        )
        assert result.acted == 1
        with engine.connect() as conn:
            created, finished = conn.execute(incident.select()).first()._mapping["created_at"], None
            finished = conn.execute(incident.select()).first()._mapping["finished_at"]
        assert POLL_AT <= created <= finished
        assert all(e["at"] >= POLL_AT for e in _events(engine, 4) if e["kind"] == "support_action")
    finally:
        svc.store.engine.dispose()


def test_an_act_on_a_database_ahead_of_the_wall_clock_is_not_stamped_before_its_rows(seeded, monkeypatch):
    url, engine = seeded
    monkeypatch.setattr(clock, "wall_now", lambda: LATEST - timedelta(hours=1))  # this machine's clock is behind
    svc = service_for_url(url, policy=DEFAULT_POLICY)
    try:
        with pytest.raises(ActionRefused):  # task 4 was created at LATEST: judged there, not stuck yet
            svc.support_mark_failed(TASK, "Dana", "user says it never started")
    finally:
        svc.store.engine.dispose()
    [act] = [e for e in _events(engine, TASK) if e["kind"] == "support_action"]
    assert act["at"] >= LATEST


def test_the_act_rule():
    judged = datetime(2026, 4, 2, 9, 0)
    assert clock.act_time(judged) == judged
    assert clock.act_time(judged, judged - timedelta(minutes=1)) == judged
    assert clock.act_time(judged, judged + timedelta(minutes=1)) == judged + timedelta(minutes=1)
