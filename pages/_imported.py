"""What pages say on a database imported from a production source (rivya_core.sources).

source_facts_of(engine) -> SourceFacts
    Which facts the database's source recorded (cached per engine).
not_recorded_note(engine, *facts) -> bool
    An info line per fact the source never recorded ("not recorded by this source"); True when any.
with_original_ids(frame) -> frame
    Beside each task or user id column, the source's original id (the current database's).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages._text import plain
from rivya_core.sources import facts as source_facts

# columns that hold a task id or a user id, and the word for the added column
_ID_COLUMNS = {"task_id": "task", "user_id": "user"}


@st.cache_data(show_spinner=False, ttl=60)
def _facts(url: str) -> source_facts.SourceFacts:
    from pages._source import get_engine

    return source_facts.source_facts(get_engine(url))


def source_facts_of(engine: Any = None) -> source_facts.SourceFacts:
    from pages._source import current_url

    try:
        return _facts(current_url())
    except Exception:  # a database the page cannot read says so itself; nothing to add here
        return source_facts.NATIVE


def not_recorded_note(engine: Any, *facts: str) -> bool:
    f = source_facts_of(engine)
    missing = [x for x in facts if not f.has(x)]
    for x in missing:
        st.info(
            plain(
                f"{source_facts.FACTS[x][0].upper()}{source_facts.FACTS[x][1:]}: "
                f"{source_facts.NOT_RECORDED} ({f.source})."
            )
        )
    return bool(missing)


def with_original_ids(frame: Any) -> Any:
    """The frame with "original task id" / "original user id" beside our ids, on an imported database
    (a frame of tasks keyed by `id`, with a `model` and a `status`, gets its task's original id too)."""
    f = source_facts_of()
    if not f.imported or frame is None or getattr(frame, "empty", True):
        return frame
    from pages._source import current_url, get_engine

    engine = get_engine(current_url())
    cols = {c: k for c, k in _ID_COLUMNS.items() if c in frame.columns}
    if "id" in frame.columns and {"model", "status"} <= set(frame.columns):
        cols["id"] = "task"
    if not cols:
        return frame
    frame = frame.copy()
    for col, kind in cols.items():
        name = f"original {kind} id"
        if name in frame.columns:
            continue
        ids = [int(v) for v in frame[col].dropna().tolist() if str(v).lstrip("-").isdigit()]
        refs = source_facts.external_refs(engine, kind, ids)
        values = [refs.get(int(v)) if str(v).lstrip("-").isdigit() else None for v in frame[col].tolist()]
        frame.insert(list(frame.columns).index(col) + 1, name, values)
    return frame
