"""Policy sweeps: every (policy, grid point) x replication is one job on the engine.

A sweep is a scenario, one or more billing policies, an optional grid of
scenario keys (`farm.capacity=8,12`), a number of replications and a master
seed. Job (policy, point, r) runs the scenario with that policy and those
keys at seed `master + r` into a temporary SQLite database and returns its KPI
row; the database is gone afterwards. The seed depends on the replication of
the job's key only, so every variant of replication r sees the same arrivals,
sizes, latencies and faults (common random numbers), and no seed depends on
where or in which order the jobs ran: a sweep gives the same rows serially, on
a local cluster or on a remote one.

The rows land in one table (`results`), written to SQLite or Parquet together
with the sweep's definition; the per-variant means and the paired differences
with their 95% confidence intervals are computed from that table
(`paired_table`), which is also what `compare` reports.
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rivya_core.domain import RivyaError
from rivya_core.policy import BillingPolicy
from rivya_core.stats import t95

from . import kpis
from .engine import Job, Outcome, run_jobs
from .scenarios import Scenario, with_overrides

KPIS = tuple((k, kpis.label(k)) for k in kpis.SIMULATED)  # what each counts: simulations/kpis.py
KPI_KEYS = tuple(k for k, _ in KPIS)
GROUP_KEYS = kpis.group_keys()  # money per provider and per model (kpis.group_keys)
# the columns of the results table, in order; wall_s is the only one that differs between identical sweeps
COLUMNS = (
    "key",
    "policy",
    "grid",
    "replication",
    "seed",
    "status",
    "error",
    "replay",
    "fingerprint",
    "tasks",
    "violations",
    "liveness_ok",
    *KPI_KEYS,
    *GROUP_KEYS,
    "wall_s",
)
NO_GRID = "-"


class SweepError(RivyaError):
    code = "bad_sweep"
    user_correctable = True


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of b − a with its 95% confidence interval (nan bounds for one replication)."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = t95(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return mean, mean - half, mean + half


# --- the definition -----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    policy: str  # the policy's name (made unique within the sweep)
    grid: str  # "k=v,k2=v2" or NO_GRID
    scenario: Scenario

    @property
    def label(self) -> str:
        return self.policy if self.grid == NO_GRID else f"{self.policy} [{self.grid}]"


@dataclass(frozen=True)
class Sweep:
    scenario: Scenario
    policies: tuple[BillingPolicy, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    replications: int = 4
    seed: int | None = None  # master seed; default the scenario's
    tasks: int | None = None  # arrivals per job; default the scenario's
    command: tuple[str, ...] = ()  # the command line that starts this sweep (for replay commands)
    names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        if self.replications < 1:
            raise SweepError("--replications must be at least 1", code="bad_argument")
        if self.tasks is not None and self.tasks < 1:
            raise SweepError("--tasks must be at least 1", code="bad_argument")
        if not self.policies:
            object.__setattr__(self, "policies", (self.scenario.policy,))
        object.__setattr__(self, "names", unique_names([p.name for p in self.policies]))
        for key, _ in self.grid:
            if key.split(".")[-1] in ("seed", "name"):
                raise SweepError(
                    f"--grid {key}: seeds come from --seed and the replication; names are fixed", code="bad_argument"
                )

    @property
    def master_seed(self) -> int:
        return self.scenario.seed if self.seed is None else int(self.seed)

    def seed_for(self, replication: int) -> int:
        """The seed of every job of this replication: the master seed and the replication, nothing else."""
        return self.master_seed + replication

    def points(self) -> list[tuple[tuple[str, Any], ...]]:
        return list(itertools.product(*[[(k, v) for v in values] for k, values in self.grid]))

    def variants(self) -> list[Variant]:
        out = []
        for name, policy in zip(self.names, self.policies, strict=True):
            base = self.scenario.with_policy(policy)
            for point in self.points():
                label = ",".join(f"{k}={_show(v)}" for k, v in point) or NO_GRID
                sc = with_overrides(base, dict(point), f"--grid {label}") if point else base
                out.append(Variant(name, label, sc))
        return out

    def jobs(self) -> list[Job]:
        jobs = []
        for v in self.variants():
            for r in range(self.replications):
                key = job_key(v.policy, v.grid, r)
                jobs.append(Job(key, sweep_job, (v.scenario, self.seed_for(r), self.tasks), self.replay(key)))
        return jobs

    def policy_of(self, name: str) -> BillingPolicy:
        """The policy a variant's (unique) policy name stands for."""
        return dict(zip(self.names, self.policies, strict=True))[name]

    def replay(self, key: str) -> str:
        if not self.command:
            return ""
        return shlex.join([*self.command, "--only", key, "--workers", "0"])

    def definition(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "scenario_toml": self.scenario.to_toml(),
            "policies": [{"name": n, **p.to_dict()} for n, p in zip(self.names, self.policies, strict=True)],
            "grid": {k: list(v) for k, v in self.grid},
            "replications": self.replications,
            "master_seed": self.master_seed,
            "tasks": self.tasks,
            "jobs": len(self.policies) * len(self.points()) * self.replications,
            "command": shlex.join(self.command) if self.command else "",
        }


