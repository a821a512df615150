"""Simulation lab: run a scenario with edited knobs, compare two billing policies, sweep policies and
scenario keys (each in a background job, listed and followed below the tabs), and start a realtime run
to watch on Live tasks."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._access import operator_only
from pages._cache import cached_at
from pages._jobs import jobs_panel, start_job
from pages._render import show_table
from pages._runs import new_run_url, realtime_run, start_realtime_run
from pages._source import enter_page, get_engine, runs_dir, use_database
from pages._text import plain
from rivya_core.audit import ledger_sums
from rivya_core.credits import chat_figures
from rivya_core.domain import RivyaError
from rivya_core.policy import BillingPolicy
from rivya_core.read import ledger_views as lv
from simulations import kpis, quotas
from simulations.runner import explain_tasks
from simulations.scenarios import POLICY_DIR, describe_own_policy, list_scenarios, load_scenario
from simulations.sweep import Sweep, fmt, parse_grid, pct
from simulations.writer import read_sim_runs

enter_page()

FAULTS = {
    "Callbacks": ["early", "lost", "duplicate", "reorder", "forged", "stale", "malformed"],
    "Submission": ["submit_refused", "submit_error", "submit_timeout"],
    "Generation": ["content_policy", "model_error", "upstream_timeout", "lost_job", "no_urls"],
}
STATE_COLORS = {"ACTIVE": "#1f77b4", "SUCCESS": "#2ca02c", "FAILED": "#d62728"}
ARRIVALS_HELP = (
    "Arrivals: generation requests and chat turns, what `--tasks` counts. A run's tasks are its "
    "ai_task rows: one per generation request, one per tool-backed chat turn, one per user rerun; "
    "a plain chat turn is billed apart and makes no task."
)


def policies() -> dict[str, Path | None]:
    return {"the scenario's own": None, **{p.stem: p for p in sorted(POLICY_DIR.glob("*.toml"))}}


def describe_policy(policy: BillingPolicy, label: str = "") -> None:
    """The product question a policy answers (its `description`), as plain text."""
    st.text(f"{label}{policy.name}: {policy.description or 'no description in its file'}")


def pick_scenario(key: str):
    names = {p.stem: p for p in list_scenarios()}
    if not names:
        st.warning("No scenario files under data/scenarios.")
        st.stop()
    name = st.selectbox(
        "Scenario",
        list(names),
        key=f"{key}_scenario",
        index=list(names).index("baseline") if "baseline" in names else 0,
    )
    try:
        sc = load_scenario(names[name])
    except RivyaError as exc:
        st.error(f"{plain(names[name].name)}: {plain(exc.message)}")
        st.stop()
    if sc.description:
        st.caption(sc.description)
    return sc


def edit_knobs(sc):
    """The main knobs as widgets; returns the edited scenario (dataclasses.replace) and the run size.

    Every widget's key names the scenario, so each scenario's knobs start from its own file's values
    (a value edited for one scenario never carries over to another) and untouched knobs change nothing:
    the run is then exactly `python -m simulations run SCENARIO --seed S --tasks N`."""
    k = f"knob_{sc.name}_"
    c = st.columns(4)
    tasks = c[0].number_input("Arrivals", 10, 200_000, sc.tasks or 500, step=100, key=k + "tasks", help=ARRIVALS_HELP)
    seed = c[1].number_input("Seed", 0, 2**31 - 1, sc.seed, key=k + "seed")
    users = c[2].number_input("Users", 1, 100_000, sc.population.users, key=k + "users")
    callbacks = c[3].toggle(
        "Callbacks on", sc.callbacks, help="Off: polling is the only completion path", key=k + "callbacks"
    )
    broke = st.slider(
        "Users starting with almost no credits", 0.0, 1.0, sc.population.broke_fraction, 0.05, key=k + "broke"
    )
    farm, changed = sc.farm, {}
    for group, names in FAULTS.items():
        with st.expander(f"{group} fault rates", expanded=group == "Callbacks"):
            cols = st.columns(len(names))
            for col, name in zip(cols, names, strict=True):
                value = col.number_input(
                    name.replace("_", " "),
                    0.0,
                    1.0,
                    float(getattr(farm, name)),
                    0.01,
                    format="%.2f",
                    key=f"{k}fault_{name}",
                )
                if value != getattr(farm, name):
                    changed[name] = value
    choice = st.selectbox("Billing policy", list(policies()), key=k + "policy")
    policy = sc.policy
    if policies()[choice] is not None:
        try:
            policy = BillingPolicy.load(policies()[choice])
        except RivyaError as exc:
            st.error(plain(exc.message))
            st.stop()
        describe_policy(policy)
    else:  # built from the scenario's [policy] table, not read from a file: described by the file it equals
        st.text(describe_own_policy(sc))
    edited = replace(
        sc,
        seed=int(seed),
        callbacks=callbacks,
        policy=policy,
        population=replace(sc.population, users=int(users), broke_fraction=broke),
        farm=replace(sc.farm, **changed),
        providers={n: replace(p, **changed) for n, p in sc.providers.items()},
    )
    return edited, int(tasks)


def show_run(url: str) -> None:
    """The summary stored in the run database and charts queried from it."""
    try:
        runs = read_sim_runs(get_engine(url))
    except RivyaError as exc:
        st.error(plain(exc.message))
        return
    if not runs:
        st.info("This database holds no recorded simulation run.")
        return
    s = runs[-1]["summary"]
    credits = s.get("credits", {})
    chat = chat_figures(cached_at(url, ledger_sums))  # the one definition, over the run's own ledger
    c = st.columns(8)
    explained = explain_tasks(s.get("tasks", 0), s.get("arrivals"), s.get("task_sources"))
    c[0].metric("Tasks", f"{s.get('tasks', 0):,}", help=explained or "ai_task rows")
    c[1].metric("Charged for tasks", f"{credits.get('charged', 0):,}", help="`consume` rows")
    c[2].metric("Refunded for tasks", f"{credits.get('refunded', 0):,}", help="`refund` rows")
    c[3].metric("Chat charged", f"{chat.charged:,}", help="What users were finally charged for chat turns")
    c[4].metric(
        "Chat reserved",
        f"{chat.reserved:,}",
        help=f"Held before the turns ran; {chat.refunded:,} of it returned unused at settlement",
    )
    c[5].metric(
        "Net",
        f"{credits.get('charged', 0) - credits.get('refunded', 0) + chat.charged:,}",
        help="Charged for tasks − refunded for tasks + chat charged",
    )
    c[6].metric("Violations", f"{len(s.get('violations', [])):,}")
    c[7].metric("Liveness", "ok" if s.get("liveness_ok") else "FAILED")
    st.caption(
        f"Scenario {plain(s.get('scenario_name'))}, seed {plain(s.get('seed'))}, fingerprint "
        f"{plain(str(s.get('fingerprint', ''))[:16])}, {float(s.get('sim_seconds') or 0):,.0f} simulated "
        f"seconds. Database: {plain(url)}"
    )
    if explained:
        st.caption(explained)
    for v in s.get("violations", []):
        st.error(f"{plain(v.get('kind'))}: {plain(v.get('message'))}")

    windows = {"Last 7 simulated days": lv.WINDOW_S, "Last 30 simulated days": 30 * 86400.0, "Whole run": None}
    window = st.segmented_control(
        "Charts show",
        list(windows),
        default="Last 7 simulated days",
        key=f"window_{url}",
        help="Long runs read only the rows of this window",
    )
    window = window or "Last 7 simulated days"
    st.caption(
        f"Charts below: {window.lower()} (a run shorter than the window is shown whole); "
        "succeeded and failed count from the window's start."
    )
    window_s = windows[window]
    left, right = st.columns(2)
    timeline = cached_at(url, lv.state_timeline, 80, window_s)
    if not timeline.empty:
        left.plotly_chart(
            px.area(
                timeline,
                x="t_s",
                y="tasks",
                color="state",
                color_discrete_map=STATE_COLORS,
                labels={"t_s": "simulated seconds since the first task"},
                title=f"Task states ({window.lower()})",
            ),
            width="stretch",
        )
    paths = pd.DataFrame(
        {"path": list(s.get("completion_paths", {})), "tasks": list(s.get("completion_paths", {}).values())}
    )
    if not paths.empty:
        right.plotly_chart(px.bar(paths, x="path", y="tasks", title="How tasks completed"), width="stretch")
    left, right = st.columns(2)
    latency = cached_at(url, lv.latency_histogram, 40, window_s)
    if not latency.empty:
        p = s.get("latency_percentiles", {})
        fig = px.bar(
            latency,
            x=latency["latency_s"] + latency["width_s"] / 2,
            y="tasks",
            color="category",
            labels={"x": "time to terminal (s)"},
            title=f"Time to terminal ({window.lower()}); whole run "
            + ", ".join(f"{k} {v:,.0f} s" for k, v in p.items()),
        )
        fig.update_traces(width=float(latency["width_s"].iloc[0]))
        left.plotly_chart(fig, width="stretch")
    flow = cached_at(url, lv.credit_flow, 60, window_s)
    flow = flow[~flow["entry_type"].isin(["grant", "adjustment"])]
    if not flow.empty:
        flow = flow.assign(credits=flow["credits"].abs())
        fig = px.bar(
            flow,
            x=flow["t_s"] + flow["width_s"] / 2,
            y="credits",
            color="entry_type",
            labels={"x": "simulated seconds", "credits": "credits moved"},
            title="Credit flows: charges, reservations and refunds",
        )
        fig.update_traces(width=float(flow["width_s"].iloc[0]))
        right.plotly_chart(fig, width="stretch")
        right.caption(f"Grants (starting balances and top-ups): {credits.get('granted', 0):,} credits, not drawn.")
    with st.expander("Whole summary"):
        st.json(s, expanded=False)
    if st.button("Read this database in every page", key=f"use_{url}"):
        use_database(url)
        st.rerun()


def show_run_job(job: dict) -> None:
    show_run(job["result"]["url"])


def show_compare(job: dict) -> None:
    result = job["result"]
    table = pd.DataFrame(result["table"])
    pa, pb = result["policies"]
    show_table(
        pd.DataFrame(
            [
                {
                    "KPI": r["label"],
                    f"A: {pa}": r["policy_a"],
                    f"B: {pb}": r["policy_b"],
                    "B − A": r["diff"],
                    "95% CI": "n/a" if math.isnan(r["ci_low"]) else f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                    "change": pct(r.get("rel", math.nan)),
                    "change, 95% CI": "n/a"
                    if math.isnan(r.get("rel_ci_low", math.nan))
                    else f"[{pct(r['rel_ci_low'])}, {pct(r['rel_ci_high'])}]",
                    "what it counts": r.get("meaning") or kpis.meaning(r["kpi"]),
                }
                for r in result["table"]
            ]
        ),
        width="stretch",
        hide_index=True,
    )
    st.caption("change: B − A as a share of A's mean over the replications.")
    for note in result.get("notes", []):
        st.text(note)  # names models and policies: plain text
    base = table["policy_a"].abs().where(table["policy_a"] != 0)
    rel = table.assign(
        diff_pct=100 * table["diff"] / base, lo=100 * table["ci_low"] / base, hi=100 * table["ci_high"] / base
    ).dropna(subset=["diff_pct"])
    rel["err_plus"] = (rel["hi"] - rel["diff_pct"]).fillna(0)
    rel["err_minus"] = (rel["diff_pct"] - rel["lo"]).fillna(0)
    fig = px.scatter(
        rel,
        x="diff_pct",
        y="label",
        error_x="err_plus",
        error_x_minus="err_minus",
        labels={"diff_pct": f"B − A, % of A ({pb} vs {pa})", "label": ""},
        title=f"Paired difference with 95% CI, {result['replications']} replications",
    )
    fig.add_vline(x=0, line_dash="dot")
    st.plotly_chart(fig, width="stretch")
    skipped = sorted(set(table["label"]) - set(rel["label"]))
    if skipped:
        st.caption("Not charted (A is 0, so no relative change): " + ", ".join(skipped))
    if any(math.isnan(x) for x in table["ci_low"]):
        st.caption("Some intervals are n/a: they need at least two replications with a spread.")
    for f in result.get("failed", []):
        st.text(f"Failed job {f['key']}: {f['error']}  (replay: {f['replay']})")


def show_sweep(job: dict) -> None:
    result = job["result"]
    show_table(pd.DataFrame(result["variants"]), width="stretch", hide_index=True)
    with st.expander("What each KPI counts"):
        st.text("\n".join(kpis.definition_lines(kpis.SIMULATED)))
    for f in result.get("failed", []):
        st.text(f"Failed job {f['key']}: {f['error']}")
    if result.get("output"):
        st.text(f"Results table: {result['output']}")


def policy_params(paths: list[Path]) -> list[dict]:
    return [BillingPolicy.load(p).to_dict() for p in paths]


def runs_folder() -> None:
    """The runs folder against its quotas, and (operators) deleting old runs."""
    folder = runs_dir()
    with st.expander("Runs folder: quotas and clean-up"):
        try:
            limits = quotas.Quotas.from_env()
        except RivyaError as exc:
            st.error(plain(exc.message))
            return
        used = quotas.disk_used(folder) if folder.is_dir() else 0
        active = quotas.active_runs(folder) if folder.is_dir() else []
        c = st.columns(4)
        c[0].metric(
            "Disk used",
            f"{used / quotas.MiB:,.1f} MiB",
            f"of {limits.max_disk_mb:,} MiB",
            delta_color="off",
            delta_arrow="off",
        )
        c[1].metric(
            "Runs in progress",
            f"{len(active)}",
            f"of {limits.max_concurrent} at once",
            delta_color="off",
            delta_arrow="off",
        )
        c[2].metric("Arrivals per run", f"≤ {limits.max_tasks:,}", help=ARRIVALS_HELP)
        c[3].metric("Users per run", f"≤ {limits.max_users:,}")
        if not operator_only("Cleaning up old runs"):
            return
        keep = int(
            st.number_input(
                "Keep the newest",
                0,
                10_000,
                10,
                help="Run databases to keep; older ones "
                "are deleted with their logs (a run in progress is never deleted)",
            )
        )
        if st.button("Delete older runs", key="cleanup_runs"):
            done = quotas.cleanup(folder, keep=keep)
            st.success(
                f"Deleted {len(done.removed):,} run(s), {done.freed_bytes / quotas.MiB:,.1f} MiB freed"
                + (f"; {done.kept_active} in progress kept." if done.kept_active else ".")
            )


st.title("Simulation lab")
run_tab, live_tab, compare_tab, sweep_tab, backtest_tab = st.tabs(
    ["Run a scenario", "Realtime run", "Compare two policies", "Sweep", "Backtest"]
)

with run_tab:
    scenario, tasks = edit_knobs(pick_scenario("run"))
    if operator_only("Running a simulation") and st.button("Run in the background", type="primary"):
        url = new_run_url(scenario.name)
        start_job(
            "run",
            {"scenario_toml": scenario.to_toml(), "scenario_name": scenario.name, "tasks": tasks, "url": url},
            f"{scenario.name}, {tasks:,} arrivals (generation requests and chat "
            f"turns), seed {scenario.seed}, policy "
            f"{scenario.policy.name}",
            tasks=tasks,
            users=scenario.population.users,
            db=url,
        )
    st.caption("The run goes into a new database under the runs folder; follow it under Background jobs below.")
    runs_folder()

with live_tab:
    st.caption(
        "Runs the scenario **with the knobs set on the first tab** in a background process at a "
        "chosen speed, writing as it goes; open **Live tasks** on its database to watch tasks move."
    )
    st.markdown(
        f"Scenario: `{scenario.name}`, {tasks:,} arrivals, seed {scenario.seed}, policy `{scenario.policy.name}`."
    )
    factor = st.number_input("Speed (simulated seconds per wall second)", 1.0, 1000.0, 20.0)
    n = tasks
    proc = realtime_run()
    if operator_only("Starting a realtime run") and st.button(
        "Start realtime run", disabled=bool(proc and proc["popen"].poll() is None)
    ):
        with st.spinner("Starting the run…"):
            try:
                proc = start_realtime_run(scenario, factor, int(n))
            except RivyaError as exc:  # a quota
                st.error(f"The realtime run was not started: {plain(exc.message)}")
    if proc:
        code = proc["popen"].poll()
        if code is None:
            st.info(f"Running (process {proc['popen'].pid}) into {plain(proc['url'])}.")
            if st.button("Watch it on Live tasks", type="primary"):
                use_database(proc["url"])
                st.switch_page("pages/live_tasks.py")
        else:
            (st.success if code == 0 else st.error)(f"The realtime run ended with status {code}.")
            st.code(Path(proc["log"]).read_text(errors="replace")[-3000:] or "(no output)")

with compare_tab:
    st.caption(
        "Runs both policies on the same seeds (common random numbers) and reports each KPI with the "
        "paired difference (B − A) and its 95% confidence interval."
    )
    sc = pick_scenario("cmp")
    names = [p for p in policies() if policies()[p] is not None]
    if len(names) < 2:
        st.warning("Compare needs at least two policy files under data/policies.")
    else:
        c = st.columns(4)
        a = c[0].selectbox("Policy A", names, index=names.index("default") if "default" in names else 0)
        b = c[1].selectbox("Policy B", names, index=names.index("no_refunds") if "no_refunds" in names else 1)
        reps = c[2].number_input("Replications", 2, 200, 4)
        per = c[3].number_input("Arrivals per run", 20, 20_000, 200, help=ARRIVALS_HELP)
        for label, name in (("A = ", a), ("B = ", b)):
            try:
                describe_policy(BillingPolicy.load(policies()[name]), label)
            except RivyaError as exc:
                st.error(plain(exc.message))
        if operator_only("Comparing policies") and st.button("Compare in the background", type="primary"):
            start_job(
                "compare",
                {
                    "scenario_toml": sc.to_toml(),
                    "scenario_name": sc.name,
                    "policies": policy_params([policies()[a], policies()[b]]),
                    "replications": int(reps),
                    "tasks": int(per),
                },
                f"{sc.name}: {a} vs {b}, {int(reps)} replications of {int(per)} arrivals",
                tasks=int(per),
                users=sc.population.users,
            )

with sweep_tab:
    st.caption(
        "Every policy × grid point × replication is one job on a local Dask cluster; replication r of "
        "every variant runs at the same seed. The same as `python -m simulations sweep`."
    )
    sc = pick_scenario("sweep")
    names = [p for p in policies() if policies()[p] is not None]
    chosen = st.multiselect("Policies", names, default=[n for n in ("default", "no_refunds") if n in names])
    grid_text = st.text_input(
        "Grid (optional)",
        "",
        placeholder="farm.capacity=8,12; arrivals.rate_per_hour=300,600",
        help="Scenario keys and their values, separated by ';'",
    )
    c = st.columns(2)
    reps = c[0].number_input("Replications", 1, 500, 4, key="sweep_reps")
    per = c[1].number_input("Arrivals per run", 10, 20_000, 200, key="sweep_tasks", help=ARRIVALS_HELP)
    if operator_only("Sweeping policies") and st.button("Sweep in the background", type="primary", disabled=not chosen):
        try:
            grid = parse_grid([g.strip() for g in grid_text.split(";") if g.strip()])
            Sweep(
                sc, tuple(BillingPolicy.load(policies()[n]) for n in chosen), grid, int(reps), tasks=int(per)
            ).variants()
        except RivyaError as exc:
            st.error(plain(exc.message))
        else:
            out = runs_dir() / f"sweep-{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}.parquet"
            start_job(
                "sweep",
                {
                    "scenario_toml": sc.to_toml(),
                    "scenario_name": sc.name,
                    "policies": policy_params([policies()[n] for n in chosen]),
                    "grid": [[k, list(v)] for k, v in grid],
                    "replications": int(reps),
                    "tasks": int(per),
                    "output": str(out),
                },
                f"{sc.name}: {', '.join(chosen)}; grid {grid_text or 'none'}; {int(reps)} replications",
                tasks=int(per),
                users=sc.population.users,
                db=str(out),
            )

with backtest_tab:
    from pages._lab_backtest import backtest_tab as show_backtest

    show_backtest()

st.divider()
from pages._lab_backtest import show_backtest_job  # noqa: E402 - beside the tab that starts it

jobs_panel({"run": show_run_job, "compare": show_compare, "sweep": show_sweep, "backtest": show_backtest_job})
