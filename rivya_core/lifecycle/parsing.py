"""The callback body: parsed and type-checked, or the reason it is malformed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ..cost import reported_seconds
from ..domain import CallbackOutcome, FailureClass
from ..ports import CallbackFormat, UpstreamState


@dataclass(frozen=True)
class _Parsed:
    upstream_task_id: str
    state: UpstreamState
    result_urls: tuple[str, ...]
    error_code: str | None
    error_message: str | None
    failure_class: FailureClass | None
    run_s: float | None = None  # billable run seconds the provider reported (rivya_core.cost)


_STATES = {s.value: s for s in (UpstreamState.SUCCEEDED, UpstreamState.FAILED, UpstreamState.RUNNING)}


_CLASSES = {c.value: c for c in FailureClass if c is not FailureClass.BILLING}


def parse_callback(raw: bytes) -> _Parsed | str:
    """The callback body, or the reason it is malformed. Every field is type-checked
    before it is compared or hashed: any JSON value of the wrong shape is malformed."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "body is not JSON"
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return "body has no data object"
    upstream, state = data.get("upstream_task_id"), data.get("state")
    if not isinstance(upstream, str) or not upstream or len(upstream) > 200:
        return "data.upstream_task_id missing or not a string"
    if not isinstance(state, str) or state not in _STATES:
        return "data.state is not succeeded, failed or running"
    urls = data.get("result_urls")
    urls = [] if urls is None else urls
    if not isinstance(urls, list) or not all(isinstance(u, str) and 0 < len(u) <= 2000 for u in urls) or len(urls) > 50:
        return "data.result_urls is not a list of URLs"
    klass = data.get("failure_class")
    if klass is not None and (not isinstance(klass, str) or klass not in _CLASSES):
        return "data.failure_class is not user, provider or infrastructure"
    code, message = data.get("error_code"), data.get("error_message")
    if code is not None and not isinstance(code, str) or message is not None and not isinstance(message, str):
        return "data.error_code / error_message are not strings"
    run_s = data.get("run_s")
    if run_s is not None and reported_seconds(run_s) is None:
        return "data.run_s is not a number of seconds"
    return _Parsed(
        upstream,
        _STATES[state],
        tuple(urls),
        code[:80] if code is not None else None,
        message[:2000] if message is not None else None,
        _CLASSES[klass] if klass is not None else None,
        reported_seconds(run_s),
    )


def _already(status: str) -> str:
    """Why a callback for a finished task is a duplicate."""
    return f"task already {status}"


def _callback_outcome(parsed: _Parsed) -> CallbackOutcome:
    """An early callback (success without URLs yet) is deferred; a "still running" report
    is progress (nothing changes); a result applies."""
    if parsed.state == UpstreamState.SUCCEEDED and not parsed.result_urls:
        return CallbackOutcome.DEFERRED
    if parsed.state not in (UpstreamState.SUCCEEDED, UpstreamState.FAILED):
        return CallbackOutcome.PROGRESS
    return CallbackOutcome.APPLIED


def parse_with(fmt: CallbackFormat, raw: bytes) -> _Parsed | str:
    """A provider's own callback body, through its client's parser."""
    got = fmt.parse(raw)
    if isinstance(got, str):
        return got
    upstream_id, st = got
    return _Parsed(
        upstream_id, st.state, tuple(st.result_urls), st.error_code, st.error_message, st.failure_class, st.run_s
    )


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - datetime(1970, 1, 1)).total_seconds()
