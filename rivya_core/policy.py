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

from . import tomlfile
from .domain import FailureClass, ValidationError

DEFAULT_TIMEOUT_S = {"image": 15 * 60.0, "video": 2 * 3600.0, "audio": 30 * 60.0}
DEFAULT_STUCK_S = {"image": 5 * 60.0, "video": 30 * 60.0, "audio": 10 * 60.0}


class PolicyError(ValidationError):
    code = "policy_invalid"
    user_correctable = False


@dataclass(frozen=True)
class BillingPolicy:
    name: str = "default"
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
_CLASSES = {c.value for c in FailureClass}


def _coerce(data: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELD_NAMES:
            raise PolicyError(f"{source}: unknown policy key {key!r}")

        def bad(reason: str, key: str = key) -> PolicyError:
            return PolicyError(f"{source}: policy key {key!r}: {reason}")

        if key == "name":
            if not isinstance(value, str) or not value:
                raise bad("must be a non-empty string")
        elif key in ("price_multiplier", "chat_reserve_margin", "poll_interval_s", "duplicate_window_s"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise bad("must be a positive number")
            if key == "chat_reserve_margin" and value < 1:
                raise bad("must be at least 1.0")
            value = float(value)
        elif key == "price_overrides":
            if not isinstance(value, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()
            ):
                raise bad("must map model ids to non-negative whole credits")
        elif key == "refund_classes":
            if not isinstance(value, list) or not set(value) <= _CLASSES:
                raise bad(f"must be a list drawn from {sorted(_CLASSES)}")
            value = frozenset(value)
        elif key in ("chat_allow_overrun", "recover_resubmit"):
            if not isinstance(value, bool):
                raise bad("must be true or false")
        elif key == "submit_retries":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
                raise bad("must be a whole number from 0 to 10")
        elif key == "recheck_backoff_s":
            if not isinstance(value, list) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise bad("must be a non-empty list of positive seconds")
            value = tuple(float(v) for v in value)
        elif key in ("stuck_after_s", "timeout_s"):
            if not isinstance(value, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values()
            ):
                raise bad("must map categories to positive seconds")
            value = {str(k): float(v) for k, v in value.items()}
        elif key == "duplicate_runs":
            if value not in ("warn", "block"):
                raise bad("must be 'warn' or 'block'")
        out[key] = value
    return out


DEFAULT_POLICY = BillingPolicy()
