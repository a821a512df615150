"""What each KPI counts, defined once: run summaries, `compare`, `sweep`, the backtest (exact and
timing parts) and the Simulation lab all read their labels and one-line meanings here.

`price_note(a, b, ...)` says what a change of prices between two policies does to a task's
credits (each price is rounded up to whole credits, so a +25% multiplier makes a 2-credit image
cost 3, +50%) and why revenue's change then differs from the price change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rivya_core import cost
from rivya_core.catalog import Catalog, default_catalog
from rivya_core.policy import BillingPolicy


@dataclass(frozen=True)
class Kpi:
    key: str
    label: str
    meaning: str  # one line: what is counted, and what is not


_ALL = (
    # simulated runs (run summary, compare, sweep)
    Kpi(
        "revenue",
        "revenue (net credits)",
        "credits users paid: task credits charged − task credits refunded + chat credits charged",
    ),
    Kpi(
        "refunds",
        "refunds (credits)",
        "task credits refunded for failures the policy reverses (a chat reservation's unused part is not a refund)",
    ),
    Kpi(
        "failures_without_refund",
        "failures without refund",
        "tasks charged, then failed, that got no refund (the policy keeps that failure class, or a due refund "
        "never came)",
    ),
    Kpi(
        "insufficient_credit_rejections",
        "insufficient-credit rejections",
        "tasks and chat turns refused because the balance could not cover the price",
    ),
    Kpi(
        "user_visible_failure_rate",
        "user-visible failure rate",
        "tasks that ended FAILED for any reason but credits, as a share of all tasks",
    ),
    Kpi(
        "time_to_terminal_mean_s",
        "time to terminal, mean (s)",
        "mean seconds from a task's creation to SUCCESS or FAILED",
    ),
    Kpi(
        "time_to_terminal_p95_s",
        "time to terminal, p95 (s)",
        "95th percentile of the seconds from a task's creation to SUCCESS or FAILED",
    ),
    Kpi(
        "stuck_tasks",
        "stuck tasks",
        "tasks that took longer than their category's stuck threshold to finish, or never finished",
    ),
    Kpi("notifications", "notifications", "outcome notifications sent (one per finished task)"),
    # money (rivya_core.cost: catalogue provider prices, the policy's credit value)
    Kpi("revenue_money", "revenue (USD)", "net credits (the revenue KPI) times the policy's credit_value"),
    Kpi(
        "provider_cost",
        "provider cost (USD)",
        "what the providers billed: each job's run seconds, outputs or tokens at the catalogue's provider_price "
        "(failed and late-canceled jobs included; jobs canceled or aborted before they ran cost nothing)",
    ),
    Kpi("margin", "margin (USD)", "revenue (USD) − provider cost (USD)"),
    Kpi(
        "cost_saved",
        "cost saved by upstream cancel (USD)",
        "what the jobs we stopped (our cancel, or their Cancel-After deadline) would have gone on billing: "
        "to their end, or a hung job to the provider's 30-minute run limit",
    ),
    # the backtest's exact part
    Kpi("tasks", "tasks", "recorded tasks that run under the policy (not blocked as duplicates)"),
    Kpi("charged", "charged (credits)", "task credits spent before submission"),
    Kpi("refunded", "refunded (credits)", "task credits refunded for failures the policy reverses"),
    Kpi("kept", "kept (credits)", "task credits charged and not refunded"),
    Kpi("chat_charged", "chat charged (credits)", "chat credits charged on the turns' usage"),
    Kpi("rejections_caused", "rejections caused", "refused for credits under the policy, though the history ran them"),
    Kpi("rejections_avoided", "rejections avoided", "refused for credits in the history, affordable under the policy"),
    Kpi("duplicates_blocked", "duplicates blocked", "tasks the policy blocks as heavier duplicates of a running task"),
    # the backtest's timing part
    Kpi("timeouts", "timeouts", "tasks failed by the hard timeout"),
    Kpi("user_visible_failures", "user-visible failures", "tasks that ended FAILED"),
    Kpi("unfinished", "unfinished", "tasks not terminal when the re-run ended"),
)
DEFINITIONS: dict[str, Kpi] = {k.key: k for k in _ALL}
# what a simulated run reports, in this order (RunSummary.kpis, compare, sweep)
SIMULATED = (
    "revenue",
    "refunds",
    "failures_without_refund",
    "insufficient_credit_rejections",
    "user_visible_failure_rate",
    "time_to_terminal_mean_s",
    "time_to_terminal_p95_s",
    "stuck_tasks",
    "notifications",
    "revenue_money",
    "provider_cost",
    "margin",
    "cost_saved",
)
MONEY = ("revenue_money", "provider_cost", "margin", "cost_saved")


def group_keys(catalog: Catalog | None = None) -> tuple[str, ...]:
    """The per-provider and per-model money columns of a sweep's results table, in catalogue order:
    `margin@provider:NAME`, `provider_cost@provider:NAME`, `revenue_money@provider:NAME`, then
    `margin@model:ID` (a run's RunSummary.money flattened; `group_value` reads one)."""
    catalog = catalog or default_catalog()
    keys = [f"{k}@provider:{p}" for p in catalog.providers() for k in ("margin", "provider_cost", "revenue_money")]
    return tuple(keys + [f"margin@model:{m}" for m in catalog.ids()])


def group_value(money: dict[str, dict[str, dict[str, float]]], key: str) -> float:
    """One group_keys column of a run's RunSummary.money (0 when the group had nothing)."""
    kpi, _, where = key.partition("@")
    group, _, name = where.partition(":")
    return float(money.get(group, {}).get(name, {}).get(kpi, 0.0))


def group_label(key: str) -> str:
    kpi, _, where = key.partition("@")
    return f"{label(kpi)}, {where.replace(':', ' ', 1)}"


def run_money(
    catalog: Catalog,
    policy: BillingPolicy,
    credits_by_model: dict[str, int],
    chat_tokens: dict[str, list[int]],
    billing: dict[str, Any],
) -> dict[str, cost.Money]:
    """Per model: revenue in money, provider cost and cost saved of one simulated run, from the
    writer's per-model credits and chat tokens and the farm's per-model bills (simulations.farm.Bill)."""
    out: dict[str, cost.Money] = {}
    for model, credits in credits_by_model.items():
        out.setdefault(model, cost.Money()).revenue += cost.money(credits, policy)
    for model, (prompt, completion) in chat_tokens.items():
        out.setdefault(model, cost.Money()).provider_cost += cost.chat_cost(catalog.get(model), prompt, completion)
    for model, bill in billing.items():
        spec = catalog.get(model)
        m = out.setdefault(model, cost.Money())
        m.provider_cost += cost.job_cost(spec, bill.run_s, bill.outputs)
        m.cost_saved += cost.job_cost(spec, bill.saved_s, bill.saved_outputs)
        m.jobs += bill.jobs
        m.canceled += bill.canceled
    return out


def meaning(key: str) -> str:
    return DEFINITIONS[key].meaning


def label(key: str) -> str:
    return DEFINITIONS[key].label


def definition_lines(keys: tuple[str, ...] | list[str]) -> list[str]:
    """'label: meaning', one line per KPI (a report's legend)."""
    return [f"{label(k)}: {meaning(k)}" for k in keys]


def relative(diff: float, base: float) -> float:
    """diff as a share of |base| (nan when base is 0 or unknown)."""
    if base is None or diff is None or math.isnan(base) or math.isnan(diff) or base == 0:
        return math.nan
    return diff / abs(base)


def price_note(
    a: BillingPolicy, b: BillingPolicy, revenue_change: float | None = None, catalog: Catalog | None = None
) -> str | None:
    """Why B's task prices are not A's times the multiplier ratio, and what else moves revenue;
    None when both price every task the same. revenue_change: revenue's relative change B vs A."""
    if (a.price_multiplier, a.price_overrides) == (b.price_multiplier, b.price_overrides):
        return None
    catalog = catalog or default_catalog()
    per_task = [m for m in catalog.models if m.runtime == "async_task" and m.pricing.billing_type == "per_task"]
    moves = []
    for m in per_task:
        base = m.base_credits()
        pa, pb = a.price(m.id, base), b.price(m.id, base)
        if pa != pb:
            moves.append(f"{m.id} {pa} → {pb} ({100 * (pb - pa) / pa:+.1f}%)")
    ratio = b.price_multiplier / a.price_multiplier
    parts = []
    if ratio != 1:
        parts.append(f"B's price multiplier is {ratio:.4g}× A's ({100 * (ratio - 1):+.1f}%)")
    if a.price_overrides != b.price_overrides:
        parts.append("the two set different per-model prices")
    text = f"Prices: {' and '.join(parts)}; each task's price is rounded up to whole credits"
    if moves:
        text += ", so per task " + ", ".join(moves)
    text += "; per-second models round each task's total the same way."
    if revenue_change is not None and not math.isnan(revenue_change):
        if ratio != 1 and abs(revenue_change - (ratio - 1)) < 0.005:
            text += f" Revenue changed {100 * revenue_change:+.1f}%, as the price change."
        else:
            text += (
                f" Revenue changed {100 * revenue_change:+.1f}%"
                + (f", not {100 * (ratio - 1):+.1f}%" if ratio != 1 else "")
                + ": the rounding above, chat credits (token-priced, not scaled by the multiplier), and "
                "refunds and insufficient-credit rejections that follow the new prices."
            )
    return text


__all__ = [
    "Kpi",
    "DEFINITIONS",
    "SIMULATED",
    "MONEY",
    "run_money",
    "group_keys",
    "group_value",
    "group_label",
    "meaning",
    "label",
    "definition_lines",
    "relative",
    "price_note",
]
