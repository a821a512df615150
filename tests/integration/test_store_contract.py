"""One contract suite for every Store: in-memory, the simulation's run buffer
(in-memory, streaming), SQLite and PostgreSQL.

Each test runs four times; PostgreSQL skips (saying why) when no server answers.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from rivya_core.domain import (
    Category,
    ChatMessage,
    FailureClass,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    ProviderCallback,
    SchemaMissing,
    StoreUnavailable,
    Task,
    TaskStatus,
    ValidationError,
)
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine, normalize_url, require_schema
from rivya_core.stores.memory import MemoryStore
from rivya_core.stores.rows import snapshot_to_engine
from rivya_core.stores.sql import SqlStore, open_store
from simulations.buffer import StreamingStore
from tests import reads

T0 = datetime(2025, 3, 1, 9, 0, 0)
G, W, S, F = TaskStatus.GENERATING, TaskStatus.WAITING, TaskStatus.SUCCESS, TaskStatus.FAILED


@pytest.fixture(params=["memory", "streaming", "sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param in ("memory", "streaming"):
        yield MemoryStore() if request.param == "memory" else StreamingStore()
        return
    url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    st = open_store(url, create=True)
    yield st
    st.engine.dispose()


def task(user_id: int, **kw) -> Task:
    return Task(
        **{
            "id": 0,
            "user_id": user_id,
            "model": "flux",
            "category": "image",
            "prompt": "a cat",
            "params": {"size": "1024", "refs": [1, 2]},
            "status": W,
            "billing_type": "per_task",
            "reserved_credits": 10,
            "provider": "prov",
            "created_at": T0,
            **kw,
        }
    )


@pytest.fixture
def uid(store):
    with store.begin() as tx:
        return tx.add_account("ann@example.com", "Ann", T0).id


def test_accounts(store, uid):
    with store.begin() as tx:
        other = tx.add_account("bob@example.com", "Bob", T0)
        assert other.id != uid and tx.get_account(uid).email == "ann@example.com"
        assert tx.account_by_email("bob@example.com").id == other.id
        assert tx.account_by_email("nobody@example.com") is None and tx.get_account(999) is None
        assert tx.balance(uid) == 0
    with pytest.raises(ValidationError) as err, store.begin() as tx:
        tx.add_account("ann@example.com", "Again", T0)
    assert err.value.code == "account_exists"


def test_task_round_trip_and_ids(store, uid):
    with store.begin() as tx:
        a = tx.insert_task(task(uid))
        b = tx.insert_task(task(uid, upstream_task_id="up-1", result_urls=["https://r/1.png"]))
        assert 0 < a.id < b.id
        got = tx.get_task(b.id, for_update=True)
    assert got == b and got.params == {"size": "1024", "refs": [1, 2]} and got.result_urls == ["https://r/1.png"]
    assert got.created_at == T0 and got.created_at.tzinfo is None
    with store.begin() as tx:
        assert tx.get_task(a.id).result_urls is None and tx.get_task(12345) is None
        assert tx.task_by_upstream("prov", "up-1").id == b.id
        assert tx.task_by_upstream("other", "up-1") is None


def test_update_task_is_compare_and_set(store, uid):
    with store.begin() as tx:
        tid = tx.insert_task(task(uid)).id
        assert tx.update_task(tid, [W], status=G, upstream_task_id="up-9", submitted_at=T0)
        assert not tx.update_task(tid, [W], status=F)
        assert tx.update_task(tid, [G], status=S, result_urls=["u"], finished_at=T0)
        assert not tx.update_task(tid, [G, W], status=F)
        assert tx.update_task(tid, None, check_attempts=3)
        assert not tx.update_task(999, None, status=F)
        got = tx.get_task(tid)
    assert (got.status, got.upstream_task_id, got.result_urls, got.check_attempts) == (S, "up-9", ["u"], 3)
    with pytest.raises(ValueError), store.begin() as tx:
        tx.update_task(tid, None, no_such_column=1)


def test_task_fields_come_back_as_their_enums(store, uid):
    """status, category and failure_class are read as StrEnum members whatever form they were
    written in (the members equal the strings, so what is stored does not change)."""
    with store.begin() as tx:
        tid = tx.insert_task(task(uid, status="WAITING", category="video")).id
        assert tx.update_task(tid, ["WAITING"], status="FAILED", failure_class="provider")
        got = tx.get_task(tid)
        listed = tx.user_tasks(uid)[0]
    for row in (got, listed):
        assert row.status is TaskStatus.FAILED and row.category is Category.VIDEO
        assert row.failure_class is FailureClass.PROVIDER
    snap = store.snapshot().tasks[0]
    assert (snap.status, snap.category, snap.failure_class) == ("FAILED", "video", "provider")
    assert type(snap.status) is TaskStatus


def test_returned_rows_are_copies(store, uid):
    with store.begin() as tx:
        t = tx.insert_task(task(uid))
    t.params["size"] = "1"
    t.status = F
    with store.begin() as tx:
        again = tx.get_task(t.id)
    assert again.params["size"] == "1024" and again.status == W


def test_ledger_post_running_balance_and_refusal(store, uid):
    with store.begin() as tx:
        g = tx.post(uid, "grant", 100, "grant-1", T0, note="welcome")
        c = tx.post(uid, "consume", -30, "consume-1", T0, task_id=7)
        r = tx.post(uid, "refund", 30, "refund-1", T0, task_id=7)
        m = tx.post(uid, "chat_reserve", -45, "reserve-1", T0, chat_message_id=3)
    assert [e.created for e in (g, c, r, m)] == [True] * 4
    assert [e.entry.balance_after for e in (g, c, r, m)] == [100, 70, 100, 55]
    with pytest.raises(InsufficientCredits) as err, store.begin() as tx:
        tx.post(uid, "consume", -56, "consume-2", T0, task_id=8)
    assert "55" in err.value.message and err.value.code == "insufficient_credits"
    with store.begin() as tx:
        assert tx.balance(uid) == 55 and tx.entry("consume-2") is None
        assert [e.amount for e in tx.task_entries(7)] == [-30, 30]
        assert tx.entry("grant-1").note == "welcome"
        assert tx.get_account(uid).balance == 55
    assert [e.idempotency_key for e in reads.message_entries(store, 3)] == ["reserve-1"]
    with pytest.raises(NotFound), store.begin() as tx:
        tx.post(999, "grant", 5, "nobody", T0)


def test_ledger_post_is_idempotent(store, uid):
    with store.begin() as tx:
        first = tx.post(uid, "grant", 50, "k", T0)
        again = tx.post(uid, "grant", 50, "k", T0)
        assert again.created is False and again.entry == first.entry
        assert tx.balance(uid) == 50
        other = tx.add_account("kim@example.com", "Kim", T0).id
    # the same key with another amount, kind or user is refused, naming the key, and writes nothing
    for user, kind, amount in ((uid, "grant", -999), (uid, "grant", 51), (uid, "adjustment", 50), (other, "grant", 50)):
        with pytest.raises(IdempotencyConflict) as err, store.begin() as tx:
            tx.post(user, kind, amount, "k", T0)
        assert err.value.code == "idempotency_key_reused" and "'k'" in err.value.message
    snap = store.snapshot()
    assert len(snap.ledger) == 1 and {a.id: a.balance for a in snap.accounts} == {uid: 50, other: 0}


def test_rollback_leaves_nothing(store, uid):
    with pytest.raises(RuntimeError), store.begin() as tx:
        tx.post(uid, "grant", 10, "g", T0)
        tid = tx.insert_task(task(uid, upstream_task_id="up-x")).id
        tx.add_event(tid, "created", {"a": 1}, T0)
        tx.add_notification(uid, "generation_success", "t", "b", T0, task_id=tid, idempotency_key="n1")
        tx.add_account("eve@example.com", "Eve", T0)
        raise RuntimeError("boom")
    snap = store.snapshot()
    assert (snap.tasks, snap.ledger, snap.events, snap.notifications) == ([], [], [], [])
    assert [a.email for a in snap.accounts] == ["ann@example.com"] and snap.accounts[0].balance == 0
    with store.begin() as tx:
        assert tx.task_by_upstream("prov", "up-x") is None and tx.entry("g") is None
        assert tx.add_notification(uid, "generation_success", "t", "b", T0, idempotency_key="n1")
        tx.add_account("eve@example.com", "Eve", T0)


def test_nested_unit_of_work_rolls_back_alone(store, uid):
    with store.begin() as tx:
        tx.post(uid, "grant", 10, "g", T0)
        with pytest.raises(InsufficientCredits), store.begin() as inner:
            inner.post(uid, "consume", -4, "c1", T0)
            inner.post(uid, "consume", -7, "c2", T0)
        tx.post(uid, "consume", -3, "c3", T0)
    with store.begin() as tx:
        assert tx.balance(uid) == 7 and tx.entry("c1") is None
        assert [e.balance_after for e in store.snapshot().ledger] == [10, 7]


def test_update_rolled_back(store, uid):
    with store.begin() as tx:
        tid = tx.insert_task(task(uid, status=G, next_check_at=T0)).id
    with pytest.raises(RuntimeError), store.begin() as tx:
        tx.update_task(tid, [G], status=F, error_code="x", next_check_at=None)
        raise RuntimeError("boom")
    with store.begin() as tx:
        assert tx.get_task(tid).status == G and [t.id for t in tx.tasks_due_for_check(T0, 5)] == [tid]


def test_events_notifications_callbacks(store, uid):
    with store.begin() as tx:
        tid = tx.insert_task(task(uid)).id
        tx.add_event(tid, "created", {"by": "test", "n": [1]}, T0)
        tx.add_event(tid, "charged", {"amount": 10}, T0 + timedelta(seconds=1))
        assert tx.add_notification(uid, "generation_failed", "Failed", "body", T0, task_id=tid, idempotency_key="nk")
        assert not tx.add_notification(
            uid, "generation_failed", "Failed", "body", T0, task_id=tid, idempotency_key="nk"
        )
        assert tx.add_notification(uid, "insufficient_credits", "Low", "body", T0)
        assert tx.add_notification(uid, "insufficient_credits", "Low", "body", T0)
        cb = tx.add_callback(
            ProviderCallback(
                id=0,
                provider="prov",
                received_at=T0,
                signature_valid=True,
                outcome="applied",
                body="{}",
                webhook_id="wh-1",
                task_id=tid,
            )
        )
        tx.add_callback(
            ProviderCallback(
                id=0,
                provider="prov",
                received_at=T0,
                signature_valid=False,
                outcome="rejected_signature",
                body="{}",
                webhook_id="wh-2",
                task_id=tid,
            )
        )
        tx.add_callback(
            ProviderCallback(
                id=0,
                provider="prov",
                received_at=T0,
                signature_valid=True,
                outcome="deferred",
                body="{}",
                webhook_id="wh-3",
            )
        )
        assert cb.id > 0
        events = tx.task_events(tid)
        assert [(e.kind, e.detail) for e in events] == [
            ("created", {"by": "test", "n": [1]}),
            ("charged", {"amount": 10}),
        ]
        assert tx.webhook_seen("prov", "wh-1") and tx.webhook_seen("prov", "wh-3")
        assert not tx.webhook_seen("prov", "wh-2") and not tx.webhook_seen("other", "wh-1")
    assert [n.kind for n in reads.task_notifications(store, tid)] == ["generation_failed"]
    assert [c.outcome for c in reads.task_callbacks(store, tid)] == ["applied", "rejected_signature"]
    assert len(store.snapshot().notifications) == 3


def test_due_for_check_and_active(store, uid):
    with store.begin() as tx:
        late = tx.insert_task(task(uid, status=G, next_check_at=T0 + timedelta(seconds=30))).id
        early = tx.insert_task(task(uid, status=G, next_check_at=T0 + timedelta(seconds=10))).id
        tx.insert_task(task(uid, status=G, next_check_at=T0 + timedelta(hours=1)))
        tx.insert_task(task(uid, status=S, next_check_at=T0))
        tx.insert_task(task(uid, status=G))  # no check scheduled
        old_wait = tx.insert_task(task(uid, status=W, created_at=T0 - timedelta(hours=2))).id
        tx.insert_task(task(uid, status=F, created_at=T0 - timedelta(hours=3)))
    with store.begin() as tx:
        now = T0 + timedelta(minutes=1)
        assert [t.id for t in tx.tasks_due_for_check(now, 10)] == [early, late]
        assert [t.id for t in tx.tasks_due_for_check(now, 1)] == [early]
        tx.update_task(early, [G], next_check_at=T0 + timedelta(days=1))
        assert [t.id for t in tx.tasks_due_for_check(now, 10)] == [late]
        assert [t.id for t in tx.active_tasks_older_than(T0, 10)] == [old_wait]
        assert len(tx.active_tasks_older_than(T0 + timedelta(seconds=1), 10)) == 5


def test_user_tasks_order_and_filters(store, uid):
    with store.begin() as tx:
        other = tx.add_account("bob@example.com", "Bob", T0).id
        ids = [
            tx.insert_task(task(uid, created_at=T0 + timedelta(minutes=m), status=s)).id
            for m, s in [(5, S), (1, F), (9, G), (3, S)]
        ]
        tx.insert_task(task(other))
        assert [t.id for t in tx.user_tasks(uid)] == [ids[2], ids[0], ids[3], ids[1]]
        assert [t.id for t in tx.user_tasks(uid, statuses=[S])] == [ids[0], ids[3]]
        assert [t.id for t in tx.user_tasks(uid, since=T0 + timedelta(minutes=3))] == [ids[2], ids[0], ids[3]]
        assert [t.id for t in tx.user_tasks(uid, limit=2)] == [ids[2], ids[0]]
        assert tx.user_tasks(12345) == []


def test_chat_sessions_and_messages(store, uid):
    with store.begin() as tx:
        s = tx.add_session(uid, "gpt", "hello", T0)
        assert tx.get_session(s.id) == s and tx.get_session(999) is None
        m = tx.add_message(
            ChatMessage(
                id=0, session_id=s.id, role="user", content="hi", created_at=T0, prompt_tokens=5, reserved_credits=12
            )
        )
        assert m.id > 0 and m.status == "reserved" and m.charged_credits is None
        assert tx.update_message(
            m.id, ["reserved"], status="settled", charged_credits=8, completion_tokens=40, settled_at=T0
        )
        assert not tx.update_message(m.id, ["reserved"], status="failed", charged_credits=0)  # compare-and-set
        got = tx.get_message(m.id, for_update=True)
        assert (got.status, got.charged_credits, got.completion_tokens, got.settled_at) == ("settled", 8, 40, T0)
        assert tx.get_message(999) is None
        open_turn = tx.add_message(
            ChatMessage(
                id=0,
                session_id=s.id,
                role="user",
                content="later",
                created_at=T0 + timedelta(seconds=5),
                reserved_credits=3,
            )
        )
        assert [m.id for m in tx.reserved_messages_older_than(T0 + timedelta(seconds=6), 10)] == [open_turn.id]
        assert tx.reserved_messages_older_than(T0 + timedelta(seconds=5), 10) == []
    with pytest.raises(NotFound), store.begin() as tx:
        tx.update_message(999, status="failed")


def test_snapshot_holds_everything(store, uid):
    with store.begin() as tx:
        tid = tx.insert_task(task(uid)).id
        tx.post(uid, "grant", 5, "g", T0)
        tx.add_event(tid, "created", {}, T0)
        s = tx.add_session(uid, "gpt", "t", T0)
        tx.add_message(ChatMessage(id=0, session_id=s.id, role="user", content="x", created_at=T0))
    snap = store.snapshot()
    assert [
        len(snap.accounts),
        len(snap.tasks),
        len(snap.ledger),
        len(snap.events),
        len(snap.sessions),
        len(snap.messages),
    ] == [1, 1, 1, 1, 1, 1]
    assert snap.accounts[0].balance == 5


# --- opening databases (rivya_core.stores.db) ------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("data/rivya.db", "sqlite:///data/rivya.db"),
        ("/tmp/x.db", "sqlite:////tmp/x.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_normalize_url(given, expected):
    assert normalize_url(given) == expected


def _one_line(exc) -> str:
    assert "\n" not in exc.message and exc.message
    return exc.message


@pytest.mark.parametrize("url", ["", "nonsense://x/y", "postgresql+psycopg://u@h:notaport/db"])
def test_open_store_refuses_malformed_url(url):
    with pytest.raises(StoreUnavailable) as err:
        open_store(url)
    _one_line(err.value)


@pytest.mark.parametrize("url", ["mysql://support@db.internal/rivya", "oracle://u:secret@h/db"])
def test_open_store_names_a_missing_driver(url):
    with pytest.raises(StoreUnavailable) as err:
        open_store(url)
    message = _one_line(err.value)
    assert "driver" in message and url.split(":")[0] in message and "secret" not in message


def test_open_store_refuses_unreachable_server():
    with pytest.raises(StoreUnavailable) as err:
        open_store("postgresql://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in _one_line(err.value) and "127.0.0.1" in err.value.message


def test_open_store_refuses_missing_sqlite_file_without_creating_it(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(StoreUnavailable) as err:
        open_store(str(path))
    assert str(path) in _one_line(err.value) and not path.exists()


def test_open_store_refuses_database_without_schema(db_url):
    make_engine(db_url).dispose()
    if db_url.startswith("sqlite"):
        sqlite3.connect(db_url.removeprefix("sqlite:///")).close()  # an empty database file
    with pytest.raises(SchemaMissing) as err:
        open_store(db_url)
    assert "credit_ledger" in _one_line(err.value) and "init-db" in err.value.message


def test_init_db_is_idempotent_and_records_version(db_url):
    open_store(db_url, create=True).dispose()
    st = open_store(db_url, create=True)
    with st.engine.connect() as conn:
        rows = conn.execute(select(schema.schema_meta)).all()
    assert [(r.key, r.value) for r in rows] == [("version", str(schema.SCHEMA_VERSION))]
    require_schema(st.engine)
    st.dispose()


def test_sqlite_engine_uses_wal_and_immediate_writes(sqlite_url):
    st = open_store(sqlite_url, create=True)
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    st.dispose()


def test_snapshot_to_engine_reproduces_a_memory_store():
    mem = MemoryStore()
    with mem.begin() as tx:
        uid = tx.add_account("ann@example.com", "Ann", T0).id
        tid = tx.insert_task(task(uid, status=G, upstream_task_id="u1")).id
        tx.post(uid, "grant", 20, "g", T0)
        tx.post(uid, "consume", -10, "c", T0, task_id=tid)
        tx.add_event(tid, "created", {"x": [1]}, T0)
        tx.add_notification(uid, "generation_success", "t", "b", T0, task_id=tid, idempotency_key="n")
        s = tx.add_session(uid, "gpt", "t", T0)
        tx.add_message(ChatMessage(id=0, session_id=s.id, role="user", content="x", created_at=T0))
        tx.add_callback(
            ProviderCallback(
                id=0,
                provider="prov",
                received_at=T0,
                signature_valid=True,
                outcome="applied",
                body="{}",
                webhook_id="w",
                task_id=tid,
            )
        )
    engine = snapshot_to_engine(mem.snapshot())
    sql = SqlStore(engine)
    assert sql.snapshot() == mem.snapshot()
    with engine.connect() as conn:
        assert conn.execute(select(schema.ai_task.c.id).where(schema.ai_task.c.result_urls.is_(None))).all()
    with sql.begin() as tx:  # ids continue after the copied ones
        assert tx.post(uid, "grant", 1, "g2", T0).entry.id == 3


def test_init_db_adds_indexes_an_older_database_lacks(db_url):
    from sqlalchemy import inspect

    from rivya_core.stores.db import init_db, make_engine
    from rivya_core.stores.schema import credit_ledger

    engine = make_engine(db_url)
    init_db(engine)
    index = next(i for i in credit_ledger.indexes if i.name == "ix_credit_ledger_type_amount")
    index.drop(engine)  # as a database made before this index existed
    assert "ix_credit_ledger_type_amount" not in {i["name"] for i in inspect(engine).get_indexes("credit_ledger")}
    init_db(engine)
    assert "ix_credit_ledger_type_amount" in {i["name"] for i in inspect(engine).get_indexes("credit_ledger")}
    engine.dispose()


def test_a_callback_whose_webhook_id_was_applied_or_deferred_is_stored_as_a_duplicate(store, uid):
    def row(webhook_id, outcome="applied"):
        return ProviderCallback(
            id=0,
            provider="prov",
            received_at=T0,
            signature_valid=True,
            outcome=outcome,
            body="{}",
            webhook_id=webhook_id,
        )

    with store.begin() as tx:
        first = tx.add_callback_unless_seen(row("wh-1"), "seen before")
        again = tx.add_callback_unless_seen(row("wh-1", "deferred"), "seen before")
        other = tx.add_callback_unless_seen(row("wh-1", "progress"), "seen before")
        tx.add_callback(row("wh-2", "rejected_signature"))
        not_seen = tx.add_callback_unless_seen(row("wh-2", "deferred"), "seen before")
        elsewhere = tx.add_callback_unless_seen(replace(row("wh-1"), provider="other"), "seen before")
    assert (first.outcome, first.detail) == ("applied", None)
    assert [(c.outcome, c.detail) for c in (again, other)] == [("duplicate", "seen before")] * 2
    assert not_seen.outcome == "deferred" and elsewhere.outcome == "applied"
    stored = {c.id: (c.outcome, c.detail) for c in store.snapshot().callbacks}
    assert [stored[c.id] for c in (first, again, other, not_seen, elsewhere)] == [
        ("applied", None),
        ("duplicate", "seen before"),
        ("duplicate", "seen before"),
        ("deferred", None),
        ("applied", None),
    ]


def test_events_keep_their_order_and_leave_with_a_rolled_back_nested_unit(store, uid):
    with store.begin() as tx:
        tid = tx.insert_task(task(uid, upstream_task_id="up-e")).id
        tx.add_event(tid, "created", {"n": 1}, T0)
        with pytest.raises(RuntimeError), store.begin() as inner:
            inner.add_event(tid, "charged", {"n": 2}, T0)
            raise RuntimeError("boom")
        tx.add_event(tid, "submitted", {"n": 3}, T0)
        assert [e.kind for e in tx.task_events(tid)] == ["created", "submitted"]  # read inside the unit
        with store.begin() as inner:
            inner.add_event(tid, "callback", {"n": 4}, T0)
        tx.add_event(tid, "succeeded", {"n": 5}, T0)
        assert tx.task_by_upstream("prov", "up-e", for_update=True).id == tid
    events = [e for e in store.snapshot().events if e.task_id == tid]
    assert [e.detail["n"] for e in events] == [1, 3, 4, 5] and [e.id for e in events] == sorted(e.id for e in events)


def test_a_recorded_callback_and_its_parked_copy_read_back_by_id(store, uid):
    from rivya_core.domain import ParkedCallback

    with store.begin() as tx:
        cb = tx.add_callback(
            ProviderCallback(
                id=0,
                provider="prov",
                received_at=T0,
                signature_valid=True,
                outcome="unknown_task",
                body='{"a": 1}',
                webhook_id="wh-9",
                upstream_task_id="up-9",
                detail="parked",
            )
        )
        plain = tx.add_callback(
            ProviderCallback(
                id=0, provider="prov", received_at=T0, signature_valid=False, outcome="rejected_signature", body="{}"
            )
        )
        tx.park_callback(
            ParkedCallback(
                id=0,
                callback_id=cb.id,
                provider="prov",
                upstream_task_id="up-9",
                received_at=T0,
                state="succeeded",
                webhook_id="wh-9",
                result_urls=["https://cdn.example/9.png"],
            )
        )
    with store.begin() as tx:
        got = tx.get_callback(cb.id)
        assert (got.outcome, got.body, got.upstream_task_id, got.detail) == (
            "unknown_task",
            '{"a": 1}',
            "up-9",
            "parked",
        )
        assert tx.get_callback(plain.id).outcome == "rejected_signature" and tx.get_callback(10**9) is None
        parked = tx.parked_of(cb.id)
        assert (parked.upstream_task_id, parked.result_urls, parked.claimed_task_id) == (
            "up-9",
            ["https://cdn.example/9.png"],
            None,
        )
        assert tx.parked_of(plain.id) is None
        tid = tx.insert_task(task(uid, upstream_task_id="up-9", provider="prov")).id
        tx.claim_parked("prov", "up-9", tid, T0)
        assert tx.parked_of(cb.id).claimed_task_id == tid
