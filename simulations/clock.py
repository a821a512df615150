"""The SimPy clock: rivya_core.ports.Clock over a SimPy environment.

`now()` is a fixed epoch plus `env.now` seconds (naive UTC), so the same run
writes the same timestamps every time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import simpy

EPOCH = datetime(2026, 4, 28, 0, 0, 0)


class SimClock:
    def __init__(self, env: simpy.Environment, epoch: datetime = EPOCH):
        self.env = env
        self.epoch = epoch
        self._epoch_ts = int((epoch - datetime(1970, 1, 1)).total_seconds())
        self._at: float | None = None  # the SimPy time now() last converted, and its datetime
        self._now = epoch

    def now(self) -> datetime:
        t = self.env.now
        if t != self._at:  # a SimPy step calls now() many times: convert once per simulated instant
            self._at, self._now = t, self.epoch + timedelta(seconds=round(t, 6))
        return self._now

    def timestamp(self) -> int:
        """Unix seconds of now(), as webhook timestamps carry it."""
        return self._epoch_ts + int(self.env.now)

    def at(self, sim_s: float) -> datetime:
        return self.epoch + timedelta(seconds=round(sim_s, 6))
