"""Read-side queries: studio, history, notifications centre, recent generations, support lookups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from rivya_core.domain import NotFound
from rivya_core.read import queries as q
from rivya_core.stores.schema import ai_task, credit_ledger

from .dbrows import T0, Rows, make_engine

INJECTIONS = [
    "'; DROP TABLE ai_task; --",
    "1 OR 1=1",
    "\\",
    "' OR ''='",
    "x%' OR 1=1 --",
    "99999999999999999999999",
    "\x00",
]


@pytest.fixture
def db(db_url):
    engine = make_engine(db_url)
    yield Rows(engine)
    engine.dispose()


@pytest.fixture
def world(db):
    ann = db.account("ann@example.com", "Ann Lee")
    bob = db.account("bob@studio.io", "Bob Stone")
    db.grant(ann)
    db.grant(bob)
    t_ok = db.success(ann, prompt="a red fox in snow", upstream="up-fox", at=T0)
    t_fail = db.failed(bob, prompt="100% pure_water", at=T0 + timedelta(minutes=1))
    t_run = db.task(
        ann,
        status="GENERATING",
        prompt="a slow video",
        category="video",
        model="vid-1",
        upstream="up-slow",
        at=T0 + timedelta(minutes=2),
        submitted_at=T0 + timedelta(minutes=2),
    )
    db.event(t_run, "created", at=T0 + timedelta(minutes=2))
    db.event(t_run, "submitted", at=T0 + timedelta(minutes=2))
    t_wait = db.task(bob, status="WAITING", prompt="queued thing", at=T0 + timedelta(minutes=3))
    return {"ann": ann, "bob": bob, "ok": t_ok, "fail": t_fail, "run": t_run, "wait": t_wait}


def ids(rows):
    return [r["id"] for r in rows]


def test_active_studio_lists_running_tasks_with_last_event(db, world):
    assert ids(q.active_studio(db.engine, world["ann"])) == [world["run"]]
    everyone = q.active_studio(db.engine)
    assert ids(everyone) == [world["run"], world["wait"]]
    assert everyone[0]["last_event"] == "submitted"
    assert ids(q.active_studio(db.engine, status="WAITING")) == [world["wait"]]
    assert ids(q.active_studio(db.engine, category="video", provider="alpha")) == [world["run"]]
    assert ids(q.active_studio(db.engine, limit=1, offset=1)) == [world["wait"]]


def test_history_holds_settled_tasks_newest_first(db, world):
    assert ids(q.history(db.engine)) == [world["fail"], world["ok"]]
    assert ids(q.history(db.engine, world["ann"])) == [world["ok"]]
    assert q.history(db.engine, world["ann"])[0]["result_urls"] == ["https://cdn.example/r.png"]
    assert ids(q.history(db.engine, limit=1, offset=1)) == [world["ok"]]


def test_notifications_centre_unread_counts_and_mark_read(db, world):
    rows, total = q.notifications_centre(db.engine)
    assert total == 2 and {r["task_id"] for r in rows} == {world["ok"], world["fail"]}
    rows, total = q.notifications_centre(db.engine, user_id=world["bob"], kind="generation_failed")
    assert total == 1 and rows[0]["task_status"] == "FAILED"
    assert q.unread_counts(db.engine) == {"total": 2, "by_kind": {"generation_success": 1, "generation_failed": 1}}
    assert q.mark_read(db.engine, [rows[0]["id"]], T0 + timedelta(hours=1)) == 1
    assert q.mark_read(db.engine, [rows[0]["id"]], T0 + timedelta(hours=2)) == 0
    assert q.unread_counts(db.engine, world["bob"]) == {"total": 0, "by_kind": {}}
    assert q.notifications_centre(db.engine, unread_only=True)[1] == 1
    page, total = q.notifications_centre(db.engine, limit=1, offset=1)
    assert len(page) == 1 and total == 2


def test_recent_generations(db, world):
    assert ids(q.recent_generations(db.engine, limit=2)) == [world["wait"], world["run"]]
    assert ids(q.recent_generations(db.engine, world["ann"])) == [world["run"], world["ok"]]


@pytest.mark.parametrize(
    "key, expect, why",
    [
        ("id", "ok", "id"),
        ("up-slow", "run", "upstream"),
        ("ann@example.com", ["run", "ok"], "user"),
        ("bob@stu", ["wait", "fail"], "user"),
        ("STONE", ["wait", "fail"], "user"),
        ("RED FOX", "ok", "prompt"),
        ("100%", "fail", "prompt"),
        ("pure_water", "fail", "prompt"),
    ],
)
def test_find_tasks_by_every_key(db, world, key, expect, why):
    query = str(world["ok"]) if key == "id" else key
    found = q.find_tasks(db.engine, query)
    expected = [world[e] for e in ([expect] if isinstance(expect, str) else expect)]
    assert ids(found) == expected
    assert {r["match"] for r in found} == {why}


def test_find_tasks_like_wildcards_are_literal(db, world):
    assert ids(q.find_tasks(db.engine, "0% pure")) == [world["fail"]]
    assert q.find_tasks(db.engine, "0%_pure") == []  # "_" is a literal underscore, not any character
    assert q.find_tasks(db.engine, "red_fox") == []


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injection_strings_find_nothing_and_break_nothing(db, world, bad):
    assert q.find_tasks(db.engine, bad) == []
    assert q.find_accounts(db.engine, bad) == []
    with db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ai_task)).scalar() == 4
        assert conn.execute(select(func.count()).select_from(credit_ledger)).scalar() == 5


def test_wildcards_alone_match_only_literal_text(db, world):
    assert ids(q.find_tasks(db.engine, "%")) == [world["fail"]]
    assert ids(q.find_tasks(db.engine, "_")) == [world["fail"]]


def test_find_tasks_empty_query(db, world):
    assert q.find_tasks(db.engine, "") == [] and q.find_tasks(db.engine, "   ") == []


def test_find_accounts(db, world):
    assert [a["email"] for a in q.find_accounts(db.engine, "bob")] == ["bob@studio.io"]
    assert [a["id"] for a in q.find_accounts(db.engine, str(world["ann"]))] == [world["ann"]]
    assert [a["name"] for a in q.find_accounts(db.engine, "lee")] == ["Ann Lee"]


def test_task_detail_gathers_every_row(db, world):
    db.callback(world["ok"], "up-fox", "applied")
    db.callback(None, "up-fox", "unknown_task")
    d = q.task_detail(db.engine, world["ok"])
    assert d["task"]["id"] == world["ok"] and d["account"]["email"] == "ann@example.com"
    assert [e["entry_type"] for e in d["ledger"]] == ["consume"]
    assert [c["outcome"] for c in d["callbacks"]] == ["applied", "unknown_task"]
    assert [n["kind"] for n in d["notifications"]] == ["generation_success"]
    assert [e["kind"] for e in q.task_detail(db.engine, world["run"])["events"]] == ["created", "submitted"]


@pytest.mark.parametrize("missing", [10**6, -1, "abc", 2**70])
def test_task_detail_missing_raises_not_found(db, world, missing):
    with pytest.raises(NotFound):
        q.task_detail(db.engine, missing)


def test_latest_timestamp_and_resolve_now(db, world):
    assert q.latest_timestamp(db.engine) == T0 + timedelta(minutes=3)
    assert q.resolve_now(db.engine, None) == T0 + timedelta(minutes=3)
    empty = make_engine("sqlite://")
    assert q.latest_timestamp(empty) is None
    before = datetime.now(UTC).replace(tzinfo=None)
    now = q.resolve_now(empty, None)  # an empty database: the wall clock
    assert before <= now <= datetime.now(UTC).replace(tzinfo=None)
    assert q.resolve_now(empty, T0.replace(tzinfo=UTC)) == T0


def test_active_studio_and_the_live_tasks_report_agree_on_which_tasks_and_their_last_event(db, world):
    from rivya_core.read import reports

    # created first but submitted last: both lists order by when the task started (submitted, else created)
    late = db.task(
        world["bob"],
        status="GENERATING",
        prompt="late start",
        category="video",
        model="vid-1",
        upstream="up-late",
        at=T0 - timedelta(minutes=5),
        submitted_at=T0 + timedelta(minutes=4),
    )
    db.event(late, "created", at=T0 - timedelta(minutes=5))
    db.event(late, "submitted", at=T0 + timedelta(minutes=4))
    db.event(late, "poll", at=T0 + timedelta(minutes=6))
    now = T0 + timedelta(hours=1)
    for filters in (
        {},
        {"status": "GENERATING"},
        {"status": "WAITING"},
        {"category": "video"},
        {"model": "vid-1", "provider": "alpha"},
    ):
        studio = q.active_studio(db.engine, **filters)
        live = reports.active_tasks(
            db.engine,
            now=now,
            **({"statuses": (filters["status"],)} if "status" in filters else {}),
            **{k: (v,) for k, v in filters.items() if k != "status"},
        )
        assert ids(studio) == [int(i) for i in live["id"]], filters
        assert [(r["last_event"], r["last_event_at"]) for r in studio] == [
            (None if e is None or e != e else e, None if a is None or a != a else a)
            for e, a in zip(live["last_event"], live["last_event_at"], strict=True)
        ], filters
    assert ids(q.active_studio(db.engine)) == [world["run"], world["wait"], late]


def test_a_tasks_callbacks_are_read_through_the_task_and_upstream_indexes(tmp_path):
    """With `provider = ?` SQLite read a task's callbacks for its upstream id through the
    (provider, webhook_id) index: every callback of the provider (0.6 s at a million tasks)."""
    from sqlalchemy.dialects import sqlite

    from rivya_core.stores.sql import open_store

    store = open_store(f"sqlite:///{tmp_path / 'q.db'}", create=True)
    try:
        sql = str(
            q.task_callbacks(7, "up-7", "lumen").compile(
                dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
            )
        )
        with store.engine.connect() as conn:
            plan = " / ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert "ix_provider_callback_task" in plan and "ix_provider_callback_upstream" in plan, plan
        assert "ix_provider_callback_webhook" not in plan, plan
    finally:
        store.engine.dispose()
