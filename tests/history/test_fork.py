"""Fork: a recorded task or account becomes a story whose run reproduces the recorded timeline."""

from __future__ import annotations

import sqlite3
import tomllib

import pytest

from rivya_core.stores.db import open_reader
from simulations.__main__ import main
from simulations.fork import check_fork, fork_story, task_timeline
from simulations.runner import run_scenario
from simulations.scenarios import load_scenario, parse_scenario


@pytest.fixture(scope="module")
def chaos_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "chaos.db"
    run_scenario(load_scenario("chaos"), f"sqlite:///{path}", tasks=400)
    return path


@pytest.fixture(scope="module")
def shortfall_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "shortfall.db"
    run_scenario(load_scenario("credit_shortfall"), f"sqlite:///{path}", tasks=300)
    return path


def _task_with(path, having: str) -> int:
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "select task_id from task_event group by task_id having " + having + " order by task_id limit 1"
        ).fetchone()
    assert row, f"no task with {having}"
    return row[0]


CASES = {
    "early then applied": "sum(kind = 'deferred') > 0 and sum(json_extract(detail, '$.outcome') = 'applied') > 0",
    "early, final lost, finished by re-check": "sum(kind = 'deferred') > 0 and sum(kind = 'callback') = 1 "
    "and sum(kind = 'succeeded' and json_extract(detail, '$.path') = "
    "'recheck') > 0",
    "duplicate callback": "sum(json_extract(detail, '$.outcome') = 'duplicate') > 0",
    "callback lost, finished by polling": "sum(kind = 'submitted') > 0 and sum(kind = 'callback') = 0 "
    "and sum(kind = 'poll') > 0 and sum(kind in ('succeeded', 'failed')) > 0",
    "refunded failure": "sum(kind = 'refunded') > 0",
}


@pytest.mark.parametrize("case", CASES)
def test_fork_then_run_reproduces_the_recorded_timeline(case, chaos_db):
    engine = open_reader(f"sqlite:///{chaos_db}")
    try:
        task = _task_with(chaos_db, CASES[case])
        story = fork_story(engine, task_id=task)
        assert task in story.task_ids
        assert check_fork(engine, story) == []
    finally:
        engine.dispose()


def test_fork_of_an_account_reproduces_its_chat_turns_tool_tasks_and_refusals(shortfall_db):
    with sqlite3.connect(shortfall_db) as conn:
        user = conn.execute(
            "select s.user_id from chat_message m join chat_session s on s.id = m.session_id "
            "join ai_task t on t.user_id = s.user_id and t.error_code = 'insufficient_credits' "
            "group by s.user_id order by count(distinct m.id) desc limit 1"
        ).fetchone()[0]
    engine = open_reader(f"sqlite:///{shortfall_db}")
    try:
        story = fork_story(engine, user_id=user)
        assert story.chat_ids and len(story.task_ids) > 1
        assert any(ev.action == "chat" for ev in story.scenario.script)
        assert check_fork(engine, story) == []
    finally:
        engine.dispose()


def test_the_cli_writes_a_story_that_run_accepts_and_refuses_to_overwrite(chaos_db, tmp_path, capsys):
    task = _task_with(chaos_db, CASES["duplicate callback"])
    out = tmp_path / "story.toml"
    db = f"sqlite:///{chaos_db}"
    assert main(["fork", "--db", db, "--task", str(task), "-o", str(out), "--check"]) == 0
    assert "reproduces the recorded timeline" in capsys.readouterr().out
    story = parse_scenario(out.read_text(), str(out))
    assert story.script and story.script[0].action in ("submit", "chat")
    before = out.read_text()
    assert main(["fork", "--db", db, "--task", str(task), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == before
    assert main(["fork", "--db", db, "--task", "999999", "-o", str(tmp_path / "x.toml")]) == 2
    assert not (tmp_path / "x.toml").exists()
    assert main(["run", str(out), "--db", f"sqlite:///{tmp_path / 'story.db'}"]) == 0


def test_qa_edits_one_line_and_the_story_answers_what_if(chaos_db, tmp_path):
    """'callback 30 s later': the task now finishes 30 s later, by the same callback."""
    task = _task_with(
        chaos_db,
        "sum(kind = 'callback') = 1 and sum(json_extract(detail, '$.outcome') = 'applied') = 1 "
        "and sum(kind = 'succeeded') = 1 and sum(kind = 'deferred') = 0 "
        "and sum(kind = 'duplicate_warning') = 0",
    )
    engine = open_reader(f"sqlite:///{chaos_db}")
    try:
        recorded = task_timeline(engine, task)
        text = fork_story(engine, task_id=task).to_toml()
    finally:
        engine.dispose()
    doc = tomllib.loads(text)
    cb = next(s for s in doc["script"] if s["action"] == "callback")
    old_line = f'at = {cb["at"]!r}\naction = "callback"'
    assert old_line in text
    edited = text.replace(old_line, f'at = {cb["at"] + 30.0!r}\naction = "callback"')
    path = tmp_path / "later.toml"
    path.write_text(edited)
    url = f"sqlite:///{tmp_path / 'later.db'}"
    run_scenario(load_scenario(path), url)
    replayed = open_reader(url)
    try:
        later = task_timeline(replayed, 1)
    finally:
        replayed.dispose()
    done = lambda tl: next(at for at, kind, _ in tl["events"] if kind == "succeeded")  # noqa: E731
    assert later["status"] == recorded["status"] == "SUCCESS"
    assert abs(done(later) - (done(recorded) + 30.0)) < 0.01
    assert [k for _, k, _ in later["events"]] == [k for _, k, _ in recorded["events"]]


def test_fork_from_postgresql_reproduces_an_early_callback_task(pg_url):
    from sqlalchemy import text

    run_scenario(load_scenario("early_callbacks"), pg_url, tasks=120)
    engine = open_reader(pg_url)
    try:
        with engine.connect() as conn:
            task = conn.execute(
                text("select task_id from task_event where kind = 'deferred' order by task_id limit 1")
            ).scalar()
        assert task is not None
        story = fork_story(engine, task_id=task)
        assert any(ev.action == "callback_early" for ev in story.scenario.script)
        assert check_fork(engine, story) == []
    finally:
        engine.dispose()
