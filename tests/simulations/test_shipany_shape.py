"""The ShipAny shape: the template's credit code paths, and a run in that shape is repeatable."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

from sqlalchemy import create_engine, text

from simulations.scenarios import load_scenario
from simulations.shipany_shape import ShipAnyWriter, run_shipany

T0 = datetime(2026, 5, 1)


def _writer():
    w = ShipAnyWriter(random.Random(1))
    u = w.add_user("Ann", "ann@example.com", T0)
    return w, u


def test_consumes_fifo_over_unexpired_grants_soonest_to_expire_first():
    w, u = _writer()
    paid = w.grant(u, 100, "payment", T0)
    gift = w.grant(u, 30, "gift", T0 + timedelta(minutes=1), expires_at=T0 + timedelta(days=1))
    t = w.generate(
        u,
        media_type="image",
        provider="p",
        model="m",
        prompt="x",
        options={},
        cost=40,
        at=T0 + timedelta(hours=1),
        upstream_id="u1",
    )
    consume = w.credits[w.tasks[t]["credit_id"]]
    assert json.loads(consume["consumed_detail"]) == [
        {"creditId": gift, "creditsConsumed": 30},
        {"creditId": paid, "creditsConsumed": 10},
    ]
    assert consume["credits"] == -40 and w.credits[gift]["remaining_credits"] == 0


def test_failed_puts_credits_back_on_their_grants_even_expired_and_canceled_keeps_them():
    w, u = _writer()
    gift = w.grant(u, 10, "gift", T0, expires_at=T0 + timedelta(hours=2))
    a = w.generate(
        u,
        media_type="video",
        provider="p",
        model="m",
        prompt="x",
        options={},
        cost=10,
        at=T0 + timedelta(hours=1),
        upstream_id="u1",
    )
    w.fail(a, "provider_error", "boom", T0 + timedelta(hours=3))  # after the gift expired
    assert w.credits[gift]["remaining_credits"] == 10 and w.credits[w.tasks[a]["credit_id"]]["status"] == "deleted"
    assert w.balance(u, T0 + timedelta(hours=3)) == 0  # back on a grant no balance counts
    w.grant(u, 10, "payment", T0 + timedelta(hours=3))
    b = w.generate(
        u,
        media_type="image",
        provider="p",
        model="m",
        prompt="y",
        options={},
        cost=10,
        at=T0 + timedelta(hours=4),
        upstream_id="u2",
    )
    w.cancel(b, T0 + timedelta(hours=5))
    assert w.credits[w.tasks[b]["credit_id"]]["status"] == "active" and w.balance(u, T0 + timedelta(hours=5)) == 0


def test_too_few_unexpired_credits_write_nothing():
    w, u = _writer()
    w.grant(u, 50, "gift", T0, expires_at=T0 + timedelta(hours=1))
    assert (
        w.generate(
            u,
            media_type="image",
            provider="p",
            model="m",
            prompt="x",
            options={},
            cost=5,
            at=T0 + timedelta(hours=2),
            upstream_id="u1",
        )
        is None
    )
    assert w.refused == 1 and not w.tasks


def test_a_run_in_the_shipany_shape_is_the_same_twice(tmp_path):
    sc = load_scenario("shipany_gifts")
    dumps = []
    for name in ("a.db", "b.db"):
        shaped = run_shipany(sc, f"sqlite:///{tmp_path / name}", tasks=80)
        assert shaped.ok and shaped.rows["ai_task"] > 50
        engine = create_engine(f"sqlite:///{tmp_path / name}")
        with engine.connect() as conn:
            dumps.append(
                {t: conn.execute(text(f'SELECT * FROM "{t}" ORDER BY id')).all() for t in ("user", "ai_task", "credit")}
            )
        engine.dispose()
    assert dumps[0] == dumps[1]
