"""Incidents: bulk remediation by filter — dry run first, then execute as a named incident; the incidents so far.

The rules live in rivya_core.support.bulk (filter, dry run, execution through the support actions).
A link may prepare the form: ?action=recheck&provider=kinetica&status=GENERATING&min_age_s=900
(the Overview's alert strip builds such links).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._access import access_config, can_act
from pages._cache import cached_df
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_table
from pages._source import enter_page, open_db, require_tables
from pages._support import policy_in_force, support_engine, support_service
from pages._text import plain
from rivya_core.domain import RivyaError, SupportAction, TaskStatus
from rivya_core.read import incidents, reports
from rivya_core.rules import support_failure_notice
from rivya_core.support import bulk

ACTION_LABELS = {
    SupportAction.RECHECK.value: "Re-check upstream",
    SupportAction.REFUND.value: "Refund if due",
    SupportAction.MARK_FAILED.value: "Mark failed (stuck only)",
}
ANY = "any"
SHOWN_ROWS = 500

enter_page()
st.title("Incidents")
st.caption(
    "Act on many tasks at once: pick them by filter, dry-run the action to see what each task would do, "
    "then execute it as a named incident. Every task gets its own `support_action` event carrying the "
    "incident id; executing the same incident again skips the tasks it already handled."
)
engine = open_db()
policy, policy_source = policy_in_force()
ss = st.session_state


def _prefill_from_link() -> None:
    """A link's query parameters set the form once (a later edit by the operator sticks)."""
    qp = {k: v for k, v in st.query_params.to_dict().items() if k in (*incidents.BulkFilter.KEYS, "action")}
    if not qp or ss.get("bulk_link_applied") == qp:
        return
    ss["bulk_link_applied"] = qp
    for key in incidents.BulkFilter.KEYS:
        ss[f"bulk_{key}"] = qp.get(key, "")
    ss["bulk_status"] = [s for s in qp.get("status", "").upper().split(",") if s]
    if qp.get("action") in bulk.ACTIONS:
        ss["bulk_action"] = qp["action"]


def _choices(options: list[str], key: str) -> list[str]:
    current = ss.get(key)
    return [ANY, *options, *([current] if current and current != ANY and current not in options else [])]


def filter_form() -> tuple[str, dict[str, str]]:
    options = cached_df(reports.filter_options)
    action = st.radio("Action", list(ACTION_LABELS), format_func=ACTION_LABELS.get, horizontal=True, key="bulk_action")
    c = st.columns(4)
    for col, name in zip(c[:3], ("provider", "model", "category"), strict=True):
        if ss.get(f"bulk_{name}") in ("", None):
            ss[f"bulk_{name}"] = ANY
        col.selectbox(name.title(), _choices(options[name], f"bulk_{name}"), key=f"bulk_{name}")
    c[3].multiselect("Status", [s.value for s in TaskStatus], key="bulk_status")
    c = st.columns(4)
    c[0].text_input("Error code", key="bulk_error_code")
    c[1].selectbox(
        "Failure class",
        ["", "user", "provider", "infrastructure", "billing"],
        key="bulk_failure_class",
        format_func=lambda v: v or ANY,
    )
    c[2].text_input(
        "Running for at least",
        key="bulk_min_age_s",
        placeholder="e.g. 900, 15m, 2h",
        help="Age from submission (else creation), judged like mark-failed judges it",
    )
    c[3].text_input("User (id or email)", key="bulk_user")
    c = st.columns(2)
    c[0].text_input("Created since (UTC)", key="bulk_since", placeholder="2026-12-01 14:00")
    c[1].text_input("Created before (UTC)", key="bulk_until", placeholder="2026-12-01 15:00")
    raw = {k: ss.get(f"bulk_{k}") for k in incidents.BulkFilter.KEYS}
    raw["status"] = ",".join(ss.get("bulk_status") or [])
    return action, {k: str(v).strip() for k, v in raw.items() if v not in (None, "", ANY)}


def show_plan(p: bulk.Plan) -> None:
    m = st.columns(5)
    m[0].metric("Tasks matched", f"{p.matched:,}")
    m[1].metric("Would act on", f"{p.would_act:,}")
    m[2].metric("Would be refused", f"{p.would_refuse:,}")
    m[3].metric("Already handled", f"{p.already_done:,}", help="By an earlier run of the incident named below")
    m[4].metric("Credits back to users", f"{p.credits:,}")
    st.caption(
        f"Dry run at {p.now:%Y-%m-%d %H:%M:%S} UTC (the clock support actions use on this database), "
        f"judged with {plain(policy_source)}. Nothing was changed."
    )
    if p.refusals():
        st.write("Refusals, and why")
        texts = p.refusal_texts()
        show_table(
            pd.DataFrame([{"refusal": code, "tasks": n, "why": texts[code]} for code, n in p.refusals().items()])
        )
    if p.tasks:
        frame = pd.DataFrame([t.__dict__ for t in p.tasks[:SHOWN_ROWS]])
        frame["age_s"] = frame["age_s"].round(0)
        frame = with_task_links(frame)
        cols = [
            "task",
            "status",
            "model",
            "provider",
            "error_code",
            "age_s",
            "would",
            "credits",
            "refusal_code",
            "refusal",
            "done",
        ]
        show_table(frame[cols], column_config={"task": TASK_LINK})
        if p.matched > SHOWN_ROWS:
            st.caption(f"The first {SHOWN_ROWS} of {p.matched:,} tasks (by id).")


