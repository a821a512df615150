"""Overview: tasks by state now, credits, audit, money (revenue, provider cost, margin), throughput and
failures over time, recent generations."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._alert_strip import alert_strip
from pages._cache import cached_df
from pages._imported import not_recorded_note, source_facts_of
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_flows, show_table
from pages._source import enter_page, open_db
from pages._support import policy_in_force
from pages._text import plain
from rivya_core.read import queries, reports
from rivya_core.read.money import money_by

STATE_COLORS = {"WAITING": "#9e9e9e", "GENERATING": "#1f77b4", "SUCCESS": "#2ca02c", "FAILED": "#d62728"}

enter_page()
st.title("Overview")
engine = open_db()


with show_errors():
    imported = source_facts_of(engine)
    if imported.imported:
        st.caption(
            f"Imported from a {plain(imported.source)} database ({plain(imported.location or '')}): "
            "the source's own ids show beside ours. What it never recorded is not a violation:"
        )
        not_recorded_note(engine, *sorted(imported.not_recorded))
    states = cached_df(reports.tasks_by_state)
    total = sum(states.values())
    if total == 0:
        st.info(
            "This database has no tasks yet. Run a simulation from the Simulation lab, "
            "or pick a simulation database under *Data source* in the sidebar."
        )
    cols = st.columns(len(states) + 1)
    cols[0].metric("All tasks", f"{total:,}")
    for col, (state, n) in zip(cols[1:], states.items(), strict=True):
        col.metric(plain(str(state).title()), f"{n:,}")
    if total:
        alert_strip(policy_in_force()[0])

    st.subheader("Credits")
    credits = cached_df(reports.credit_totals)
    show_flows(credits, "Left in balances", "The sum of every ledger row")
    if credits["account_balances"] != credits["balance"]:
        st.warning(
            f"The accounts' cached balances sum to {credits['account_balances']:,}, not "
            f"{credits['balance']:,}: see *Conservation across accounts* on the Ledger page."
        )
    policy, policy_source = policy_in_force()
    summary = cached_df(reports.audit_summary, policy)
    if summary is None:
        st.caption("Audit: not available in this version.")
    elif summary["total"] is None:
        st.info(
            "Audit: no stored result for this policy yet. On a database this size the audit takes "
            "seconds, so this page shows the latest stored one: run it on the Refund audit page "
            "(or `python -m rivya_core audit --record`)."
        )
    elif summary["total"] == 0:
        st.success("Audit: no violations of the billing and lifecycle invariants.")
    else:
        kinds = "; ".join(f"{title}: {n:,}" for title, n in summary["kinds"].items())
        st.error(f"Audit: **{summary['total']:,}** violation(s) of the billing and lifecycle invariants — {kinds}")
    if summary is not None and summary["ran_at"] is not None:
        since = "" if summary["fresh"] else " Rows were added since: run it again on the Refund audit page."
        st.caption(
            reports.audit_provenance(
                summary["stored"],
                summary["ran_at"],
                summary["stored_by"],
                summary["judged_at"],
                summary["duration_s"],
                plain,
            )
            + since
        )
    st.caption(f"Audit judged with {plain(policy_source)}.")
    st.page_link("pages/refund_audit.py", label="Open the refund audit", icon=":material/policy:")

    st.subheader("Money")
    money = cached_df(money_by, policy)
    tot = money["total"]
    cols = st.columns(3)
    cols[0].metric(f"Revenue ({money['currency']})", f"{tot['revenue']:,.2f}")
    cols[1].metric(f"Provider cost ({money['currency']})", f"{tot['provider_cost']:,.2f}")
    cols[2].metric(f"Margin ({money['currency']})", f"{tot['margin']:,.2f}")
    st.caption(
        f"Revenue: net credits × {money['credit_value']:g} {money['currency']} a credit ({plain(policy_source)}); "
        f"provider cost at the catalogue's provider prices: exact for {tot['cost_exact_tasks']:,} tasks "
        f"(reported run seconds, outputs, chat tokens), estimated for {tot['cost_estimated_tasks']:,} from "
        "their submitted → finished time (queueing included: an upper bound)."
    )
    if money["provider"]:
        by_provider = (
            pd.DataFrame(money["provider"])
            .merge(pd.DataFrame(money["daily"]), on="name", how="left")
            .rename(columns={"name": "provider"})
        )
        show_table(
            by_provider,
            hide_index=True,
            width="stretch",
            column_config={
                "ci95": st.column_config.NumberColumn(
                    "± 95% CI", help="half width of the 95% t interval of the mean daily margin, over days"
                )
            },
        )
        with st.expander("By model"):
            show_table(pd.DataFrame(money["model"]).rename(columns={"name": "model"}), hide_index=True, width="stretch")

    st.subheader("Throughput and failures over time")
    windows = {"Last 7 days": 7.0, "Last 30 days": 30.0, "Whole history": None}
    window = st.segmented_control(
        "Window",
        list(windows),
        default="Last 7 days",
        key="throughput_window",
        help="Ends at the newest finished task; longer windows read more rows",
    )
    flow = cached_df(reports.throughput, windows.get(window or "Last 7 days"))
    if flow.empty:
        st.caption("No finished task yet.")
    else:
        start, end = flow.attrs.get("window", (None, None))
        st.caption(
            f"Tasks finished from {reports.format_time(start)} to {reports.format_time(end)} UTC "
            f"({(window or 'Last 7 days').lower()} of this database's history)."
        )
        fig = px.bar(
            flow,
            x="bucket",
            y="tasks",
            color="status",
            color_discrete_map=STATE_COLORS,
            labels={"bucket": "finished at (UTC)", "tasks": "tasks finished"},
        )
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), legend_title_text="")
        st.plotly_chart(fig, width="stretch")
    failures = cached_df(reports.failures_by_code)
    if not failures.empty:
        st.caption("Failures by error code and class")
        show_table(failures, hide_index=True, width="stretch")

    st.subheader("Recent generations")
    recent = pd.DataFrame(cached_df(queries.recent_generations, None, 20))
    if recent.empty:
        st.caption("No generation yet.")
    else:
        recent = with_task_links(recent, "id")
        show = [
            "task",
            "id",
            "status",
            "category",
            "model",
            "user_id",
            "reserved_credits",
            "error_code",
            "created_at",
            "finished_at",
        ]
        show_table(
            recent[[c for c in show if c in recent.columns]],
            hide_index=True,
            width="stretch",
            column_config={"task": TASK_LINK},
        )
