"""A live run: the receiver and the HTTP farm on 127.0.0.1, tasks submitted through the
real provider clients, every callback over real HTTP.

`run_live` starts the fake provider (simulations.httpfarm) and the webhook receiver
(rivya_core.receiver, with its polling sweep) on free loopback ports, points a
LifecycleService with ReplicateClient or FalClient at the fake, opens the scenario's
accounts, submits N generation tasks from a few threads, waits until every task is
terminal and the fake has nothing left to send, audits the database and returns
the same RunSummary as a `run`.

Time: the fake's simulated seconds pass `speed` times faster than wall seconds, and
the policy's waits (stuck thresholds, timeouts, poll interval, re-check backoff) are
divided by the same factor, so a video that takes 10 simulated minutes takes 5 wall
seconds at speed 120 and its timeout scales with it. Signature timestamps stay real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import func, select

from rivya_core.audit import audit
from rivya_core.catalog import Catalog, default_catalog
from rivya_core.clock import WallClock
from rivya_core.domain import ACTIVE, RivyaError, ValidationError
from rivya_core.lifecycle import LifecycleService
from rivya_core.policy import BillingPolicy
from rivya_core.providers.config import build_clients, parse_providers
from rivya_core.receiver import DEFAULT_THREADS, create_app, pool_size_for
from rivya_core.stores import schema
from rivya_core.stores.db import has_rows, safe_url
from rivya_core.stores.sql import open_store
from rivya_core.tomlfile import parse as parse_toml
from rivya_core.validation import validate

from .httpfarm import FakeProvider, providers_toml
from .runner import RunSummary
from .scenarios import Scenario
from .streams import Streams

HOST = "127.0.0.1"
CLIENT_TIMEOUT_S = 2.0  # the real clients' timeout in a live run; a stalled submission waits longer
SUBMITTERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop a server subprocess: terminate it, and kill it when it has not ended within grace_s."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServerThread:
    """uvicorn serving an ASGI app on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host=HOST,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=30,
            backlog=2048,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RivyaError(f"the server on port {self.port} did not start", code="server_failed")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def scaled_policy(policy: BillingPolicy, speed: float) -> BillingPolicy:
    """The policy's waits divided by speed (its money rules unchanged)."""
    return dataclasses.replace(
        policy,
        poll_interval_s=policy.poll_interval_s / speed,
        recheck_backoff_s=tuple(s / speed for s in policy.recheck_backoff_s),
        stuck_after_s={k: v / speed for k, v in policy.stuck_after_s.items()},
        timeout_s={k: v / speed for k, v in policy.timeout_s.items()},
        duplicate_window_s=policy.duplicate_window_s / speed,
    )


def _requests(catalog: Catalog, scenario: Scenario, streams: Streams, n: int) -> list[dict[str, Any]]:
    """n generation requests that validate, models drawn by the scenario's category mix."""
    by_cat: dict[str, list[str]] = {}
    for spec in catalog.models:
        if spec.runtime != "async_task" or not spec.direct_generation:
            continue
        req = {"model": spec.id, "prompt": "x" * max(spec.prompt_min, 20), "params": {}}
        try:
            validate(catalog, req)
        except ValidationError:
            continue  # needs reference files: not submitted by a live run
        by_cat.setdefault(spec.category, []).append(spec.id)
    weights = {c: getattr(scenario.mix, c, 0.0) for c in by_cat}
    cats = [c for c in sorted(by_cat) if weights[c] > 0] or sorted(by_cat)
    rng = streams.get("live:requests")
    out = []
    for i in range(n):
        cat = rng.choices(cats, [weights[c] or 1.0 for c in cats])[0]
        model = rng.choice(by_cat[cat])
        spec = catalog.get(model)
        prompt = f"live task {i}: a {rng.choice(['calm', 'stormy', 'bright', 'quiet'])} scene"
        out.append({"model": model, "prompt": prompt.ljust(spec.prompt_min, ".")[: spec.prompt_max], "params": {}})
    return out


def _accounts(svc: LifecycleService, scenario: Scenario, streams: Streams) -> list[int]:
    pop = scenario.population
    rng = streams.get("balances")
    ids = []
    for i in range(pop.users):
        broke = rng.random() < pop.broke_fraction
        balance = int((pop.broke_balance if broke else pop.balance).draw(rng.random()))
        ids.append(svc.create_account(f"live{i}@qa.example", f"Live user {i}", grant=balance).id)
    return ids


def run_live(
    scenario: Scenario,
    flavor: str,
    tasks: int,
    db_url: str,
    *,
    seed: int | None = None,
    speed: float = 120.0,
    force: bool = False,
    timeout_s: float | None = None,
    progress: Any = None,
) -> tuple[RunSummary, dict[str, Any]]:
    """Run N tasks live; (summary, farm stats). Refuses a database holding tasks unless force."""
    # one connection for each receiver thread, the sweep and each submitter
    store = open_store(db_url, create=True, pool_size=pool_size_for(DEFAULT_THREADS) + SUBMITTERS)
    try:
        if has_rows(store.engine, "ai_task") and not force:
            raise RivyaError(
                f"database {safe_url(db_url)} already holds tasks; pass --force to add a live run to it",
                code="db_not_empty",
            )
        return _run(store, scenario, flavor, tasks, seed, speed, timeout_s, progress)
    finally:
        store.engine.dispose()