def execute_form(action: str, flt: incidents.BulkFilter, name: str, planned: bool) -> None:
    st.subheader("Execute as an incident")
    if not can_act():
        st.info("Executing needs the operator role; you are signed in as a viewer. A dry run shows what would happen.")
        return
    signed_in = ss.get("user") if access_config().enabled else None
    c = st.columns(2)
    operator = c[0].text_input("Operator", value=signed_in or "", disabled=bool(signed_in), key="bulk_operator")
    reason = c[1].text_input("Reason (kept on every task's timeline)", key="bulk_reason")
    operator = signed_in or operator
    example = support_failure_notice("video", "kinetica-v2", 24, 24)[1]
    st.caption(
        "**Who sees what.** Your name, the reason and the incident name are internal: they go on every "
        "task's timeline and in the incidents list, never to the customers. The customer of a task "
        "marked failed is told only that their task could not be completed and what happened to its "
        f"credits (e.g. {plain(example)}, or that they were not refunded when the policy keeps them); a "
        "refund sends no message; a re-check tells them only the task's outcome, if it finishes the task."
    )
    if not planned:
        st.caption("Dry-run this action and filter first; then it can be executed.")
    if st.button("Execute incident", type="primary", disabled=not planned, key="bulk_execute"):
        if not operator.strip() or not reason.strip():
            st.warning("Give your name and a reason: both go on every task's timeline.")
            return
        bar = st.progress(0.0, text="Starting…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / total if total else 1.0, text=f"{done:,} of {total:,} tasks")

        try:
            svc = support_service(policy)
            r = bulk.execute(
                svc,
                support_engine(),
                action,
                flt,
                operator=operator.strip(),
                reason=reason.strip(),
                name=name,
                progress=progress,
            )
        except RivyaError as exc:
            ss["bulk_result"] = ("refused", plain(exc.message))
        else:
            ss["bulk_result"] = (
                "done",
                f"Incident {r.incident_id}: {r.matched:,} matched, {r.acted:,} acted on, "
                f"{r.refused:,} refused, {r.skipped:,} already handled by an earlier run; "
                f"{r.money()}.",
            )
        ss.pop("bulk_plan", None)
        st.cache_data.clear()
        st.rerun()


_prefill_from_link()
if require_tables(engine, ["incident"]):
    result = ss.pop("bulk_result", None)
    if result:
        (st.success if result[0] == "done" else st.error)(plain(result[1]))  # may quote typed names
    with show_errors():
        action, raw = filter_form()
        try:
            flt = incidents.BulkFilter.from_dict(raw)
        except incidents.BulkError as exc:  # quotes what was typed: plain text
            st.error(plain(exc.message))
            st.stop()
        st.text(f"Scope: {flt.describe()}")
        typed = st.text_input(
            "Incident name",
            key="bulk_name",
            placeholder=bulk.default_name(action, flt),
            help="Names the incident when executed; a name executed before: its handled "
            "tasks are skipped (the dry run counts them as already handled)",
        )
        name = typed.strip() or bulk.default_name(action, flt)
        key = (action, tuple(sorted(flt.to_params().items())), name)
        if st.button("Dry run", key="bulk_dry_run", icon=":material/preview:"):
            svc = support_service(policy)
            existing = incidents.incident_by_name(support_engine(), name)
            ss["bulk_plan"] = (
                key,
                bulk.plan(svc, support_engine(), action, flt, incident_id=existing["id"] if existing else None),
            )
        planned = ss.get("bulk_plan")
        if planned and planned[0] == key:
            show_plan(planned[1])
        execute_form(action, flt, name, bool(planned and planned[0] == key))

    st.subheader("Incidents so far")
    with show_errors():
        found = pd.DataFrame(cached_df(incidents.incidents))
        if found.empty:
            st.caption("No incident yet.")
        else:
            show_table(
                found[
                    [
                        "id",
                        "name",
                        "action",
                        "scope",
                        "operator",
                        "reason",
                        "created_at",
                        "finished_at",
                        "runs",
                        "matched",
                        "acted",
                        "refused",
                        "credits_moved",
                    ]
                ],
                column_config={"id": st.column_config.NumberColumn("incident", format="%d")},
            )
