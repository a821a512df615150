"""AppTest of the User page: find a person, filter their tasks, see whether they read the outcome."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from tests.dashboard.conftest import texts


def _table(at, key="user_tasks_table"):
    el = next(e for e in at.dataframe if getattr(e, "key", None) == key) if key else at.dataframe[0]
    return el.value


def _mark_read(url, notification_task, at):
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("update notification set read_at = :at where task_id = :t"), {"at": at, "t": notification_task}
        )
    engine.dispose()


def test_find_a_user_and_filter_their_tasks(open_page, seeded_url):
    _mark_read(seeded_url, 1, "2026-04-01 12:05:00")
    at = open_page(seeded_url, "pages/user.py")
    assert not at.exception and at.title[0].value == "User"
    at.text_input(key="user_query").input("ana@").run()
    assert not at.exception
    assert any(t.value.startswith("Ana Lima · ana@example.com · account #1") for t in at.text)
    assert {m.label: m.value for m in at.metric}["Balance"] == "80"
    tasks = at.dataframe[0].value
    assert list(tasks["status"]) == ["FAILED", "SUCCESS"]  # newest first
    assert list(tasks["task"]) == ["#2", "#1"]  # selecting a row opens that task in the inspector
    at.selectbox(key="user_seen_task").select(1).run()
    assert any("Yes: the generation success notification" in t.value and "3 min later" in t.value for t in at.text)
    at.selectbox(key="user_seen_task").select(2).run()
    assert any("Not yet" in t.value and "still unread after 2.0 h" in t.value for t in at.text)
    assert {m.label: m.value for m in at.metric}["Unread notifications"] == "1"

    at.button_group(key="user_status").set_value(["FAILED"]).run()
    assert not at.exception
    assert list(at.dataframe[0].value["status"]) == ["FAILED"]
    assert at.session_state["user_query"] == "ana@" and at.query_params["user"] in ("1", ["1"])


def test_a_deep_link_opens_the_user_and_a_bad_query_says_so(open_page, seeded_url):
    at = open_page(seeded_url, "pages/user.py", user="2")
    assert not at.exception
    assert any(t.value.startswith("Bo Chen · bo@example.com · account #2") for t in at.text)
    at.text_input(key="user_query").input("nobody-here").run()
    assert "No account matches that." in texts(at)


def test_inspector_answers_whether_the_outcome_was_seen(open_page, seeded_url):
    _mark_read(seeded_url, 2, "2026-04-01 12:10:00")
    at = open_page(seeded_url, "pages/task_inspector.py", task="2")
    assert not at.exception
    assert any(
        t.value.startswith("Did the user see the outcome? Yes: the generation failed notification")
        and "3 min later" in t.value
        for t in at.text
    )


def test_inspector_finds_a_chat_turn_by_user_and_answers_its_checklist(open_page, tmp_path):
    from rivya_core.stores.sql import open_store
    from tests.fakes import make_service

    url = f"sqlite:///{tmp_path / 'chat.db'}"
    store = open_store(url, create=True)
    svc, clock, _ = make_service(store=store)
    vera = svc.create_account("vera@example.com", "Vera Ortiz", grant=500)
    turn = svc.chat_turn_reserve(svc.open_chat(vera.id, "parley-chat").id, "hello", 100, 200)
    svc.chat_turn_settle(turn.id, 100, 50)
    store.engine.dispose()
    at = open_page(url, "pages/task_inspector.py")
    at.text_input(key="chat_query").input("vera@example.com").run()
    assert not at.exception
    assert at.selectbox(key="chat_pick").value == turn.id
    assert any(s.value.replace("`", "").startswith("Verdict: settled") for s in at.success)


def test_the_user_page_says_why_ages_are_judged_when_they_are(open_page, seeded_url):
    """The one "now" rule (clock.judging_now) and its reason, as on the inspector and Live tasks."""
    at = open_page(seeded_url, "pages/user.py", user="1")
    assert not at.exception
    caption = next(c.value for c in at.caption if c.value.startswith("Ages judged at"))
    assert "(latest activity in the database" in caption  # the seeded database's clock stopped
