"""Links between pages and to one task in the inspector.

INSPECTOR: the inspector's page file.
task_url(task_id: int) -> str
    Relative URL of the inspector for one task (for st.column_config.LinkColumn),
    keeping ?db= when the session reads another database than the default.
with_task_links(frame, source="task_id") -> DataFrame; TASK_LINK
    A "task" column of inspector links, and the column config that shows it. A table
    shown by pages._render.show_table with TASK_LINK opens the task of the row the
    operator selects in the inspector, in the same tab (a link column would open a
    new browser tab, a new session that takes seconds to start).
open_task(task_id: int | str, db: str | None = None) -> None
    Switch to the inspector on one task in this session (same tab).
task_table(frame, link_col, **dataframe_kwargs) -> None
    st.dataframe of `frame` whose `link_col` holds task_url()s: shown as "#N", and
    selecting a row opens that task (open_task).
web_link(url) -> str | None
    url when it may be offered as a link (an absolute http or https URL with a host), else None:
    result URLs come from providers and are shown as text, linked only through this check.
RESULT_LINK: the LinkColumn that shows web_link's output as "open".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import streamlit as st

from pages._source import current_url, default_url

INSPECTOR = "pages/task_inspector.py"

TASK_LINK = st.column_config.LinkColumn("task", display_text=r"task=(\d+)", help="Open the task in the inspector")
OPEN_HELP = "Select a row to open its task in the inspector"


def with_task_links(frame: Any, source: str = "task_id") -> Any:
    """frame plus a "task" column of inspector links built from `source` (empty where there is no task);
    show it with column_config={"task": TASK_LINK}."""
    frame = frame.copy()
    frame["task"] = [task_url(t) if t is not None and t == t else None for t in frame[source]]
    return frame


def task_url(task_id: int) -> str:
    url = current_url()
    suffix = ""
    if url != default_url() and "db" in st.query_params:
        from urllib.parse import quote

        suffix = "&db=" + quote(url, safe="")
    return f"task_inspector?task={int(task_id)}{suffix}"


RESULT_LINK = st.column_config.LinkColumn(
    "link", display_text="open", help="Opens the result in a new tab (http and https URLs only)"
)


def web_link(url: Any) -> str | None:
    """url when it is an absolute http(s) URL with a host and no whitespace or control characters."""
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.hostname else None


def open_task(task_id: int | str, db: str | None = None) -> None:
    """The inspector on one task, in this session and tab (st.switch_page: no new browser session)."""
    params = {"task": str(int(task_id))}
    if db:
        params["db"] = db
    st.switch_page(INSPECTOR, query_params=params)


def _task_of(url: Any) -> tuple[str, str | None] | None:
    """(task id, db) from a task_url(), None for an empty cell."""
    if not isinstance(url, str) or "task=" not in url:
        return None
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(url).query)
    task = (query.get("task") or [""])[0]
    return (task, (query.get("db") or [None])[0]) if task.isdigit() else None


PICKED = "open_task_next"  # (task id, db): set by a table's selection, acted on by app.py before any page runs


def task_table(frame: Any, link_col: str, **kwargs: Any) -> None:
    """st.dataframe with `link_col` (task_url()s) shown as "#N"; selecting a row opens that task.

    The selection's callback only notes the task; app.py switches to the inspector at the start of
    the next run, so the page with the table is not drawn again first."""
    import hashlib

    targets = [_task_of(u) for u in frame[link_col]]
    shown = frame.copy()
    shown[link_col] = [f"#{t[0]}" if t else None for t in targets]
    config = dict(kwargs.pop("column_config", None) or {})
    given = config.get(link_col)
    label = given.get("label") if isinstance(given, dict) else None
    config[link_col] = st.column_config.TextColumn(label or link_col, help=OPEN_HELP, width="small")
    key = (
        kwargs.pop("key", None)
        or "task_table_" + hashlib.sha1(repr((list(frame.columns), targets)).encode()).hexdigest()[:16]
    )

    def picked() -> None:
        rows = st.session_state[key].selection.rows
        if rows and targets[rows[0]]:
            st.session_state[PICKED] = targets[rows[0]]

    st.dataframe(
        shown,
        column_config=config,
        on_select=picked,
        selection_mode="single-row",
        key=key,
        **{"hide_index": True, "width": "stretch", **kwargs},
    )


def open_picked_task() -> None:
    """In app.py, before the page runs: open the task a table's selection noted (same tab)."""
    target = st.session_state.pop(PICKED, None)
    if target:
        open_task(*target)
