"""Clocks for the Clock port: wall time for live use, a manual clock for tests.

Both give naive UTC datetimes. The simulation's SimPy clock lives in
simulations/ (the core knows no SimPy).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(max(0.0, delay_s), fn, args)
        timer.daemon = True
        timer.start()


class ManualClock:
    """Time moves only when a test says so; due calls run in time order."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, 12, 0, 0)):
        self._now = start
        self._queue: list[tuple[datetime, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (self._now + timedelta(seconds=delay_s), next(self._seq), fn, args))

    def advance(self, seconds: float) -> None:
        until = self._now + timedelta(seconds=seconds)
        while self._queue and self._queue[0][0] <= until:
            at, _, fn, args = heapq.heappop(self._queue)
            self._now = max(self._now, at)
            fn(*args)
        self._now = until
