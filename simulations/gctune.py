"""The garbage collector's pace during a simulation run.

A run allocates a few dozen short-lived objects per task (rows, event details,
SimPy events) and keeps many long-lived ones (every row of the in-memory store
until it is written and evicted). With CPython's default thresholds (700, 10,
10) the collector ran ~1,000 young and ~90 middle collections per 20,000 tasks,
each walking the objects just created, and a handful of full ones: ~20% of a
run's CPU. Nearly all of it is acyclic and freed by reference counting, so
`run_pace()` collects less often during `env.run` (every 50,000 net
allocations) and restores the previous thresholds afterwards. Peak memory did
not change measurably (the history of BENCHMARKS.md, in git).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

RUN_THRESHOLDS = (50_000, 20, 100)


@contextmanager
def run_pace() -> Iterator[None]:
    old = gc.get_threshold()
    gc.set_threshold(*RUN_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)
