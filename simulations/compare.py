"""Billing-policy experiments with common random numbers.

`compare(scenario, [policy_a, policy_b], replications)` is a sweep of two
policies (`sweep.py`): replication r of both policies runs on the same seed
(the scenario's seed + r), so both see the same arrivals, sizes, latencies and
faults; only what the policy changes differs. The jobs run on the experiment
engine (a local Dask cluster by default, `workers=0` in this process, or an
existing cluster), and each KPI is reported per policy with the paired
difference (b − a) and its 95% confidence interval from the t distribution,
computed from the sweep's results table, with the relative change (the difference as a share of
A's mean), what each KPI counts (simulations/kpis.py) and, when the two price tasks differently, why
the change in revenue is not the change in price (rounding to whole credits, chat, rejections).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rivya_core.policy import BillingPolicy

from .scenarios import Scenario
from .sweep import (
    KPIS,
    NO_GRID,
    Sweep,
    SweepResult,
    group_table,
    legend,
    paired_ci,
    paired_table,
    price_notes,
    render_paired,
    run_sweep,
    t95,
)

__all__ = ["KPIS", "CompareReport", "compare", "paired_ci", "t95"]


@dataclass
class CompareReport:
    scenario: str
    policies: list[str]
    replications: int
    seeds: list[int]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # policy -> KPI dicts per replication
    table: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # key, error, replay of each failed job
    notes: list[str] = field(default_factory=list)  # what bends a change (kpis.price_note)
    groups: list[dict[str, Any]] = field(default_factory=list)  # money per provider and model (sweep.group_table)
    result: SweepResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "policies": self.policies,
            "replications": self.replications,
            "seeds": self.seeds,
            "table": self.table,
            "groups": self.groups,
            "notes": self.notes,
            "runs": self.runs,
            "failed": self.failed,
        }

    def render_text(self) -> str:
        a, b = self.policies
        text = render_paired(
            f"scenario {self.scenario}: {self.replications} paired replications (seeds {self.seeds[0]}..)",
            a,
            b,
            self.table,
            self.notes,
        )
        if self.groups:
            text += "\n\n" + render_paired("money by provider and model (USD)", a, b, self.groups)
        text += "\n\n" + legend()
        for f in self.failed:
            text += f"\nFAILED {f['key']}: {f['error']}\n  replay: {f['replay']}"
        return text


def compare(
    scenario: Scenario,
    policies: list[BillingPolicy],
    replications: int,
    workers: int | None = None,
    tasks: int | None = None,
    *,
    scheduler: str | None = None,
    progress=None,
    command: tuple[str, ...] = (),
) -> CompareReport:
    if len(policies) != 2:
        raise ValueError("compare takes exactly two policies")
    if replications < 1:
        raise ValueError("replications must be at least 1")
    sweep = Sweep(scenario, tuple(policies), replications=replications, tasks=tasks, command=command)
    result = run_sweep(sweep, workers=workers, scheduler=scheduler, progress=progress)
    return report_from(result)


def report_from(result: SweepResult) -> CompareReport:
    sw, frame = result.sweep, result.frame
    names = list(sw.names)
    report = CompareReport(
        sw.scenario.name, names, sw.replications, [sw.seed_for(r) for r in range(sw.replications)], result=result
    )
    for name in names:
        rows = frame[(frame["policy"] == name) & (frame["status"] == "ok")]
        report.runs[name] = [
            {k: _plain(v) for k, v in row.items() if k not in ("key", "policy", "grid", "replay", "status", "error")}
            for row in rows.to_dict("records")
        ]
    report.table = paired_table(frame, (names[0], NO_GRID), (names[1], NO_GRID))
    report.groups = group_table(frame, (names[0], NO_GRID), (names[1], NO_GRID))
    report.notes = price_notes(sw.policies[0], sw.policies[1], report.table)
    report.failed = [{"key": o.key, "error": o.error or "", "replay": o.replay} for o in result.failed]
    return report


def _plain(v: Any) -> Any:
    """numpy / pandas scalars as plain Python values (for JSON)."""
    if hasattr(v, "item"):
        return v.item()
    return v