def _run(
    store: Any,
    scenario: Scenario,
    flavor: str,
    tasks: int,
    seed: int | None,
    speed: float,
    timeout_s: float | None,
    progress: Any,
) -> tuple[RunSummary, dict[str, Any]]:
    started = time.monotonic()
    seed = scenario.seed if seed is None else int(seed)
    catalog = default_catalog()
    policy = scaled_policy(scenario.policy, speed)
    fake = FakeProvider(flavor, scenario, seed, speed=speed, stall_s=CLIENT_TIMEOUT_S * 1.5, catalog=catalog)
    receiver_port = free_port()
    with ServerThread(fake.app) as farm_server:
        text = providers_toml(
            flavor,
            farm_server.url,
            f"http://{HOST}:{receiver_port}",
            fake.keys,
            fake.provider_names,
            timeout_s=CLIENT_TIMEOUT_S,
        )
        clients = build_clients(parse_providers(parse_toml(text, "<live>", RivyaError), "<live>"))
        svc = LifecycleService(store, WallClock(), clients, catalog, policy)
        app = create_app(svc, engine=store.engine, poll_every=max(0.1, min(1.0, policy.poll_interval_s)))
        with ServerThread(app, receiver_port):
            streams = Streams(seed)
            users = _accounts(svc, scenario, streams)
            requests = _requests(catalog, scenario, streams, tasks)
            pick = streams.get("live:users")
            owners = [pick.choice(users) for _ in requests]

            def submit(i: int) -> None:
                try:
                    svc.submit(owners[i], requests[i])
                except ValidationError:
                    pass  # refused before a task existed (e.g. a duplicate the policy blocks)

            with ThreadPoolExecutor(SUBMITTERS) as pool:
                list(pool.map(submit, range(len(requests))))
            longest = max(policy.timeout_s.values(), default=600.0)
            deadline = time.monotonic() + (timeout_s or longest + 60.0)
            active = _active(store)
            while active and time.monotonic() < deadline:
                if progress:
                    progress(1 - active / max(1, tasks), f"{active} task(s) still active")
                time.sleep(0.25)
                active = _active(store)
            quiet_by = time.monotonic() + 60
            while not fake.quiet() and time.monotonic() < quiet_by:
                time.sleep(0.1)
            time.sleep(0.3)  # the last deliveries' answers
    if progress:
        progress(1.0, "done")
    summary = _summary(store, scenario, seed, policy, time.monotonic() - started, speed, fake)
    farm = {
        "sent": dict(fake.stats.sent),
        "dropped": dict(fake.stats.dropped),
        "submit_faults": dict(fake.stats.submit_faults),
        "outcomes": dict(fake.stats.outcomes),
    }
    return summary, farm


def _active(store: Any) -> int:
    t = schema.ai_task
    with store.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(t).where(t.c.status.in_([str(s) for s in ACTIVE])))


def _summary(
    store: Any, scenario: Scenario, seed: int, policy: BillingPolicy, wall: float, speed: float, fake: FakeProvider
) -> RunSummary:
    t, cb, led, ev = schema.ai_task, schema.provider_callback, schema.credit_ledger, schema.task_event
    with store.engine.connect() as conn:
        states = dict(conn.execute(select(t.c.status, func.count()).group_by(t.c.status)).all())
        outcomes = dict(conn.execute(select(cb.c.outcome, func.count()).group_by(cb.c.outcome)).all())
        sums = dict(conn.execute(select(led.c.entry_type, func.sum(led.c.amount)).group_by(led.c.entry_type)).all())
        finished = conn.execute(select(ev.c.kind, ev.c.detail).where(ev.c.kind.in_(["succeeded", "failed"]))).all()
        deferrals = conn.scalar(select(func.count()).select_from(ev).where(ev.c.kind == "deferred"))
        lat = sorted(
            (f - c).total_seconds()
            for c, f in conn.execute(select(t.c.created_at, t.c.finished_at).where(t.c.finished_at.is_not(None))).all()
        )
    paths = Counter(f"{kind}:{(d or {}).get('path', '?')}" for kind, d in finished)
    report = audit(store.engine, policy, WallClock().now())
    charged, refunded = -int(sums.get("consume") or 0), int(sums.get("refund") or 0)
    credits = {
        "charged": charged,
        "refunded": refunded,
        "net": charged - refunded,
        "chat_charged": 0,
        "chat_refunded": 0,
    }

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

    active = sum(n for s, n in states.items() if s in {str(a) for a in ACTIVE})
    body = {"states": states, "outcomes": outcomes, "credits": credits, "paths": dict(paths)}
    return RunSummary(
        fingerprint="live-" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest(),
        seed=seed,
        scenario_name=f"{scenario.name} (live, {fake.flavor})",
        tasks=sum(states.values()),
        sim_seconds=wall * speed,
        counts_by_state={str(k): v for k, v in states.items()},
        counts_by_outcome={str(k): v for k, v in outcomes.items()},
        credits=credits,
        completion_paths=dict(paths),
        deferrals=int(deferrals or 0),
        rejected_callbacks={
            o: n for o, n in outcomes.items() if o not in ("applied", "duplicate", "deferred", "progress")
        },
        latency_percentiles={"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        violations=[{"kind": f.kind, "message": f.message} for f in report.findings],
        liveness_ok=active == 0,
        farm={
            "sent": dict(fake.stats.sent),
            "dropped": dict(fake.stats.dropped),
            "submit_faults": dict(fake.stats.submit_faults),
        },
        wall_seconds=wall,
    )
