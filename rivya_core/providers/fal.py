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

The submission's answer carries `status_url`, `response_url` and `cancel_url`:
they are kept per request id and used for that request (a model queued under
another application than `app` is asked where fal said), when they are on the
base URL's own scheme and host (the API key is never sent elsewhere). A request
this process did not submit (the receiver's polling sweep, a restart) is asked
under `app`, then, on a 404, under each other application a mapped endpoint
belongs to (its `owner/name`: fal queues a request under the endpoint id without
its subpath); where it answered is kept for its later questions.

Errors are classified from fal's structured error, not its wording (`classify`):
a model error's `detail[].type` (`content_policy_violation` and the input
validation types are the user's; `internal_server_error`, `generation_timeout`,
`downstream_service_*`, `no_media_generated` the provider's), a request error's
`error_type` or `X-Fal-Error-Type` header (`request_timeout`, `startup_timeout`
-> `upstream_timeout`, `runner_*` -> `upstream_unavailable`, class
infrastructure); the message text is the fallback only when neither is given.

Webhooks: {"request_id", "status": "OK" | "ERROR", "payload", "error",
"payload_error"}, signed with ED25519 (rivya_core.webhooks.verify_ed25519) with
the keys of fal's published JWKS (providers.keys.JwksKeys: fetched, cached 24 h,
refetched when no key matches) plus any configured ones. OK with URLs ->
succeeded; OK with a null payload (e.g. `payload_error`) -> succeeded without
URLs (deferred, then the result is fetched); ERROR -> failed, classified from
`payload.detail[].type` / `payload.error_type`. fal sends no delivery id: the
webhook id is the request id plus the body's digest, so a redelivery of the same
body is a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from .. import webhooks
from ..cost import reported_seconds
from ..domain import FailureClass
from ..ports import CancelAnswer, ProviderError, ProviderFault, UpstreamCancel, UpstreamState, UpstreamStatus
from .http import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, HttpApi, submit_error, urls_in, with_ref
from .keys import JwksKeys

DEFAULT_BASE_URL = "https://queue.fal.run"
STATES = {"IN_QUEUE": UpstreamState.QUEUED, "IN_PROGRESS": UpstreamState.RUNNING}
RESULT_ERROR = ("upstream_result_error", FailureClass.PROVIDER)
USER_ERRORS = ("nsfw", "safety", "content policy", "sensitive")
HANDLES_KEPT = 10_000

# fal's model error types (`detail[].type`): the input's fault, or the model's
USER_ERROR_TYPES = frozenset(
    {
        "content_policy_violation",
        "image_too_large",
        "image_too_small",
        "image_load_error",
        "file_download_error",
        "face_detection_error",
        "file_too_large",
        "unsupported_image_format",
        "unsupported_audio_format",
        "unsupported_video_format",
        "audio_duration_too_long",
        "audio_duration_too_short",
        "video_duration_too_long",
        "video_duration_too_short",
        "invalid_archive",
        "archive_file_count_below_minimum",
        "archive_file_count_exceeds_maximum",
        "feature_not_supported",
        "one_of",
        "missing",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "string_too_short",
        "string_too_long",
        "sequence_too_short",
        "sequence_too_long",
        "value_error",
        "type_error",
    }
)
PROVIDER_ERROR_TYPES = frozenset(
    {
        "internal_server_error",
        "generation_timeout",
        "downstream_service_error",
        "downstream_service_unavailable",
        "no_media_generated",
    }
)
# fal's request error types (`error_type`, header X-Fal-Error-Type): the platform's
TIMEOUT_ERROR_TYPES = frozenset({"request_timeout", "startup_timeout"})
ERROR_TYPE_HEADER = "x-fal-error-type"


def classify(detail: Any, error_type: Any, message: str) -> tuple[str, FailureClass]:
    """(error code, failure class) of a fal failure, from its structured error first:
    `detail` a model error's list of typed errors, `error_type` a request error's type
    (body field or X-Fal-Error-Type header); the message's words only when neither says."""
    types = [d.get("type") for d in detail if isinstance(d, dict)] if isinstance(detail, list) else []
    types = [
        t.split(".", 1)[0] if t.startswith("value_error.") or t.startswith("type_error.") else t
        for t in types
        if isinstance(t, str)
    ]
    if "content_policy_violation" in types:
        return "content_policy_violation", FailureClass.USER
    if isinstance(error_type, str) and error_type:
        if error_type in TIMEOUT_ERROR_TYPES:
            return "upstream_timeout", FailureClass.INFRASTRUCTURE
        if error_type.startswith("runner_") or error_type == "internal_error":
            return "upstream_unavailable", FailureClass.INFRASTRUCTURE
    if any(t in PROVIDER_ERROR_TYPES for t in types):
        return "model_error", FailureClass.PROVIDER
    if any(t in USER_ERROR_TYPES for t in types):
        return "invalid_input", FailureClass.USER
    if types or error_type:
        return "upstream_error", FailureClass.PROVIDER
    if any(w in message.lower() for w in USER_ERRORS):
        return "content_policy_violation", FailureClass.USER
    return "upstream_error", FailureClass.PROVIDER


