"""The concurrent bank-style workload: one worker process of many.

Each worker opens its own engine and two services over the same database:
`finisher` (wall clock, a policy that leaves provider failures to support)
submits, sends callbacks (good, early, duplicate, for its own and for others'
recent tasks) and polls with a clock an hour ahead, so it sweeps every
process's tasks; `support` (the default policy) issues the refunds that are
due, racing the other processes for the same tasks. Only ActionRefused and
NotFound are expected; anything else (a RetryableConflict that escaped, a
deadlock) propagates and fails the test.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import event

from rivya_core import webhooks
from rivya_core.catalog import default_catalog
from rivya_core.clock import WallClock
from rivya_core.domain import ActionRefused, FailureClass, NotFound
from rivya_core.lifecycle import LifecycleService
from rivya_core.policy import BillingPolicy
from rivya_core.stores.db import make_engine
from rivya_core.stores.sql import SqlStore

from .support import HashProvider, upstream_truth

SECRET = webhooks.generate_secret(random.Random(5))
FINISH_POLICY = BillingPolicy(name="support-refunds-provider", refund_classes=frozenset({FailureClass.INFRASTRUCTURE}))
PROMPT_MODEL = "lumen-flash"


class AheadClock(WallClock):
    def __init__(self, ahead_s: float):
        self.ahead = timedelta(seconds=ahead_s)

    def now(self) -> datetime:
        return super().now() + self.ahead


def fast_engine(url: str):
    """The store's engine with commits that skip the disk flush (locking and
    isolation unchanged): this workload tests races, not power loss."""
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _no_fsync(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF" if engine.dialect.name == "sqlite" else "SET synchronous_commit TO off")
        cur.close()
        if engine.dialect.name != "sqlite":
            dbapi_conn.commit()

    return engine


def services(url: str):
    store = SqlStore(fast_engine(url))
    catalog = default_catalog()
    providers = {name: HashProvider(name) for name in catalog.providers()}
    secrets = {name: [SECRET] for name in providers}

    def svc(clock, policy):
        return LifecycleService(store, clock, providers, catalog, policy, secrets=secrets)

    return (
        store,
        svc(WallClock(), FINISH_POLICY),
        svc(AheadClock(3600), FINISH_POLICY),
        svc(WallClock(), BillingPolicy()),
    )


def _body(upstream_id: str, early: bool = False) -> bytes:
    import json

    truth = upstream_truth(upstream_id)
    urls = [] if early else list(truth.result_urls)
    return json.dumps(
        {
            "type": f"task.{truth.state}",
            "data": {
                "upstream_task_id": upstream_id,
                "state": truth.state,
                "result_urls": urls,
                "error_code": truth.error_code,
                "error_message": truth.error_message,
                "failure_class": truth.failure_class,
            },
        }
    ).encode()


def send_callback(svc, upstream_id: str, msg_id: str, early: bool = False):
    body = _body(upstream_id, early)
    ts = int(datetime.now().timestamp())
    return svc.handle_callback("lumen", webhooks.signed_headers(SECRET, msg_id, ts, body), body)


def run_worker(args: tuple[str, int, int, list[int]]) -> dict[str, int]:
    url, worker, n_tasks, users = args
    rng = random.Random(1000 + worker)
    store, finisher, sweeper, support = services(url)
    seen: Counter = Counter()
    last_id = 1
    try:
        for j in range(n_tasks):
            user = users[(worker * n_tasks + j) % len(users)]
            task = finisher.submit(user, {"model": PROMPT_MODEL, "prompt": f"w{worker} t{j}", "params": {}})
            seen[f"submit:{task.status}"] += 1
            last_id = max(last_id, task.id)
            roll = rng.random()
            if task.upstream_task_id and roll < 0.5:
                msg = f"w{worker}-{j}"
                if rng.random() < 0.2:
                    seen[
                        "cb:" + send_callback(finisher, task.upstream_task_id, msg + "-early", early=True).outcome
                    ] += 1
                seen["cb:" + send_callback(finisher, task.upstream_task_id, msg).outcome] += 1
                if rng.random() < 0.3:  # the provider retries the same delivery
                    seen["cb:" + send_callback(finisher, task.upstream_task_id, msg).outcome] += 1
            other = rng.randint(max(1, last_id - 40), last_id)  # someone else's recent task, maybe
            if rng.random() < 0.3:
                seen["cb:" + send_callback(finisher, f"lumen-task-{other}", f"x{worker}-{j}").outcome] += 1
            if rng.random() < 0.3:
                try:
                    support.support_refund(other, "ops", "user asked")
                    seen["refund:done"] += 1
                except (ActionRefused, NotFound):
                    seen["refund:refused"] += 1
            if j % 25 == 24:
                seen["poll:checked"] += sweeper.poll(limit=40).checked
    finally:
        store.dispose()
    return dict(seen)
