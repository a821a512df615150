"""Task inspector, the support page: find a task, read its whole story, get the checklist answered, act."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._access import access_config, can_act
from pages._cache import cached_df
from pages._chat_lookup import chat_lookup
from pages._fork import fork_button
from pages._imported import not_recorded_note
from pages._links import RESULT_LINK, web_link
from pages._render import show_errors, show_table, verdict_box
from pages._rerun import export_button, rerun_acted, rerun_form, rerun_links
from pages._source import enter_page, open_db
from pages._support import policy_in_force, support_service, who_sees_what
from pages._text import plain
from rivya_core.domain import NotFound, RivyaError, SupportAction
from rivya_core.read import queries, reports, user_view
from rivya_core.read.diagnose import diagnose
from rivya_core.read.signals import recheck_signals

enter_page()
st.title("Task inspector")
engine = open_db()
policy, policy_source = policy_in_force()


STATUS_ICON = {
    "ok": ":material/check_circle:",
    "warn": ":material/warning:",
    "fail": ":material/error:",
    "info": ":material/info:",
}


def show_checklist(task_id: int, user_id: int) -> None:
    judged = queries.reference_now(engine)  # the one "now" the pages and the support actions judge ages at
    diag = diagnose(engine, task_id, policy, now=judged.at)
    verdict_box(diag)
    st.caption(f"Task type: {plain(diag.task_type)}. {judged.caption()}, with {plain(policy_source)}.")
    for item in diag.items:  # answers quote the task's own fields (error messages, prompts): plain text
        icon = STATUS_ICON.get(item.status, ":material/help:")
        with st.expander(f"{icon} {item.question} — {plain(item.answer)}", expanded=item.status in ("warn", "fail")):
            st.text(item.answer)
            if item.evidence:
                show_table(pd.DataFrame(queries.jsonable(item.evidence)), hide_index=True, width="stretch")
    st.subheader("Recheck before running again")
    signals = recheck_signals(engine, user_id, policy, now=judged.at)
    if not signals:
        st.success("No recheck signal for this user.")
    for sig in signals:
        st.warning(f"**{plain(sig.kind.replace('_', ' '))}**: {plain(sig.message)}")


def show_results(urls: list) -> None:
    """Result URLs as text; a link only where the URL is http(s) (web_link), never an image."""
    st.caption("Results")
    urls = urls if isinstance(urls, list) else [urls]
    frame = pd.DataFrame(
        {"url": [str(u) for u in urls], "link": pd.Series([web_link(u) for u in urls], dtype="string")}
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={"url": st.column_config.TextColumn("result URL"), "link": RESULT_LINK},
    )


def show_timeline(events: pd.DataFrame) -> None:
    if events.empty:
        st.caption("No event recorded for this task.")
        return
    fig = px.scatter(events, x="at", y="kind", hover_data=["id"], labels={"at": "time (UTC)", "kind": ""})
    fig.update_traces(mode="lines+markers", marker=dict(size=10))
    fig.update_yaxes(categoryorder="array", categoryarray=list(dict.fromkeys(events["kind"])), autorange="reversed")
    fig.update_layout(height=max(220, 30 * events["kind"].nunique()), margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, width="stretch")
    table = events[["id", "at", "kind", "detail"]].assign(detail=events["detail"].map(reports.describe_detail))
    show_table(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "id": st.column_config.NumberColumn("event", format="%d", width="small"),
            "at": st.column_config.DatetimeColumn("at (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "detail": st.column_config.TextColumn("detail", width="large"),
        },
    )


def show_rows(rows: list[dict], empty: str, drop: tuple[str, ...] = ()) -> None:
    frame = pd.DataFrame(rows)
    if frame.empty:
        st.caption(empty)
    else:
        show_table(frame.drop(columns=list(drop), errors="ignore"), hide_index=True, width="stretch")


ACTIONS = {
    SupportAction.RECHECK: "Re-check upstream",
    SupportAction.REFUND: "Issue the due refund",
    SupportAction.MARK_FAILED: "Mark stuck task failed",
}


def run_action(task_id: int, action: SupportAction, operator: str, reason: str) -> None:
    label = ACTIONS[action]
    try:
        svc = support_service(policy)
        task = svc.support(action, task_id, operator, reason)
    except RivyaError as exc:
        code = getattr(exc, "reason", None) or exc.code  # which refusal (rules' codes), else the error's code
        st.session_state["action_result"] = (
            task_id,
            "refused",
            f"{label} on task #{task_id} refused ({code}): {plain(exc.message)}",
        )
    else:
        st.session_state["action_result"] = (
            task_id,
            "done",
            f"{label} on task #{task_id}: done. The task is now "
            f"{plain(task.status)}; {plain(svc.credits_outcome(task))}.",
        )
    st.cache_data.clear()
    st.rerun()


def show_actions(task_id: int, task: dict, ledger: list[dict]) -> None:
    result = st.session_state.get("action_result")
    if result and result[0] == task_id:
        del st.session_state["action_result"]
        (st.success if result[1] == "done" else st.warning)(result[2])
    if not can_act():
        st.info("Support actions need the operator role; you are signed in as a viewer.")
        return
    # The form belongs to one task: a submit can only ever act on the task whose form it came from.
    with st.form(f"support_action_{task_id}"):
        st.markdown(f"Acting on **task #{task_id}**.")
        action = st.radio("Action", list(ACTIONS), format_func=ACTIONS.get, horizontal=True)
        signed_in = st.session_state.get("user") if access_config().enabled else None
        operator = st.text_input("Operator name", value=signed_in or "", disabled=bool(signed_in))
        if signed_in:
            st.caption("Sign-in is on: actions are recorded under the signed-in operator.")
        operator = signed_in or operator
        reason = st.text_input("Reason (kept in the task's timeline)")
        st.caption(who_sees_what(task, ledger, policy))
        if st.form_submit_button(f"Run action on task #{task_id}"):
            if not operator.strip() or not reason.strip():
                st.warning("Give your name and a reason: both go into the task's timeline.")
            else:
                run_action(task_id, action, operator.strip(), reason.strip())


QUERY_KEY = "inspector_query"


def _follow_deep_link() -> None:
    """A ?task= / ?q= the page did not write itself (a link followed, a URL typed, a reload) sets the
    search box once; afterwards the box and the selection are the operator's, and the page only
    writes the URL to match them (so the two never overwrite each other)."""
    ss = st.session_state
    link = (st.query_params.get("q"), st.query_params.get("task"))
    if link != ss.get("inspector_link"):
        ss["inspector_link"] = link
        if link[0] or link[1]:
            ss[QUERY_KEY] = link[0] or link[1]
            ss["inspector_pick"] = int(link[1]) if (link[1] or "").isdigit() else None
    elif QUERY_KEY not in ss:  # the widget's state was dropped while another page ran
        ss[QUERY_KEY] = ss.get("inspector_query_kept", "")


def _write_link(query: str, task_id: int | None) -> None:
    """Keep the URL in step with the box and the selection (a reload or a shared link shows the same)."""
    q = query if task_id is None or query != str(task_id) else None
    want = {"q": q, "task": None if task_id is None else str(task_id)}
    for key, value in want.items():
        if value is None:
            st.query_params.pop(key, None)
        elif st.query_params.get(key) != value:
            st.query_params[key] = value
    st.session_state["inspector_link"] = (want["q"], want["task"])
    st.session_state["inspector_query_kept"] = query


def pick_task() -> int | None:
    _follow_deep_link()
    query = st.text_input(
        "Find a task",
        key=QUERY_KEY,
        placeholder="task id (ours or the source's), upstream id, user email or name, prompt text",
    ).strip()
    if not query:
        st.caption("Type a task id, an upstream id, a user's email or name, or words from the prompt.")
    chosen = _choose_task(query) if query else None
    _write_link(query, chosen)
    return chosen


def _choose_task(query: str) -> int | None:
    ss = st.session_state
    hits = pd.DataFrame(cached_df(queries.find_tasks, query, 50))
    if hits.empty:
        st.warning(f"No task matches {plain(query)}.")
        return None
    ids = [int(i) for i in hits["id"]]
    if len(ids) == 1:
        ss["inspector_pick"] = ids[0]
        return ids[0]
    st.caption(f"{len(hits)} tasks match (newest first, at most 50).")
    labels = {
        int(
            r.id
        ): f"#{r.id}{f' ({r.external_ref})' if getattr(r, 'external_ref', None) else ''} · {r.status} · {r.model} · {r.email or r.user_id} · {str(r.prompt)[:60]}"
        for r in hits.itertuples()
    }
    key = f"inspector_pick_{query}"  # one selection per search: a new search starts from its own first hit
    if key not in ss:
        ss[key] = ss.get("inspector_pick") if ss.get("inspector_pick") in labels else ids[0]
    choice = st.selectbox("Task", ids, key=key, format_func=labels.get)
    ss["inspector_pick"] = choice
    return choice


with show_errors():
    task_id = pick_task()
    if task_id is not None:
        try:
            detail = cached_df(queries.task_detail, task_id)
        except NotFound:
            st.warning(f"Task {task_id} does not exist in this database.")
            st.stop()
        task, acct = detail["task"], detail["account"] or {}
        original = f" · original id {plain(task['external_ref'])}" if task.get("external_ref") else ""
        st.header(f"Task #{task_id}{original} — {plain(task['status'])}")
        c1, c2, c3, c4 = st.columns(4)  # metric labels, values and help are all Markdown
        c1.metric("Status", plain(task["status"]))
        c2.metric(
            "Model",
            plain(task["model"]),
            help=f"category {plain(task['category'])}, provider {plain(task['provider'])}",
        )
        c3.metric("Credits reserved", f"{task['reserved_credits']:,}")
        c4.metric(
            "User",
            plain(acct.get("name", f"user {task['user_id']}")),
            help=plain(acct["email"]) if acct.get("email") else None,
        )
        st.caption(
            f"User {task['user_id']} · {plain(acct.get('email', 'no account row'))} · provider "
            f"{plain(task['provider'])} · upstream id {plain(task.get('upstream_task_id') or '—')} · "
            f"created {reports.format_time(task['created_at'])}"
        )
        if task.get("error_code"):
            st.error(
                f"**{plain(task['error_code'])}** ({plain(task.get('failure_class') or 'no class')}): "
                f"{plain(task.get('error_message') or '')}"
            )
        if task.get("result_urls"):
            show_results(task["result_urls"])
        with st.expander("Task row"):
            st.json(queries.jsonable(task))
        rerun_links(engine, task)
        fork_button(engine, task_id=task_id)
        export_button(engine, task_id)
        # Right after an action, its outcome shows in the tab it ran from: an action that changes the task
        # redraws what stands above the tabs, and the tabs would otherwise start again at the Checklist.
        acted = (st.session_state.get("action_result") or (None,))[0] == task_id or rerun_acted(task_id)
        tabs = st.tabs(
            ["Checklist", "Timeline", "Ledger", "Callbacks", "Notifications", "Support actions"],
            default="Support actions" if acted else None,
        )
        with tabs[0]:
            show_checklist(task_id, task["user_id"])
        with tabs[1]:
            not_recorded_note(engine, "timeline")
            show_timeline(pd.DataFrame(detail["events"], columns=["id", "task_id", "at", "kind", "detail"]))
        with tabs[2]:
            show_rows(detail["ledger"], "No ledger row: this task never touched credits.")
        with tabs[3]:
            not_recorded_note(engine, "callbacks")
            show_rows(detail["callbacks"], "No provider callback arrived for this task.", drop=("body",))
        with tabs[4]:
            not_recorded_note(engine, "notifications")
            st.text("Did the user see the outcome? " + user_view.outcome_seen(engine, task_id)["answer"])
            for note in detail["notifications"]:  # the words the customer read, as text
                st.text(
                    f"The user was told ({note['kind']}, {reports.format_time(note['created_at'])}): "
                    f"{note['title']}. {note['body']}"
                )
            show_rows(detail["notifications"], "No notification for this task.")
        with tabs[5]:
            show_actions(task_id, task, detail["ledger"])
            rerun_form(task_id, policy)

with show_errors():
    chat_lookup(engine, policy)
