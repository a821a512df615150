"""Clocks for the Clock port: wall time for live use, a manual clock for tests.

Both give naive UTC datetimes. The simulation's SimPy clock lives in
simulations/ (the core knows no SimPy). Nothing is scheduled through a clock:
the service records when a task is due for a check (`next_check_at`) and the
polling sweep acts on it, so a deferral survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# A database with nothing recorded for this long is a simulation or an idle copy: its clock stopped.
STOPPED_AFTER = timedelta(days=1)


def wall_now() -> datetime:
    """The wall clock as naive UTC: what live code reads (call it through the module, so tests can pin it)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class JudgedAt:
    """The moment ages are judged at, why that one, and whether it is the wall clock (live)."""

    at: datetime
    why: str
    live: bool

    def caption(self) -> str:
        return f"Ages judged at {self.at:%Y-%m-%d %H:%M:%S} UTC ({self.why})"


def judging_now(latest: datetime | None, wall: datetime) -> JudgedAt:
    """THE rule for "now" when judging ages (stuck, past timeout, not settled, mark-failed):
    the wall clock for a live database; the database's latest recorded activity when its clock
    stopped (nothing recorded for STOPPED_AFTER: a simulation run or an idle copy) or runs ahead
    of the wall clock. Every page, report and support action goes through it
    (queries.reference_now reads `latest` from a database)."""
    if latest is None:
        return JudgedAt(wall, "wall clock: the database has recorded nothing yet", True)
    if latest > wall:
        return JudgedAt(latest, "latest activity in the database, which runs ahead of the wall clock", False)
    if wall - latest > STOPPED_AFTER:
        return JudgedAt(
            latest,
            "latest activity in the database: nothing recorded for over a day, "
            "so its clock stopped there (a simulation or an idle copy)",
            False,
        )
    return JudgedAt(wall, "wall clock: the database is live", True)


def act_time(judged: datetime, latest: datetime | None = None) -> datetime:
    """THE rule for when an operator's act (a support action, an incident) is recorded: at the
    moment ages are judged at (`judging_now`: the wall clock on a live database; on one whose clock
    stopped or runs ahead, its latest recorded time), and never before `latest`, the newest moment
    recorded for what it acts on (the task's latest event; for an incident, the database's), so a
    task's timeline never goes backwards. A simulation database or an idle copy is acted on at its
    own latest time, not at the wall clock: the wall clock would move its clock months ahead at
    the first act, and every task still running in it would turn past its timeout."""
    return max(judged, latest) if latest is not None else judged


class WallClock:
    def now(self) -> datetime:
        return wall_now()


class ManualClock:
    """Time moves only when a test (or a pinned support session) says so."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, 12, 0, 0)):
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
