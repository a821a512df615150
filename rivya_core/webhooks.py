"""Standard Webhooks signatures for provider callbacks.

A callback carries three headers: `webhook-id`, `webhook-timestamp` (Unix
seconds) and `webhook-signature` (space-separated `v1,<base64>` entries, so a
provider can sign with old and new keys during a rotation). The signed content
is `{id}.{timestamp}.{raw body}`, HMAC-SHA256 with the secret's key bytes
(`whsec_` + base64). Verification compares in constant time and refuses
timestamps more than TOLERANCE_S away from now, in either direction.

Secrets never appear in an error message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import random
from collections.abc import Mapping, Sequence

from .domain import RivyaError

TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"
MAX_HEADER_LEN = 4096


class WebhookError(RivyaError):
    """code: missing_headers | bad_signature | stale | malformed."""

    code = "webhook_invalid"


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookError("a configured webhook secret is not valid base64", code="bad_secret") from None


def generate_secret(rng: random.Random | None = None) -> str:
    rng = rng or random.SystemRandom()
    return SECRET_PREFIX + base64.b64encode(bytes(rng.getrandbits(8) for _ in range(24))).decode()


@functools.lru_cache(maxsize=256)
def _mac(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with the secret and fed nothing: each signature starts from a copy,
    so a secret's key is decoded and set up once, not per callback."""
    return hmac.new(_key(secret), digestmod=hashlib.sha256)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = _mac(secret).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str | Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers for a callback signed with one secret, or with each of several."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup; a header given twice is malformed."""
    return _headers(headers, (name,))[0]


_SIGNED = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _headers(headers: Mapping[str, str], names: tuple[str, ...]) -> list[str | None]:
    """The headers named (lower case), looked up case-insensitively in one pass over the headers;
    a header given twice, or not a string of at most MAX_HEADER_LEN, is malformed (checked in the
    order of names)."""
    found: dict[str, list[str]] = {n: [] for n in names}
    for k, v in headers.items():
        if isinstance(k, str):
            got = found.get(k.lower())
            if got is not None:
                got.append(v)
    out: list[str | None] = []
    for name in names:
        values = found[name]
        if len(values) > 1:
            raise WebhookError(f"header {name} given more than once", code="malformed")
        if not values:
            out.append(None)
            continue
        value = values[0]
        if not isinstance(value, str) or len(value) > MAX_HEADER_LEN:
            raise WebhookError(f"header {name} is not a usable string", code="malformed")
        out.append(value)
    return out


def verify(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now_ts: float) -> str:
    """Check a callback; return its webhook id. Raises WebhookError."""
    msg_id, ts_raw, sig_raw = _headers(headers, _SIGNED)
    if not msg_id or not ts_raw or not sig_raw:
        raise WebhookError("callback is missing a webhook-id, -timestamp or -signature header", code="missing_headers")
    if not ts_raw.isascii() or not ts_raw.isdigit() or len(ts_raw) > 12:
        raise WebhookError("webhook-timestamp is not a Unix time in seconds", code="malformed")
    ts = int(ts_raw)
    if not isinstance(body, (bytes, bytearray)):
        raise WebhookError("callback body is not bytes", code="malformed")
    expected = [sign(s, msg_id, ts, bytes(body)).split(",", 1)[1].encode() for s in secrets]
    matched = False
    for candidate in sig_raw.split(" "):
        version, _, value = candidate.partition(",")
        if version != "v1" or not value:
            continue
        for exp in expected:  # no early exit: every comparison runs
            matched |= hmac.compare_digest(exp, value.encode("utf-8", "replace"))
    if not matched:
        raise WebhookError("callback signature does not match any configured secret", code="bad_signature")
    if abs(now_ts - ts) > TOLERANCE_S:
        raise WebhookError(
            f"callback timestamp is {int(now_ts - ts)} s away from now (tolerance {TOLERANCE_S} s)", code="stale"
        )
    return msg_id


# --- ED25519 (fal-style) -----------------------------------------------------------
#
# Headers `x-fal-webhook-request-id`, `-user-id`, `-timestamp` (Unix seconds) and
# `-signature` (hex). The signed message is the four lines
# `request_id \n user_id \n timestamp \n sha256(body).hexdigest()`; it verifies against
# any of the deployment's configured public keys (32 bytes, base64url as in a JWKS `x`,
# base64 or hex). Same ±TOLERANCE_S window as above.

FAL_HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)


def ed25519_key_bytes(key: str) -> bytes:
    """A configured public (or private seed) key as 32 bytes: hex, base64url or base64."""
    key = key.strip()
    if len(key) == 64:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise WebhookError("a configured ED25519 key is not 32 bytes (hex, base64url or base64)", code="bad_secret")
    return raw


def ed25519_message(request_id: str, user_id: str, timestamp: int | str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, str(timestamp), hashlib.sha256(body).hexdigest()]).encode()


def ed25519_headers(private_seed: str, request_id: str, user_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers of a delivery signed with a private key seed (the fake provider's side)."""
    from nacl.signing import SigningKey

    sig = SigningKey(ed25519_key_bytes(private_seed)).sign(ed25519_message(request_id, user_id, timestamp, body))
    return dict(zip(FAL_HEADERS, (request_id, user_id, str(timestamp), sig.signature.hex()), strict=True))


def ed25519_public_key(private_seed: str) -> str:
    """The base64url public key of a private seed (what a deployment configures)."""
    from nacl.signing import SigningKey

    pub = SigningKey(ed25519_key_bytes(private_seed)).verify_key.encode()
    return base64.urlsafe_b64encode(pub).decode().rstrip("=")


def verify_ed25519(public_keys: Sequence[str], headers: Mapping[str, str], body: bytes, now_ts: float) -> str:
    """Check a fal-style delivery; return its request id. Raises WebhookError."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    request_id, user_id, ts_raw, sig_hex = _headers(headers, FAL_HEADERS)
    if not request_id or not user_id or not ts_raw or not sig_hex:
        raise WebhookError(
            "callback is missing an x-fal-webhook-request-id, -user-id, -timestamp or -signature header",
            code="missing_headers",
        )
    if not ts_raw.isascii() or not ts_raw.isdigit() or len(ts_raw) > 12:
        raise WebhookError("x-fal-webhook-timestamp is not a Unix time in seconds", code="malformed")
    if not isinstance(body, (bytes, bytearray)):
        raise WebhookError("callback body is not bytes", code="malformed")
    try:
        signature = bytes.fromhex(sig_hex)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise WebhookError("x-fal-webhook-signature is not a hex ED25519 signature", code="bad_signature")
    message = ed25519_message(request_id, user_id, ts_raw, bytes(body))
    matched = False
    for key in public_keys:  # every key is tried: no early exit on a match
        try:
            VerifyKey(ed25519_key_bytes(key)).verify(message, signature)
            matched = True
        except BadSignatureError:
            pass
    if not matched:
        raise WebhookError("callback signature does not match any configured public key", code="bad_signature")
    ts = int(ts_raw)
    if abs(now_ts - ts) > TOLERANCE_S:
        raise WebhookError(
            f"callback timestamp is {int(now_ts - ts)} s away from now (tolerance {TOLERANCE_S} s)", code="stale"
        )
    return request_id
