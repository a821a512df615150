"""The money and lab pages: rivya_core.read.ledger_views on a small known database, and page smoke tests.

The known database (`seed`) is written with SQLAlchemy Core so the numbers are
fixed by hand: alice has 82 credits (grant 100, a settled task, a refunded
failed task, a chat turn reserved 12 / charged 8 with a tool-backed task),
bob spent his 50 on a provider failure that was never refunded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, update
from streamlit.testing.v1 import AppTest

from rivya_core.read import ledger_views as lv
from rivya_core.stores import db
from rivya_core.stores.schema import account, ai_task, chat_message, chat_session, credit_ledger, metadata, notification

T0 = datetime(2026, 1, 1, 12, 0, 0)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _task(id_, user, status, credits, minutes, **kw):
    row = {
        "id": id_,
        "user_id": user,
        "model": "flux-pro",
        "category": "image",
        "prompt": f"prompt {id_}",
        "params": {},
        "status": status,
        "billing_type": "per_task",
        "reserved_credits": credits,
        "provider": "farm-a",
        "upstream_task_id": f"up-{id_}",
        "created_at": at(minutes),
        "submitted_at": at(minutes),
        "check_attempts": 0,
        "result_urls": None,
        "error_code": None,
        "failure_class": None,
        "settled_at": None,
        "chat_message_id": None,
        "finished_at": at(minutes + 2) if status in ("SUCCESS", "FAILED") else None,
    }
    row.update(kw)
    return row


def _entry(id_, user, kind, amount, after, minutes, task=None, msg=None):
    return {
        "id": id_,
        "user_id": user,
        "entry_type": kind,
        "amount": amount,
        "balance_after": after,
        "task_id": task,
        "chat_message_id": msg,
        "idempotency_key": f"k{id_}",
        "created_at": at(minutes),
        "note": kind,
    }


def seed(url: str):
    """Create the schema and the known rows; return the engine."""
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(account),
            [
                {"id": 1, "email": "alice@example.com", "name": "Alice Doe", "created_at": T0, "balance": 82},
                {"id": 2, "email": "bob@example.com", "name": "Bob Roe", "created_at": T0, "balance": 0},
            ],
        )
        conn.execute(
            insert(ai_task),
            [
                _task(1, 1, "SUCCESS", 10, 1, result_urls=["https://cdn/x.png"], settled_at=at(3)),
                _task(2, 1, "FAILED", 20, 4, error_code="provider_error", failure_class="provider"),
                _task(3, 2, "FAILED", 50, 5, error_code="provider_error", failure_class="provider"),
                _task(4, 1, "GENERATING", 0, 9, chat_message_id=1, billing_type="tool"),
            ],
        )
        conn.execute(
            insert(credit_ledger),
            [
                _entry(1, 1, "grant", 100, 100, 0),
                _entry(2, 1, "consume", -10, 90, 1, task=1),
                _entry(3, 1, "consume", -20, 70, 4, task=2),
                _entry(4, 1, "refund", 20, 90, 6, task=2),
                _entry(5, 1, "chat_reserve", -12, 78, 8, msg=1),
                _entry(6, 1, "chat_refund", 4, 82, 10, msg=1),
                _entry(7, 2, "grant", 50, 50, 0),
                _entry(8, 2, "consume", -50, 0, 5, task=3),
            ],
        )
        conn.execute(
            insert(chat_session), [{"id": 1, "user_id": 1, "model": "chat-small", "title": "Help", "created_at": at(7)}]
        )
        conn.execute(
            insert(chat_message),
            [
                {
                    "id": 1,
                    "session_id": 1,
                    "role": "assistant",
                    "content": "hi",
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "reserved_credits": 12,
                    "charged_credits": 8,
                    "status": "settled",
                    "created_at": at(8),
                    "settled_at": at(10),
                },
                {
                    "id": 2,
                    "session_id": 1,
                    "role": "assistant",
                    "content": "more",
                    "prompt_tokens": 10,
                    "completion_tokens": None,
                    "reserved_credits": 6,
                    "charged_credits": None,
                    "status": "reserved",
                    "created_at": at(11),
                    "settled_at": None,
                },
            ],
        )
        conn.execute(
            insert(notification),
            [
                {
                    "id": 1,
                    "user_id": 1,
                    "task_id": 1,
                    "kind": "generation_success",
                    "title": "Done",
                    "body": "b",
                    "created_at": at(3),
                    "read_at": None,
                },
                {
                    "id": 2,
                    "user_id": 1,
                    "task_id": 2,
                    "kind": "generation_failed",
                    "title": "Failed",
                    "body": "b",
                    "created_at": at(6),
                    "read_at": at(7),
                },
                {
                    "id": 3,
                    "user_id": 2,
                    "task_id": 3,
                    "kind": "generation_failed",
                    "title": "Failed",
                    "body": "b",
                    "created_at": at(7),
                    "read_at": None,
                },
            ],
        )
    return engine


@pytest.fixture
def engine(db_url):
    eng = seed(db_url)
    yield eng
    eng.dispose()


# --- ledger_views -------------------------------------------------------------------


def test_missing_tables_names_absent_ones(sqlite_url):
    eng = create_engine(sqlite_url)
    metadata.tables["account"].create(eng)
    assert db.missing_tables(eng, ["account", "chat_message"]) == ["chat_message"]


def test_account_overview(engine):
    ov = lv.account_overview(engine, 1)
    assert (ov["balance"], ov["ledger_sum"], ov["entries"]) == (82, 82, 6)
    assert ov["totals"] == {"grant": 100, "consume": -30, "refund": 20, "chat_reserve": -12, "chat_refund": 4}
    assert lv.account_overview(engine, 999) is None


def test_balance_series_is_ordered_and_limited(engine):
    s = lv.balance_series(engine, 1)
    assert s["balance_after"].tolist() == [100, 90, 70, 90, 78, 82]
    assert lv.balance_series(engine, 1, limit=2)["balance_after"].tolist() == [78, 82]


def test_ledger_page_paginates_and_filters(engine):
    page, total = lv.ledger_page(engine, 1, page=2, page_size=4)
    assert total == 6 and page["id"].tolist() == [2, 1]
    refunds, n = lv.ledger_page(engine, 1, entry_types=["refund"])
    assert n == 1 and refunds.iloc[0]["task_id"] == 2


def test_chat_credits(engine):
    c = lv.chat_credits(engine)
    assert c == {"messages": 2, "reserved": 18, "charged": 8, "refunded": 4, "open_reservations": 1, "open_credits": 6}
    assert lv.chat_credits(engine, user_id=2)["messages"] == 0


def test_chat_sessions_and_messages(engine):
    s = lv.chat_sessions(engine)
    assert s.iloc[0][["messages", "reserved", "charged", "refunded"]].tolist() == [2, 18, 8, 4]
    m = lv.chat_messages(engine, session_id=1)
    assert m["message_id"].tolist() == [2, 1]
    assert m.set_index("message_id").loc[1, "task_id"] == 4


def test_a_sessions_messages_read_only_their_own_refunds_and_tasks(sqlite_url):
    """chat_messages summed every chat refund of the ledger and grouped every tool task
    before keeping one session's 200 messages (0.24 CPU-s at a million tasks). Each
    message's refund and task are looked up through the chat-message indexes."""
    from sqlalchemy import event

    eng = seed(sqlite_url)
    statements = []
    event.listen(eng, "before_cursor_execute", lambda c, cur, sql, params, ctx, many: statements.append((sql, params)))
    try:
        assert lv.chat_messages(eng, session_id=1)["message_id"].tolist() == [2, 1]
        sql, params = statements[-1]
        with eng.connect() as conn:
            plan = " / ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
        assert "ix_credit_ledger_chat_message (chat_message_id=?)" in plan, plan
        assert "ix_ai_task_chat_message (chat_message_id=?)" in plan, plan
        assert "ix_credit_ledger_type_amount" not in plan and "chat_message_id>?" not in plan, plan
    finally:
        eng.dispose()


