"""Webhook verification keys fetched from the provider, cached, refetched when they stop matching.

- `JwksKeys`: fal publishes its ED25519 webhook keys as a JSON Web Key Set
  (`https://rest.fal.ai/.well-known/jwks.json`; each key's `x` is a base64url
  public key). Fetched on first use, cached `ttl_s` (24 h: fal's docs say not to
  keep them longer), and refetched at once when a delivery's signature matches
  no cached key (fal's signature names no key id, so "an unknown key" is one that
  no cached key verifies) -- at most once per `min_refetch_s`, so a stream of
  forged deliveries cannot turn the receiver into a JWKS flood.
- `FetchedSecret`: Replicate's webhook signing secret, `GET
  /v1/webhooks/default/secret` -> `{"key": "whsec_..."}`, fetched on first use
  when none is configured, and again (same bound) when a signature stops matching
  (a rotated secret).

A fetch that fails keeps what was held (a failed refresh never empties the
cache); with nothing held, verification fails closed (bad signature: the
provider redelivers later and the polling sweep is the safety net). Keys and
secrets never appear in a repr or an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from .. import webhooks

FAL_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
REPLICATE_SECRET_PATH = "webhooks/default/secret"
TTL_S = 24 * 3600.0
MIN_REFETCH_S = 60.0
FETCH_TIMEOUT_S = 10.0
MAX_KEYS = 16
MAX_BODY = 64 * 1024


def jwks_public_keys(doc: Any) -> list[str]:
    """The ED25519 public keys (`x`, base64url) of a JWKS document; other keys are skipped."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    found: list[str] = []
    for k in keys if isinstance(keys, list) else []:
        if not isinstance(k, dict) or k.get("kty") != "OKP" or k.get("crv") != "Ed25519":
            continue
        x = k.get("x")
        if not isinstance(x, str):
            continue
        try:
            webhooks.ed25519_key_bytes(x)
        except webhooks.WebhookError:
            continue
        if x not in found:
            found.append(x)
        if len(found) >= MAX_KEYS:
            break
    return found


class _Fetched:
    """A value fetched with `fetch()` (None: the fetch failed), cached and refreshed on demand."""

    def __init__(
        self, fetch: Callable[[], list[str] | None], *, ttl_s: float, min_refetch_s: float, clock: Callable[[], float]
    ):
        self._fetch = fetch
        self.ttl_s, self.min_refetch_s = ttl_s, min_refetch_s
        self._clock = clock
        self._values: list[str] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt
        self._lock = threading.Lock()
        self.fetches = 0

    def current(self) -> list[str]:
        """What is held, fetched first when never fetched or older than the TTL."""
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.ttl_s
            if stale and self._may_try(now):
                self._refresh(now)
            return list(self._values)

    def refresh(self) -> bool:
        """Fetch again now unless one was tried within min_refetch_s; True when what is held changed."""
        with self._lock:
            now = self._clock()
            if not self._may_try(now):
                return False
            before = list(self._values)
            self._refresh(now)
            return self._values != before

    def _may_try(self, now: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= self.min_refetch_s

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        self.fetches += 1
        got = self._fetch()
        if got:
            self._values, self._fetched_at = got, now


def _get_json(client: httpx.Client, url: str) -> Any | None:
    try:
        resp = client.get(url)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200 or len(resp.content) > MAX_BODY:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


class JwksKeys(_Fetched):
    """Configured static keys plus the ones published at a JWKS URL (no credential is sent)."""

    def __init__(
        self,
        url: str,
        static: Sequence[str] = (),
        *,
        ttl_s: float = TTL_S,
        min_refetch_s: float = MIN_REFETCH_S,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url = url
        self._static = list(static)
        self._http = httpx.Client(
            timeout=FETCH_TIMEOUT_S, transport=transport, follow_redirects=False, headers={"User-Agent": "rivya/1"}
        )
        super().__init__(
            lambda: jwks_public_keys(_get_json(self._http, url)), ttl_s=ttl_s, min_refetch_s=min_refetch_s, clock=clock
        )

    def __repr__(self) -> str:
        return f"JwksKeys({self.url!r}, static={len(self._static)})"

    def current(self) -> list[str]:
        return self._static + [k for k in super().current() if k not in self._static]


class FetchedSecret(_Fetched):
    """Replicate's default webhook signing secret, read with the API token."""

    def __init__(
        self,
        get: Callable[[str], httpx.Response],
        *,
        ttl_s: float = TTL_S,
        min_refetch_s: float = MIN_REFETCH_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        def fetch() -> list[str] | None:
            try:
                resp = get(REPLICATE_SECRET_PATH)
            except Exception:  # noqa: BLE001 -- any failure to fetch keeps what is held
                return None
            if resp.status_code != 200:
                return None
            try:
                key = resp.json().get("key")
            except (ValueError, AttributeError):
                return None
            if not isinstance(key, str) or not key.startswith(webhooks.SECRET_PREFIX):
                return None
            try:
                webhooks._key(key)
            except webhooks.WebhookError:
                return None
            return [key]

        super().__init__(fetch, ttl_s=ttl_s, min_refetch_s=min_refetch_s, clock=clock)

    def __repr__(self) -> str:
        return "FetchedSecret()"