def unique_names(names: list[str]) -> tuple[str, ...]:
    if len(set(names)) == len(names):
        return tuple(names)
    return tuple(f"{n} ({chr(ord('a') + i)})" if names.count(n) > 1 else n for i, n in enumerate(names))


def job_key(policy: str, grid: str, replication: int) -> str:
    return f"{policy}|{grid}|r{replication}"


def _show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str | list | dict) else str(v).lower() if isinstance(v, bool) else str(v)


def parse_grid(items: list[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """`key=v1,v2` items as (key, values); values are TOML values (a bare word is a string)."""
    out: list[tuple[str, tuple[Any, ...]]] = []
    for item in items:
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep or not key or not rest.strip():
            raise SweepError(f"--grid {item!r}: expected key=value1,value2,...", code="bad_argument")
        if any(k == key for k, _ in out):
            raise SweepError(f"--grid {key}: given twice", code="bad_argument")
        values = tuple(_toml_value(v) for v in _split(rest))
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"--grid {key}: a value is repeated", code="bad_argument")
        out.append((key, values))
    return tuple(out)


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# --- the job ------------------------------------------------------------------------


def sweep_job(scenario: Scenario, seed: int, tasks: int | None) -> dict[str, Any]:
    """One replication of one variant, into a temporary SQLite database: its KPI row."""
    from .runner import run_in_tempdir

    summary = run_in_tempdir(scenario, seed=seed, tasks=tasks, prefix="rivya-sweep-")
    return {
        "fingerprint": summary.fingerprint,
        "tasks": summary.tasks,
        "violations": len(summary.violations),
        "liveness_ok": summary.liveness_ok,
        **{k: summary.kpis[k] for k in KPI_KEYS},
        **{k: kpis.group_value(summary.money, k) for k in GROUP_KEYS},
        "wall_s": round(summary.wall_seconds, 3),
    }


# --- running and the results table -------------------------------------------------


@dataclass
class SweepResult:
    sweep: Sweep
    frame: Any  # pandas DataFrame with COLUMNS, one row per job in key order
    failed: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.failed
            and not bool((self.frame["violations"].fillna(0) > 0).any())
            and bool(self.frame["liveness_ok"].fillna(True).astype(bool).all())
        )


def run_sweep(
    sweep: Sweep, *, workers: int | None = None, scheduler: str | None = None, progress=None, only: str | None = None
) -> SweepResult:
    jobs = sweep.jobs()
    if only is not None:
        jobs = [j for j in jobs if j.key == only]
        if not jobs:
            raise SweepError(
                f"--only {only!r}: no such job in this sweep (keys look like {sweep.jobs()[0].key!r})",
                code="bad_argument",
            )
    outcomes = run_jobs(jobs, workers=workers, scheduler=scheduler, progress=progress)
    return SweepResult(sweep, results_frame(sweep, jobs, outcomes), [o for o in outcomes if not o.ok])


def results_frame(sweep: Sweep, jobs: list[Job], outcomes: list[Outcome]):
    import pandas as pd

    rows = []
    for job, out in zip(jobs, outcomes, strict=True):
        policy, grid, rep = job.key.rsplit("|", 2)
        row: dict[str, Any] = {
            "key": job.key,
            "policy": policy,
            "grid": grid,
            "replication": int(rep[1:]),
            "seed": job.args[1],
            "status": "ok" if out.ok else "failed",
            "error": out.error or "",
            "replay": job.replay,
        }
        row.update(out.value or {})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["liveness_ok"] = frame["liveness_ok"].astype("boolean")
    for col in ("tasks", "violations"):
        frame[col] = frame[col].astype("Int64")
    return frame


