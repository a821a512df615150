"""Build a live LifecycleService for a database URL (CLI, dashboard).

A live service runs on wall time over the SQL store. Provider clients are
passed in by whoever has them (a deployment's real clients); without one,
actions that must ask a provider are refused with that reason.

Provider sources: a package that can stand in for the providers of some
databases registers `fn(engine) -> Recorded | None` with
`register_provider_source` (an explicit registry, no entry points). The
simulations package does so on import of `simulations.recorded`: for a
simulation database it answers with providers that read the farm's recorded
jobs and a clock pinned at the database's latest recorded time, because such a
database keeps the run's own time base, not wall time. The composition roots
(the rivya_core CLI, the dashboard) import that module when it is installed;
rivya_core itself never imports simulations.

Live databases: without explicit providers and without a source that
recognises the database, the clients come from configuration
(rivya_core.providers.config: RIVYA_PROVIDERS or .streamlit/secrets.toml), so
support actions, `recheck`, `poll`, `recover` and the webhook receiver ask the
real providers.

Webhook secrets come from the environment (RIVYA_WEBHOOK_SECRETS: a JSON
object mapping provider to a list of secrets, newest first) and are never
printed; configured provider clients carry their own secrets or public keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from .catalog import default_catalog
from .clock import ManualClock, WallClock
from .domain import ActionRefused, ValidationError
from .lifecycle import LifecycleService
from .policy import DEFAULT_POLICY, BillingPolicy
from .ports import Clock, Provider
from .providers.config import build_clients, load_providers
from .read.queries import reference_now
from .results import copier_from_env
from .rules import SupportRefusal
from .stores.sql import SqlStore, open_store

SECRETS_ENV = "RIVYA_WEBHOOK_SECRETS"
POLICY_ENV = "RIVYA_POLICY"


def secrets_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, list[str]]:
    raw = environ.get(SECRETS_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValidationError(
            f"{SECRETS_ENV} is not JSON (expected {{provider: [secret, ...]}})", code="secrets_invalid"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ValidationError(f"{SECRETS_ENV} must map each provider to a list of secrets", code="secrets_invalid")
    return data


def policy_from(path: str | None = None, environ: Mapping[str, str] = os.environ) -> BillingPolicy:
    path = path or environ.get(POLICY_ENV)
    return BillingPolicy.load(path) if path else DEFAULT_POLICY


@dataclass(frozen=True)
class Recorded:
    """What a provider source knows about one database: providers that answer for
    it, and its own clock when its times are not wall time (None: wall time)."""

    providers: Mapping[str, Provider]
    clock: Clock | None = None
    busy: str | None = None  # why no action may run on this database now (e.g. a run still writing it)


ProviderSource = Callable[[Engine], "Recorded | None"]
_provider_sources: list[ProviderSource] = []


def register_provider_source(source: ProviderSource) -> None:
    """Ask `source(engine)` for providers whenever service_for_url builds a service
    without explicit ones. Registering the same function twice keeps one."""
    if source not in _provider_sources:
        _provider_sources.append(source)


def recorded_for(engine: Engine) -> Recorded | None:
    """The first registered source's answer for this database, if any recognises it."""
    for source in _provider_sources:
        found = source(engine)
        if found is not None and found.providers:
            return found
    return None


@dataclass(frozen=True)
class Wired:
    """A lifecycle service and the engine of the SQL database its store writes: the read side,
    bulk incidents, alert pushing and the receiver's health check read through `engine`, so no
    caller reaches into the service's store for it. `close()` disposes the engine."""

    service: LifecycleService
    engine: Engine

    def close(self) -> None:
        self.engine.dispose()


def wire(
    url: str,
    *,
    providers: Mapping[str, Provider] | None = None,
    policy: BillingPolicy | None = None,
    clock: Clock | None = None,
    create: bool = False,
    pool_size: int | None = None,
) -> Wired:
    """A service over the database at url, with its engine. Raises StoreUnavailable/SchemaMissing;
    ActionRefused (SOURCE_BUSY) when the database's provider source says no action may run now
    (the engine is disposed then). See service_for_store; pool_size: see db.make_engine."""
    store = open_store(url, create=create, pool_size=pool_size)
    try:
        return Wired(service_for_store(store, providers=providers, policy=policy, clock=clock), store.engine)
    except ActionRefused:
        store.engine.dispose()
        raise


def service_for_url(url: str, **options: Any) -> LifecycleService:
    """wire(url, **options).service: for a caller that needs no engine of its own."""
    return wire(url, **options).service


def service_for_store(
    store: SqlStore,
    *,
    providers: Mapping[str, Provider] | None = None,
    policy: BillingPolicy | None = None,
    clock: Clock | None = None,
) -> LifecycleService:
    """A service over an open SQL store (a caller that keeps one store per database, such as the
    dashboard, builds its services here: no new engine per action).

    providers=None asks the registered provider sources: for a database one of
    them recognises (a simulation's), its providers answer status and find, and
    unless `clock` is given the service runs on the source's clock (pinned at the
    database's latest recorded time). Otherwise: the configured live clients
    (rivya_core.providers.config), on wall time; live clients' outputs are copied before SUCCESS
    (`results.copier_from_env`)."""
    results = None
    if providers is None:
        found = recorded_for(store.engine)
        if found is not None:
            if found.busy:
                raise ActionRefused(found.busy, reason=SupportRefusal.SOURCE_BUSY)
            providers, clock = found.providers, clock or found.clock
        else:
            providers = build_clients(load_providers())
            results = copier_from_env() if providers else None  # live: outputs copied before SUCCESS
    return LifecycleService(
        store,
        clock or WallClock(),
        providers or {},
        default_catalog(),
        policy or policy_from(),
        secrets=secrets_from_env(),
        judge_clock=judging_clock(store.engine),
        results=results,
    )


def judging_clock(engine: Engine) -> Clock:
    """A clock at the moment support actions judge ages at (queries.reference_now: the one rule the
    pages, the checklist and the audit use): the wall clock for a live database, else pinned."""
    judged = reference_now(engine)
    return WallClock() if judged.live else ManualClock(judged.at)
