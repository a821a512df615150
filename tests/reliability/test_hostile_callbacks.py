"""Hostile callbacks: >= 10,000 seeded forgeries, replays and malformed
deliveries. Each is recorded with the right outcome, none raises, and none
changes a task, a balance or a notification."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rivya_core import webhooks
from rivya_core.lifecycle import STORED_BODY_LIMIT
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.memory import MemoryStore
from rivya_core.stores.sql import SqlStore
from tests.fakes import IMAGE, callback, make_service

from .hostile import KINDS, generate

OTHER = {"model": "sonora-tts", "prompt": "read this aloud", "params": {}}


def _world(store):
    rng = random.Random(7)
    secrets = {p: webhooks.generate_secret(rng) for p in ("lumen", "sonora", "kinetica", "parley")}
    svc, clock, providers = make_service(store=store, secrets={p: [s] for p, s in secrets.items()})
    user = svc.create_account("h@example.com", "H", grant=1000)
    live = [svc.submit(user.id, {**IMAGE, "prompt": f"live {i}"}).upstream_task_id for i in range(5)]
    other = [svc.submit(user.id, {**OTHER, "prompt": f"other {i}"}).upstream_task_id for i in range(3)]
    done, applied = [], []
    for i in range(4):
        t = svc.submit(user.id, {**IMAGE, "prompt": f"done {i}"})
        res = svc.handle_callback(
            "lumen", *callback(clock, t.upstream_task_id, msg_id=f"applied-{i}", secret=secrets["lumen"])
        )
        assert res.outcome == "applied"
        done.append(t.upstream_task_id)
        applied.append(f"applied-{i}")
    env = {
        "secrets": {"lumen": secrets["lumen"], "other": secrets["sonora"]},
        "generating": {"lumen": live, "other": other},
        "terminal": done,
        "applied_ids": applied,
    }
    return svc, clock, env


def _state(store):
    snap = store.snapshot()
    return snap.accounts, snap.tasks, snap.ledger, snap.notifications, len(snap.events), len(snap.callbacks)


def _fuzz(store, n: int, seed: int):
    svc, clock, env = _world(store)
    accounts, tasks, ledger, notes, n_events, n_cbs = _state(store)
    now_ts = int((clock.now() - __import__("datetime").datetime(1970, 1, 1)).total_seconds())
    rng = random.Random(seed)
    seen: Counter = Counter()
    wrong = []
    for i in range(n):
        h = generate(rng, now_ts, env)
        result = svc.handle_callback(h.provider, h.headers, h.body)  # must not raise
        seen[h.kind] += 1
        if result.outcome != h.expect:
            wrong.append((i, h.kind, h.expect, result.outcome, result.reason))
    assert wrong == [], wrong[:10]
    assert set(seen) == set(KINDS)
    snap = store.snapshot()
    assert (snap.accounts, snap.tasks, snap.ledger, snap.notifications) == (accounts, tasks, ledger, notes)
    assert len(snap.callbacks) == n_cbs + n
    new_events = snap.events[n_events:]
    assert {e.kind for e in new_events} <= {"callback"}  # duplicates are noted on the timeline, nothing else
    assert all(e.detail["outcome"] == "duplicate" for e in new_events)
    assert all(len(c.body or "") <= STORED_BODY_LIMIT for c in snap.callbacks)
    assert all(
        not c.signature_valid for c in snap.callbacks[n_cbs:] if c.outcome in ("rejected_signature", "rejected_stale")
    )
    return seen


def test_ten_thousand_hostile_callbacks_change_nothing():
    seen = _fuzz(MemoryStore(), 10_000, seed=2024)
    assert sum(seen.values()) == 10_000 and min(seen.values()) > 300


@pytest.mark.slow
def test_hostile_callbacks_on_sql(db_url):
    engine = make_engine(db_url)
    init_db(engine)
    _fuzz(SqlStore(engine), 600, seed=99)
    engine.dispose()
