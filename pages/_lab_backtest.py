"""The Simulation lab's Backtest tab: two billing policies re-applied to the current data source."""

from __future__ import annotations

from datetime import datetime, time

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._access import operator_only
from pages._jobs import start_job
from pages._render import show_table
from pages._source import current_url
from pages._text import plain
from rivya_core.policy import BillingPolicy
from rivya_core.stores import db
from simulations.backtest import describe_window
from simulations.scenarios import POLICY_DIR


def _policy_files() -> dict[str, object]:
    return {p.stem: p for p in sorted(POLICY_DIR.glob("*.toml"))}


def backtest_tab() -> None:
    st.caption(
        "Re-applies two billing policies to **every recorded task and chat turn of the current data "
        "source** ("
        + plain(db.safe_url(current_url()))
        + "). The exact part re-prices the history as it happened; the "
        "timing part re-runs it trace-driven (recorded arrivals, generation times, callbacks and outcomes) "
        "so only the policy differs."
    )
    files = _policy_files()
    names = list(files)
    if len(names) < 2:
        st.warning("A backtest needs at least two policy files under data/policies.")
        return
    c = st.columns(4)
    a = c[0].selectbox("Policy A", names, index=names.index("default") if "default" in names else 0, key="bt_a")
    b = c[1].selectbox(
        "Policy B", names, key="bt_b", index=names.index("refund_everything") if "refund_everything" in names else 1
    )
    since = c[2].date_input("From (UTC)", value=None, key="bt_since")
    until = c[3].date_input("Until (UTC, exclusive)", value=None, key="bt_until")
    timing = st.toggle(
        "Also re-run the timing part (a trace-driven simulation: slower on a large history)",
        value=False,
        key="bt_timing",
    )
    if operator_only("Running a backtest") and st.button("Backtest in the background", type="primary", key="bt_run"):
        start_job(
            "backtest",
            {
                "url": current_url(),
                "policies": [BillingPolicy.load(files[a]).to_dict(), BillingPolicy.load(files[b]).to_dict()],
                "since": datetime.combine(since, time()).isoformat() if since else None,
                "until": datetime.combine(until, time()).isoformat() if until else None,
                "timing": timing,
            },
            f"backtest of {db.safe_url(current_url())}: {a} vs {b}" + (" with timing" if timing else ""),
            tasks=0,
            users=0,
        )  # replays recorded history: no new tasks; counts as a run at once


def show_backtest_job(job: dict) -> None:
    _show(job["result"])


def _show(result: dict) -> None:
    pa, pb = result["policies"]
    sc = result["self_check"]
    if sc["ok"]:
        st.success(
            f"Self-check passed: replaying the history under its recorded policy {plain(sc['policy'])} "
            f"reproduces its ledger to the credit ({sc['rows_compared']:,} rows). Source of that policy: "
            f"{plain(sc['recorded_policy_from'])}."
        )
    else:
        st.error(
            "Self-check FAILED: the recorded policy does not reproduce this database's ledger. The figures "
            "below are not trustworthy; the first diverging rows:"
        )
        st.json(sc["first_diverging_rows"], expanded=True)
    w = result["window"]
    st.caption(
        f"{w['tasks']:,} tasks, {w['chat_turns']:,} chat turns, {w['ledger_rows']:,} ledger rows, "
        f"{plain(describe_window(w))}."
    )
    rows = [
        {
            "kpi": k,
            f"A: {pa}": v["a"],
            f"B: {pb}": v["b"],
            "B − A": v["diff"],
            "95% CI": "",
            "figure": "exact",
            "meaning": v["meaning"],
        }
        for k, v in result["exact"]["kpis"].items()
    ]
    timing = result.get("timing")
    if timing:
        rows += [
            {
                "kpi": k,
                f"A: {pa}": v["a"],
                f"B: {pb}": v["b"],
                "B − A": v["diff"],
                "95% CI": f"[{v['ci95'][0]:,.1f}, {v['ci95'][1]:,.1f}]" if v["ci95"] else "",
                "figure": "simulated",
                "meaning": v["meaning"],
            }
            for k, v in timing["kpis"].items()
        ]
    st.subheader("KPIs")
    show_table(pd.DataFrame(rows), hide_index=True)
    st.caption(
        "**exact**: re-applied to every recorded task and chat turn (prices, refunds, chat reservation and "
        "settlement, duplicate blocking, balances through the ledger in order); no sampling error. "
        "**simulated**: from the trace-driven re-run, with a 95% bootstrap interval over "
        + (f"{timing['units']} {timing['resampled']}." if timing else "days or accounts (run it above).")
    )
    st.subheader("Per model (exact)")
    by_model = pd.DataFrame(result["exact"]["by_model"])
    if not by_model.empty:
        cols = ["model"] + [c for c in by_model.columns if c.endswith("_diff")]
        show_table(
            by_model[cols].rename(columns=lambda c: c.removesuffix("_diff") + " (B − A)" if c != "model" else c),
            hide_index=True,
        )
        fig = px.bar(
            by_model,
            x="model",
            y="revenue_diff",
            title=f"Revenue difference by model ({pb} − {pa})",
            labels={"revenue_diff": "credits, B − A", "model": ""},
        )
        st.plotly_chart(fig, width="stretch")
    if timing:
        rel = [
            {
                "kpi": k,
                "diff": 100 * v["diff"] / abs(v["a"]),
                "lo": 100 * v["ci95"][0] / abs(v["a"]),
                "hi": 100 * v["ci95"][1] / abs(v["a"]),
            }
            for k, v in timing["kpis"].items()
            if v["ci95"] and v["a"]
        ]
        skipped = [k for k, v in timing["kpis"].items() if not (v["ci95"] and v["a"])]
        if rel:
            ci = pd.DataFrame(rel)
            ci["err_plus"] = ci["hi"] - ci["diff"]
            ci["err_minus"] = ci["diff"] - ci["lo"]
            fig = px.scatter(
                ci,
                x="diff",
                y="kpi",
                error_x="err_plus",
                error_x_minus="err_minus",
                labels={"diff": f"B − A, % of A ({pb} vs {pa})", "kpi": ""},
                title="Simulated KPIs: paired difference with 95% bootstrap CI",
            )
            fig.add_vline(x=0, line_dash="dot")
            st.plotly_chart(fig, width="stretch")
        if skipped:
            st.caption("Not charted (A is 0, so no relative change): " + ", ".join(skipped))
    else:
        st.caption("The confidence-interval chart comes from the timing part: switch it on and run again.")
