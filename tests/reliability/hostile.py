"""A seeded generator of hostile callbacks, each with the outcome it must get."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from rivya_core import webhooks
from rivya_core.lifecycle import MAX_CALLBACK_BODY

KINDS = (
    "forged",
    "changed_body",
    "stale",
    "future",
    "replayed_id",
    "missing_header",
    "duplicated_header",
    "non_json",
    "wrong_shape",
    "unknown_upstream",
    "other_provider_task",
    "oversized",
    "unicode",
    "control_chars",
    "bad_timestamp",
    "no_secret_provider",
    "other_provider_secret",
    "not_bytes",
    "progress_on_terminal",
    "success_on_terminal",
)


@dataclass
class Hostile:
    kind: str
    provider: str
    headers: Any
    body: Any
    expect: str


def _doc(upstream: str, state: str = "succeeded") -> bytes:
    return json.dumps(
        {
            "type": f"task.{state}",
            "data": {
                "upstream_task_id": upstream,
                "state": state,
                "result_urls": ["https://cdn.example/x.png"] if state == "succeeded" else [],
                "error_code": None if state != "failed" else "x",
                "error_message": None,
                "failure_class": None,
            },
        }
    ).encode()


def _junk(rng: random.Random, n: int) -> str:
    pool = "abc\u00e9\u4e2d\U0001f600\u202e\x00\x01\x1b\n\r\t\"'\\<>{}"
    return "".join(rng.choice(pool) for _ in range(n))


def generate(rng: random.Random, now_ts: int, env: dict[str, Any]) -> Hostile:
    """env: secrets (provider -> secret), generating (provider -> upstream ids),
    terminal (lumen upstream ids), applied_ids (lumen webhook ids already applied)."""
    kind = rng.choice(KINDS)
    secret = env["secrets"]["lumen"]
    live = rng.choice(env["generating"]["lumen"])
    body = _doc(live, rng.choice(["succeeded", "failed", "running"]))
    msg = f"msg_{rng.getrandbits(48):x}"
    ts = now_ts + rng.randint(-250, 250)

    def signed(b: bytes, s: str = secret, m: str = msg, t: int = ts) -> dict[str, str]:
        return webhooks.signed_headers(s, m, t, b)

    if kind == "forged":
        forged = webhooks.generate_secret(rng)
        return Hostile(kind, "lumen", signed(body, forged), body, "rejected_signature")
    if kind == "changed_body":
        other = _doc(live, "failed")
        return Hostile(kind, "lumen", signed(body), other if other != body else body + b" ", "rejected_signature")
    if kind in ("stale", "future"):
        t = now_ts + (-1 if kind == "stale" else 1) * rng.randint(301, 10**7)
        return Hostile(kind, "lumen", signed(body, t=t), body, "rejected_stale")
    if kind == "replayed_id":
        return Hostile(kind, "lumen", signed(body, m=rng.choice(env["applied_ids"])), body, "duplicate")
    if kind == "missing_header":
        h = signed(body)
        del h[rng.choice(sorted(h))]
        return Hostile(kind, "lumen", h, body, "rejected_signature")
    if kind == "duplicated_header":
        h = signed(body)
        name = rng.choice(sorted(h))
        h[name.title()] = h[name]
        return Hostile(kind, "lumen", h, body, "malformed")
    if kind == "non_json":
        b = rng.choice([b"", b"{", b"not json", b"\xff\xfe\x00", _junk(rng, 40).encode("utf-8", "surrogatepass")])
        return Hostile(kind, "lumen", signed(b), b, "malformed")
    if kind == "wrong_shape":
        doc = rng.choice(
            [
                [],
                1,
                "x",
                None,
                {"data": []},
                {"data": {"upstream_task_id": 5, "state": "succeeded"}},
                {"data": {"upstream_task_id": live, "state": "exploded"}},
                {"data": {"upstream_task_id": live, "state": "succeeded", "result_urls": "nope"}},
                {"data": {"upstream_task_id": live, "state": "failed", "failure_class": "billing"}},
                {"data": {"upstream_task_id": "", "state": "failed"}},
                {"data": {"upstream_task_id": live, "state": "failed", "error_code": 7}},
            ]
        )
        b = json.dumps(doc).encode()
        return Hostile(kind, "lumen", signed(b), b, "malformed")
    if kind == "unknown_upstream":
        b = _doc(f"lumen-job-unknown-{rng.getrandbits(32)}")
        return Hostile(kind, "lumen", signed(b), b, "unknown_task")
    if kind == "other_provider_task":
        b = _doc(rng.choice(env["generating"]["other"]))
        return Hostile(kind, "lumen", signed(b), b, "unknown_task")
    if kind == "oversized":
        b = b'{"data": {"pad": "' + b"x" * (MAX_CALLBACK_BODY + rng.randint(1, 5000)) + b'"}}'
        return Hostile(kind, "lumen", signed(b), b, "malformed")
    if kind == "unicode":
        b = _doc("lumen-" + _junk(rng, 20))
        h = signed(b)
        return Hostile(kind, "lumen", h, b, "unknown_task")
    if kind == "control_chars":
        h = signed(body)
        h["webhook-signature"] = h["webhook-signature"] + " v1," + _junk(rng, 10)
        h["webhook-id"] = "\x00" + _junk(rng, 8)
        return Hostile(kind, "lumen", h, body, "rejected_signature")  # the id is signed: changing it breaks it
    if kind == "bad_timestamp":
        h = signed(body)
        h["webhook-timestamp"] = rng.choice(["", "-5", "1e9", "\u0661\u0662", " 17", "9" * 20, _junk(rng, 5)])
        return Hostile(kind, "lumen", h, body, "rejected_signature" if not h["webhook-timestamp"] else "malformed")
    if kind == "no_secret_provider":
        return Hostile(
            kind, rng.choice(["nobody", "", "lumen\x00", "\u4e2d"]), signed(body), body, "rejected_signature"
        )
    if kind == "other_provider_secret":
        return Hostile(kind, "lumen", signed(body, env["secrets"]["other"]), body, "rejected_signature")
    if kind == "not_bytes":
        return Hostile(kind, "lumen", rng.choice([signed(body), None, [("a", "b")]]), body.decode(), "malformed")
    state = "running" if kind == "progress_on_terminal" else "succeeded"
    b = _doc(rng.choice(env["terminal"]), state)
    return Hostile(kind, "lumen", signed(b), b, "duplicate")