def test_chat_gap_distribution(engine):
    d = lv.chat_gap_distribution(engine)
    assert d.to_dict("records") == [{"gap": 4, "messages": 1}]


def test_tool_backed_turns(engine):
    t = lv.tool_backed_turns(engine)
    assert t[["task_id", "message_id", "session_id"]].values.tolist() == [[4, 1, 1]]


def test_notification_kinds(engine):
    k = lv.notification_kinds(engine).set_index("kind")
    assert k.loc["generation_failed"].tolist() == [2, 1]
    assert lv.notification_kinds(engine, user_id=1).set_index("kind").loc["generation_failed"].tolist() == [1, 0]


def test_state_timeline_ends_with_final_counts(engine):
    tl = lv.state_timeline(engine, buckets=10)
    last = tl[tl["t_s"] == tl["t_s"].max()].set_index("state")["tasks"]
    assert last.to_dict() == {"ACTIVE": 1, "SUCCESS": 1, "FAILED": 2}


def test_credit_flow_sums_to_ledger(engine):
    flow = lv.credit_flow(engine, buckets=5)
    assert flow["credits"].sum() == 82
    assert set(flow["entry_type"]) >= {"grant", "consume", "refund"}


def test_latency_histogram_counts_terminal_tasks(engine):
    h = lv.latency_histogram(engine)
    assert h["tasks"].sum() == 3 and set(h["category"]) == {"image"}


