"""Simulated users reading their notifications.

Each notification is read after a delay drawn from a log-normal distribution
(median and spread from the scenario's `[behaviour]`), or never, with the
scenario's share of notifications nobody opens. The draws for one notification
come from a Random keyed by its task (or, without one, its id), derived from
the run's seed, so they do not depend on flush timing or on other tasks: the
same scenario and seed give the same `read_at` values, batch or realtime.

A read is written once the run's clock has passed it; reads still in the future
when the run ends stay unread, as they would in a live system.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from datetime import datetime, timedelta
from typing import Any

from .streams import Streams


class NotificationReads:
    def __init__(self, streams: Streams, never: float, median_s: float, spread: float):
        self.streams = streams
        self.never = float(never)
        self.mu = math.log(max(float(median_s), 1e-3))
        self.sigma = max(float(spread), 0.0)
        self._due: list[tuple[datetime, int]] = []
        self.digest = 0  # order-independent sum of the applied reads' hashes (the run's fingerprint)
        self.read = 0

    @classmethod
    def for_behaviour(cls, streams: Streams, behaviour: Any) -> NotificationReads:
        return cls(streams, behaviour.read_never, behaviour.read_median_s, behaviour.read_spread)

    def schedule(self, row: dict[str, Any]) -> None:
        """A notification row just written: draw when (whether) its user reads it."""
        key = f"task:{row['task_id']}" if row.get("task_id") is not None else f"id:{row['id']}"
        rng = self.streams.keyed("notification_read", key)
        if rng.random() < self.never:
            return
        delay = min(rng.lognormvariate(self.mu, self.sigma), 30 * 86400.0)
        at = row["created_at"] + timedelta(microseconds=round(delay * 1e6))
        heapq.heappush(self._due, (at, row["id"]))

    def due(self, now: datetime) -> list[dict[str, Any]]:
        """The reads that happened by `now`, as update parameters; each is returned once."""
        out = []
        while self._due and self._due[0][0] <= now:
            at, nid = heapq.heappop(self._due)
            out.append({"_id": nid, "_read_at": at})
            h = hashlib.sha256(f"{nid}:{at.isoformat()}".encode()).digest()
            self.digest = (self.digest + int.from_bytes(h, "big")) % (1 << 256)
        self.read += len(out)
        return out
