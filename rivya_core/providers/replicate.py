"""A Replicate-style predictions API client (the Provider port over HTTP).

  create:  POST {base}/models/{owner}/{name}/predictions  (a catalogue model mapped to
           "owner/name"), or POST {base}/predictions with {"version": ...} (mapped to
           a 64-hex version id); body {"input": {...}, "webhook": URL?ref=task-N,
           "webhook_events_filter": ["start", "completed"]}; header Authorization: Bearer
  get:     GET  {base}/predictions/{id}
  cancel:  POST {base}/predictions/{id}/cancel   (rivya_core.upstream_cancel: a job we gave up on)

A submission carries `Cancel-After: <seconds>s` when the service armed the client
(`cancel_after`: model id -> seconds, the category's timeout): Replicate then stops the
prediction at that deadline (status `aborted` if it never started, unbilled; `canceled` if it
was running). `metrics.predict_time`, when present, is the billed run time: kept as the
status's `run_s` (ai_task.provider_run_s).

Prediction status -> UpstreamStatus:

  starting   -> queued
  processing -> running
  succeeded  -> succeeded, with every URL found in `output` (none: succeeded without
                URLs, which the core defers and re-checks; never SUCCESS without them)
  failed     -> failed, class provider (`error` kept as the message); an error the
                provider blames on the input's safety check -> class user
  canceled   -> failed `upstream_canceled`, class provider: the job was stopped after it
                started; upstream bills a canceled prediction, but the user received
                nothing, so the default policy refunds it (we carry the upstream cost)
  aborted    -> failed `upstream_aborted`, class infrastructure: terminated before it
                ran (e.g. a deadline); upstream does not bill it; refunded by default

Webhooks: the body is the prediction object, signed with Standard Webhooks
(`webhook-id`, `-timestamp`, `-signature`, `whsec_` secrets): verified by
rivya_core.webhooks.verify; the webhook id is the delivery's id. Without a
configured secret, the account's signing secret is read from `GET
{base}/webhooks/default/secret` (providers.keys.FetchedSecret: on first use,
kept 24 h, read again when a signature stops matching, at most once a minute).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx

from .. import webhooks
from ..cost import reported_seconds
from ..domain import FailureClass
from ..ports import CancelAnswer, ProviderError, ProviderFault, UpstreamCancel, UpstreamState, UpstreamStatus
from ..upstream_cancel import cancel_after_header
from .http import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, HttpApi, submit_error, urls_in, with_ref
from .keys import FetchedSecret

DEFAULT_BASE_URL = "https://api.replicate.com/v1"
EVENTS = ("start", "completed")
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_USER_ERRORS = ("nsfw", "safety", "content policy", "sensitive")

STATES = {"starting": UpstreamState.QUEUED, "processing": UpstreamState.RUNNING}
FAILED = {
    "canceled": ("upstream_canceled", "The prediction was canceled upstream.", FailureClass.PROVIDER),
    "aborted": ("upstream_aborted", "The prediction was aborted before it ran.", FailureClass.INFRASTRUCTURE),
}


def predict_time(pred: Any) -> float | None:
    """The prediction's billed run seconds (`metrics.predict_time`), None when not given."""
    metrics = pred.get("metrics") if isinstance(pred, dict) else None
    return reported_seconds(metrics.get("predict_time")) if isinstance(metrics, dict) else None


def prediction_status(pred: Any) -> UpstreamStatus:
    """What a prediction object says, as the core's UpstreamStatus."""
    status = _prediction_status(pred)
    run_s = predict_time(pred)
    return status if run_s is None else replace(status, run_s=run_s)


def _prediction_status(pred: Any) -> UpstreamStatus:
    if not isinstance(pred, dict):
        return UpstreamStatus(UpstreamState.UNKNOWN)
    status = pred.get("status")
    if status in STATES:
        return UpstreamStatus(STATES[status])
    if status == "succeeded":
        return UpstreamStatus(UpstreamState.SUCCEEDED, urls_in(pred.get("output")))
    if status == "failed":
        error = pred.get("error")
        message = str(error)[:2000] if error else "The prediction failed."
        user = any(w in message.lower() for w in _USER_ERRORS)
        return UpstreamStatus(
            UpstreamState.FAILED,
            (),
            "content_policy_violation" if user else "model_error",
            message,
            FailureClass.USER if user else FailureClass.PROVIDER,
        )
    if status in FAILED:
        code, message, klass = FAILED[status]
        return UpstreamStatus(UpstreamState.FAILED, (), code, message, klass)
    return UpstreamStatus(UpstreamState.UNKNOWN)


