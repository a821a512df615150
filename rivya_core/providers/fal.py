"""A fal-style queue API client (the Provider port over HTTP).

  submit:  POST {base}/{endpoint}?fal_webhook=URL?ref=task-N   (body: the model input;
           header Authorization: Key ...) -> {"request_id": ..., ...}
  status:  GET  {base}/{app}/requests/{id}/status -> IN_QUEUE | IN_PROGRESS | COMPLETED
  result:  GET  {base}/{app}/requests/{id}         -> the output payload
  cancel:  PUT  {base}/{app}/requests/{id}/cancel -> 202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED
           | 404 NOT_FOUND   (rivya_core.upstream_cancel: a job we gave up on)

Run seconds (ai_task.provider_run_s): a COMPLETED status's `metrics.inference_time`, or a
payload's `timings.inference`, when given.

`endpoint` is the catalogue model mapped through `models` (default: `{app}/{model}`);
`app` is the deployment's fal application (owner/name), under which every request
of this provider is queued.

Status -> UpstreamStatus: IN_QUEUE -> queued, IN_PROGRESS -> running, COMPLETED ->
the result is fetched:

- 2xx with URLs in the payload -> succeeded with them;
- 2xx with a null payload or none in it -> succeeded without URLs: the core never
  marks that SUCCESS (it defers, re-checks, and fails it `no_result_urls`);
- 4xx -> failed `upstream_result_error`, class provider (a failed job reports
  COMPLETED and only the result fetch tells: it must end FAILED and refunded,
  not be polled until the timeout);
- 5xx or no answer -> unknown (asked again later).

A COMPLETED status carrying an `error` is failed at once, class provider.

Webhooks: {"request_id", "status": "OK" | "ERROR", "payload", "error",
"payload_error"}, signed with ED25519 (rivya_core.webhooks.verify_ed25519) with
the deployment's configured public keys. OK with URLs -> succeeded; OK with a
null payload (e.g. `payload_error`) -> succeeded without URLs (deferred, then the
result is fetched); ERROR -> failed, class provider (class user when the error
names the content policy or a safety check). fal sends no delivery id:
the webhook id is the request id plus the body's digest, so a redelivery of the
same body is a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from .. import webhooks
from ..domain import FailureClass
from ..ports import CancelAnswer, ProviderError, ProviderFault, UpstreamCancel, UpstreamState, UpstreamStatus
from .http import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, HttpApi, submit_error, urls_in, with_ref

DEFAULT_BASE_URL = "https://queue.fal.run"
STATES = {"IN_QUEUE": UpstreamState.QUEUED, "IN_PROGRESS": UpstreamState.RUNNING}
RESULT_ERROR = ("upstream_result_error", FailureClass.PROVIDER)
USER_ERRORS = ("nsfw", "safety", "content policy", "sensitive")


def result_status(payload: Any, run_s: float | None = None) -> UpstreamStatus:
    """A fetched or delivered payload: succeeded, with the URLs in it (maybe none)."""
    if run_s is None and isinstance(payload, dict):
        timings = payload.get("timings")
        run_s = seconds(timings.get("inference")) if isinstance(timings, dict) else None
    return UpstreamStatus(UpstreamState.SUCCEEDED, urls_in(payload), run_s=run_s)


def seconds(value: Any) -> float | None:
    """A reported duration in seconds, None unless a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


class FalWebhooks:
    """ED25519 signatures; the body is fal's webhook envelope."""

    def __init__(self, public_keys: Sequence[str]):
        self._keys = list(public_keys)

    def __repr__(self) -> str:
        return f"FalWebhooks(public_keys={len(self._keys)})"

    def verify(self, headers: Mapping[str, str], body: bytes, now_ts: float) -> str:
        if not self._keys:
            raise webhooks.WebhookError("no webhook public key configured for this provider", code="bad_signature")
        request_id = webhooks.verify_ed25519(self._keys, headers, body, now_ts)
        return f"{request_id}:{hashlib.sha256(bytes(body)).hexdigest()[:32]}"

    def parse(self, body: bytes) -> tuple[str, UpstreamStatus] | str:
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return "body is not JSON"
        if not isinstance(doc, dict):
            return "body is not a webhook object"
        rid = doc.get("request_id")
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            return "request_id missing or not a string"
        status = doc.get("status")
        if status == "OK":
            return rid, result_status(doc.get("payload"))
        if status == "ERROR":
            error = doc.get("error")
            message = str(error)[:2000] if error else "The request failed."
            user = any(w in message.lower() for w in USER_ERRORS)
            code = "content_policy_violation" if user else "upstream_error"
            return rid, UpstreamStatus(UpstreamState.FAILED, (), code, message,
                                       FailureClass.USER if user else FailureClass.PROVIDER)
        return "status is not OK or ERROR"


