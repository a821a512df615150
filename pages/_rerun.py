"""The inspector's re-run for the user, its links between a task and its re-runs, and the record download.

rerun_links(engine, task) -> None     "re-run of task #N" / "re-run as #M" with buttons that open them
rerun_form(task_id, policy) -> None   operators: re-run the task for its user (courtesy optional); the
                                      outcome (rivya_core.support.rerun.describe_rerun) and a button to the new task
rerun_acted(task_id) -> bool          a re-run result waits to be shown for this task
export_button(engine, task_id) -> None  the task's whole record as one JSON file (rivya_core.read.export)
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy import Engine

from pages._access import access_config, can_act
from pages._cache import cached_df
from pages._links import open_task
from pages._support import support_service
from pages._text import plain
from rivya_core.domain import RivyaError
from rivya_core.policy import BillingPolicy
from rivya_core.read.export import task_record_json
from rivya_core.support import rerun

RESULT = "rerun_result"  # (task id, "done" | "refused", headline (Markdown), details (plain text), new task id or None)


def rerun_links(engine: Engine, task: dict) -> None:
    made = cached_df(rerun.reruns_of, int(task["id"]))
    if task.get("rerun_of") is None and not made:
        return
    cols = st.columns(1 + len(made[:5]) + (task.get("rerun_of") is not None))
    i = 0
    if task.get("rerun_of") is not None:
        if cols[i].button(
            f"Re-run of task #{task['rerun_of']}", key=f"rerun_of_{task['id']}", icon=":material/history:"
        ):
            open_task(task["rerun_of"])
        i += 1
    for r in made[:5]:
        if cols[i].button(
            f"Re-run as task #{r['id']} ({r['status']})",
            key=f"rerun_as_{task['id']}_{r['id']}",
            icon=":material/replay:",
        ):
            open_task(r["id"])
        i += 1
    if len(made) > 5:
        cols[i].caption(f"and {len(made) - 5} more re-runs")


def rerun_acted(task_id: int) -> bool:
    return (st.session_state.get(RESULT) or (None,))[0] == task_id


def rerun_form(task_id: int, policy: BillingPolicy) -> None:
    st.subheader("Re-run for the user")
    result = st.session_state.get(RESULT)
    if result and result[0] == task_id:
        (st.success if result[1] == "done" else st.warning)(result[2])
        st.text(result[3])  # quotes the provider's error message: plain text
        if result[4] is not None and st.button(
            f"Open task #{result[4]}", key=f"open_rerun_{result[4]}", icon=":material/open_in_new:"
        ):
            del st.session_state[RESULT]
            open_task(result[4])
    if not can_act():
        st.info("Re-running a task needs the operator role; you are signed in as a viewer.")
        return
    with st.form(f"rerun_{task_id}"):
        st.caption(
            "A new task with the same model, prompt and settings, for the same user: validated, charged "
            "by the policy before it is submitted, linked to this one. Refused while this task or a run of "
            "the same prompt is still going."
        )
        signed_in = st.session_state.get("user") if access_config().enabled else None
        operator = signed_in or st.text_input("Re-run by (your name)", key=f"rerun_operator_{task_id}")
        reason = st.text_input(
            "Reason for the re-run (kept on the task's timeline, never shown to the user)",
            key=f"rerun_reason_{task_id}",
        )
        courtesy = st.checkbox("Courtesy: refund the re-run's charge at once", key=f"rerun_courtesy_{task_id}")
        if st.form_submit_button(f"Re-run task #{task_id} for the user"):
            if not operator.strip() or not reason.strip():
                st.warning("Give your name and a reason: both go into the task's timeline.")
            else:
                _run(task_id, operator.strip(), reason.strip(), courtesy, policy)


def _run(task_id: int, operator: str, reason: str, courtesy: bool, policy: BillingPolicy) -> None:
    try:
        svc = support_service(policy)
        task = rerun.support_rerun(svc, task_id, operator, reason, courtesy=courtesy)
        said = rerun.describe_rerun(svc, task_id, task)
    except RivyaError as exc:
        code = getattr(exc, "reason", None) or exc.code
        st.session_state[RESULT] = (
            task_id,
            "refused",
            f"Re-run of task #{task_id} refused ({plain(code)}).",
            exc.message,
            None,
        )
    else:
        st.session_state[RESULT] = (
            task_id,
            "done",
            f"Re-run of task #{task_id}: created task #{task.id}, now {plain(task.status)}.",
            said["text"],
            task.id,
        )
    st.cache_data.clear()
    st.rerun()


def export_button(engine: Engine, task_id: int) -> None:
    try:
        text = task_record_json(engine, task_id)
    except RivyaError as exc:
        st.caption(f"Cannot export this task: {plain(exc.message)}")
        return
    st.download_button(
        "Download the task's record (JSON)",
        text,
        file_name=f"task-{task_id}.json",
        mime="application/json",
        key=f"export_{task_id}",
        help="The task row, timeline, ledger, callbacks and notifications in one file; the same as "
        f"`python -m rivya_core export-task {task_id} --db URL`.",
    )
