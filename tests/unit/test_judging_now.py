"""One rule for the moment ages are judged at: the Live tasks list, the inspector's checklist, the audit,
the recheck signals and the support actions (mark failed) all agree on whether a task is stuck.

The small known database (tests/dashboard/seed.py) records its last activity at 14:08 on 2026-04-01,
when task 4 (an image, WAITING) was created; an image counts as stuck after 5 minutes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from rivya_core import clock, queries, reports
from rivya_core.audit import audit
from rivya_core.db import make_engine
from rivya_core.diagnose import diagnose, recheck_signals
from rivya_core.domain import ActionRefused
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.rules import Verdict
from rivya_core.service import service_for_url
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
    assert got == {"reference": wall, "diagnose at": wall, "audit at": wall, "live says stuck": True,
                   "checklist says stuck": True, "signals say stuck": True, "mark failed allowed": True}


def test_an_idle_copy_is_judged_at_its_latest_activity_everywhere(seeded, monkeypatch):
    url, engine = seeded
    wall = LATEST + timedelta(days=4)  # a copy nobody wrote to for days: its own clock stopped at 14:08
    monkeypatch.setattr(clock, "wall_now", lambda: wall)
    got = _answers(url, engine)
    assert got == {"reference": LATEST, "diagnose at": LATEST, "audit at": LATEST, "live says stuck": False,
                   "checklist says stuck": False, "signals say stuck": False, "mark failed allowed": False}


def test_the_rule_names_its_reason():
    wall = datetime(2026, 4, 2, 9, 0)
    live = clock.judging_now(wall - timedelta(minutes=3), wall)
    idle = clock.judging_now(wall - timedelta(days=2), wall)
    ahead = clock.judging_now(wall + timedelta(hours=1), wall)
    empty = clock.judging_now(None, wall)
    assert (live.at, idle.at, ahead.at, empty.at) == (wall, wall - timedelta(days=2), wall + timedelta(hours=1), wall)
    assert "wall clock" in live.why and "latest activity" in idle.why and "latest activity" in ahead.why
    assert idle.caption().startswith("Ages judged at 2026-03-31 09:00:00 UTC (")