def test_views_on_empty_database(sqlite_url):
    eng = create_engine(sqlite_url)
    metadata.create_all(eng)
    assert lv.state_timeline(eng).empty and lv.credit_flow(eng).empty and lv.latency_histogram(eng).empty
    assert lv.chat_credits(eng)["messages"] == 0 and lv.chat_gap_distribution(eng).empty


def test_busiest_accounts_most_recent_activity_first(engine):
    b = lv.busiest_accounts(engine)
    assert b["id"].tolist() == [2, 1] and b["entries"].tolist() == [2, 6]


# --- pages (AppTest) ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def run_page(name: str, url: str, query: dict | None = None, timeout: float = 30) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=timeout)
    at.session_state["db_url"] = url
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.success)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def seeded_url(sqlite_url):
    seed(sqlite_url).dispose()
    return sqlite_url


@pytest.fixture
def empty_url(sqlite_url):
    eng = create_engine(sqlite_url)
    metadata.create_all(eng)
    eng.dispose()
    return sqlite_url


BAD_URL = "postgresql+psycopg://nobody@127.0.0.1:1/none"


def test_ledger_page_shows_account_and_conservation(seeded_url):
    at = run_page("ledger.py", seeded_url, {"user": "alice"})
    shown = texts(at)
    assert "Balance=82" in shown and "Refunded for tasks=20" in shown
    # the account's flows add up to its balance: 100 − 30 + 20 − 8 (chat reserved 12, refunded 4) = 82
    assert "Granted=100" in shown and "Charged for tasks=30" in shown and "Chat charged=8" in shown
    assert "Conservation holds" in shown
    # across accounts: 150 − 80 + 20 − 8 = 82, the ledger sum and the sum of balances
    assert "Granted=150" in shown and "Charged for tasks=80" in shown and "Ledger sum=82" in shown
    assert len(at.dataframe) >= 1


def test_ledger_page_names_broken_account_and_row(seeded_url):
    with create_engine(seeded_url).begin() as conn:
        conn.execute(update(account).where(account.c.id == 2).values(balance=5))
        conn.execute(update(credit_ledger).where(credit_ledger.c.id == 3).values(balance_after=71))
    at = run_page("ledger.py", seeded_url)
    assert "Conservation is broken" in texts(at)
    broken = [d.value for d in at.dataframe]
    assert any("bob@example.com" in df.to_string() for df in broken)
    assert any(3 in df["ledger_id"].tolist() for df in broken if "running_sum" in df.columns)


