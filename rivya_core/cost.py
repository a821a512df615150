"""Money beside credits: what the provider bills us for a job, what users paid, and the margin.

One definition of each, read by the simulation's KPIs, the backtest, `compare`, `sweep` and the
Overview page:

- a model's **provider price** is in the catalogue (`provider_price`: per second of run time, per
  output, or per 1,000 tokens for chat), in CURRENCY;
- a credit's **money value** is the billing policy's `credit_value` (what one credit sells for: a
  pricing decision, so two policies may differ in it), in CURRENCY;
- **revenue** (money) is net credits (charged − refunded + chat charged) times `credit_value`;
- **provider cost** is the sum of what each job was billed: run seconds × the per-second price
  (a failed job and a job canceled after it started are billed for the seconds they ran; a job
  canceled before it started, or aborted by its deadline before it ran, costs nothing), outputs ×
  the per-output price (only a job that delivered outputs is billed per output), tokens × the
  per-token prices;
- **margin** is revenue − provider cost.

Run seconds come from the provider where it reports them (Replicate's `metrics.predict_time`,
fal's `timings.inference`), stored as `ai_task.provider_run_s`; the simulated farm records its
own (`upstream_job.billed_s`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .catalog import Catalog, ModelSpec
from .policy import BillingPolicy


def reported_seconds(value: object) -> float | None:
    """A run time a provider reported (Replicate's `metrics.predict_time`, fal's timings, the
    native callback's `run_s`): a finite number >= 0 as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


CURRENCY = "USD"


def job_cost(spec: ModelSpec | None, run_s: float | None, outputs: int) -> float:
    """What the provider bills for one job of `spec` that ran `run_s` seconds (None: it never ran)
    and delivered `outputs` outputs; 0 when the catalogue gives the model no provider price."""
    price = spec.provider_price if spec is not None else None
    if price is None:
        return 0.0
    if price.unit == "per_second":
        return max(0.0, float(run_s or 0.0)) * price.per_second
    if price.unit == "per_output":
        return max(0, int(outputs)) * price.per_output
    return 0.0


def chat_cost(spec: ModelSpec | None, prompt_tokens: int, completion_tokens: int) -> float:
    """What the provider bills for one chat turn's tokens (per_token models)."""
    price = spec.provider_price if spec is not None else None
    if price is None or price.unit != "per_token":
        return 0.0
    return (max(0, prompt_tokens) * price.input_per_1k + max(0, completion_tokens) * price.output_per_1k) / 1000


def money(credits: float, policy: BillingPolicy) -> float:
    """Credits in CURRENCY at the policy's credit value."""
    return float(credits) * policy.credit_value


@dataclass
class Money:
    """Revenue, provider cost and the cost upstream cancel saved, for one group (a model, a
    provider, or a whole run); margin follows."""

    revenue: float = 0.0
    provider_cost: float = 0.0
    cost_saved: float = 0.0
    jobs: int = 0
    canceled: int = 0

    @property
    def margin(self) -> float:
        return self.revenue - self.provider_cost

    def add(self, other: Money) -> None:
        self.revenue += other.revenue
        self.provider_cost += other.provider_cost
        self.cost_saved += other.cost_saved
        self.jobs += other.jobs
        self.canceled += other.canceled

    def to_dict(self) -> dict[str, float]:
        return {
            "revenue": round(self.revenue, 6),
            "provider_cost": round(self.provider_cost, 6),
            "margin": round(self.margin, 6),
            "cost_saved": round(self.cost_saved, 6),
            "jobs": self.jobs,
            "canceled": self.canceled,
        }


def by_group(per_model: Mapping[str, Money], catalog: Catalog) -> dict[str, dict[str, dict[str, float]]]:
    """{"model": {id: money}, "provider": {name: money}} from per-model sums (sorted by name)."""
    providers: dict[str, Money] = {}
    for model_id, m in per_model.items():
        spec = catalog.get(model_id)
        providers.setdefault(spec.provider if spec else "(unknown)", Money()).add(m)
    return {
        "model": {k: per_model[k].to_dict() for k in sorted(per_model)},
        "provider": {k: providers[k].to_dict() for k in sorted(providers)},
    }


def totals(per_model: Mapping[str, Money]) -> Money:
    out = Money()
    for m in per_model.values():
        out.add(m)
    return out


def describe_price(spec: ModelSpec) -> str:
    """One line: what the provider bills for this model."""
    p = spec.provider_price
    if p is None:
        return "no provider price in the catalogue"
    if p.unit == "per_second":
        return f"{p.per_second:g} {CURRENCY} per second of run time"
    if p.unit == "per_output":
        return f"{p.per_output:g} {CURRENCY} per output"
    return f"{p.input_per_1k:g} / {p.output_per_1k:g} {CURRENCY} per 1,000 input / output tokens"


__all__ = ["CURRENCY", "Money", "job_cost", "chat_cost", "money", "by_group", "totals", "describe_price"]
