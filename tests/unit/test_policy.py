"""BillingPolicy: its rules, and policy files refused by file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from rivya_core.policy import DEFAULT_POLICY, BillingPolicy, PolicyError

ROOT = Path(__file__).resolve().parents[2]


def test_default_refunds_provider_and_infrastructure_failures_only():
    assert DEFAULT_POLICY.refunds("provider") and DEFAULT_POLICY.refunds("infrastructure")
    assert not DEFAULT_POLICY.refunds("user") and not DEFAULT_POLICY.refunds("billing")
    assert not DEFAULT_POLICY.refunds(None)


def test_price_multiplier_overrides_and_a_floor_of_one_credit():
    p = BillingPolicy(price_multiplier=1.5, price_overrides={"lumen-pro": 9})
    assert p.price("lumen-flash", 2) == 3  # ceil(2 * 1.5)
    assert p.price("lumen-pro", 6) == 9  # the override wins
    assert BillingPolicy(price_multiplier=0.01).price("lumen-flash", 2) == 1
    assert BillingPolicy(price_overrides={"x": 0}).price("x", 5) == 1  # a task is never free


def test_timeouts_and_stuck_thresholds_per_category_with_a_fallback():
    p = BillingPolicy(timeout_s={"image": 60.0}, stuck_after_s={"image": 30.0})
    assert (p.timeout_for("image"), p.stuck_for("image")) == (60.0, 30.0)
    assert p.timeout_for("hologram") > 0 and p.stuck_for("hologram") > 0


def test_round_trip_through_a_dict():
    p = BillingPolicy(name="x", refund_classes=frozenset({"provider"}), recheck_backoff_s=(1.0, 2.0))
    assert BillingPolicy.from_dict(p.to_dict()) == p


def test_every_shipped_policy_file_loads():
    files = sorted((ROOT / "data" / "policies").glob("*.toml"))
    assert files
    for f in files:
        assert BillingPolicy.load(f).name == f.stem


@pytest.mark.parametrize(
    "body,reason",
    [
        ("[policy]\nrefund_everything = true\n", "unknown policy key 'refund_everything'"),
        ("[policy]\nrefund_classes = ['provider', 'gremlins']\n", "'refund_classes'"),
        ("[policy]\nprice_multiplier = -1\n", "'price_multiplier': must be a number above 0 to 1000, not -1"),
        ("[policy]\nchat_reserve_margin = 0.5\n", "must be a number from 1 to 100, not 0.5"),
        ("[policy]\nsubmit_retries = 99\n", "'submit_retries'"),
        ("[policy]\nduplicate_runs = 'sometimes'\n", "'warn' or 'block'"),
        ("[policy]\nrecheck_backoff_s = []\n", "'recheck_backoff_s'"),
        ("[policy]\ntimeout_s = { image = 0 }\n", "'timeout_s'"),
        ("[policy]\nchat_allow_overrun = 'yes'\n", "true or false"),
        ("policy = 3\n", "[policy] must be a table"),
        ("this is = not toml [", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_refused_naming_file_and_key(tmp_path, body, reason):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(PolicyError) as err:
        BillingPolicy.load(f)
    assert str(f) in err.value.message and reason in err.value.message


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        BillingPolicy.load(tmp_path / "absent.toml")