def variant_labels(frame) -> list[tuple[str, str]]:
    """(policy, grid) pairs in the order the sweep defined them."""
    return list(dict.fromkeys(zip(frame["policy"], frame["grid"], strict=True)))


def paired_table(
    frame, a: tuple[str, str], b: tuple[str, str], keys: tuple[tuple[str, str], ...] = KPIS
) -> list[dict[str, Any]]:
    """Each KPI (`keys`: (column, label) pairs) for variants a and b over the replications both
    finished: the means, the paired difference b − a and its 95% confidence interval."""
    ok = frame[frame["status"] == "ok"]
    left = ok[(ok["policy"] == a[0]) & (ok["grid"] == a[1])].set_index("replication")
    right = ok[(ok["policy"] == b[0]) & (ok["grid"] == b[1])].set_index("replication")
    reps = sorted(set(left.index) & set(right.index))
    table = []
    for key, label in keys:
        if key not in frame.columns:  # a results table written before this column existed
            continue
        xa = [float(left.at[r, key]) for r in reps]
        xb = [float(right.at[r, key]) for r in reps]
        diff, lo, hi = paired_ci(xa, xb) if reps else (math.nan, math.nan, math.nan)
        mean_a = statistics.fmean(xa) if xa else math.nan
        table.append(
            {
                "kpi": key,
                "label": label,
                "policy_a": mean_a,
                "policy_b": statistics.fmean(xb) if xb else math.nan,
                "diff": diff,
                "ci_low": lo,
                "ci_high": hi,
                "rel": kpis.relative(diff, mean_a),
                "rel_ci_low": kpis.relative(lo, mean_a),
                "rel_ci_high": kpis.relative(hi, mean_a),
                "meaning": kpis.meaning(key.partition("@")[0]),
            }
        )
    return table


GROUPS = tuple((k, kpis.group_label(k)) for k in GROUP_KEYS)


def group_table(frame, a: tuple[str, str], b: tuple[str, str]) -> list[dict[str, Any]]:
    """paired_table over the money of each provider and model (GROUP_KEYS), leaving out groups
    with nothing in either variant."""
    return [row for row in paired_table(frame, a, b, GROUPS) if not (row["policy_a"] == 0 and row["policy_b"] == 0)]


def price_notes(a: BillingPolicy, b: BillingPolicy, table: list[dict[str, Any]]) -> list[str]:
    """kpis.price_note for a paired table's two policies (none when their prices agree)."""
    rev = next((r["rel"] for r in table if r["kpi"] == "revenue"), None)
    note = kpis.price_note(a, b, rev)
    return [note] if note else []


def mean_table(frame) -> list[dict[str, Any]]:
    """Each variant's KPI means with the half width of their 95% confidence interval."""
    out = []
    ok = frame[frame["status"] == "ok"]
    for policy, grid in variant_labels(frame):
        sub = ok[(ok["policy"] == policy) & (ok["grid"] == grid)]
        row: dict[str, Any] = {
            "policy": policy,
            "grid": grid,
            "jobs_ok": len(sub),
            "jobs_failed": int(((frame["policy"] == policy) & (frame["grid"] == grid)).sum()) - len(sub),
        }
        for key in KPI_KEYS:
            xs = [float(x) for x in sub[key]]
            row[key] = statistics.fmean(xs) if xs else math.nan
            row[f"{key}_ci"] = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
        out.append(row)
    return out


def fmt(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:,.4f}" if abs(x) < 1 and x != 0 else f"{x:,.1f}"


def pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}%"


def render_paired(title: str, a: str, b: str, table: list[dict[str, Any]], notes: list[str] = ()) -> str:
    head = f"{'KPI':34} {a[:14]:>14} {b[:14]:>14} {'diff (b-a)':>12} {'change':>8}   95% CI (diff; change)"
    lines = [title, head, "-" * len(head)]
    for row in table:
        ci = "n/a" if math.isnan(row["ci_low"]) else f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
        rel = row.get("rel", math.nan)
        if not math.isnan(rel) and not math.isnan(row["ci_low"]):
            ci += f"; [{pct(row['rel_ci_low'])}, {pct(row['rel_ci_high'])}]"
        lines.append(
            f"{row['label']:34} {fmt(row['policy_a']):>14} {fmt(row['policy_b']):>14} "
            f"{fmt(row['diff']):>12} {pct(rel):>8}   {ci}"
        )
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def legend() -> str:
    """What each KPI of a run counts, one line each (the change column is relative to A's mean)."""
    return "\n".join(
        [
            "what each KPI counts (change: the difference as a share of A's mean):",
            *[f"  {line}" for line in kpis.definition_lines(KPI_KEYS)],
        ]
    )


