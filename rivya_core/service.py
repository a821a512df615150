"""Build a live LifecycleService for a database URL (CLI, dashboard).

A live service runs on wall time over the SQL store. Provider clients are
passed in by whoever has them (a deployment's real clients, or the
simulation's recorded farm for a simulation database); without one, actions
that must ask a provider are refused with that reason. Webhook secrets come
from the environment (RIVYA_WEBHOOK_SECRETS: a JSON object mapping provider
to a list of secrets, newest first) and are never printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from .catalog import default_catalog
from .clock import WallClock
from .db import open_store
from .domain import ValidationError
from .lifecycle import LifecycleService
from .policy import DEFAULT_POLICY, BillingPolicy
from .ports import Clock, Provider

SECRETS_ENV = "RIVYA_WEBHOOK_SECRETS"
POLICY_ENV = "RIVYA_POLICY"


def secrets_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, list[str]]:
    raw = environ.get(SECRETS_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValidationError(f"{SECRETS_ENV} is not JSON (expected {{provider: [secret, ...]}})",
                              code="secrets_invalid") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()):
        raise ValidationError(f"{SECRETS_ENV} must map each provider to a list of secrets", code="secrets_invalid")
    return data


def policy_from(path: str | None = None, environ: Mapping[str, str] = os.environ) -> BillingPolicy:
    path = path or environ.get(POLICY_ENV)
    return BillingPolicy.load(path) if path else DEFAULT_POLICY


def service_for_url(url: str, *, providers: Mapping[str, Provider] | None = None,
                    policy: BillingPolicy | None = None, clock: Clock | None = None,
                    create: bool = False) -> LifecycleService:
    """A service over the database at url. Raises StoreUnavailable/SchemaMissing."""
    return LifecycleService(open_store(url, create=create), clock or WallClock(), providers or {},
                            default_catalog(), policy or policy_from(), secrets=secrets_from_env())
