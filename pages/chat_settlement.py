"""Chat settlement: sessions and messages with reserved, charged and refunded credits; tool-backed turns."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages._cache import cached_df
from pages._imported import not_recorded_note
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_table
from pages._source import enter_page, open_db
from rivya_core.read import ledger_views as lv

LIMIT = 200
enter_page()
st.title("Chat settlement")
st.caption(
    "Token-priced chat reserves an estimate before a turn, charges the real usage after it and "
    "refunds the difference once."
)
not_recorded_note(None, "chat_billing")
engine = open_db(["chat_session", "chat_message", "credit_ledger", "account"], need_rows="chat_message")

with show_errors():
    c = cached_df(lv.chat_credits)
    cols = st.columns(5)
    cols[0].metric("Messages", f"{c['messages']:,}")
    cols[1].metric("Reserved", f"{c['reserved']:,}")
    cols[2].metric("Charged", f"{c['charged']:,}")
    cols[3].metric("Refunded", f"{c['refunded']:,}")
    cols[4].metric(
        "Open reservations",
        f"{c['open_reservations']:,}",
        f"{c['open_credits']:,} credits held",
        delta_color="off",
        delta_arrow="off",
    )

    gaps = cached_df(lv.chat_gap_distribution)
    if gaps.empty:
        st.info("No settled chat turn yet.")
    else:
        fig = px.histogram(
            gaps,
            x="gap",
            y="messages",
            histfunc="sum",
            nbins=min(60, len(gaps)),
            labels={"gap": "reserved − charged (credits)", "messages": "messages"},
            title="Reserved minus charged per settled turn (what was refunded)",
        )
        fig.update_layout(yaxis_title="messages")
        st.plotly_chart(fig, width="stretch")

    st.subheader("Sessions")
    sessions = cached_df(lv.chat_sessions, None, LIMIT)
    st.caption(f"Newest {len(sessions):,} sessions.")
    show_table(sessions, width="stretch", hide_index=True)

    st.subheader("Messages")
    options = [None, *sessions["session_id"].tolist()]
    session = st.selectbox("Session", options, format_func=lambda s: "all sessions" if s is None else f"#{s}")
    messages = with_task_links(cached_df(lv.chat_messages, session, LIMIT))
    show_table(messages.drop(columns=["task_id"]), width="stretch", hide_index=True, column_config={"task": TASK_LINK})

    st.subheader("Tool-backed chat turns")
    tools = cached_df(lv.tool_backed_turns, LIMIT)
    if tools.empty:
        st.caption("No chat turn started a generation task.")
    else:
        show_table(
            with_task_links(tools).drop(columns=["task_id"]),
            width="stretch",
            hide_index=True,
            column_order=[
                "task",
                "message_id",
                "session_id",
                "user_id",
                "model",
                "status",
                "reserved_credits",
                "created_at",
            ],
            column_config={"task": TASK_LINK},
        )
