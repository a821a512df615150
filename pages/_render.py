"""How pages show things: untrusted text as text, tables people read, credit flows that add up, errors as lines.

(untrusted text goes through pages._text.plain, imported here for the error lines)

show_table(frame, *, column_config=None, **kwargs) -> None
    st.dataframe (full width, no index) with headers in words ("error_code" ->
    "error code") and a dash for missing text, except in configured columns.
show_flows(flows, total_label, total_help=None) -> None
    The credit cards that add up (granted − charged + refunded − chat = total), sum spelled out.
show_errors() -> context manager
    Turns RivyaError / SQLAlchemyError raised inside into st.error lines.
verdict_box(diag, *, markdown=True) -> None
    A checklist's verdict and next action, in the colour of the verdict's severity
    (rivya_core.verdicts.verdict_severity), and a line naming the items that failed or warn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from pages._text import plain
from rivya_core.domain import RivyaError


def show_table(frame: Any, *, column_config: dict | None = None, **kwargs: Any) -> None:
    """A table people read: snake_case headers as words, "—" instead of None in text columns."""
    from pages._imported import with_original_ids
    from pages._links import TASK_LINK, task_table

    config = dict(column_config or {})
    frame = readable_frame(with_original_ids(frame), skip=set(config))
    for col in frame.columns:
        config.setdefault(col, st.column_config.Column(str(col).replace("_", " ")))
    links = [col for col, conf in config.items() if conf is TASK_LINK and col in frame.columns]
    if links:  # task links open in this tab: select a row (a link column would open a new browser tab)
        task_table(frame, links[0], column_config=config, **kwargs)
        return
    st.dataframe(frame, column_config=config, **{"hide_index": True, "width": "stretch", **kwargs})


def readable_frame(frame: Any, *, skip: set) -> Any:
    """A copy whose text columns (object or string dtype, not in skip) hold text only, "—" where missing."""
    import pandas as pd

    frame = frame.copy()
    for col in frame.columns:
        if col in skip:
            continue
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            frame[col] = frame[col].map(_cell_text).astype(object).where(frame[col].notna(), "—")
    return frame


def _cell_text(value: Any) -> Any:
    """One cell of a text column as text: a flag as yes/no, a list or mapping as one line of JSON,
    anything else as str (Arrow cannot mix text with other types in one column)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple | dict | set):
        import json

        return json.dumps(sorted(value) if isinstance(value, set) else value, default=str)
    return str(value)


def show_flows(flows: dict[str, int], total_label: str, total_help: str | None = None) -> None:
    """Metrics that visibly add up: granted − charged + refunded − chat charged (+ other) = total."""
    c = st.columns(5)
    c[0].metric("Granted", f"{flows['granted']:,}", help="Grants (starting balance, top-ups) and adjustments")
    c[1].metric("Charged for tasks", f"{flows['task_charged']:,}", help="`consume` rows")
    c[2].metric("Refunded for tasks", f"{flows['task_refunded']:,}", help="`refund` rows")
    c[3].metric(
        "Chat charged",
        f"{flows['chat_charged']:,}",
        help=f"What users were finally charged for chat: {flows['chat_reserved']:,} reserved before "
        f"the turns ran, {flows['chat_refunded']:,} of it returned unused at settlement",
    )
    c[4].metric(total_label, f"{flows['balance']:,}", help=total_help)
    other = f" + {flows['other']:,} other" if flows["other"] else ""
    st.caption(
        f"{flows['granted']:,} granted − {flows['task_charged']:,} charged for tasks + "
        f"{flows['task_refunded']:,} refunded for tasks − {flows['chat_charged']:,} chat charged{other} "
        f"= **{flows['balance']:,}** ({total_label.lower()}). Chat reservations: "
        f"{flows['chat_reserved']:,}, of which {flows['chat_refunded']:,} returned."
    )


SEVERITY_BOX = {"ok": st.success, "info": st.info, "warn": st.warning, "fail": st.error}


def verdict_box(diag: Any, *, markdown: bool = True) -> None:
    """The verdict drawn by its severity; items that fail or warn are named beneath it, whatever the verdict."""
    from rivya_core.verdicts import verdict_severity

    box = SEVERITY_BOX[verdict_severity(diag.verdict_code)]
    if markdown:
        box(f"**Verdict:** {plain(diag.verdict)}\n\n**Next action:** {plain(diag.next_action)}")
    else:
        box(f"Verdict: {plain(diag.verdict)}. Next action: {plain(diag.next_action)}.")
    flagged = [i for i in diag.items if i.status in ("fail", "warn")]
    if flagged:
        st.caption(
            "Checklist items to look at: "
            + "; ".join(f"{'failed' if i.status == 'fail' else 'warns'}: {plain(i.question)}" for i in flagged)
        )


@contextmanager
def show_errors() -> Iterator[None]:
    try:
        yield
    except RivyaError as exc:
        st.error(f"{plain(exc.message)} ({plain(exc.code)})")
    except SQLAlchemyError as exc:
        st.error(f"The database refused this query: {type(exc).__name__}: {plain(str(exc).splitlines()[0])}")