def render_text(result: SweepResult) -> str:
    sw, frame = result.sweep, result.frame
    variants = variant_labels(frame)
    lines = [
        f"sweep {sw.scenario.name}: {len(variants)} variant(s) x {sw.replications} replication(s), "
        f"seeds {sw.master_seed}..{sw.seed_for(sw.replications - 1)}, {len(frame)} job(s), "
        f"{len(result.failed)} failed"
    ]
    for row in mean_table(frame):
        label = row["policy"] if row["grid"] == NO_GRID else f"{row['policy']} [{row['grid']}]"
        lines.append(
            f"\n{label}: {row['jobs_ok']} ok" + (f", {row['jobs_failed']} failed" if row["jobs_failed"] else "")
        )
        for key, name in KPIS:
            ci = row[f"{key}_ci"]
            lines.append(f"  {name:34} {fmt(row[key]):>14}" + ("" if math.isnan(ci) else f"  ± {fmt(ci)}"))
    first = variants[0]
    for other in variants[1:]:
        la = first[0] if first[1] == NO_GRID else f"{first[0]} [{first[1]}]"
        lb = other[0] if other[1] == NO_GRID else f"{other[0]} [{other[1]}]"
        table = paired_table(frame, first, other)
        lines += [
            "",
            render_paired(
                f"{lb} against {la} (paired by replication)",
                la,
                lb,
                table,
                price_notes(sw.policy_of(first[0]), sw.policy_of(other[0]), table),
            ),
        ]
        lines += ["", render_paired("money by provider and model (USD)", la, lb, group_table(frame, first, other))]
    lines += ["", legend()]
    for out in result.failed:
        lines += ["", f"FAILED {out.key}: {out.error}", f"  replay: {out.replay}"]
    return "\n".join(lines)


# --- storing ------------------------------------------------------------------------


def check_output(path: str | Path, force: bool) -> Path:
    p = Path(path)
    if p.suffix not in (".db", ".sqlite", ".sqlite3", ".parquet"):
        raise SweepError(f"-o {p}: give a .db/.sqlite file (SQLite) or a .parquet file", code="bad_argument")
    if p.is_dir():
        raise SweepError(f"-o {p}: is a directory", code="bad_argument")
    if p.exists() and p.stat().st_size > 0 and not force:
        raise SweepError(f"-o {p}: already holds data (give --force to replace it)", code="output_exists")
    if not p.parent.exists():
        raise SweepError(f"-o {p}: no such directory {p.parent}", code="bad_argument")
    return p


def write_results(result: SweepResult, path: str | Path, force: bool = False) -> Path:
    """The results table and the sweep's definition into one file: SQLite tables
    `sweep_result` and `sweep_definition`, or Parquet with the definition in the
    schema metadata (`rivya.sweep`)."""
    p = check_output(path, force)
    definition = json.dumps(result.sweep.definition())
    tmp = p.with_name(p.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(result.frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"rivya.sweep": definition})
        pq.write_table(table, tmp)
    else:
        from sqlalchemy import create_engine

        engine = create_engine(f"sqlite:///{tmp}")
        try:
            with engine.begin() as conn:
                result.frame.to_sql("sweep_result", conn, index=False)
                import pandas as pd

                pd.DataFrame([{"definition": definition}]).to_sql("sweep_definition", conn, index=False)
        finally:
            engine.dispose()
    tmp.replace(p)
    return p


def read_results(path: str | Path) -> tuple[dict[str, Any], Any]:
    """(definition, results frame) from a file write_results wrote."""
    import pandas as pd

    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        frame = table.to_pandas()
        return json.loads(table.schema.metadata[b"rivya.sweep"]), frame
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{p}")
    try:
        with engine.connect() as conn:
            frame = pd.read_sql_table("sweep_result", conn)
            definition = json.loads(pd.read_sql_table("sweep_definition", conn)["definition"].iloc[0])
    finally:
        engine.dispose()
    frame["liveness_ok"] = frame["liveness_ok"].astype("boolean")
    return definition, frame


__all__ = [
    "Sweep",
    "SweepResult",
    "SweepError",
    "run_sweep",
    "paired_table",
    "mean_table",
    "parse_grid",
    "write_results",
    "read_results",
    "render_text",
    "sweep_job",
    "KPIS",
    "COLUMNS",
]
