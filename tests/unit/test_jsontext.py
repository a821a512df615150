"""rivya_core.stores.jsontext writes the same text as the json.dumps call each function names."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from rivya_core.stores import jsontext

VALUES = [
    {"b": 1, "a": [1, 2.5, None, True, False, '\u00e9\u2603\n"x\\'], "c": {"z": {}, "y": []}},
    "s",
    1,
    -0.0,
    1e300,
    1.0000000000000002,
    float("nan"),
    float("inf"),
    None,
    [],
    {},
    (1, 2),
    {1: "int key", 2: "x"},
    {True: 1, None: 2, 1.5: 3},
    {"d": datetime(2026, 1, 1, 0, 0, 0, 5)},
    {1: "mixed", "a": "keys"},
    {"o": object()},
]


def _result(f, v):
    try:
        return f(v)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_same_text_or_same_error_as_json_dumps(value):
    assert _result(jsontext.dumps, value) == _result(json.dumps, value)
    assert _result(jsontext.canonical, value) == _result(
        lambda v: json.dumps(v, sort_keys=True, default=str, separators=(",", ":")), value
    )
    assert _result(jsontext.compact, value) == _result(
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")), value
    )


def test_the_encoders_are_reused_safely():
    nested = {"a": [{"b": [1]}]}
    assert [jsontext.dumps(nested) for _ in range(3)] == [json.dumps(nested)] * 3
