"""Support starts from a person: their tasks, whether they saw an outcome, their chat turns (and the CLI)."""

from __future__ import annotations

import json

import pytest

from rivya_core.read import queries, user_view
from rivya_core.stores.sql import open_store
from tests.cli import run_main
from tests.fakes import IMAGE, callback, make_service


@pytest.fixture
def env(sqlite_url):
    store = open_store(sqlite_url, create=True)
    svc, clock, providers = make_service(store=store)
    vera = svc.create_account("vera@example.com", "Vera Ortiz", grant=500)
    other = svc.create_account("other@example.com", "Other", grant=500)
    yield svc, clock, providers, store, vera, other
    store.engine.dispose()


def test_tasks_filter_and_outcome_seen(env):
    svc, clock, providers, store, vera, other = env
    done = svc.submit(vera.id, IMAGE)
    svc.handle_callback("lumen", *callback(clock, done.upstream_task_id, msg_id="a"))
    running = svc.submit(vera.id, {**IMAGE, "prompt": "still going"})
    svc.submit(other.id, IMAGE)
    mine = user_view.user_tasks(store.engine, vera.id)
    assert [t["id"] for t in mine] == [running.id, done.id]
    assert [t["id"] for t in user_view.user_tasks(store.engine, vera.id, statuses=("SUCCESS",))] == [done.id]
    assert user_view.user_tasks(store.engine, vera.id, models=("nope",)) == []
    assert mine[1]["notified"] == "generation_success" and mine[1]["read_at"] is None

    assert user_view.outcome_seen(store.engine, running.id)["answer"].startswith("No outcome notification")
    seen = user_view.outcome_seen(store.engine, done.id, clock.now())
    assert seen["seen"] is False and "still unread" in seen["answer"]
    [note] = [n for n in store.snapshot().notifications if n.task_id == done.id]
    clock.advance(120)
    queries.mark_read(store.engine, [note.id], clock.now())
    seen = user_view.outcome_seen(store.engine, done.id)
    assert seen["seen"] is True and seen["answer"].endswith("2 min later.")


def test_chat_turns_are_found_by_message_session_and_user_and_diagnosed_from_the_cli(env):
    svc, clock, providers, store, vera, other = env
    session = svc.open_chat(vera.id, "parley-chat", "help")
    turn = svc.chat_turn_reserve(session.id, "hello", 100, 200)
    svc.chat_turn_settle(turn.id, 100, 50)
    second = svc.chat_turn_reserve(session.id, "again", 100, 200)
    assert [r["message_id"] for r in user_view.find_chat_messages(store.engine, str(turn.id))][0] == turn.id
    by_session = user_view.find_chat_messages(store.engine, str(session.id))
    assert {r["message_id"] for r in by_session} >= {turn.id, second.id}
    by_user = user_view.find_chat_messages(store.engine, "vera@example.com")
    assert [r["message_id"] for r in by_user] == [second.id, turn.id] and by_user[0]["match"] == "user"
    assert user_view.find_chat_messages(store.engine, "other@example.com") == []

    url = store.engine.url.render_as_string(hide_password=False)
    out = _cli("diagnose", "--chat-message", str(turn.id), "--db", url, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["subject"] == "chat_message" and doc["id"] == turn.id and doc["verdict_code"] == "chat_settled_refunded"
    text_out = _cli("diagnose", "--chat-message", str(turn.id), "--db", url)
    assert "chat message #" in text_out.stdout and "Verdict:" in text_out.stdout
    for args in (
        ["diagnose", "--db", url],
        ["diagnose", "1", "--chat-message", "2", "--db", url],
        ["diagnose", "--chat-message", "999", "--db", url],
    ):
        bad = _cli(*args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def _cli(*args):
    return run_main("rivya_core", *args)
