"""Webhook deliveries: every provider callback across tasks, filtered, counted, read as text; operators
re-process a parked callback once its task exists (rivya_core.read.deliveries)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._access import access_config, can_act
from pages._cache import cached_df
from pages._imported import not_recorded_note
from pages._links import TASK_LINK, open_task, with_task_links
from pages._render import show_errors, show_table
from pages._source import enter_page, open_db
from pages._support import policy_in_force, support_service
from pages._text import plain
from rivya_core.domain import RivyaError
from rivya_core.read import deliveries
from rivya_core.support.reprocess import reprocess_callback

PAGE_SIZE = 50
RESULT = "reprocess_result"  # (callback id, "done" | "refused", headline, details, task id or None)
COLUMNS = [
    "id",
    "received_at",
    "provider",
    "outcome",
    "signature_valid",
    "webhook_id",
    "upstream_task_id",
    "task",
    "parked",
    "reprocessable",
    "detail",
]

enter_page()
st.title("Webhook deliveries")
st.caption(
    "Every provider callback as it arrived, newest first: what each delivery said and what it did. "
    "Bodies and fields are shown exactly as received."
)
engine = open_db(["provider_callback"])
not_recorded_note(engine, "callbacks")


def _window(day, end: bool) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day, time()) + (timedelta(days=1) if end else timedelta())


def _label(r: dict) -> str:
    return (
        f"#{r['id']} · {r['outcome']} · {r['provider']} · {r['upstream_task_id'] or 'no upstream id'} · "
        f"{r['received_at']:%Y-%m-%d %H:%M:%S}"
    )


def _reprocess(callback_id: int, operator: str, reason: str) -> None:
    policy, _ = policy_in_force()
    try:
        done = reprocess_callback(support_service(policy), callback_id, operator, reason)
    except RivyaError as exc:
        code = getattr(exc, "reason", None) or exc.code
        st.session_state[RESULT] = (
            callback_id,
            "refused",
            f"Re-processing callback #{callback_id} was refused ({plain(code)}).",
            exc.message,
            None,
        )
    else:
        st.session_state[RESULT] = (
            callback_id,
            "done",
            f"Callback #{callback_id} re-processed for task #{done.task_id}: {plain(done.outcome)}.",
            done.text,
            done.task_id,
        )
    st.cache_data.clear()
    st.rerun()


def show_result() -> None:
    """The latest re-process of this session, above the filters (its callback may no longer match them)."""
    result = st.session_state.get(RESULT)
    if not result:
        return
    (st.success if result[1] == "done" else st.warning)(result[2])
    st.text(result[3])  # quotes stored fields: plain text
    if result[4] is not None and st.button(f"Open task #{result[4]}", key=f"open_reprocessed_{result[4]}"):
        del st.session_state[RESULT]
        open_task(result[4])


def show_delivery(row: dict) -> None:
    fields = {k: v for k, v in row.items() if k != "body"}
    st.json({k: (v.isoformat(sep=" ") if isinstance(v, datetime) else v) for k, v in fields.items()}, expanded=False)
    st.caption("Body as received (at most 4 KiB stored)")
    st.code(row["body"] or "", language=None, wrap_lines=True)
    if row["outcome"] != "unknown_task" and not row["parked"]:
        return
    if not can_act():
        st.info("Re-processing a callback needs the operator role; you are signed in as a viewer.")
        return
    if row["claimed_task_id"] is not None:
        st.caption(
            f"Already applied to task #{row['claimed_task_id']}: re-processing it again is recorded as a "
            "duplicate and changes nothing."
        )
    elif row["reprocessable"]:
        st.caption(
            f"Task #{row['holder_task_id']} now holds this upstream id: re-processing applies this callback "
            "(and any other parked callback of that id, in arrival order) to it."
        )
    else:
        st.caption("No task holds this upstream id yet: the callback stays parked, and re-processing is refused.")
    with st.form(f"reprocess_{row['id']}"):
        signed_in = st.session_state.get("user") if access_config().enabled else None
        operator = signed_in or st.text_input("Operator name", key=f"reprocess_operator_{row['id']}")
        reason = st.text_input("Reason (kept on the task's timeline)", key=f"reprocess_reason_{row['id']}")
        if st.form_submit_button(f"Re-process callback #{row['id']}"):
            if not operator.strip() or not reason.strip():
                st.warning("Give your name and a reason: both go into the task's timeline.")
            else:
                _reprocess(row["id"], operator.strip(), reason.strip())


with show_errors():
    show_result()
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
    providers = c1.multiselect("Provider", cached_df(deliveries.delivery_providers), placeholder="all providers")
    outcomes = c2.multiselect("Outcome", deliveries.OUTCOMES, placeholder="all outcomes")
    since = c3.date_input("From (UTC)", value=None)
    until = c4.date_input("Until (UTC, inclusive)", value=None)
    args = (tuple(providers), tuple(outcomes), _window(since, False), _window(until, True))
    first = cached_df(
        deliveries.delivery_log,
        providers=args[0],
        outcomes=args[1],
        since=args[2],
        until=args[3],
        limit=PAGE_SIZE,
        offset=0,
    )
    if first.total == 0:
        st.info("No delivery matches.")
        st.stop()
    counts = pd.DataFrame({"outcome": list(first.counts), "deliveries": list(first.counts.values())})
    fig = px.bar(counts, x="outcome", y="deliveries", text="deliveries", labels={"outcome": ""})
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, width="stretch")
    pages = max(1, -(-first.total // PAGE_SIZE))
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages:,}; {first.total:,} deliveries, newest first)", 1, pages, 1))
    shown = (
        first
        if page == 1
        else cached_df(
            deliveries.delivery_log,
            providers=args[0],
            outcomes=args[1],
            since=args[2],
            until=args[3],
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
    )
    st.caption(
        f"Deliveries {(page - 1) * PAGE_SIZE + 1:,}–{(page - 1) * PAGE_SIZE + len(shown.rows):,} of {first.total:,}."
    )
    frame = with_task_links(pd.DataFrame(shown.rows))
    show_table(
        frame[COLUMNS], column_config={"task": TASK_LINK, "id": st.column_config.NumberColumn("delivery", format="%d")}
    )
    labels = {r["id"]: _label(r) for r in shown.rows}
    pick = st.selectbox("Delivery", list(labels), format_func=labels.get, key=f"delivery_pick_{args}_{page}")
    show_delivery(next(r for r in shown.rows if r["id"] == pick))
