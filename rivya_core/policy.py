"""BillingPolicy: every billing and timing decision the service makes, as one value.

The service reads it; nothing hard-codes a policy decision. Policies load from
TOML (`[policy]` table of a scenario, or a policy file) with unknown keys and
bad values refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import limits, tomlfile
from .domain import FailureClass, ValidationError

DEFAULT_TIMEOUT_S = {"image": 15 * 60.0, "video": 2 * 3600.0, "audio": 30 * 60.0}
DEFAULT_STUCK_S = {"image": 5 * 60.0, "video": 30 * 60.0, "audio": 10 * 60.0}


class PolicyError(ValidationError):
    code = "policy_invalid"
    user_correctable = False


@dataclass(frozen=True)
class BillingPolicy:
    name: str = "default"
    # the product question this policy answers, in one line (words only: not part of the policy's identity)
    description: str = field(default="", compare=False)
    # prices
    price_multiplier: float = 1.0
    price_overrides: dict[str, int] = field(default_factory=dict)  # model id -> credits per task
    # refunds: failure classes whose failure after reservation is reversed
    refund_classes: frozenset[str] = frozenset({FailureClass.PROVIDER, FailureClass.INFRASTRUCTURE})
    # chat
    chat_reserve_margin: float = 1.2
    chat_allow_overrun: bool = False  # False: the charge is capped at the reservation
    # submission
    submit_retries: int = 1  # extra attempts after a refused/error/timeout submit
    # completion
    poll_interval_s: float = 30.0  # how often a GENERATING task is polled when callbacks are off
    recheck_backoff_s: tuple[float, ...] = (5.0, 15.0, 45.0, 120.0, 300.0)  # after an early callback
    stuck_after_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STUCK_S))
    timeout_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUT_S))
    # users
    duplicate_runs: str = "warn"  # warn | block: a heavier duplicate of a running task
    duplicate_window_s: float = 600.0
    # crash recovery: resume an interrupted task (charge/submit) or fail it (and refund)
    recover_resubmit: bool = True
    # money: what one credit sells for (USD, the catalogue's provider prices' currency: rivya_core.cost)
    credit_value: float = 0.05
    # ask the provider to stop a job we gave up on (timeout, support mark failed: rivya_core.upstream_cancel)
    upstream_cancel: bool = True
    # grants that expire (a sign-up gift, in the ShipAny shape of a run): days until gift credits lapse;
    # None: they never do. Left out of to_dict while None, so older policies keep their digest.
    credit_expiry_days: float | None = None

    def price(self, model_id: str, base_credits: int) -> int:
        if model_id in self.price_overrides:
            return max(1, int(self.price_overrides[model_id]))
        return max(1, math.ceil(base_credits * self.price_multiplier))

    def refunds(self, failure_class: str | None) -> bool:
        return failure_class in self.refund_classes

    def chat_reservation(self, full_turn_credits: int) -> int:
        """Credits reserved before a chat turn whose longest answer would cost full_turn_credits."""
        return max(1, math.ceil(full_turn_credits * self.chat_reserve_margin))

    def chat_settlement(self, used_credits: int, reserved: int) -> tuple[int, int]:
        """(charged out of the reservation, overrun charged on top when the balance covers it);
        the rest of the reservation is refunded."""
        overrun = used_credits - reserved if used_credits > reserved and self.chat_allow_overrun else 0
        return min(used_credits, reserved), overrun

    def is_heavier_duplicate(self, credits: int, running_credits: int) -> bool:
        """A new run with the same model and prompt as a running task (within the window) that costs
        at least as much: warned or blocked as `duplicate_runs` says."""
        return credits >= running_credits

    def timeout_for(self, category: str) -> float:
        return float(self.timeout_s.get(category, max(DEFAULT_TIMEOUT_S.values())))

    def stuck_for(self, category: str) -> float:
        return float(self.stuck_after_s.get(category, max(DEFAULT_STUCK_S.values())))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "credit_expiry_days" and v is None:
                continue
            if f.name in _LEFT_OUT_AT_DEFAULT and v == _LEFT_OUT_AT_DEFAULT[f.name]:  # added later: same digest
                continue
            if isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<policy>") -> BillingPolicy:
        return replace(cls(), **_coerce(data, source))

    @classmethod
    def load(cls, path: str | Path) -> BillingPolicy:
        path = Path(path)
        raw = tomlfile.load(path, PolicyError, "policy")
        data = raw.get("policy", raw)
        if not isinstance(data, dict):
            raise PolicyError(f"{path}: [policy] must be a table")
        data = dict(data)
        data.setdefault("name", path.stem)
        return cls.from_dict(data, str(path))


_FIELD_NAMES = {f.name for f in fields(BillingPolicy)}
# keys added after policies were first stored (audit_run.policy_key digests to_dict): left out at their default
_LEFT_OUT_AT_DEFAULT: dict[str, Any] = {"credit_value": 0.05, "upstream_cancel": True}
_CLASSES = {c.value for c in FailureClass}


_NUMBER_KIND = {
    "price_multiplier": "multiplier",
    "chat_reserve_margin": "margin",
    "poll_interval_s": "positive_seconds",
    "duplicate_window_s": "positive_seconds",
    "submit_retries": "submit_retries",
    "credit_value": "money",
}


def _coerce(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Every key checked by name; every number against its range in rivya_core.limits."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELD_NAMES:
            raise PolicyError(f"{source}: unknown policy key {str(key)[:40]!r}")
        where = f"{source}: policy key {key!r}"

        def bad(reason: str, where: str = where) -> PolicyError:
            return PolicyError(f"{where}: {reason}")

        def number(kind: str, v: Any, at: str = where) -> Any:
            try:
                return limits.check(kind, v, at)
            except limits.LimitError as exc:
                raise PolicyError(exc.message) from None

        if key == "name":
            if not isinstance(value, str) or not value or len(value) > 200:
                raise bad("must be a non-empty string of at most 200 characters")
        elif key == "description":
            if not isinstance(value, str) or len(value) > 300 or any(c in value for c in "\r\n"):
                raise bad("must be one line of text of at most 300 characters")
        elif key in _NUMBER_KIND:
            value = number(_NUMBER_KIND[key], value)
        elif key == "price_overrides":
            if not isinstance(value, dict):
                raise bad("must map model ids to whole credits")
            value = {str(k): number("whole_credits", v, f"{where}.{k}") for k, v in value.items()}
        elif key == "refund_classes":
            if not isinstance(value, list) or not all(isinstance(v, str) and v in _CLASSES for v in value):
                raise bad(f"must be a list of names drawn from {sorted(_CLASSES)}")
            value = frozenset(value)
        elif key in ("chat_allow_overrun", "recover_resubmit", "upstream_cancel"):
            if not isinstance(value, bool):
                raise bad("must be true or false")
        elif key == "recheck_backoff_s":
            if not isinstance(value, list):
                raise bad("must be a list of seconds")
            number("backoff_steps", len(value), f"{where} (its length)")
            value = tuple(number("positive_seconds", v, f"{where}[{i}]") for i, v in enumerate(value))
        elif key in ("stuck_after_s", "timeout_s"):
            if not isinstance(value, dict):
                raise bad("must map categories to seconds")
            value = {str(k): number("positive_seconds", v, f"{where}.{k}") for k, v in value.items()}
        elif key == "credit_expiry_days":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3650:
                raise bad("must be a number of days above 0, at most 3650")
            value = float(value)
        elif key == "duplicate_runs":
            if not isinstance(value, str) or value not in ("warn", "block"):
                raise bad("must be 'warn' or 'block'")
        out[key] = value
    return out


DEFAULT_POLICY = BillingPolicy()
