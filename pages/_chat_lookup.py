"""The inspector's chat-turn lookup: chat is billed without an ai_task, so a settlement complaint
starts from a message id, a session id or the user; the checklist is rivya_core.read.diagnose's.

    chat_lookup(engine, policy) -> None
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._cache import cached_df
from pages._links import TASK_LINK, with_task_links
from pages._render import show_table, verdict_box
from rivya_core.read import queries, user_view
from rivya_core.read.chat_checklist import diagnose_chat_message


def chat_lookup(engine, policy) -> None:
    with st.expander(
        "Chat turns: find one by message id, session id or user", expanded=bool(st.session_state.get("chat_query"))
    ):
        query = st.text_input(
            "Find a chat turn", key="chat_query", placeholder="message id, session id, user email or name"
        )
        if not query.strip():
            st.caption("Chat turns are billed by message (reserve, settle, refund the difference), not as tasks.")
            return
        found = cached_df(user_view.find_chat_messages, query.strip(), 50)
        if not found:
            st.warning("No chat turn matches that.")
            return
        labels = {
            int(r["message_id"]): f"message #{r['message_id']} · session #{r['session_id']} · "
            f"{r['status']} · {r['email'] or r['user_id']} ({r['match']})"
            for r in found
        }
        show_table(pd.DataFrame(found))
        message_id = st.selectbox("Chat turn", list(labels), format_func=labels.get, key="chat_pick")
        d = diagnose_chat_message(engine, message_id, policy)
        verdict_box(d, markdown=False)
        for item in d.items:
            st.text(f"{item.question} {item.answer}")
            if item.evidence:
                frame = pd.DataFrame(queries.jsonable(item.evidence))
                if "task_id" in frame:
                    show_table(with_task_links(frame), column_config={"task": TASK_LINK})
                else:
                    show_table(frame)