class FalClient:
    """One catalogue provider served by a fal-style queue API."""

    def __init__(self, name: str, key: str, *, app: str, base_url: str = DEFAULT_BASE_URL,
                 webhook_url: str | None = None, public_keys: Sequence[str] = (),
                 models: Mapping[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, transport: httpx.BaseTransport | None = None):
        self.name = name
        self.app = app.strip("/")
        self.webhook_url = webhook_url
        self.models = dict(models or {})
        self.callbacks = FalWebhooks(public_keys)
        self.api = HttpApi(base_url, f"Key {key}", timeout_s=timeout_s, retries=retries, transport=transport,
                           label=f"{name} (fal)")

    def __repr__(self) -> str:
        return f"FalClient({self.name!r}, app={self.app!r}, {self.api!r})"

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        endpoint = self.models.get(model) or f"{self.app}/{model}"
        query = {"fal_webhook": with_ref(self.webhook_url, task_ref)} if self.webhook_url else None
        resp = self.api.request("POST", endpoint, params=query, json={"prompt": prompt, **params})
        if resp.status_code not in (200, 201, 202):
            raise submit_error(self.api.label, resp)
        doc = self.api.json(resp)
        rid = doc.get("request_id") if isinstance(doc, dict) else None
        if not isinstance(rid, str) or not rid:
            raise ProviderError(ProviderFault.ERROR, f"{self.api.label}: the answer names no request id")
        return rid

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        base = f"{self.app}/requests/{upstream_task_id}"
        resp = self.api.request("GET", f"{base}/status")
        if resp.status_code not in (200, 202):
            return UpstreamStatus(UpstreamState.UNKNOWN)
        doc = self.api.json(resp)
        state = doc.get("status") if isinstance(doc, dict) else None
        if state in STATES:
            return UpstreamStatus(STATES[state])
        if state != "COMPLETED":
            return UpstreamStatus(UpstreamState.UNKNOWN)
        if doc.get("error"):
            return UpstreamStatus(UpstreamState.FAILED, (), "upstream_error", str(doc["error"])[:2000],
                                  FailureClass.PROVIDER)
        result = self.api.request("GET", base)
        if 400 <= result.status_code < 500:  # COMPLETED, yet no result: the job failed
            code, klass = RESULT_ERROR
            return UpstreamStatus(UpstreamState.FAILED, (), code,
                                  f"the result fetch answered HTTP {result.status_code}", klass)
        if result.status_code != 200:
            return UpstreamStatus(UpstreamState.UNKNOWN)
        try:
            payload = result.json()
        except ValueError:
            return UpstreamStatus(UpstreamState.UNKNOWN)
        metrics = doc.get("metrics")
        return result_status(payload, seconds(metrics.get("inference_time")) if isinstance(metrics, dict) else None)

    def cancel(self, upstream_task_id: str) -> UpstreamCancel:
        """Ask fal to stop the request: removed from the queue, or a stop signal to its runner."""
        resp = self.api.request("PUT", f"{self.app}/requests/{upstream_task_id}/cancel")
        try:
            said = resp.json().get("status")
        except (ValueError, AttributeError):
            said = None
        detail = f"HTTP {resp.status_code}" + (f", {str(said)[:40]}" if said else "")
        if resp.status_code in (200, 202):
            return UpstreamCancel(CancelAnswer.CANCELED, detail)
        if resp.status_code == 400 and said == "ALREADY_COMPLETED":
            return UpstreamCancel(CancelAnswer.ALREADY_FINISHED, detail)
        if resp.status_code == 404:
            return UpstreamCancel(CancelAnswer.UNKNOWN, detail)
        return UpstreamCancel(CancelAnswer.ERROR, detail)

    def find(self, task_ref: str) -> str | None:
        """The queue cannot be searched by our reference: None (recovery then relies on a
        callback parked under this reference)."""
        return None