def _message_of(detail: Any, fallback: str) -> str:
    if isinstance(detail, list):
        msgs = [str(d.get("msg")) for d in detail if isinstance(d, dict) and d.get("msg")]
        if msgs:
            return "; ".join(msgs)[:2000]
    if isinstance(detail, str) and detail:
        return detail[:2000]
    return fallback[:2000]


def failed_status(body: Any, header_type: str | None, fallback: str) -> UpstreamStatus:
    """A failure as fal describes it: a body {"detail": [...]} or {"detail": str, "error_type": ...}."""
    detail = body.get("detail") if isinstance(body, dict) else None
    error_type = (body.get("error_type") if isinstance(body, dict) else None) or header_type
    message = _message_of(detail, fallback)
    code, klass = classify(detail, error_type, message)
    return UpstreamStatus(UpstreamState.FAILED, (), code, message, klass)


def result_status(payload: Any, run_s: float | None = None) -> UpstreamStatus:
    """A fetched or delivered payload: succeeded, with the URLs in it (maybe none)."""
    if run_s is None and isinstance(payload, dict):
        timings = payload.get("timings")
        run_s = reported_seconds(timings.get("inference")) if isinstance(timings, dict) else None
    return UpstreamStatus(UpstreamState.SUCCEEDED, urls_in(payload), run_s=run_s)


class FalWebhooks:
    """ED25519 signatures; the body is fal's webhook envelope."""

    def __init__(self, public_keys: Sequence[str], jwks: JwksKeys | None = None):
        self._keys = list(public_keys)
        self.jwks = jwks

    def __repr__(self) -> str:
        return f"FalWebhooks(public_keys={len(self._keys)}, jwks={self.jwks!r})"

    def _current(self) -> list[str]:
        return self.jwks.current() if self.jwks is not None else self._keys

    def verify(self, headers: Mapping[str, str], body: bytes, now_ts: float) -> str:
        keys = self._current()
        try:
            if not keys:
                raise webhooks.WebhookError(
                    "no webhook public key configured or published for this provider", code="bad_signature"
                )
            request_id = webhooks.verify_ed25519(keys, headers, body, now_ts)
        except webhooks.WebhookError as exc:
            # no held key matches: the keys may have rotated -- refetch (bounded) and try once more
            if exc.code != "bad_signature" or self.jwks is None or not self.jwks.refresh():
                raise
            request_id = webhooks.verify_ed25519(self.jwks.current(), headers, body, now_ts)
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
            fallback = str(error)[:2000] if error else "The request failed."
            payload = doc.get("payload")
            st = failed_status(payload, None, fallback)
            if not isinstance(payload, dict) or not payload.get("detail"):
                st = UpstreamStatus(st.state, (), st.error_code, fallback, st.failure_class)
            return rid, st
        return "status is not OK or ERROR"


