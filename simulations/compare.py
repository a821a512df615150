"""Billing-policy experiments with common random numbers.

`compare(scenario, [policy_a, policy_b], replications)` runs replication r of
every policy on the same seed (scenario seed + r), so both policies see the
same arrivals, sizes, latencies and faults; only what the policy changes
differs. Each KPI is reported per policy with the paired difference (b − a)
and its 95% confidence interval from the t distribution. Replications run in
parallel worker processes, each into its own temporary SQLite database.
"""

from __future__ import annotations

import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rivya_core.policy import BillingPolicy

from .scenarios import Scenario

KPIS = (
    ("revenue", "revenue (net credits)"),
    ("refunds", "refunds (credits)"),
    ("failures_without_refund", "failures without refund"),
    ("insufficient_credit_rejections", "insufficient-credit rejections"),
    ("user_visible_failure_rate", "user-visible failure rate"),
    ("time_to_terminal_mean_s", "time to terminal, mean (s)"),
    ("time_to_terminal_p95_s", "time to terminal, p95 (s)"),
    ("stuck_tasks", "stuck tasks"),
    ("notifications", "notifications"),
)

# two-sided 95% t quantiles by degrees of freedom; beyond 30 the normal 1.96 is close enough
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    if df <= 0:
        return math.inf
    if df in _T95:
        return _T95[df]
    for k in sorted(_T95):
        if k >= df:
            return _T95[k]
    return 1.960


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of b − a with its 95% confidence interval (nan bounds for one replication)."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = t95(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return mean, mean - half, mean + half


@dataclass
class CompareReport:
    scenario: str
    policies: list[str]
    replications: int
    seeds: list[int]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # policy -> KPI dicts per replication
    table: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "policies": self.policies, "replications": self.replications,
                "seeds": self.seeds, "table": self.table, "runs": self.runs}

    def render_text(self) -> str:
        a, b = self.policies
        head = f"{'KPI':34} {a[:14]:>14} {b[:14]:>14} {'diff (b-a)':>12}   95% CI"
        lines = [f"scenario {self.scenario}: {self.replications} paired replications (seeds {self.seeds[0]}..)",
                 head, "-" * len(head)]
        for row in self.table:
            ci = "n/a" if math.isnan(row["ci_low"]) else f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
            lines.append(f"{row['label']:34} {_fmt(row['policy_a']):>14} {_fmt(row['policy_b']):>14} "
                         f"{_fmt(row['diff']):>12}   {ci}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:,.4f}" if abs(x) < 1 and x != 0 else f"{x:,.1f}"


def _one(args: tuple[Scenario, BillingPolicy, int, int | None]) -> dict[str, Any]:
    from .runner import run_in_tempdir

    scenario, policy, seed, tasks = args
    summary = run_in_tempdir(scenario.with_policy(policy), seed=seed, tasks=tasks, prefix="rivya-compare-")
    return {**summary.kpis, "violations": len(summary.violations), "fingerprint": summary.fingerprint}


def compare(scenario: Scenario, policies: list[BillingPolicy], replications: int, workers: int | None = None,
            tasks: int | None = None) -> CompareReport:
    if len(policies) != 2:
        raise ValueError("compare takes exactly two policies")
    if replications < 1:
        raise ValueError("replications must be at least 1")
    seeds = [scenario.seed + r for r in range(replications)]
    jobs = [(scenario, p, s, tasks) for p in policies for s in seeds]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_one, jobs))
    else:
        results = [_one(j) for j in jobs]
    names = [p.name for p in policies]
    if names[0] == names[1]:
        names = [f"{names[0]} (a)", f"{names[1]} (b)"]
    report = CompareReport(scenario.name, names, replications, seeds)
    report.runs = {names[0]: results[:replications], names[1]: results[replications:]}
    for key, label in KPIS:
        a = [float(r[key]) for r in report.runs[names[0]]]
        b = [float(r[key]) for r in report.runs[names[1]]]
        diff, lo, hi = paired_ci(a, b)
        report.table.append({"kpi": key, "label": label, "policy_a": statistics.fmean(a),
                             "policy_b": statistics.fmean(b), "diff": diff, "ci_low": lo, "ci_high": hi})
    return report
