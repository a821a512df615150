"""ShipAny-style source databases for the import tests: a PostgreSQL database of their own (and a
SELECT-only role on it), and hand-written rows that follow the template's own code paths, with
every finding only such a source can have planted once.
"""

from __future__ import annotations

import json
import random
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import create_engine, text

from simulations.shipany_shape import ShipAnyWriter, create_schema
from tests.conftest import PG_ADMIN_URL

T0 = datetime(2026, 3, 1, 9, 0, 0)


@contextmanager
def pg_database(prefix: str = "rivya_src"):
    """A fresh PostgreSQL database (unique name), dropped afterwards; yields its URL (as postgres)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def select_only_role(db_url: str):
    """A login role (unique name) that may only SELECT from the tables of db_url's public schema;
    yields the URL that connects as it. Dropped afterwards."""
    role = f"rivya_reader_{uuid.uuid4().hex[:10]}"
    dbname = db_url.rsplit("/", 1)[1]
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    host = db_url.split("@", 1)[1]
    try:
        yield f"postgresql://{role}@{host}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def table_dump(url: str) -> dict[str, list[tuple]]:
    """Every row of the source's three tables, sorted: what a test compares before and after."""
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
    )
    try:
        with engine.connect() as conn:
            return {
                t: sorted(tuple(str(v) for v in r) for r in conn.execute(text(f'SELECT * FROM "{t}"')))
                for t in ("user", "ai_task", "credit")
            }
    finally:
        engine.dispose()


@dataclass
class Planted:
    """The source ids of what the hand-written source holds on purpose."""

    canceled: str  # canceled, charged, never refunded
    refunded_after_expiry: str  # failed after its gift grant expired: refunded onto the expired grant
    orphan_consume: str  # a consume row naming a task the source does not have
    refunded_twice: str  # the refund code ran twice for it
    empty_success: str  # success without any output in task_info
    below_zero_grant: str  # a grant two racing consumes drove below zero
    tasks: dict[str, str]  # every task's role -> its source id


def hand_written(writer: ShipAnyWriter | None = None) -> tuple[ShipAnyWriter, Planted]:
    """Rows written through the template's code paths (ShipAnyWriter), each finding planted once,
    and healthy stories around them: delivered, failed and refunded, a gift that lapsed unused."""
    w = writer or ShipAnyWriter(random.Random(7))
    h = timedelta(hours=1)
    ann = w.add_user("Ann", "ann@example.com", T0)
    bob = w.add_user("Bob", "bob@example.com", T0)
    cy = w.add_user("Cy", "cy@example.com", T0)
    w.grant(ann, 40, "gift", T0, expires_at=T0 + 24 * h)
    w.grant(ann, 200, "payment", T0 + h)
    w.grant(bob, 100, "payment", T0)
    w.grant(bob, 30, "gift", T0, expires_at=T0 + 2 * h)  # lapses unused: an ordinary expiry
    tasks = {}

    def gen(user, media, cost, at, **kw):
        return w.generate(
            user,
            media_type=media,
            provider="lumen",
            model=f"{media}-model",
            prompt=f"a {media}",
            options={"size": "1024"},
            cost=cost,
            at=at,
            upstream_id=f"up-{len(tasks)}",
            **kw,
        )

    tasks["delivered"] = gen(ann, "image", 10, T0 + 2 * h)
    w.succeed(tasks["delivered"], ["https://cdn.example/1.png"], T0 + 2 * h + timedelta(minutes=1))
    tasks["failed_refunded"] = gen(bob, "video", 20, T0 + 3 * h)
    w.fail(tasks["failed_refunded"], "provider_error", "upstream 500", T0 + 3 * h + timedelta(minutes=2))
    tasks["song"] = gen(bob, "music", 5, T0 + 4 * h)
    w.succeed(tasks["song"], ["https://cdn.example/s.mp3"], T0 + 4 * h + timedelta(minutes=3))
    tasks["running"] = gen(bob, "speech", 2, T0 + 30 * h)  # still processing at the source's latest time
    tasks["text"] = gen(bob, "text", 1, T0 + 5 * h)  # not a generation task: counted apart
    w.succeed(tasks["text"], [], T0 + 5 * h)

    tasks["canceled"] = gen(ann, "image", 10, T0 + 5 * h)  # draws on the gift first (it expires first)
    w.cancel(tasks["canceled"], T0 + 5 * h + timedelta(minutes=1))
    tasks["refunded_after_expiry"] = gen(ann, "video", 25, T0 + 23 * h)  # the gift's last 20, 5 paid
    w.fail(tasks["refunded_after_expiry"], "timeout", "no answer", T0 + 26 * h)  # after the gift lapsed
    tasks["refunded_twice"] = gen(bob, "image", 8, T0 + 6 * h)
    w.fail(tasks["refunded_twice"], "provider_error", "boom", T0 + 6 * h + timedelta(minutes=1))
    w.refund(tasks["refunded_twice"], T0 + 6 * h + timedelta(minutes=1))  # a poll and a callback both refunded
    tasks["empty_success"] = gen(bob, "image", 4, T0 + 7 * h)
    w.succeed(tasks["empty_success"], [], T0 + 7 * h + timedelta(minutes=1))

    # a consume row whose task the source does not have: written by hand as the template would
    small = w.grant(cy, 10, "payment", T0 + 8 * h)
    w.grant(cy, 50, "award", T0 + 8 * h)
    orphan = w.new_id()
    w.credits[small]["remaining_credits"] -= 3
    next(g for g in w.grants[cy] if g.id == small).remaining -= 3
    w.credits[orphan] = dict(
        w.credits[small],
        id=orphan,
        transaction_no=orphan,
        transaction_type="consume",
        transaction_scene=None,
        credits=-3,
        remaining_credits=0,
        expires_at=None,
        created_at=T0 + 9 * h,
        updated_at=T0 + 9 * h,
        consumed_detail=json.dumps([{"creditId": small, "creditsConsumed": 3}]),
        metadata=json.dumps({"type": "ai-task", "taskId": w.new_id()}),
    )
    # two consumes racing on the same grant (no row lock): both read 7 left and took 6
    tasks["race_a"] = gen(cy, "image", 6, T0 + 10 * h)
    tasks["race_b"] = gen(cy, "image", 6, T0 + 10 * h + timedelta(seconds=1))
    for key in ("race_a", "race_b"):
        w.succeed(tasks[key], [f"https://cdn.example/{key}.png"], T0 + 10 * h + timedelta(minutes=1))
    consume_b = w.credits[w.tasks[tasks["race_b"]]["credit_id"]]
    award = next(g.id for g in w.grants[cy] if w.credits[g.id]["transaction_scene"] == "award")
    # undo the FIFO the writer did for race_b and replay the race: it took its 6 from the small grant too
    for d in json.loads(consume_b["consumed_detail"]):
        w.credits[d["creditId"]]["remaining_credits"] += d["creditsConsumed"]
    consume_b["consumed_detail"] = json.dumps([{"creditId": small, "creditsConsumed": 6}])
    w.credits[small]["remaining_credits"] -= 6
    assert w.credits[small]["remaining_credits"] < 0 and w.credits[award]["remaining_credits"] == 50
    w.expire_due(T0 + 30 * h)
    return w, Planted(
        tasks["canceled"],
        tasks["refunded_after_expiry"],
        orphan,
        tasks["refunded_twice"],
        tasks["empty_success"],
        small,
        tasks,
    )


def build_source(url: str, writer: ShipAnyWriter) -> None:
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
    )
    try:
        create_schema(engine)
        writer.flush(engine)
    finally:
        engine.dispose()
