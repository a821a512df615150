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
from json import encoder as _encoder
from typing import Any


def _make(*, sort_keys: bool, separators: tuple[str, str], default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    make = getattr(_encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another interpreter): json itself
        return json.JSONEncoder(sort_keys=sort_keys, separators=separators, default=default).encode
    item_sep, key_sep = separators
    c = make(None, default or json.JSONEncoder().default, _encoder.encode_basestring_ascii, None,
             key_sep, item_sep, sort_keys, False, True)

    def dumps(value: Any) -> str:
        return "".join(c(value, 0))

    return dumps


dumps = _make(sort_keys=False, separators=(", ", ": "), default=None)
dumps.__doc__ = "json.dumps(value)"
canonical = _make(sort_keys=True, separators=(",", ":"), default=str)
canonical.__doc__ = 'json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))'
compact = _make(sort_keys=True, separators=(",", ":"), default=None)
compact.__doc__ = 'json.dumps(value, sort_keys=True, separators=(",", ":"))'


def driver_dumps(value: Any) -> str:
    """`dumps` for a database driver: psycopg caches its JSON dumpers by the function's code and
    refuses (with a warning on every connection) a closure such as `dumps`; this is a plain function."""
    return dumps(value)
