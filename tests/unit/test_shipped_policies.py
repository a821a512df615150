"""Every shipped policy answers a product question: it says which in a one-line description, and it
differs from the default in the way its name says (so comparing it with the default answers something)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rivya_core.policy import DEFAULT_POLICY, BillingPolicy, PolicyError

POLICIES = Path(__file__).resolve().parents[2] / "data" / "policies"
FILES = sorted(POLICIES.glob("*.toml"))

# file -> the settings its name promises, and what they must be
PROMISES = {
    "no_refunds": {"refund_classes": frozenset()},
    "refund_everything": {"refund_classes": frozenset({"user", "provider", "infrastructure"})},
    "premium_prices": {"price_multiplier": 1.25},
    "poll_every_10s": {"poll_interval_s": 10.0},
    "lean_chat_reservation": {"chat_reserve_margin": 1.0},
    "block_duplicate_runs": {"duplicate_runs": "block"},
    "no_upstream_cancel": {"upstream_cancel": False},
    "give_up_after_20m": {"timeout_s": {"image": 900.0, "video": 1200.0, "audio": 1200.0}},
    "gift_expires_14_days": {"credit_expiry_days": 14.0},
    "gift_expires_30_days": {"credit_expiry_days": 30.0},
}


def _changed(policy: BillingPolicy) -> dict:
    base = DEFAULT_POLICY.to_dict()
    return {k: v for k, v in policy.to_dict().items() if k not in ("name", "description") and v != base.get(k)}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_policy_says_which_question_it_answers_in_one_line(path):
    policy = BillingPolicy.load(path)
    assert policy.name == path.stem
    assert policy.description and "\n" not in policy.description and len(policy.description) <= 200


@pytest.mark.parametrize("path", [p for p in FILES if p.stem != "default"], ids=lambda p: p.stem)
def test_each_policy_differs_from_the_default_the_way_its_name_says(path):
    policy = BillingPolicy.load(path)
    assert path.stem in PROMISES, f"{path.name}: say what it promises in PROMISES"
    promised = PROMISES[path.stem]
    assert {k: getattr(policy, k) for k in promised} == promised
    assert set(_changed(policy)) == set(promised), f"{path.name} changes more than its name says"


def test_no_two_shipped_policies_are_the_same_policy():
    loaded = [BillingPolicy.load(p) for p in FILES]
    settings = [tuple(sorted((k, repr(v)) for k, v in _changed(p).items())) for p in loaded]
    assert len(set(settings)) == len(settings)
    assert BillingPolicy.load(POLICIES / "default.toml") == DEFAULT_POLICY


def test_a_description_must_be_one_line_of_text():
    with pytest.raises(PolicyError, match="description"):
        BillingPolicy.from_dict({"description": "two\nlines"})
    with pytest.raises(PolicyError, match="description"):
        BillingPolicy.from_dict({"description": 3})
    p = BillingPolicy.from_dict({"name": "x", "description": "What if?"})
    assert p.description == "What if?" and p == BillingPolicy(name="x")  # the words do not change the policy
