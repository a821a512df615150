"""User: start from a person — balance and ledger, their tasks (the guide's History), chat turns,
notifications with read state, and the recheck-before-rerun signals."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from pages._cache import cached_df
from pages._fork import fork_button
from pages._imported import not_recorded_note
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_table, verdict_box
from pages._source import enter_page, open_db
from pages._support import policy_in_force
from pages._text import plain
from rivya_core.domain import TaskStatus
from rivya_core.read import ledger_views as lv
from rivya_core.read import queries, reports, user_view
from rivya_core.read.chat_checklist import diagnose_chat_message
from rivya_core.read.signals import recheck_signals

WINDOWS = {"Any time": None, "Last 24 hours": 1.0, "Last 7 days": 7.0, "Last 30 days": 30.0}
STATES = [s.value for s in TaskStatus]

enter_page()
st.title("User")
engine = open_db()
policy, policy_source = policy_in_force()
ss = st.session_state


def pick_user() -> int | None:
    if "user_query" not in ss:  # a deep link (?user=) fills the box once; afterwards the box is the operator's
        ss["user_query"] = st.query_params.get("user", "")
    query = st.text_input("Find a user", key="user_query", placeholder="email, name or account id")
    if not query.strip():
        st.caption("Type an email, a name or an account id.")
        return None
    found = cached_df(queries.find_accounts, query.strip(), 50)
    if not found:
        st.warning("No account matches that.")
        return None
    labels = {int(r["id"]): f"#{r['id']} · {r['name']} · {r['email']}" for r in found}
    if ss.get("user_pick") not in labels:
        ss["user_pick"] = next(iter(labels))
    if len(labels) > 1:
        st.caption(f"{len(labels)} accounts match (at most 50).")
    return st.selectbox("Account", list(labels), format_func=labels.get, key="user_pick")


def tasks_tab(user_id: int, now) -> None:
    options = cached_df(reports.filter_options)
    c = st.columns([2, 1, 1, 1, 1])
    statuses = c[0].pills("Status", STATES, selection_mode="multi", key="user_status", format_func=str.title)
    categories = c[1].multiselect("Category", options["category"], key="user_category")
    models = c[2].multiselect("Model", options["model"], key="user_model")
    providers = c[3].multiselect("Provider", options["provider"], key="user_provider")
    window = c[4].selectbox("Created", list(WINDOWS), key="user_window")
    days = WINDOWS[window]
    since = now - timedelta(days=days) if days else None
    found = pd.DataFrame(
        cached_df(
            user_view.user_tasks,
            user_id,
            statuses=tuple(statuses or ()),
            categories=tuple(categories),
            models=tuple(models),
            providers=tuple(providers),
            since=since,
            limit=500,
        )
    )
    if found.empty:
        st.info("No task matches these filters.")
        return
    st.caption(
        f"{len(found):,} task(s), newest first (at most 500)"
        + (f"; created since {since:%Y-%m-%d %H:%M} UTC" if since else "")
        + ". *Read* is when the user opened the outcome notification."
    )
    found = with_task_links(found, "id")
    cols = [
        "task",
        "status",
        "category",
        "model",
        "provider",
        "prompt",
        "reserved_credits",
        "error_code",
        "created_at",
        "finished_at",
        "notified",
        "read_at",
    ]
    show_table(
        found[cols],
        column_config={
            "task": TASK_LINK,
            "prompt": st.column_config.TextColumn("prompt", width="medium"),
            "read_at": st.column_config.DatetimeColumn("read (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "notified": st.column_config.TextColumn("outcome notification"),
        },
        key="user_tasks_table",
    )
    ids = [int(i) for i in found["id"]]
    pick = st.selectbox(
        "Did the user see the outcome of task…", ids, key="user_seen_task", format_func=lambda i: f"#{i}"
    )
    if pick is not None:
        st.text(user_view.outcome_seen(engine, pick, now)["answer"])


def ledger_tab(user_id: int) -> None:
    rows, total = cached_df(lv.ledger_page, user_id, 1, 100)
    if rows.empty:
        st.caption("No ledger row.")
        return
    st.caption(f"The newest {len(rows):,} of {total:,} ledger rows (the Ledger page pages through all).")
    show_table(with_task_links(rows), column_config={"task": TASK_LINK})


def chat_tab(user_id: int) -> None:
    sessions = cached_df(lv.chat_sessions, user_id, 200)
    if sessions.empty:
        st.caption("No chat session.")
        return
    show_table(sessions.drop(columns=["user_id", "email"], errors="ignore"))
    labels = {int(r.session_id): f"#{r.session_id} · {r.model} · {r.messages} turn(s)" for r in sessions.itertuples()}
    session_id = st.selectbox("Session", list(labels), format_func=labels.get, key="user_session")
    turns = cached_df(lv.chat_messages, session_id, 200)
    if turns.empty:
        st.caption("No turn in this session.")
        return
    show_table(with_task_links(turns), column_config={"task": TASK_LINK})
    turn = st.selectbox(
        "Check a turn's settlement",
        [int(m) for m in turns["message_id"]],
        key="user_turn",
        format_func=lambda m: f"message #{m}",
    )
    if turn is not None:
        d = diagnose_chat_message(engine, turn, policy)
        verdict_box(d, markdown=False)
        for item in d.items:
            st.text(f"{item.question} {item.answer}")


def notifications_tab(user_id: int) -> None:
    if not_recorded_note(engine, "notifications"):
        return
    notes, total = cached_df(queries.notifications_centre, user_id, None, False, 200)
    unread = cached_df(queries.unread_counts, user_id)["total"]
    st.caption(f"{total:,} notification(s), {unread:,} unread; newest first.")
    if notes:
        frame = with_task_links(pd.DataFrame(notes))
        show_table(
            frame[["task", "kind", "title", "body", "created_at", "read_at", "task_status"]],
            column_config={"task": TASK_LINK},
        )


def signals_tab(user_id: int) -> None:
    signals = recheck_signals(engine, user_id, policy)
    if not signals:
        st.success("No recheck signal for this user: running again is fine.")
    for sig in signals:
        st.warning(f"**{plain(sig.kind.replace('_', ' '))}**: {plain(sig.message)}")


with show_errors():
    user_id = pick_user()
    if user_id is not None:
        st.query_params["user"] = str(user_id)
        ov = cached_df(lv.account_overview, user_id)
        if ov is None:
            st.warning(f"Account {user_id} does not exist in this database.")
            st.stop()
        judged = cached_df(queries.reference_now)  # the one "now" the pages and support actions judge ages at
        now = judged.at
        st.text(f"{ov['name']} · {ov['email']} · account #{ov['id']} · since {reports.format_time(ov['created_at'])}")
        unread = cached_df(queries.unread_counts, user_id)["total"]
        m = st.columns(3)
        m[0].metric("Balance", f"{ov['ledger_sum']:,}", help="The sum of the account's ledger rows")
        m[1].metric("Ledger rows", f"{ov['entries']:,}")
        m[2].metric("Unread notifications", f"{unread:,}")
        if ov["balance"] != ov["ledger_sum"]:
            st.error(f"The cached balance {ov['balance']:,} differs from the ledger sum {ov['ledger_sum']:,}.")
        fork_button(engine, user_id=user_id)
        tabs = st.tabs(["Tasks (history)", "Ledger", "Chat", "Notifications", "Recheck before running again"])
        with tabs[0]:
            tasks_tab(user_id, now)
        with tabs[1]:
            ledger_tab(user_id)
        with tabs[2]:
            chat_tab(user_id)
        with tabs[3]:
            notifications_tab(user_id)
        with tabs[4]:
            signals_tab(user_id)
        st.caption(f"{judged.caption()}, with {plain(policy_source)}.")
