"""Links between pages and to one task in the inspector.

    INSPECTOR: the inspector's page file.
    task_url(task_id: int) -> str
        Relative URL of the inspector for one task (for st.column_config.LinkColumn),
        keeping ?db= when the session reads another database than the default.
    with_task_links(frame, source="task_id") -> DataFrame; TASK_LINK
        A "task" column of inspector links, and the column config that shows it.
    page_link(path: str, label: str, icon: str | None = None) -> None
        st.page_link to another page, a caption when that page is not registered.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages._source import current_url, default_url

INSPECTOR = "pages/task_inspector.py"

TASK_LINK = st.column_config.LinkColumn("task", display_text=r"task=(\d+)", help="Open the task in the inspector")


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


def page_available(path: str) -> bool:
    """True when app.py registered the page file (it skips files that do not exist)."""
    registered = st.session_state.get("registered_pages")
    return registered is None or path in registered


def page_link(path: str, label: str, icon: str | None = None) -> None:
    """st.page_link, or a plain caption when that page is not part of this version."""
    if page_available(path):
        st.page_link(path, label=label, icon=icon)
    else:
        st.caption(f"{label} (page not available in this version)")
