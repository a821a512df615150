"""The "Fork into a scenario" download: a recorded task or account as a replayable story."""

from __future__ import annotations

import streamlit as st
from sqlalchemy import Engine

from pages._text import plain
from rivya_core.domain import RivyaError
from simulations.fork import fork_story


def fork_button(engine: Engine, *, task_id: int | None = None, user_id: int | None = None) -> None:
    what = f"task-{task_id}" if task_id is not None else f"user-{user_id}"
    try:
        story = fork_story(engine, task_id=task_id, user_id=user_id)
    except RivyaError as exc:
        st.caption(f"Cannot fork this into a scenario: {plain(exc.message)}")
        return
    st.download_button(
        "Fork into a scenario",
        story.to_toml(),
        file_name=f"fork-{what}.toml",
        mime="text/plain",
        key=f"fork_{what}",
        help="A [[script]] scenario that replays what was recorded; run it with "
        f"`python -m simulations run fork-{what}.toml --db URL`, edit one line to ask what-if.",
    )
