"""Overview: tasks by state now, throughput and failures over time, credits, audit, recent generations."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._common import cached_df, open_db, page_link, show_errors, task_url
from rivya_core import queries, reports

STATE_COLORS = {"WAITING": "#9e9e9e", "GENERATING": "#1f77b4", "SUCCESS": "#2ca02c", "FAILED": "#d62728"}

st.title("Overview")
engine = open_db()
if engine is None:
    st.stop()


with show_errors():
    states = cached_df(reports.tasks_by_state)
    total = sum(states.values())
    if total == 0:
        st.info("This database has no tasks yet. Run a simulation from the Simulation lab, "
                "or pick a simulation database under *Data source* in the sidebar.")
    cols = st.columns(len(states) + 1)
    cols[0].metric("All tasks", f"{total:,}")
    for col, (state, n) in zip(cols[1:], states.items(), strict=True):
        col.metric(state.title(), f"{n:,}")

    st.subheader("Credits")
    credits = cached_df(reports.credit_totals)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Charged", f"{credits['charged']:,}", help="Task consumes plus chat reservations and charges")
    c2.metric("Refunded", f"{credits['refunded']:,}", help="Task refunds plus chat refunds")
    c3.metric("Net", f"{credits['net']:,}")
    c4.metric("Granted", f"{credits['granted']:,}")
    try:
        summary = cached_df(reports.audit_summary)
    except Exception as exc:  # the audit is another module; its failure must not hide the page
        summary = None
        st.warning(f"The audit could not run on this database: {type(exc).__name__}: {exc}")
    if summary is None:
        st.caption("Audit: not available in this version.")
    elif summary["total"] == 0:
        st.success("Audit: no violations of the billing and lifecycle invariants.")
    else:
        kinds = "; ".join(f"{title}: {n:,}" for title, n in summary["kinds"].items())
        st.error(f"Audit: **{summary['total']:,}** violation(s) of the billing and lifecycle invariants — {kinds}")
    page_link("pages/refund_audit.py", "Open the refund audit", icon=":material/policy:")

    st.subheader("Throughput and failures over time")
    flow = cached_df(reports.throughput)
    if flow.empty:
        st.caption("No finished task yet.")
    else:
        fig = px.bar(flow, x="bucket", y="tasks", color="status", color_discrete_map=STATE_COLORS,
                     labels={"bucket": "finished at (UTC)", "tasks": "tasks finished"})
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), legend_title_text="")
        st.plotly_chart(fig, width="stretch")
    failures = cached_df(reports.failures_by_code)
    if not failures.empty:
        st.caption("Failures by error code and class")
        st.dataframe(failures, hide_index=True, width="stretch")

    st.subheader("Recent generations")
    recent = pd.DataFrame(cached_df(queries.recent_generations, None, 20))
    if recent.empty:
        st.caption("No generation yet.")
    else:
        recent["inspect"] = recent["id"].map(task_url)
        show = ["inspect", "id", "status", "category", "model", "user_id", "reserved_credits",
                "error_code", "created_at", "finished_at"]
        st.dataframe(
            recent[[c for c in show if c in recent.columns]], hide_index=True, width="stretch",
            column_config={"inspect": st.column_config.LinkColumn("inspect", display_text="open")},
        )
