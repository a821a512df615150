"""Number ranges: the one definition of what every number read from a command
line, a scenario file or a policy file may be.

Each kind of number has a Limit (inclusive range, whole or not). `check` returns
the value or raises LimitError with one line naming where it came from (file and
key, or the option) and the range. The "Number ranges" table of docs/simulations.md lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .domain import ValidationError

MAX_INT64 = 2**63 - 1
DAY_S = 86_400.0
YEAR_S = 365 * DAY_S
# A run wakes its poller and monitor once per poll tick; the ticks a run may need
# (its horizon or last script step, plus the longest policy timeout, divided by the
# tick) are capped so that no scenario can make a run tick for ever.
MAX_RUN_TICKS = 20_000_000
# --at and other moments read from a command line (naive UTC)
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(2999, 12, 31)


class LimitError(ValidationError):
    code = "out_of_range"


@dataclass(frozen=True)
class Limit:
    low: float
    high: float
    whole: bool = False
    above_low: bool = False  # low itself is excluded (a positive number)

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        low = f"above {_fmt(self.low)}" if self.above_low else f"from {_fmt(self.low)}"
        return f"{kind} {low} to {_fmt(self.high)}"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.whole and (not isinstance(value, int) and not (math.isfinite(value) and value == int(value))):
            return False
        if not math.isfinite(value):
            return False
        if value < self.low or (self.above_low and value == self.low):
            return False
        return value <= self.high

    def check(self, value: Any, where: str) -> Any:
        """value (as int for a whole Limit), or LimitError: '<where>: must be <range>, not <value>'."""
        if not self.ok(value):
            raise LimitError(f"{where}: must be {self.describe()}, not {_show(value)}")
        return int(value) if self.whole else float(value)


def _fmt(x: float) -> str:
    if float(x).is_integer():
        return f"{int(x):,}".replace(",", "_") if abs(x) >= 10_000 else str(int(x))
    return repr(x)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


LIMITS: dict[str, Limit] = {
    # command lines
    "id": Limit(1, MAX_INT64, whole=True),  # task, message, account ids
    "seed": Limit(0, MAX_INT64, whole=True),
    "tasks": Limit(1, 10_000_000, whole=True),  # tasks in one run (--tasks)
    "grace_s": Limit(0, 10 * YEAR_S),  # recover --grace
    "realtime": Limit(0, 1e6, above_low=True),  # simulated seconds per wall second
    "replications": Limit(1, 1000, whole=True),
    "workers": Limit(1, 256, whole=True),
    "seeds": Limit(1, 100_000, whole=True),  # chaos --seeds
    "resamples": Limit(1, 100_000, whole=True),  # backtest --resamples
    "port": Limit(1, 65_535, whole=True),
    "sweep_s": Limit(0, DAY_S, above_low=True),  # poll --every
    "poll_every_s": Limit(0, DAY_S),  # serve --poll-every (0: never)
    # scenario and policy files
    "probability": Limit(0, 1),
    "seconds": Limit(0, YEAR_S),  # times and durations in a scenario or policy
    "positive_seconds": Limit(0, YEAR_S, above_low=True),
    "poll_tick_s": Limit(0.1, 3600),
    "scenario_tasks": Limit(0, 10_000_000, whole=True),  # 0: the horizon decides
    "users": Limit(1, 1_000_000, whole=True),
    "index": Limit(0, 1_000_000, whole=True),  # script: user, task and chat indexes
    "count": Limit(1, 1_000_000, whole=True),  # capacities, burst sizes
    "retries": Limit(0, 100, whole=True),
    "rate_per_hour": Limit(0, 10_000_000),
    "weight": Limit(0, 1_000_000),
    "credits": Limit(0, 1_000_000_000),  # balances, grants, top-ups, price overrides
    "whole_credits": Limit(0, 1_000_000_000, whole=True),
    "tokens": Limit(0, 10_000_000, whole=True),
    "multiplier": Limit(0, 1000, above_low=True),  # price multiplier
    "margin": Limit(1, 100),
    "money": Limit(
        0, 1_000_000, above_low=True
    ),  # a credit's money value                                # chat reservation margin
    "submit_retries": Limit(0, 10, whole=True),
    "backoff_steps": Limit(1, 100, whole=True),  # length of recheck_backoff_s
}


def check(kind: str, value: Any, where: str) -> Any:
    return LIMITS[kind].check(value, where)


def describe(kind: str) -> str:
    return LIMITS[kind].describe()
