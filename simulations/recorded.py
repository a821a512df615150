"""The mock farm's knowledge, recorded: a Provider that answers from `upstream_job`.

A simulation writes what its provider farm knew about each job (state, result
URLs, error) into the `upstream_job` table, in the same transactions as the
tasks. Once the run is over (or was killed), `RecordedProvider` stands in for
the farm: `status` and `find` answer what the farm knew when the row was last
written, and `submit` refuses, since that provider is gone.

Importing this module registers `recorded_environment` with
`rivya_core.wiring.register_provider_source`, so the support actions of the
CLI (`python -m rivya_core recheck/recover --db ...`) and of the dashboard use
recorded providers on a simulation database, on a clock pinned at the
database's latest recorded time (its times are in the run's own time base),
without rivya_core importing simulations: those entry points import this
module when the simulations package is there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, select

from rivya_core.catalog import default_catalog
from rivya_core.clock import ManualClock
from rivya_core.policy import BillingPolicy
from rivya_core.ports import Provider, ProviderError, UpstreamStatus
from rivya_core.read.queries import latest_timestamp
from rivya_core.wiring import Recorded, register_provider_source

from .clock import EPOCH
from .scenarios import parse_scenario
from .writer import last_beat, read_sim_runs, upstream_job

LIVE_WINDOW_S = 15.0  # a realtime run beats every second; silence this long means it is gone
REFUSAL = "recorded provider: this simulated provider no longer accepts jobs"


class RecordedProvider:
    """rivya_core.ports.Provider over one provider's rows of `upstream_job`."""

    def __init__(self, engine: Engine, name: str):
        self.engine = engine
        self.name = name

    def __repr__(self) -> str:
        return f"RecordedProvider({self.name!r})"

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        raise ProviderError("refused", REFUSAL)

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        t = upstream_job.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(upstream_job).where(t.provider == self.name, t.upstream_task_id == upstream_task_id)
            ).first()
        if row is None or row.state == "lost":
            return UpstreamStatus("unknown")
        if row.state == "succeeded":
            return UpstreamStatus("succeeded", tuple(row.result_urls or ()))
        if row.state == "failed":
            return UpstreamStatus(
                "failed", error_code=row.error_code, error_message=row.error_message, failure_class=row.failure_class
            )
        return UpstreamStatus(row.state)

    def find(self, task_ref: str) -> str | None:
        t = upstream_job.c
        with self.engine.connect() as conn:
            return conn.execute(
                select(t.upstream_task_id).where(t.provider == self.name, t.task_ref == task_ref).limit(1)
            ).scalar()


def has_recorded_jobs(engine: Engine) -> bool:
    return upstream_job.name in inspect(engine).get_table_names()


def providers_for(engine: Engine) -> dict[str, Provider]:
    """A RecordedProvider per catalogue provider (the farm runs one each); {} when
    the database holds no `upstream_job` table (not a simulation's)."""
    if not has_recorded_jobs(engine):
        return {}
    return {name: RecordedProvider(engine, name) for name in default_catalog().providers()}


def recorded_environment(engine: Engine) -> Recorded | None:
    """The provider source registered with rivya_core.wiring: recorded providers and
    a clock pinned at the database's latest recorded time, for a simulation database."""
    providers = providers_for(engine)
    if not providers:
        return None
    busy = None
    if still_writing(engine):
        busy = (
            "a simulation is still writing this database; support actions wait until the run ends "
            "(the run would overwrite their changes)"
        )
    return Recorded(providers, ManualClock(latest_timestamp(engine) or EPOCH), busy=busy)


def still_writing(engine: Engine, fresh_s: float = LIVE_WINDOW_S) -> bool:
    """True while a realtime run's heartbeat is fresh (a killed run's goes stale)."""
    at = last_beat(engine)
    return at is not None and (datetime.now(UTC).replace(tzinfo=None) - at).total_seconds() < fresh_s


def scenario_sidecar(db_path: Path) -> Path:
    """<run>.scenario.toml: the scenario a realtime run started from the dashboard runs from,
    beside its database (the run's `sim_run` record is written only when it ends)."""
    return db_path.with_suffix(".scenario.toml")


def recorded_policy(engine: Engine, db_path: Path | None = None) -> tuple[BillingPolicy, str] | None:
    """(policy, where it comes from) for a simulation database: the scenario of its latest
    recorded run, or, for a realtime run still writing, the scenario file beside it. None
    for a database no simulation wrote. Raises ScenarioError for an unreadable scenario."""
    runs = read_sim_runs(engine)
    if runs:
        rec = runs[-1]
        name = rec["scenario_name"]
        sc = parse_scenario(rec["scenario_toml"], f"<recorded {name}>", name)
        return sc.policy, f"the policy of the recorded simulation run (scenario `{name}`, seed {rec['seed']})"
    sidecar = scenario_sidecar(db_path) if db_path is not None else None
    if sidecar is not None and sidecar.is_file():
        sc = parse_scenario(sidecar.read_text(encoding="utf-8"), str(sidecar), default_name=sidecar.stem)
        return sc.policy, (
            f"the policy of scenario `{sc.name}` (a realtime run still writing; its run record is stored when it ends)"
        )
    return None


register_provider_source(recorded_environment)

__all__ = [
    "RecordedProvider",
    "providers_for",
    "recorded_environment",
    "has_recorded_jobs",
    "recorded_policy",
    "scenario_sidecar",
    "REFUSAL",
]
