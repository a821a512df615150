"""The Rivya admin dashboard: `streamlit run app.py`.

Runs before every page: picks the data source (sidebar), makes the demo
database on first start when the default one is empty, checks access, then
hands over to the page chosen in the navigation.
"""

from __future__ import annotations

import os

import streamlit as st

from pages._access import access_gate, can_act
from pages._links import open_picked_task
from pages._source import data_source_sidebar, default_url
from pages._text import plain
from rivya_core.stores import db
from simulations.demo import ensure_demo_data

# (file, title, icon, section) in the order a support person needs them.
PAGES = [
    ("pages/overview.py", "Overview", ":material/dashboard:", "Support"),
    ("pages/live_tasks.py", "Live tasks", ":material/pending:", "Support"),
    ("pages/task_inspector.py", "Task inspector", ":material/search:", "Support"),
    ("pages/checklist.py", "Checklist", ":material/checklist:", "Support"),
    ("pages/user.py", "User", ":material/person_search:", "Support"),
    ("pages/incidents.py", "Incidents", ":material/emergency:", "Support"),
    ("pages/notifications.py", "Notifications", ":material/notifications:", "Support"),
    ("pages/deliveries.py", "Webhook deliveries", ":material/webhook:", "Support"),
    ("pages/ledger.py", "Ledger", ":material/account_balance:", "Credits"),
    ("pages/refund_audit.py", "Refund audit", ":material/policy:", "Credits"),
    ("pages/chat_settlement.py", "Chat settlement", ":material/chat:", "Credits"),
    ("pages/simulation_lab.py", "Simulation lab", ":material/science:", "QA"),
]
PAGE_FILES = frozenset(path for path, *_ in PAGES)


def _needs_demo(url: str) -> bool:
    """True when the default database is absent or holds no task yet."""
    path = db.sqlite_path(url)
    if path is not None and not path.is_file():
        return True
    try:
        engine = db.make_engine(url, read_only=True)
        try:
            return not db.has_rows(engine, "ai_task")
        finally:
            engine.dispose()
    except Exception:  # unreachable default database: the page itself says so
        return False


def ensure_demo(url: str) -> None:
    """Seed the default database with the demo scenario once, showing progress. It writes, so
    only for someone who may act (open mode, or an operator): a viewer's visit never writes."""
    done = st.session_state.setdefault("demo_checked", set())
    if url in done or os.environ.get("RIVYA_DEMO", "1") == "0" or url != default_url() or not can_act():
        return
    done.add(url)
    if not _needs_demo(url):
        return
    bar = st.progress(0.0, text="First start: creating demo data by running the demo scenario…")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"Creating demo data: {message}")

    try:
        ensure_demo_data(url, progress)
    except Exception as exc:  # any failure of the generator must read as a message, not a traceback
        st.error(f"Could not create the demo data: {type(exc).__name__}: {plain(exc)}")
    else:
        st.toast("Demo data ready.")
    finally:
        bar.empty()
        st.cache_resource.clear()
        st.cache_data.clear()


def navigation():
    sections: dict[str, list[st.Page]] = {}
    for i, (path, title, icon, section) in enumerate(PAGES):
        sections.setdefault(section, []).append(st.Page(path, title=title, icon=icon, default=i == 0))
    return st.navigation(sections)


st.set_page_config(page_title="Rivya admin", page_icon=":material/monitoring:", layout="wide")
page = navigation()  # registered first, so no page script can run before the gate below
st.session_state["nav_ready"] = True
access_gate()
open_picked_task()  # a task row selected in a table: straight to the inspector, same tab
pending = st.session_state.pop("pending_page", None)
if pending and pending[0] in PAGE_FILES:
    st.switch_page(pending[0], query_params=pending[1])
url = data_source_sidebar()
ensure_demo(url)
page.run()
