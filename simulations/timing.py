"""The timing part of a backtest: what changes time, re-simulated trace-driven.

Timeouts, the polling interval, the re-check backoff and submission retries
change *when* things happen, so they cannot be re-priced: the window's history
becomes one story (`fork_story(everyone=True)`: every submission at its
recorded moment, each provider job with its recorded queueing, generation time
and outcome, every callback at its recorded moment, the accounts' balances
and top-ups, the chat turns) and that story is run once per policy. Only the
policy differs between the runs, so the difference is the policy's. Paired
differences get 95% bootstrap confidence intervals, resampling days when the
window spans at least MIN_DAYS days, accounts otherwise.

Every figure here is simulated; the exact part (simulations/backtest.py) is not.
"""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from rivya_core.domain import EntryType, TaskStatus
from rivya_core.policy import BillingPolicy
from rivya_core.read.queries import connect
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine

from . import kpis
from .fork import fork_story
from .history import History, seconds

MIN_DAYS = 7
RESAMPLES = 1000
TIMING_KPIS = {
    k: kpis.meaning(k)
    for k in (
        "time_to_terminal_mean_s",
        "timeouts",
        "user_visible_failures",
        "failures_without_refund",
        "refunded",
        "kept",
        "unfinished",
    )
}


def _outcomes(url: str, n_tasks: int) -> list[dict[str, Any]]:
    """Per story task (in story order): status, latency, refund and charge."""
    engine = make_engine(url)
    t, L = schema.ai_task.c, schema.credit_ledger.c
    try:
        with connect(engine) as conn:
            tasks = list(conn.execute(select(t.id, t.status, t.error_code, t.created_at, t.finished_at).order_by(t.id)))
            money: dict[int, dict[str, int]] = defaultdict(lambda: {"consume": 0, "refund": 0})
            for tid, et, amount in conn.execute(
                select(L.task_id, L.entry_type, L.amount).where(L.task_id.is_not(None))
            ):
                if et in (EntryType.CONSUME, EntryType.REFUND):
                    money[tid][et] += int(amount)
    finally:
        engine.dispose()
    out = []
    for row in tasks[:n_tasks]:
        mo = money.get(row.id, {"consume": 0, "refund": 0})
        done = row.status in (TaskStatus.SUCCESS, TaskStatus.FAILED)
        out.append(
            {
                "status": row.status,
                "timeout": row.error_code == "timeout",
                "latency": (seconds(row.finished_at) - seconds(row.created_at)) if done and row.finished_at else None,
                "charged": -mo["consume"],
                "refunded": mo["refund"],
            }
        )
    return out


def _unit_sums(outcomes: list[dict[str, Any]], units: list[Any]) -> dict[Any, dict[str, float]]:
    sums: dict[Any, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for o, u in zip(outcomes, units, strict=False):
        s = sums[u]
        if o["latency"] is not None:
            s["latency_sum"] += o["latency"]
            s["terminal"] += 1
        else:
            s["unfinished"] += 1
        failed = o["status"] == TaskStatus.FAILED
        s["timeouts"] += o["timeout"]
        s["user_visible_failures"] += failed
        s["failures_without_refund"] += failed and o["charged"] > 0 and o["refunded"] == 0
        s["refunded"] += o["refunded"]
        s["kept"] += o["charged"] - o["refunded"]
    return sums


def _aggregate(sums: dict[Any, dict[str, float]], keys: list[Any]) -> dict[str, float]:
    agg: dict[str, float] = defaultdict(float)
    for k in keys:
        for name, v in sums.get(k, {}).items():
            agg[name] += v
    out = {k: agg[k] for k in TIMING_KPIS if k not in ("time_to_terminal_mean_s",)}
    out["time_to_terminal_mean_s"] = agg["latency_sum"] / agg["terminal"] if agg["terminal"] else 0.0
    return out


def timing_part(
    engine: Engine,
    history: History,
    policies: list[BillingPolicy],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    progress=None,
) -> dict[str, Any]:
    from .runner import run_scenario

    story = fork_story(engine, everyone=True, since=history.since, until=history.until, as_file=False)
    by_id = {t.id: t for t in history.tasks}
    span_days = len({int(t.created // 86400) for t in history.tasks})
    by_day = span_days >= MIN_DAYS
    units = [int(by_id[i].created // 86400) if by_day else by_id[i].user_id for i in story.task_ids]
    results = []
    with tempfile.TemporaryDirectory(prefix="rivya-timing-") as tmp:
        for n, policy in enumerate(policies):
            url = f"sqlite:///{Path(tmp) / f'policy{n}.db'}"
            run_scenario(story.scenario.with_policy(policy), url)
            results.append(_outcomes(url, len(story.task_ids)))
            if progress is not None:
                progress((n + 1) / len(policies), f"trace-driven run under {policy.name}")
    sums = [_unit_sums(r, units) for r in results]
    keys = sorted(set(units))
    point = [_aggregate(s, keys) for s in sums]
    rng = random.Random(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(resamples if keys else 0):
        sample = [keys[rng.randrange(len(keys))] for _ in keys]
        a, b = _aggregate(sums[0], sample), _aggregate(sums[-1], sample)
        for k in TIMING_KPIS:
            draws[k].append(b[k] - a[k])
    kpis = {}
    for k, meaning in TIMING_KPIS.items():
        a, b = point[0][k], point[-1][k]
        d = sorted(draws[k])
        ci = (d[int(0.025 * (len(d) - 1))], d[int(0.975 * (len(d) - 1))]) if d else None
        kpis[k] = {
            "a": round(a, 3),
            "b": round(b, 3),
            "diff": round(b - a, 3),
            "ci95": None if ci is None else [round(ci[0], 3), round(ci[1], 3)],
            "source": "simulated",
            "meaning": meaning,
        }
    unit = "days" if by_day else "accounts"
    text = [
        f"timing part (trace-driven re-run of {len(story.task_ids)} tasks and {len(story.chat_ids)} chat turns, "
        f"recorded arrivals, generation times, callbacks and outcomes; only the policy differs): "
        f"95% CI by bootstrap over {len(keys)} {unit}",
        f"  {'kpi (simulated)':34}{'A':>12}{'B':>12}{'B - A':>12}  95% CI",
    ]
    for k, v in kpis.items():
        ci = f"[{v['ci95'][0]:+,.1f}, {v['ci95'][1]:+,.1f}]" if v["ci95"] else ""
        text.append(f"  {k:34}{v['a']:>12,.1f}{v['b']:>12,.1f}{v['diff']:>+12,.1f}  {ci}")
    return {
        "kpis": kpis,
        "resampled": unit,
        "units": len(keys),
        "resamples": resamples,
        "tasks": len(story.task_ids),
        "chat_turns": len(story.chat_ids),
        "text": text,
    }
