"""JSON text exactly as `json.dumps` writes it, from encoders built once.

`json.dumps` (and `JSONEncoder.encode`) builds a new C encoder on every call,
which costs more than encoding the small dicts the lifecycle writes (a task's
params, an event's detail, a fingerprint row). These functions keep one
encoder each and give the same text as the `json.dumps` call named in their
doc, so stored bytes and fingerprints do not change. One difference: a
circular structure raises RecursionError instead of ValueError (nothing the
project encodes can be circular).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from json import encoder as _encoder
from typing import Any

_CACHE_LIMIT = 1 << 14  # datetimes remembered (by `_str` and `naive_iso`) before starting over: about 2 MiB,
# several flushes of instants (a run of 20,000 tasks peaked 11 MiB higher with 1 << 16)


def _make(
    *, sort_keys: bool, separators: tuple[str, str], default: Callable[[Any], Any] | None
) -> Callable[[Any], str]:
    make = getattr(_encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another interpreter): json itself
        return json.JSONEncoder(sort_keys=sort_keys, separators=separators, default=default).encode
    item_sep, key_sep = separators
    c = make(
        None,
        default or json.JSONEncoder().default,
        _encoder.encode_basestring_ascii,
        None,
        key_sep,
        item_sep,
        sort_keys,
        False,
        True,
    )

    def dumps(value: Any) -> str:
        return "".join(c(value, 0))

    return dumps


def _remember(cache: dict[datetime, str], value: datetime, text: Callable[[datetime], str]) -> str:
    """text(value), remembered in cache (emptied when it reaches _CACHE_LIMIT entries)."""
    got = cache.get(value)
    if got is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        got = cache[value] = text(value)
    return got


_NAIVE_STR: dict[datetime, str] = {}


def _str(value: Any) -> str:
    """`str(value)`, remembering the text of naive datetimes: a run's rows repeat the same few
    instants (a task, its events and its ledger rows share them), and `datetime.__str__` formats
    through a method call by name. Equal naive datetimes always print the same (not aware ones:
    equal instants in two zones print differently, so they are not cached)."""
    if value.__class__ is datetime and value.tzinfo is None:
        return _remember(_NAIVE_STR, value, str)
    return str(value)


dumps = _make(sort_keys=False, separators=(", ", ": "), default=None)
dumps.__doc__ = "json.dumps(value)"
canonical = _make(sort_keys=True, separators=(",", ":"), default=_str)
canonical.__doc__ = 'json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))'
compact = _make(sort_keys=True, separators=(",", ":"), default=None)
compact.__doc__ = 'json.dumps(value, sort_keys=True, separators=(",", ":"))'


def driver_dumps(value: Any) -> str:
    """`dumps` for a database driver: psycopg caches its JSON dumpers by the function's code and
    refuses (with a warning on every connection) a closure such as `dumps`; this is a plain function."""
    return dumps(value)


NAIVE_ISO: dict[datetime, str] = {}


def _iso(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")


def naive_iso(value: datetime) -> str:
    """`value.isoformat(" ", "microseconds")` of a naive datetime, remembered as `_str` does (the
    text SQLAlchemy stores a DateTime as on SQLite). `NAIVE_ISO.get(value) or naive_iso(value)`
    is the cheap form for a caller that looks up first."""
    return _remember(NAIVE_ISO, value, _iso)