def test_refund_audit_page_groups_findings(seeded_url):
    at = run_page("refund_audit.py", seeded_url)
    labels = [e.label for e in at.expander]
    assert "Failed after charge without refund — 1" in labels
    assert at.get("download_button"), "CSV downloads offered"
    rows = [d.value for d in at.dataframe if "task_id" in d.value.columns]
    assert any(df["task_id"].tolist() == [3] for df in rows)


def test_notifications_page_counts_and_filters(seeded_url):
    at = run_page("notifications.py", seeded_url)
    assert "Unread=2" in texts(at)
    assert len(at.dataframe[0].value) == 3
    at = run_page("notifications.py", seeded_url, {"user": "bob"})
    assert "Unread=1" in texts(at) and len(at.dataframe[0].value) == 1


def test_chat_settlement_page(seeded_url):
    at = run_page("chat_settlement.py", seeded_url)
    shown = texts(at)
    assert "Reserved=18" in shown and "Charged=8" in shown and "Refunded=4" in shown
    tool = at.dataframe[-1].value
    assert tool["task"].tolist() == ["#4"]  # selecting the row opens task 4 in the inspector, same tab


@pytest.mark.parametrize(
    "page", ["ledger.py", "refund_audit.py", "notifications.py", "chat_settlement.py", "simulation_lab.py"]
)
def test_page_on_empty_and_bad_database(page, empty_url):
    assert run_page(page, empty_url).main  # renders with a message, no exception
    at = run_page(page, BAD_URL)
    if page != "simulation_lab.py":  # the lab writes new databases and never reads the chosen one
        assert "Cannot read this database" in texts(at)


def test_lab_charts_read_a_window_ending_at_the_latest_row(engine):
    whole = lv.state_timeline(engine, buckets=10, window_s=None)
    recent = lv.state_timeline(engine, buckets=10, window_s=60.0)  # the last minute: no task finished in it
    at_end = lambda tl: tl[tl["t_s"] == tl["t_s"].max()].set_index("state")["tasks"].to_dict()  # noqa: E731
    assert at_end(whole)["ACTIVE"] == at_end(recent)["ACTIVE"] == 1  # active now, whatever the window
    assert at_end(recent)["SUCCESS"] == at_end(recent)["FAILED"] == 0  # finished before the window
    assert recent["t_s"].min() > whole["t_s"].min()  # still seconds since the first task
    assert lv.credit_flow(engine, buckets=5, window_s=None)["credits"].sum() == 82
    assert lv.credit_flow(engine, buckets=5, window_s=1.0)["credits"].sum() < 82
    assert lv.latency_histogram(engine, window_s=None)["tasks"].sum() == 3
    assert lv.latency_histogram(engine, window_s=60.0)["tasks"].sum() < 3


def test_throughput_shows_the_latest_days_and_says_which(engine):
    from rivya_core.read import reports

    whole = reports.throughput(engine, days=None)
    start, end = whole.attrs["window"]
    assert whole["tasks"].sum() == 3 and start < end
    recent = reports.throughput(engine, days=1 / 1440)  # the last minute before the newest finish
    assert 1 <= recent["tasks"].sum() < 3
    assert recent.attrs["window"] == (end - timedelta(minutes=1), end)


def test_notification_kinds_read_a_covering_index_in_kind_order(sqlite_url):
    """Counting notifications and unread ones per kind scanned the table and sorted a million rows
    for the GROUP BY (0.5 CPU-s at a million tasks): a (kind, read_at) index covers it in order."""
    from sqlalchemy import event

    eng = seed(sqlite_url)
    statements = []
    event.listen(eng, "before_cursor_execute", lambda c, cur, sql, params, ctx, many: statements.append((sql, params)))
    try:
        lv.notification_kinds(eng)
        sql, params = statements[-1]
        with eng.connect() as conn:
            plan = " / ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
        assert "COVERING INDEX ix_notification_kind_read" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        eng.dispose()
