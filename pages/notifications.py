"""Notifications: the notifications centre for one user or all, by kind, with unread counts and task links."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._cache import cached_df
from pages._imported import not_recorded_note
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_table
from pages._source import enter_page, open_db
from pages._text import plain
from rivya_core.domain import NotificationKind
from rivya_core.read import ledger_views as lv
from rivya_core.read import queries

PAGE_SIZE = 50

enter_page()
st.title("Notifications")
st.caption("The notifications centre: the durable record of each task's outcome, as the user sees it.")
engine = open_db(["notification", "account"])
not_recorded_note(engine, "notifications")

with show_errors():
    left, mid, right = st.columns([2, 1, 1])
    who = left.text_input(
        "User", placeholder="email, name or account id — empty for all users", value=st.query_params.get("user", "")
    )
    user_id = None
    if who.strip():
        found = queries.find_accounts(engine, who, limit=50)
        if not found:
            st.info(f"No account matches {plain(who)}.")
            st.stop()
        options = {r["id"]: f"{r['email']} — {r['name']} (#{r['id']})" for r in found}
        user_id = left.selectbox("Account", list(options), format_func=options.get)
    kind = mid.selectbox("Kind", ["all", *[k.value for k in NotificationKind]])
    unread_only = right.toggle("Unread only")

    kinds = cached_df(lv.notification_kinds, user_id)
    unread = int(kinds["unread"].sum()) if not kinds.empty else 0
    cols = st.columns(1 + max(1, len(kinds)))
    cols[0].metric(
        "Unread",
        f"{unread:,}",
        f"of {int(kinds['total'].sum()) if not kinds.empty else 0:,}",
        delta_color="off",
        delta_arrow="off",
    )
    for col, row in zip(cols[1:], kinds.itertuples(), strict=False):
        col.metric(
            plain(str(row.kind).replace("_", " ").capitalize()),
            f"{row.unread:,} unread",
            f"{row.total:,} in all",
            delta_color="off",
            delta_arrow="off",
        )

    kind_arg = None if kind == "all" else kind
    rows, total = cached_df(queries.notifications_centre, user_id, kind_arg, unread_only, PAGE_SIZE, 0)
    if total == 0:
        st.info("No notification matches.")
        st.stop()
    pages = max(1, -(-total // PAGE_SIZE))
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages}; {total:,} notifications, newest first)", 1, pages, 1))
        rows, total = cached_df(
            queries.notifications_centre, user_id, kind_arg, unread_only, PAGE_SIZE, (page - 1) * PAGE_SIZE
        )
    frame = with_task_links(pd.DataFrame(rows))
    frame["unread"] = frame["read_at"].isna()
    show_table(
        frame,
        width="stretch",
        hide_index=True,
        column_order=[
            "created_at",
            "unread",
            "kind",
            "title",
            "body",
            "user_id",
            "task",
            "task_status",
            "task_model",
            "read_at",
        ],
        column_config={"task": TASK_LINK, "unread": st.column_config.CheckboxColumn("unread")},
    )
