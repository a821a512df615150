"""Validly signed callbacks whose fields hold any JSON value at all: each is
recorded, never raises, and a body of the wrong shape is `malformed` and changes
nothing but its own provider_callback row."""

from __future__ import annotations

import json
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rivya_core import webhooks
from rivya_core.domain import CallbackOutcome
from tests.fakes import IMAGE, SECRET, make_service

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
STATES = ("succeeded", "failed", "running")
CLASSES = ("user", "provider", "infrastructure")
URL = "https://cdn.example/out.png"
REFUSED = {
    CallbackOutcome.MALFORMED,
    CallbackOutcome.UNKNOWN_TASK,
    CallbackOutcome.DUPLICATE,
    CallbackOutcome.REJECTED_SIGNATURE,
    CallbackOutcome.REJECTED_STALE,
}


def _valid(field: str, value) -> bool:
    """The callback's shape, written out independently of the parser."""
    if field == "state":
        return isinstance(value, str) and value in STATES
    if field == "result_urls":
        return value is None or (
            isinstance(value, list)
            and len(value) <= 50
            and all(isinstance(u, str) and 0 < len(u) <= 2000 for u in value)
        )
    if field == "failure_class":
        return value is None or (isinstance(value, str) and value in CLASSES)
    if field in ("error_code", "error_message"):
        return value is None or isinstance(value, str)
    raise AssertionError(field)


FIELDS = ("state", "result_urls", "error_code", "error_message", "failure_class")
GOOD = {
    "state": st.sampled_from(STATES),
    "result_urls": st.just([URL]) | st.just([]) | st.none(),
    "error_code": st.none() | st.just("model_error"),
    "error_message": st.none() | st.just("it broke"),
    "failure_class": st.none() | st.sampled_from(CLASSES),
}


@st.composite
def bodies(draw):
    data = {f: draw(GOOD[f] | JSON) if draw(st.booleans()) else draw(GOOD[f]) for f in FIELDS}
    upstream = draw(st.sampled_from(["REAL", "REAL", "REAL"]) | JSON)
    return data, upstream, draw(st.booleans())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_signed_callback_of_any_shape_is_recorded_and_wrong_shapes_change_nothing(case):
    data, upstream, drop_missing = case
    svc, clock, _ = make_service()
    user = svc.create_account("cb@example.com", "Cb", grant=100)
    task = svc.submit(user.id, IMAGE)
    data = {**data, "upstream_task_id": task.upstream_task_id if upstream == "REAL" else upstream}
    if drop_missing:
        data = {k: v for k, v in data.items() if v is not None}
    body = json.dumps({"type": "task.update", "data": data}).encode()
    ts = int((clock.now() - datetime(1970, 1, 1)).total_seconds())
    before = svc.store.snapshot()

    result = svc.handle_callback("lumen", webhooks.signed_headers(SECRET, "msg_1", ts, body), body)

    after = svc.store.snapshot()
    assert len(after.callbacks) == len(before.callbacks) + 1
    assert after.callbacks[-1].outcome == result.outcome and after.callbacks[-1].signature_valid
    wrong = [f for f in FIELDS if not _valid(f, data.get(f))]
    if upstream != "REAL" and not (isinstance(upstream, str) and 0 < len(upstream) <= 200):
        wrong.append("upstream_task_id")
    if wrong:
        assert result.outcome == CallbackOutcome.MALFORMED, (wrong, result)
    elif upstream != "REAL":
        assert result.outcome == CallbackOutcome.UNKNOWN_TASK
    else:  # a well-formed body for a generating task is taken (applied, deferred or recorded as progress)
        assert result.outcome not in REFUSED, result
    if result.outcome in (CallbackOutcome.MALFORMED, CallbackOutcome.UNKNOWN_TASK):
        assert (after.tasks, after.ledger, after.notifications, after.events, after.accounts) == (
            before.tasks,
            before.ledger,
            before.notifications,
            before.events,
            before.accounts,
        )
