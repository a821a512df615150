"""The shared base of the lifecycle: the unit-of-work loop (a lost race re-run from a fresh read),
the clock of a step, timeline events and the idempotency keys of a task's ledger rows and notice."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from .. import upstream_cancel
from ..catalog import Catalog
from ..domain import EventKind
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..ports import Clock, Provider, RetryableConflict, Store, Tx
from ..results import ResultCopier

T = TypeVar("T")

MAX_CALLBACK_BODY = 64 * 1024
STORED_BODY_LIMIT = 4096
PARKED_DETAIL = "no task has this upstream id yet: parked, applied when a task takes it"
WEBHOOK_SEEN = "webhook id already seen"
MAX_RETRIES = 20
RETRY_BASE_SECONDS = 0.002
RETRY_CAP_SECONDS = 0.25


def consume_key(task_id: int) -> str:
    return f"consume:task:{task_id}"


def refund_key(task_id: int) -> str:
    return f"refund:task:{task_id}"


def notify_key(task_id: int) -> str:
    return f"notify:task:{task_id}"


class LifecycleBase:
    """What every job of the lifecycle shares: its ports, policy and secrets, and the unit of work."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        providers: Mapping[str, Provider],
        catalog: Catalog,
        policy: BillingPolicy = DEFAULT_POLICY,
        secrets: Mapping[str, list[str]] | None = None,
        callbacks_enabled: bool = True,
        judge_clock: Clock | None = None,
        retry_seed: int = 0,
        results: ResultCopier | None = None,
    ):
        self.store = store
        self.clock = clock
        # what support judges ages against (clock.judging_now for the database; default: `clock`)
        self.judge_clock = judge_clock or clock
        self.providers = dict(providers)
        self.catalog = catalog
        self.policy = policy
        self._secrets = {k: list(v) for k, v in (secrets or {}).items()}
        self.callbacks_enabled = callbacks_enabled
        # outputs copied into our own store before SUCCESS (lifecycle.outputs); None: URLs kept as given
        self.results = results
        # unit-of-work retries: the jitter has its own Random (never the global one), seedable for runs
        self.retry_rng = random.Random(retry_seed)
        self.retry_base = RETRY_BASE_SECONDS
        self.retry_cap = RETRY_CAP_SECONDS
        self.sleep: Callable[[float], None] = time.sleep
        self.retry_counts: Counter[int] = Counter()
        self.retries_total = 0
        upstream_cancel.arm(self.providers.values(), policy, catalog)  # Cancel-After on the clients that send it
        self._local = threading.local()  # per thread: the current unit's upstream cancels

    def __repr__(self) -> str:  # never show secrets
        return f"LifecycleService(providers={sorted(self.providers)}, policy={self.policy.name!r})"

    def _tx(self, step: Callable[[Tx], T]) -> T:
        """Run one unit of work; a lost race is re-run after a jittered exponential pause
        ("full jitter": uniform in [0, min(cap, base * 2**attempt)]). How many retries each
        unit needed is counted in `retry_counts` (retries -> units) and `retries_total`."""
        local = self._local
        for attempt in range(MAX_RETRIES):
            local.cancels = None  # jobs this unit gives up on (upstream_cancel.defer), asked to stop once it commits
            try:
                with self.store.begin() as tx:
                    result = step(tx)
            except RetryableConflict:
                if attempt == MAX_RETRIES - 1:
                    self._count_retries(attempt)
                    raise
                self.sleep(self.retry_rng.uniform(0.0, min(self.retry_cap, self.retry_base * 2**attempt)))
                continue
            if local.cancels:
                jobs, local.cancels = local.cancels, None
                upstream_cancel.send(self, jobs)
            self._count_retries(attempt)
            return result
        raise AssertionError("unreachable")

    def _count_retries(self, retries: int) -> None:
        self.retry_counts[retries] += 1
        self.retries_total += retries

    def _now(self) -> datetime:
        """The time of a step."""
        return self.clock.now()

    def _event(self, tx: Tx, task_id: int, event: EventKind, /, **detail: Any) -> None:
        tx.add_event(task_id, event.value, detail, self._now())
