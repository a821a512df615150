"""Standard Webhooks signatures: the rules of verify, each on its own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest

from rivya_core import webhooks
from rivya_core.webhooks import WebhookError, sign, signed_headers, verify

SECRET = webhooks.generate_secret(random.Random(1))
OTHER = webhooks.generate_secret(random.Random(2))
BODY = b'{"data": {"upstream_task_id": "j1", "state": "succeeded"}}'
TS = 1_800_000_000


def code_of(secrets, headers, body=BODY, now=TS):
    with pytest.raises(WebhookError) as err:
        verify(secrets, headers, body, now)
    return err.value.code


def test_signature_is_hmac_sha256_over_id_timestamp_body():
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"msg_1.%d." % TS + BODY, hashlib.sha256).digest()).decode()
    assert sign(SECRET, "msg_1", TS, BODY) == f"v1,{expected}"


def test_round_trip_returns_the_webhook_id_and_headers_are_case_insensitive():
    headers = {k.upper(): v for k, v in signed_headers(SECRET, "msg_1", TS, BODY).items()}
    assert verify([SECRET], headers, BODY, TS) == "msg_1"


def test_rotation_any_configured_secret_and_any_listed_signature():
    both = signed_headers([OTHER, SECRET], "m", TS, BODY)  # the provider signs with old and new keys
    assert verify([SECRET], both, BODY, TS) == "m"
    assert verify([OTHER, SECRET], signed_headers(SECRET, "m", TS, BODY), BODY, TS) == "m"
    assert code_of([OTHER], signed_headers(SECRET, "m", TS, BODY)) == "bad_signature"


def test_tolerance_is_300_seconds_either_way():
    headers = signed_headers(SECRET, "m", TS, BODY)
    assert verify([SECRET], headers, BODY, TS + 300) == "m"
    assert verify([SECRET], headers, BODY, TS - 300) == "m"
    assert code_of([SECRET], headers, now=TS + 301) == "stale"
    assert code_of([SECRET], headers, now=TS - 301) == "stale"


def test_a_changed_body_id_or_timestamp_breaks_the_signature():
    headers = signed_headers(SECRET, "m", TS, BODY)
    assert code_of([SECRET], headers, body=BODY + b" ") == "bad_signature"
    assert code_of([SECRET], {**headers, "webhook-id": "other"}) == "bad_signature"
    assert code_of([SECRET], {**headers, "webhook-timestamp": str(TS + 1)}, now=TS + 1) == "bad_signature"


def test_only_v1_signatures_count():
    headers = signed_headers(SECRET, "m", TS, BODY)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    assert code_of([SECRET], headers) == "bad_signature"


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda h: h.pop("webhook-signature"), "missing_headers"),
        (lambda h: h.pop("webhook-id"), "missing_headers"),
        (lambda h: h.update({"webhook-timestamp": "soon"}), "malformed"),
        (lambda h: h.update({"Webhook-Id": "second"}), "malformed"),
        (lambda h: h.update({"webhook-signature": "v1," + "A" * 5000}), "malformed"),
    ],
)
def test_missing_doubled_or_malformed_headers(mutate, code):
    headers = signed_headers(SECRET, "m", TS, BODY)
    mutate(headers)
    assert code_of([SECRET], headers) == code


def test_errors_never_carry_the_secret():
    headers = signed_headers(OTHER, "m", TS, BODY)
    with pytest.raises(WebhookError) as err:
        verify([SECRET], headers, BODY, TS)
    assert SECRET not in str(err.value) and SECRET.removeprefix("whsec_") not in str(err.value)
