"""The Simulation lab's background jobs: the shared list, live progress, cancel, results.

start_job(kind, params, label, *, tasks, users, db="") -> int | None
    simulations.jobs.submit with the signed-in user as owner, admitted by simulations.quotas
    (tasks and users per run, runs at once, disk); None, with a message, when refused
    (viewers read, operators start and cancel jobs).
jobs_panel(renderers) -> None
    Every background job (newest first, the same list in every tab and session), refreshed
    every few seconds in a fragment so the rest of the page stays usable: status, progress,
    a Cancel button for running jobs, "Show result" for finished ones, the reason and the log of
    failed ones (a result its verdict does not trust, simulations.jobs.verdict, stays readable).
    The chosen result is drawn below the list by renderers[kind](job).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from pages._access import can_act
from pages._source import runs_dir
from pages._text import plain
from rivya_core.domain import RivyaError
from simulations import jobs, quotas

REFRESH_S = 2.0
ICONS = {
    "queued": ":material/schedule:",
    "running": ":material/autorenew:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}
VIEW = "lab_job_view"


def start_job(kind: str, params: dict[str, Any], label: str, *, tasks: int, users: int, db: str = "") -> int | None:
    if not can_act():
        st.caption("Starting a simulation needs the operator role; you are signed in as a viewer.")
        return None
    job_id = None

    def launch() -> int:  # admitted by the quotas first; the job's worker holds the slot until it ends
        nonlocal job_id
        job_id = jobs.submit(kind, params, label=label, owner=st.session_state.get("user"), runs=runs_dir())
        return int(jobs.get_job(job_id, runs_dir())["pid"])

    try:
        quotas.admit(runs_dir(), tasks=tasks, users=users, db=db, launch=launch)
    except (RivyaError, OSError) as exc:
        st.error(f"Could not start the job: {plain(getattr(exc, 'message', exc))}")
        return None
    st.toast(f"Started background job {job_id}: {label}")
    return job_id


def jobs_panel(renderers: dict[str, Callable[[dict[str, Any]], None]]) -> None:
    st.subheader("Background jobs")
    st.caption(
        "Runs, comparisons and sweeps started here run in their own worker process; this list is "
        "shared by every tab and refreshes itself. Leave the page and come back: they keep going."
    )
    _job_list()
    view = st.session_state.get(VIEW)
    if view is not None:
        try:
            job = jobs.get_job(view, runs_dir())
        except RivyaError:
            st.session_state.pop(VIEW, None)
            return
        if job["result"] is not None and job["kind"] in renderers:  # done, or failed by its verdict
            st.divider()
            st.markdown(f"**Result of job {job['id']}** ({job['kind']})")
            st.text(job["label"])
            renderers[job["kind"]](job)


@st.fragment(run_every=REFRESH_S)
def _job_list() -> None:
    try:
        rows = jobs.list_jobs(runs_dir(), limit=20)
    except Exception as exc:  # noqa: BLE001 - the jobs database unreadable: say so, keep the page
        st.warning(f"The job list cannot be read: {type(exc).__name__}")
        return
    if not rows:
        st.info("No background jobs yet.")
        return
    for job in rows:
        _job_row(job)


def _job_row(job: dict[str, Any]) -> None:
    status = job["status"]
    with st.container(border=True):
        top = st.columns([6, 2, 2])
        top[0].markdown(f"{ICONS.get(status, '')} **#{job['id']} {job['kind']}** · {status}")
        top[0].text(job["label"])  # labels carry scenario and policy names: plain text
        top[0].caption(
            f"started {job['created_at']} UTC"
            + (f" by {plain(job['owner'])}" if job["owner"] else "")
            + (f", finished {job['finished_at']}" if job["finished_at"] else "")
        )
        if status in jobs.ACTIVE:
            top[0].progress(float(job["progress"] or 0.0), text=str(job["message"] or status)[:80])
            if can_act() and top[1].button("Cancel", key=f"cancel_{job['id']}", icon=":material/stop:"):
                jobs.cancel(job["id"], runs_dir())
                top[1].caption("cancelled")  # the next refresh shows the row as cancelled
            return
        if status == "failed":  # a crash (no result), or a result its verdict does not trust (jobs.verdict)
            top[0].text(f"{'Failed' if job['result'] is not None else 'Error'}: {job['error'] or 'failed'}")  # plain
            with top[0].expander("Log"):
                st.code(jobs.log_tail(job) or "(no output)", language=None)
        if job["result"] is not None and top[1].button(
            "Show result", key=f"show_{job['id']}", type="primary" if status == "done" else "secondary"
        ):
            st.session_state[VIEW] = job["id"]
            st.rerun(scope="app")
