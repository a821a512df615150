"""The one cache for query results a page shows.

cached_df(fn, *args, **kwargs) -> Any
    fn(engine, *args, **kwargs) for the current URL, cached with
    st.cache_data(ttl=CACHE_TTL_S). fn must be a module-level function
    taking an Engine first; args must be hashable (str, int, tuples).
cached_at(url, fn, *args, **kwargs) -> Any
    The same for another database than the session's (a run the page just made).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import streamlit as st

from pages._source import current_url, get_engine

CACHE_TTL_S = 10


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=512)
def _cached_call(module: str, name: str, url: str, args: tuple, kwargs: tuple) -> Any:
    fn = getattr(importlib.import_module(module), name)
    return fn(get_engine(url), *args, **dict(kwargs))


def cached_df(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return cached_at(current_url(), fn, *args, **kwargs)


def cached_at(url: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return _cached_call(fn.__module__, fn.__qualname__, url, args, tuple(sorted(kwargs.items())))