class ReplicateWebhooks:
    """Standard Webhooks signatures; the body is a prediction object."""

    def __init__(self, secrets: Sequence[str], fetched: FetchedSecret | None = None):
        self._secrets = list(secrets)
        self.fetched = None if self._secrets else fetched

    def __repr__(self) -> str:
        return f"ReplicateWebhooks(secrets={len(self._secrets)}, fetched={self.fetched is not None})"

    def verify(self, headers: Mapping[str, str], body: bytes, now_ts: float) -> str:
        secrets = self._secrets or (self.fetched.current() if self.fetched is not None else [])
        try:
            if not secrets:
                raise webhooks.WebhookError(
                    "no webhook secret configured or fetched for this provider", code="bad_signature"
                )
            return webhooks.verify(secrets, headers, body, now_ts)
        except webhooks.WebhookError as exc:
            # a fetched secret that stops matching may have been rotated: read it again (bounded)
            if exc.code != "bad_signature" or self.fetched is None or not self.fetched.refresh():
                raise
            return webhooks.verify(self.fetched.current(), headers, body, now_ts)

    def parse(self, body: bytes) -> tuple[str, UpstreamStatus] | str:
        try:
            pred = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return "body is not JSON"
        if not isinstance(pred, dict):
            return "body is not a prediction object"
        pid = pred.get("id")
        if not isinstance(pid, str) or not pid or len(pid) > 200:
            return "prediction id missing or not a string"
        status = prediction_status(pred)
        if status.state == UpstreamState.UNKNOWN:
            return "prediction status is not one of starting, processing, succeeded, failed, canceled, aborted"
        return pid, status


class ReplicateClient:
    """One catalogue provider served by a Replicate-style API."""

    def __init__(
        self,
        name: str,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        webhook_url: str | None = None,
        webhook_secrets: Sequence[str] = (),
        models: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.webhook_url = webhook_url
        self.models = dict(models or {})
        self.cancel_after: Callable[[str], float | None] | None = None  # set by upstream_cancel.arm
        self.api = HttpApi(
            base_url,
            f"Bearer {token}",
            timeout_s=timeout_s,
            retries=retries,
            transport=transport,
            label=f"{name} (replicate)",
        )
        self.callbacks = ReplicateWebhooks(webhook_secrets, FetchedSecret(self._get_secret))

    def __repr__(self) -> str:
        return f"ReplicateClient({self.name!r}, {self.api!r})"

    def _create_request(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> tuple[str, dict]:
        target = self.models.get(model, model)
        body: dict[str, Any] = {"input": {"prompt": prompt, **params}}
        if self.webhook_url:
            body["webhook"] = with_ref(self.webhook_url, task_ref)
            body["webhook_events_filter"] = list(EVENTS)
        if _VERSION.match(target):
            return "predictions", {"version": target, **body}
        return f"models/{target}/predictions", body

    def _get_secret(self, path: str) -> httpx.Response:
        try:
            return self.api.request("GET", path)
        except ProviderError:
            return httpx.Response(599)

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        path, body = self._create_request(task_ref, model, prompt, params)
        deadline = self.cancel_after(model) if self.cancel_after is not None else None
        headers = {"Cancel-After": cancel_after_header(deadline)} if deadline else None
        resp = self.api.request("POST", path, json=body, headers=headers)
        if resp.status_code not in (200, 201, 202):
            raise submit_error(self.api.label, resp)
        pred = self.api.json(resp)
        pid = pred.get("id") if isinstance(pred, dict) else None
        if not isinstance(pid, str) or not pid:
            raise ProviderError(ProviderFault.ERROR, f"{self.api.label}: the answer names no prediction id")
        return pid

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        resp = self.api.request("GET", f"predictions/{upstream_task_id}")
        if resp.status_code != 200:
            return UpstreamStatus(UpstreamState.UNKNOWN)
        return prediction_status(self.api.json(resp))

    def cancel(self, upstream_task_id: str) -> UpstreamCancel:
        """Ask Replicate to stop the prediction: the answer as the prediction now stands."""
        resp = self.api.request("POST", f"predictions/{upstream_task_id}/cancel")
        if resp.status_code == 404:
            return UpstreamCancel(CancelAnswer.UNKNOWN, "HTTP 404: no such prediction")
        if resp.status_code != 200:
            return UpstreamCancel(CancelAnswer.ERROR, f"HTTP {resp.status_code}")
        pred = self.api.json(resp)
        status = pred.get("status") if isinstance(pred, dict) else None
        said = f"HTTP 200, status {str(status)[:30]}"
        if status in ("canceled", "aborted", "starting", "processing"):  # stopped, or its stop is under way
            return UpstreamCancel(CancelAnswer.CANCELED, said, predict_time(pred))
        if status in ("succeeded", "failed"):
            return UpstreamCancel(CancelAnswer.ALREADY_FINISHED, said, predict_time(pred))
        return UpstreamCancel(CancelAnswer.ERROR, said)

    def find(self, task_ref: str) -> str | None:
        """The predictions API cannot be searched by our reference: None (recovery then
        relies on a callback parked under this reference)."""
        return None
