"""Clocks for the Clock port: wall time for live use, a manual clock for tests.

Both give naive UTC datetimes. The simulation's SimPy clock lives in
simulations/ (the core knows no SimPy). Nothing is scheduled through a clock:
the service records when a task is due for a check (`next_check_at`) and the
polling sweep acts on it, so a deferral survives a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def wall_now() -> datetime:
    """The wall clock as naive UTC: what live code reads (call it through the module, so tests can pin it)."""
    return datetime.now(UTC).replace(tzinfo=None)


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