class FalClient:
    """One catalogue provider served by a fal-style queue API."""

    def __init__(
        self,
        name: str,
        key: str,
        *,
        app: str,
        base_url: str = DEFAULT_BASE_URL,
        webhook_url: str | None = None,
        public_keys: Sequence[str] = (),
        jwks_url: str | None = None,
        models: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.app = app.strip("/")
        self.webhook_url = webhook_url
        self.models = dict(models or {})
        jwks = JwksKeys(jwks_url, public_keys, transport=transport) if jwks_url else None
        self.callbacks = FalWebhooks(public_keys, jwks)
        self.api = HttpApi(
            base_url, f"Key {key}", timeout_s=timeout_s, retries=retries, transport=transport, label=f"{name} (fal)"
        )
        self._origin = httpx.URL(base_url)
        self._handles: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._handles_lock = threading.Lock()
        # the applications a request of this provider may be queued under: `app`, then the
        # `owner/name` of each mapped endpoint that is another
        self._apps = list(
            dict.fromkeys([self.app, *("/".join(e.strip("/").split("/")[:2]) for e in self.models.values())])
        )

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
        self._keep_handle(rid, doc)
        return rid

    # --- where a request is asked about: fal's URLs from the submission, else under `app` ---

    def _keep_handle(self, rid: str, doc: Mapping[str, Any]) -> None:
        urls = {
            k: doc[k]
            for k in ("status_url", "response_url", "cancel_url")
            if isinstance(doc.get(k), str) and self._same_origin(doc[k])
        }
        if urls:
            self._remember(rid, urls)

    def _remember(self, rid: str, urls: dict[str, str]) -> None:
        with self._handles_lock:
            self._handles[rid] = urls
            self._handles.move_to_end(rid)
            while len(self._handles) > HANDLES_KEPT:
                self._handles.popitem(last=False)

    def _same_origin(self, url: str) -> bool:
        try:
            u = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            return False
        if not u.is_absolute_url:  # a path on the base URL's host
            return url.startswith("/") and "//" not in url
        return (u.scheme, u.host, u.port) == (self._origin.scheme, self._origin.host, self._origin.port)

    def handle(self, upstream_task_id: str) -> dict[str, str]:
        """The status, response and cancel URLs of a request (absolute, or paths on the base URL)."""
        return self._places(upstream_task_id)[0]

    def _places(self, upstream_task_id: str) -> list[dict[str, str]]:
        """Where a request may be asked about, in order: where fal said at its submission, else
        under `app`, then under each other application a model is served from (fal queues a
        request under its endpoint id without the subpath: `owner/name`)."""
        with self._handles_lock:
            kept = self._handles.get(upstream_task_id)
        apps = [self.app] if kept else self._apps
        out = []
        for app in apps:
            base = f"{app}/requests/{upstream_task_id}"
            out.append(
                {"status_url": f"{base}/status", "response_url": base, "cancel_url": f"{base}/cancel", **(kept or {})}
            )
        return out

    def _ask(self, method: str, key: str, upstream_task_id: str) -> tuple[httpx.Response, dict[str, str]]:
        """The first answer over the request's places that is not a 404, with the place that gave
        it (remembered for the request's later questions); when every place says 404, the last
        404 with the first place."""
        first, *others = self._places(upstream_task_id)
        resp = self.api.request(method, first[key])
        for urls in others:
            if resp.status_code != 404:
                break
            resp = self.api.request(method, urls[key])
            if resp.status_code != 404:
                self._remember(upstream_task_id, urls)
                return resp, urls
        return resp, first

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        resp, urls = self._ask("GET", "status_url", upstream_task_id)
        if resp.status_code not in (200, 202):
            return UpstreamStatus(UpstreamState.UNKNOWN)
        doc = self.api.json(resp)
        state = doc.get("status") if isinstance(doc, dict) else None
        if state in STATES:
            return UpstreamStatus(STATES[state])
        if state != "COMPLETED":
            return UpstreamStatus(UpstreamState.UNKNOWN)
        if doc.get("error") or doc.get("error_type"):
            return failed_status(
                {"detail": doc.get("error"), "error_type": doc.get("error_type")},
                resp.headers.get(ERROR_TYPE_HEADER),
                str(doc.get("error") or "The request failed."),
            )
        result = self.api.request("GET", urls["response_url"])
        header_type = result.headers.get(ERROR_TYPE_HEADER)
        if 400 <= result.status_code < 500 or (result.status_code >= 500 and header_type):
            # COMPLETED, yet no result: the job failed -- classified from fal's structured error when
            # it gives one, else upstream_result_error (never polled until the timeout)
            try:
                body = result.json()
            except ValueError:
                body = None
            fallback = f"the result fetch answered HTTP {result.status_code}"
            if header_type or (
                isinstance(body, dict) and (body.get("error_type") or isinstance(body.get("detail"), list))
            ):
                return failed_status(body, header_type, fallback)
            code, klass = RESULT_ERROR
            return UpstreamStatus(UpstreamState.FAILED, (), code, fallback, klass)
        if result.status_code != 200:
            return UpstreamStatus(UpstreamState.UNKNOWN)
        try:
            payload = result.json()
        except ValueError:
            return UpstreamStatus(UpstreamState.UNKNOWN)
        metrics = doc.get("metrics")
        return result_status(
            payload, reported_seconds(metrics.get("inference_time")) if isinstance(metrics, dict) else None
        )

    def cancel(self, upstream_task_id: str) -> UpstreamCancel:
        """Ask fal to stop the request: removed from the queue, or a stop signal to its runner."""
        resp, _urls = self._ask("PUT", "cancel_url", upstream_task_id)
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
