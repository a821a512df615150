"""Money of a database's history per provider and model: revenue in money, provider cost and
margin (rivya_core.cost), read in a few grouped queries (no row per task reaches Python).

Provider cost of a task that reached its provider: the provider's reported run seconds
(`ai_task.provider_run_s`) times the per-second price where recorded (*exact*); for per-output
prices one output per successful task (*exact* for the usual one-output models); for per-second
models without reported seconds, the recorded submitted → finished time, queueing included (an
upper bound, *estimated*). Chat turns: recorded tokens times the per-token prices (*exact*).
Revenue: net credits per model (consumed − refunded, chat charged) times the policy's credit value.

A day's margin is a sample: `daily` gives each provider's mean daily margin with the half width
of its 95% t interval over the days of the window (the interval compare and sweep use across
replications, here across days).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, case, func, select

from .. import cost
from ..catalog import Catalog, default_catalog
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..stats import t95
from ..stores.schema import ai_task, chat_message, chat_session, credit_ledger
from .ledger_views import epoch_seconds
from .queries import connect


def _rows(engine: Engine) -> list[dict[str, Any]]:
    """One row per (model, provider, day) with what the money needs."""
    t, L = ai_task.c, credit_ledger.c
    day = func.date(t.created_at)
    charged = (
        select(L.task_id, func.sum(L.amount).label("net"))
        .where(L.task_id.is_not(None), L.entry_type.in_(("consume", "refund")))
        .group_by(L.task_id)
        .subquery()
    )
    ran = epoch_seconds(engine, t.finished_at) - epoch_seconds(engine, t.submitted_at)
    q = (
        select(
            t.model,
            t.provider,
            day.label("day"),
            func.count().label("tasks"),
            func.coalesce(func.sum(-charged.c.net), 0).label("credits"),
            func.count(t.provider_run_s).label("reported"),
            func.coalesce(func.sum(t.provider_run_s), 0.0).label("reported_s"),
            func.sum(case((t.status == "SUCCESS", 1), else_=0)).label("successes"),
            func.sum(
                case(
                    ((t.provider_run_s.is_(None)) & t.submitted_at.is_not(None) & t.finished_at.is_not(None), 1),
                    else_=0,
                )
            ).label("estimated"),
            func.coalesce(
                func.sum(
                    case(
                        ((t.provider_run_s.is_(None)) & t.submitted_at.is_not(None) & t.finished_at.is_not(None), ran),
                        else_=0.0,
                    )
                ),
                0.0,
            ).label("estimated_s"),
        )
        .select_from(ai_task.outerjoin(charged, charged.c.task_id == t.id))
        .where(t.upstream_task_id.is_not(None) | charged.c.net.is_not(None))
        .group_by(t.model, t.provider, day)
    )
    m, s = chat_message.c, chat_session.c
    cday = func.date(m.created_at)
    chat = (
        select(
            s.model,
            cday.label("day"),
            func.coalesce(func.sum(m.charged_credits), 0).label("credits"),
            func.coalesce(func.sum(m.prompt_tokens), 0).label("prompt"),
            func.coalesce(func.sum(m.completion_tokens), 0).label("completion"),
        )
        .join(chat_session, s.id == m.session_id)
        .where(m.role == "user", m.status == "settled")
        .group_by(s.model, cday)
    )
    with connect(engine) as conn:
        out = [dict(r._mapping) | {"kind": "task"} for r in conn.execute(q)]
        out += [dict(r._mapping) | {"kind": "chat"} for r in conn.execute(chat)]
    return out


def _money_of(
    row: dict[str, Any], catalog: Catalog, policy: BillingPolicy
) -> tuple[str, str, str, cost.Money, int, int]:
    spec = catalog.get(row["model"])
    provider = row.get("provider") or (spec.provider if spec else "(unknown)")
    m = cost.Money(revenue=cost.money(int(row["credits"] or 0), policy))
    exact = estimated = 0
    if row["kind"] == "chat":
        m.provider_cost = cost.chat_cost(spec, int(row["prompt"]), int(row["completion"]))
    else:
        price = spec.provider_price if spec is not None else None
        if price is not None and price.unit == "per_output":
            m.provider_cost = cost.job_cost(spec, None, int(row["successes"] or 0))
            exact = int(row["tasks"])
        else:
            m.provider_cost = cost.job_cost(spec, float(row["reported_s"] or 0), 0) + cost.job_cost(
                spec, float(row["estimated_s"] or 0), 0
            )
            exact, estimated = int(row["reported"] or 0), int(row["estimated"] or 0)
        m.jobs = int(row["tasks"])
    return provider, row["model"], str(row["day"]), m, exact, estimated


@dataclass
class _Tally:
    """One group's money so far, and how many of its tasks' provider cost is exact or estimated."""

    money: cost.Money = field(default_factory=cost.Money)
    exact: int = 0
    estimated: int = 0


def money_by(engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, catalog: Catalog | None = None) -> dict[str, Any]:
    """{"total": {...}, "provider": [rows], "model": [rows], "daily": [rows]}: revenue (money),
    provider cost, margin, and the tasks whose cost is exact or estimated; `daily` per provider:
    days, mean daily margin and its 95% half width."""
    catalog = catalog or default_catalog()
    groups: dict[str, dict[str, _Tally]] = {"provider": defaultdict(_Tally), "model": defaultdict(_Tally)}
    per_day: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total = _Tally()
    for row in _rows(engine):
        provider, model, day, m, exact, est = _money_of(row, catalog, policy)
        for tally in (groups["provider"][provider], groups["model"][model], total):
            tally.money.add(m)
            tally.exact += exact
            tally.estimated += est
        per_day[provider][day] += m.margin

    def line(name: str, tally: _Tally) -> dict[str, Any]:
        money = tally.money
        return {
            "name": name,
            "revenue": round(money.revenue, 2),
            "provider_cost": round(money.provider_cost, 2),
            "margin": round(money.margin, 2),
            "cost_exact_tasks": tally.exact,
            "cost_estimated_tasks": tally.estimated,
        }

    daily = []
    for provider in sorted(per_day):
        xs = list(per_day[provider].values())
        half = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
        daily.append(
            {
                "name": provider,
                "days": len(xs),
                "mean_daily_margin": round(statistics.fmean(xs), 2),
                "ci95": None if math.isnan(half) else round(half, 2),
            }
        )
    return {
        "currency": cost.CURRENCY,
        "credit_value": policy.credit_value,
        "total": line("total", total),
        "provider": [line(k, v) for k, v in sorted(groups["provider"].items())],
        "model": [line(k, v) for k, v in sorted(groups["model"].items())],
        "daily": daily,
    }


__all__ = ["money_by"]
