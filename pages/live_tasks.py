"""Live tasks: the active studio across users, refreshing on its own, stuck tasks highlighted."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from pages._common import cached_df, open_db, show_errors, task_url
from rivya_core import reports

REFRESH_S = 3

st.title("Live tasks")
st.caption("Tasks in WAITING or GENERATING across all users, oldest first. A task is *stuck* once it has "
           "been running longer than the policy's stuck threshold for its category.")
engine = open_db()
if engine is None:
    st.stop()

with show_errors():
    options = cached_df(reports.filter_options)
    f1, f2, f3, f4, f5 = st.columns(5)
    states = f1.multiselect("State", ["WAITING", "GENERATING"], default=["WAITING", "GENERATING"])
    category = f2.multiselect("Category", options["category"])
    model = f3.multiselect("Model", options["model"])
    provider = f4.multiselect("Provider", options["provider"])
    user = f5.text_input("User (email, name or id)")
    c1, c2, c3 = st.columns([1, 1, 2])
    auto = c1.toggle("Auto-refresh", value=True, help=f"Reload every {REFRESH_S} s")
    only_stuck = c2.toggle("Only stuck tasks", value=False)
    limit = c3.select_slider("Show at most", [50, 100, 200, 500], value=200)


def _style_stuck(row):
    return ["background-color: #ffe0e0" if row["stuck"] else ""] * len(row)


@st.fragment(run_every=REFRESH_S if auto else None)
def live_table() -> None:
    with show_errors():
        now, basis = reports.reference_now(engine, datetime.now(UTC).replace(tzinfo=None))
        df = reports.active_tasks(
            engine, now=now, statuses=tuple(states), category=tuple(category), model=tuple(model),
            provider=tuple(provider), user=user, limit=limit,
        )
        counts = cached_df(reports.tasks_by_state)
        m1, m2, m3 = st.columns(3)
        m1.metric("Waiting", f"{counts.get('WAITING', 0):,}")
        m2.metric("Generating", f"{counts.get('GENERATING', 0):,}")
        m3.metric("Stuck (in this view)", f"{int(df['stuck'].sum()) if not df.empty else 0:,}")
        st.caption(f"Ages measured from {now:%Y-%m-%d %H:%M:%S} UTC — {basis}.")
        if only_stuck and not df.empty:
            df = df[df["stuck"]]
        if df.empty:
            st.info("No active task matches. Start a realtime run in the Simulation lab to watch tasks move here.")
            return
        df = df.assign(inspect=df["id"].map(task_url), age_min=(df["age_s"] / 60).round(1),
                       stuck_after_min=(df["stuck_after_s"] / 60).round(1))
        cols = ["inspect", "id", "status", "stuck", "age_min", "stuck_after_min", "category", "model", "provider",
                "upstream_task_id", "email", "last_event", "last_event_at", "check_attempts", "reserved_credits"]
        st.dataframe(
            df[cols].style.apply(_style_stuck, axis=1), hide_index=True, width="stretch",
            column_config={
                "inspect": st.column_config.LinkColumn("inspect", display_text="open"),
                "age_min": st.column_config.NumberColumn("age (min)"),
                "stuck_after_min": st.column_config.NumberColumn("stuck after (min)"),
            },
        )
        if len(df) >= limit:
            st.caption(f"Showing the oldest {limit}; narrow the filters to see others.")


live_table()
