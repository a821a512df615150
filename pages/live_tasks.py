"""Live tasks: the active studio across users, refreshing on its own, stuck tasks highlighted.

When nothing is running it says so and offers a one-click realtime demo run
(the baseline scenario in a background process, via pages._runs).
"""

from __future__ import annotations

import streamlit as st

from pages._access import operator_only
from pages._cache import cached_df
from pages._links import OPEN_HELP, PICKED
from pages._render import show_errors
from pages._runs import realtime_run, start_realtime_run
from pages._source import ROOT, current_url, enter_page, open_db, use_database
from pages._support import policy_in_force
from pages._text import plain
from rivya_core.domain import RivyaError
from rivya_core.read import queries, reports

REFRESH_S = 3
DEMO_SCENARIO = ROOT / "data" / "scenarios" / "baseline.toml"
DEMO_SPEED = 20.0  # simulated seconds per wall second
DEMO_TASKS = 300

enter_page()
st.title("Live tasks")
st.caption(
    "Tasks in WAITING or GENERATING across all users, oldest first. A task is *stuck* once it has "
    "been running longer than the policy's stuck threshold for its category."
)
engine = open_db()

with show_errors():
    policy, policy_source = policy_in_force()
    options = cached_df(reports.filter_options)
    f1, f2, f3, f4, f5 = st.columns(5)
    states = f1.pills(
        "State",
        ["WAITING", "GENERATING"],
        selection_mode="multi",
        default=["WAITING", "GENERATING"],
        format_func=str.title,
    )
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


def offer_demo_run() -> None:
    """Nothing is active: say so, and start the baseline scenario in real time on request."""
    run = realtime_run()
    if run and run["url"] == current_url() and run["popen"].poll() is None:
        st.info(
            "The realtime run is warming up: no task is waiting or generating at this moment. "
            "This page refreshes on its own."
        )
        return
    st.info(
        "**Nothing is running right now.** No task in this database is waiting or generating, "
        "so there is nothing live to watch: every task here has finished."
    )
    if not DEMO_SCENARIO.is_file():
        st.caption("Start a realtime run from the Simulation lab to watch tasks move here.")
        return
    st.caption(
        f"A realtime demo runs the `baseline` scenario at {DEMO_SPEED:g}× speed ({DEMO_TASKS} tasks) "
        "in the background, into a new database under data/runs, and switches this dashboard to it."
    )
    if not operator_only("Starting a realtime run"):
        return
    if st.button("Start a realtime demo run", type="primary", icon=":material/play_arrow:"):
        with st.spinner("Starting the realtime run…"):
            try:
                run = start_realtime_run(DEMO_SCENARIO, DEMO_SPEED, DEMO_TASKS)
            except RivyaError as exc:  # a quota, or the scenario file
                st.error(f"The realtime run was not started: {plain(exc.message)}")
                return
        code = run["popen"].poll()
        if code not in (None, 0):
            st.error(f"The realtime run stopped at once (status {code}); see {plain(run['log'])}.")
            return
        use_database(run["url"])
        st.rerun()


@st.fragment(run_every=REFRESH_S if auto else None)
def live_table() -> None:
    with show_errors():
        counts = reports.tasks_by_state(engine)  # not cached: it must move with a realtime run
        if counts.get("WAITING", 0) + counts.get("GENERATING", 0) == 0:
            offer_demo_run()
            return
        judged = queries.reference_now(engine)  # the one rule: pages, checklist, audit and support actions
        now = judged.at
        df = reports.active_tasks(
            engine,
            now=now,
            statuses=tuple(states),
            category=tuple(category),
            model=tuple(model),
            provider=tuple(provider),
            user=user,
            limit=limit,
            policy=policy,
        )
        m1, m2, m3 = st.columns(3)
        m1.metric("Waiting", f"{counts.get('WAITING', 0):,}")
        m2.metric("Generating", f"{counts.get('GENERATING', 0):,}")
        m3.metric("Stuck (in this view)", f"{int(df['stuck'].sum()) if not df.empty else 0:,}")
        st.caption(f"{judged.caption()}. Stuck thresholds: {plain(policy_source)}.")
        if only_stuck and not df.empty:
            df = df[df["stuck"]]
        if df.empty:
            st.info("No active task matches these filters.")
            return
        cols = [
            "id",
            "status",
            "stuck",
            "age_s",
            "stuck_after_s",
            "category",
            "model",
            "provider",
            "upstream_task_id",
            "email",
            "last_event",
            "last_event_at",
            "check_attempts",
            "reserved_credits",
        ]
        styled = (
            df[cols]
            .style.apply(_style_stuck, axis=1)
            .format(reports.format_duration, subset=["age_s", "stuck_after_s"])
            .format(reports.format_time, subset=["last_event_at"])
            .format(na_rep="—", subset=["upstream_task_id", "email", "last_event"])
        )
        event = st.dataframe(
            styled,
            hide_index=True,
            width="stretch",
            on_select="rerun",
            selection_mode="single-row",
            key="live_pick",
            column_config={
                "id": st.column_config.NumberColumn("task", format="%d", width="small", help=OPEN_HELP),
                "age_s": st.column_config.Column(
                    "age", width="small", help="Since submission (creation while waiting)"
                ),
                "stuck_after_s": st.column_config.Column(
                    "stuck after", width="small", help="The policy's threshold for this category"
                ),
                "upstream_task_id": st.column_config.Column("upstream id"),
                "last_event": st.column_config.Column("last event"),
                "last_event_at": st.column_config.Column("last event at (UTC)"),
                "check_attempts": st.column_config.NumberColumn("checks", format="%d"),
                "reserved_credits": st.column_config.NumberColumn("credits", format="%d"),
            },
        )
        picked = event.selection.rows
        if picked:  # the inspector, in this tab: app.py opens it at the start of the whole-app run
            st.session_state[PICKED] = (str(int(df.iloc[picked[0]]["id"])), st.query_params.get("db"))
            st.rerun()
        st.caption(f"{OPEN_HELP}.")
        if len(df) >= limit:
            st.caption(f"Showing the oldest {limit}; narrow the filters to see others.")


live_table()
