"""Checklist: the guide's task-state checklist and "recheck before running again", step by step.

Each step says what to look at and links to the page that answers it; ticks
are kept for the session so a support person can work down the list.
"""

from __future__ import annotations

import streamlit as st

from pages._links import INSPECTOR
from pages._source import enter_page

CHECKLIST = [
    (
        "Identify the task type first: chat settlement, image, video, audio, or tool-backed chat.",
        "The inspector's header shows the category and model; a task with a chat message id is tool-backed chat. "
        "Chat turns without a task live on the chat settlement page.",
        [(INSPECTOR, "Task inspector"), ("pages/chat_settlement.py", "Chat settlement")],
    ),
    (
        "Check whether credits were reserved before provider submission or settled after usage.",
        "Tasks are charged (a `consume` row) before `submitted`; token-priced chat reserves first and settles later.",
        [(INSPECTOR, "Task inspector → Ledger"), ("pages/ledger.py", "Ledger")],
    ),
    (
        "Look for the provider callback, polling result, history item, and notification before assuming the "
        "result is lost.",
        "The timeline lists every callback with its verdict (applied, deferred, rejected…) and every poll or recheck.",
        [
            (INSPECTOR, "Task inspector → Timeline / Callbacks"),
            ("pages/notifications.py", "Notifications"),
            ("pages/live_tasks.py", "Live tasks"),
        ],
    ),
    (
        "Separate user-correctable failures from provider or infrastructure failures.",
        "The failure class on the task says which: `user` means the user can fix the request; `provider` and "
        "`infrastructure` are ours to handle.",
        [(INSPECTOR, "Task inspector → Checklist"), ("pages/overview.py", "Overview → failures by code")],
    ),
    (
        "Confirm whether a failed task should reverse credits before rerunning the same prompt.",
        "The billing policy refunds provider and infrastructure failures by default; the refund audit lists any "
        "failure that should have been refunded and was not.",
        [(INSPECTOR, "Task inspector → Support actions"), ("pages/refund_audit.py", "Refund audit")],
    ),
]

RECHECK = [
    (
        "The same prompt keeps failing.",
        "Search the prompt text in the inspector: repeated failures with a `user` "
        "class need a changed request, with a `provider` class a different model or a wait.",
        [(INSPECTOR, "Task inspector")],
    ),
    (
        "A task stays in progress too long.",
        "Live tasks highlights tasks past the stuck threshold; re-check upstream before marking one failed.",
        [("pages/live_tasks.py", "Live tasks"), (INSPECTOR, "Task inspector")],
    ),
    (
        "Credits look consumed without output.",
        "A failed task whose class is refunded must have exactly one refund row; the audit names the ones that do not.",
        [("pages/refund_audit.py", "Refund audit"), ("pages/ledger.py", "Ledger")],
    ),
    (
        "You are about to submit a heavier duplicate run.",
        "Check the user's running tasks first: a duplicate of a task still generating costs credits twice.",
        [("pages/live_tasks.py", "Live tasks")],
    ),
]


def _links(targets) -> None:
    for path, label in targets:
        st.page_link(path, label=label, icon=":material/arrow_forward:")


def _steps(steps, prefix: str) -> int:
    done = 0
    for i, (step, how, targets) in enumerate(steps):
        with st.container(border=True):
            ticked = st.checkbox(f"**{step}**", key=f"{prefix}{i}")
            done += ticked
            st.caption(how)
            _links(targets)
    return done


enter_page()
st.title("Checklist")
st.caption(
    "From the Rivya task lifecycle guide. Open the task in the inspector first: its checklist tab "
    "answers these for one task, with evidence."
)
st.subheader("When a generation is confusing, slow, failed, or missing")
done = _steps(CHECKLIST, "check_")
st.progress(done / len(CHECKLIST), text=f"{done} of {len(CHECKLIST)} checked")
st.subheader("Recheck before running again")
_steps(RECHECK, "recheck_")
if st.button("Clear the ticks"):
    for key in [k for k in st.session_state if str(k).startswith(("check_", "recheck_"))]:
        del st.session_state[key]
    st.rerun()
