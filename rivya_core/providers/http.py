"""HTTP plumbing shared by the provider clients: one httpx.Client per client with
timeouts, bounded retries, and HTTP failures mapped onto ProviderError kinds.

Retries: a request is retried (at most `retries` times, with a short backoff)
when it never reached the server (connect error) or the server said "not now"
(429, 502, 503, 504). A GET is also retried after a read timeout or a 500. A
POST that may have reached the server (read timeout, 500) is not retried here:
creating a job twice would start two upstream jobs; the lifecycle's own
`submit_retries` decides about re-submission.

A 429 or 503 that carries `Retry-After` (seconds, or an HTTP date) is retried
after that long instead of the backoff, when it is at most MAX_RETRY_AFTER_S;
a longer one is not waited for: the answer is returned as it is (a submission
then fails `submit_error`, and the lifecycle's policy decides what follows).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..ports import ProviderError, ProviderFault

RETRY_STATUS = frozenset({429, 502, 503, 504})
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
BACKOFF_S = 0.2
MAX_RETRY_AFTER_S = 10.0


def retry_after_s(resp: httpx.Response, now: datetime | None = None) -> float | None:
    """The wait a 429/503 asks for in its Retry-After header, in seconds; None without one."""
    if resp.status_code not in (429, 503):
        return None
    raw = (resp.headers.get("retry-after") or "").strip()
    if not raw:
        return None
    if raw.isascii() and raw.isdigit():
        return float(int(raw[:9]))
    try:
        at = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - (now or datetime.now(UTC))).total_seconds())


class HttpApi:
    """A base URL, an auth header and the retry rules. Never shows its headers."""

    def __init__(
        self,
        base_url: str,
        auth_header: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
        label: str = "provider",
    ):
        self.label = label
        self.retries = max(0, int(retries))
        self.max_retry_after_s = MAX_RETRY_AFTER_S
        self.sleep = time.sleep
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": auth_header, "User-Agent": "rivya/1"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HttpApi({self.label}, base_url={str(self._client.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response (any status), or ProviderError(timeout|error) when none came."""
        idempotent = method in ("GET", "PUT", "DELETE")
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            wait = BACKOFF_S * (2**attempt)
            try:
                resp = self._client.request(method, path.lstrip("/"), **kwargs)
            except httpx.ConnectError as exc:
                if last:
                    raise ProviderError(
                        ProviderFault.ERROR, f"{self.label}: cannot connect ({type(exc).__name__})"
                    ) from None
            except httpx.TimeoutException:
                if last or not idempotent:
                    raise ProviderError(ProviderFault.TIMEOUT, f"{self.label}: no answer within the timeout") from None
            except httpx.HTTPError as exc:
                if last or not idempotent:
                    raise ProviderError(
                        ProviderFault.ERROR, f"{self.label}: HTTP failure ({type(exc).__name__})"
                    ) from None
            else:
                retry = resp.status_code in RETRY_STATUS or (idempotent and resp.status_code == 500)
                asked = retry_after_s(resp)
                if asked is not None and asked > self.max_retry_after_s:
                    return resp  # not waited for: bounded
                if not retry or last:
                    return resp
                if asked is not None:
                    wait = asked
            self.sleep(wait)
        raise AssertionError("unreachable")

    def json(self, resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise ProviderError(ProviderFault.ERROR, f"{self.label}: answer {resp.status_code} is not JSON") from None


def submit_error(label: str, resp: httpx.Response) -> ProviderError:
    """A create/submit answer that started no job: 4xx refused (but 429), else an error."""
    kind = ProviderFault.REFUSED if 400 <= resp.status_code < 500 and resp.status_code != 429 else ProviderFault.ERROR
    return ProviderError(kind, f"{label}: submission answered HTTP {resp.status_code}")


def urls_in(value: Any, limit: int = 50) -> tuple[str, ...]:
    """Every http(s) URL in a provider's output (a string, a list, or objects with `url`
    fields, nested), in order, without repeats."""
    found: list[str] = []

    def walk(v: Any, depth: int) -> None:
        if len(found) >= limit or depth > 6:
            return
        if isinstance(v, str):
            if v.startswith(("https://", "http://")) and len(v) <= 2000 and v not in found:
                found.append(v)
        elif isinstance(v, list):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item, depth + 1)

    walk(value, 0)
    return tuple(found)


def with_ref(webhook_url: str, task_ref: str) -> str:
    """The webhook URL with our task reference as `ref` (the receiver links early callbacks by it)."""
    url = httpx.URL(webhook_url)
    return str(url.copy_merge_params({"ref": task_ref}))
