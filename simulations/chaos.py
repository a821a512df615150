"""Chaos seeds: randomized fault points, FoundationDB style.

For each seed a random.Random(seed) draws which fault kinds are active and at
what rate (each kind is on for some seeds and off for others), plus the run's
own seed; the chaos scenario runs with those rates into a temporary SQLite
database; every invariant (the audit) and liveness are checked. A failing seed
prints the seed, each violated invariant with its rows, and the command that
replays exactly that seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from rivya_core.cli import number
from rivya_core.limits import MAX_INT64

from .scenarios import Scenario, load_scenario

FAULT_KINDS = (
    "submit_refused",
    "submit_error",
    "submit_timeout",
    "content_policy",
    "model_error",
    "upstream_timeout",
    "lost_job",
    "no_urls",
    "early",
    "lost",
    "duplicate",
    "reorder",
    "forged",
    "stale",
    "malformed",
)
MAX_RATE = {"early": 0.4, "lost": 0.4, "duplicate": 0.4, "reorder": 0.3, "forged": 0.3, "stale": 0.3}
DEFAULT_RATE_CAP = 0.15
ON_PROBABILITY = 0.5
DEFAULT_TASKS = 150


@dataclass
class SeedResult:
    seed: int
    run_seed: int
    faults: dict[str, float]
    ok: bool
    liveness_ok: bool
    violations: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""
    error: str | None = None

    def replay_command(self, tasks: int) -> str:
        return f"python -m simulations chaos --seeds 1 --start {self.seed} --tasks {tasks}"

    def render(self, tasks: int) -> str:
        active = ", ".join(f"{k}={v:.3f}" for k, v in self.faults.items()) or "none"
        if self.ok:
            return f"seed {self.seed}: ok ({active})"
        lines = [f"seed {self.seed}: FAILED (faults: {active})"]
        if self.error:
            lines.append(f"  error: {self.error}")
        if not self.liveness_ok:
            lines.append("  liveness: tasks left active after faults stopped")
        for v in self.violations:
            lines.append(f"  invariant {v.get('kind')}: {v.get('message')}")
            lines += [f"    {row}" for row in (v.get("rows") or [])[:10]]
        lines.append(f"  replay: {self.replay_command(tasks)}")
        return "\n".join(lines)


def draw_faults(seed: int) -> tuple[dict[str, float], int]:
    """The active fault kinds with their rates, and the run seed, for one chaos seed."""
    rng = random.Random(f"chaos:{seed}")
    faults = {
        k: round(rng.uniform(0.005, MAX_RATE.get(k, DEFAULT_RATE_CAP)), 4)
        for k in FAULT_KINDS
        if rng.random() < ON_PROBABILITY
    }
    return faults, rng.randrange(2**31)


def chaos_scenario(base: Scenario, faults: dict[str, float]) -> Scenario:
    """base with every fault off except the drawn ones, for every provider."""

    def configure(cfg):
        return replace(cfg, **{k: faults.get(k, 0.0) for k in FAULT_KINDS})

    return replace(
        base, farm=configure(base.farm), providers={name: configure(cfg) for name, cfg in base.providers.items()}
    )


def run_seed(seed: int, tasks: int = DEFAULT_TASKS, base: Scenario | None = None) -> SeedResult:
    from .runner import run_in_tempdir

    base = base or load_scenario("chaos")
    faults, run_seed_ = draw_faults(seed)
    scenario = chaos_scenario(base, faults)
    try:
        summary = run_in_tempdir(scenario, seed=run_seed_, tasks=tasks, prefix="rivya-chaos-")
    except Exception as exc:  # noqa: BLE001 - a crash is a failed seed, reported with its replay
        return SeedResult(seed, run_seed_, faults, False, False, error=f"{type(exc).__name__}: {exc}")
    return SeedResult(
        seed, run_seed_, faults, summary.ok, summary.liveness_ok, list(summary.violations), summary.fingerprint
    )


def run_chaos(
    seeds: int,
    start: int = 0,
    tasks: int = DEFAULT_TASKS,
    report=None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress=None,
) -> list[SeedResult]:
    """Run seeds start..start+seeds-1 as jobs on the experiment engine (engine.py:
    a local cluster by default, workers=0 in this process, or scheduler=ADDRESS);
    report(result) is called for each, in seed order, once all finished."""
    from .engine import Job, run_jobs

    base = load_scenario("chaos")
    jobs = [
        Job(
            f"seed{seed}",
            run_seed,
            (seed, tasks, base),
            f"python -m simulations chaos --seeds 1 --start {seed} --tasks {tasks}",
        )
        for seed in range(start, start + seeds)
    ]
    results = []
    for seed, out in zip(
        range(start, start + seeds),
        run_jobs(jobs, workers=workers, scheduler=scheduler, progress=progress),
        strict=True,
    ):
        if out.ok:
            result = out.value
        else:  # the job itself died (a killed worker): a failed seed all the same
            faults, run_seed_ = draw_faults(seed)
            result = SeedResult(seed, run_seed_, faults, False, False, error=out.error)
        results.append(result)
        if report:
            report(result)
    return results


# --- the `chaos` subcommand of `python -m simulations` ------------------------------


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "chaos",
        help="run randomized fault seeds; exit 1 when any seed breaks an invariant",
        description="For each seed draw the active fault kinds and their rates, run the chaos "
        "scenario, check every invariant and liveness; print failing seeds with a replay command.",
    )
    c.add_argument("--seeds", type=number("seeds"), required=True, help="how many seeds to run")
    c.add_argument("--start", type=number("seed"), default=0, help="first seed (default 0)")
    c.add_argument(
        "--tasks", type=number("tasks"), default=DEFAULT_TASKS, help=f"tasks per seed (default {DEFAULT_TASKS})"
    )
    from .cli_engine import add_engine_flags

    add_engine_flags(c)


def cmd_chaos(a: Any) -> int:
    from rivya_core.domain import RivyaError

    if a.seeds < 1 or a.tasks < 1 or a.start < 0:
        raise RivyaError("--seeds and --tasks must be at least 1 and --start not negative", code="bad_argument")
    if a.start + a.seeds - 1 > MAX_INT64:
        raise RivyaError(f"--start + --seeds goes past the last seed, {MAX_INT64}", code="bad_argument")
    failed = []

    def report(result: SeedResult) -> None:
        if not result.ok:
            failed.append(result)
            print(result.render(a.tasks), flush=True)

    from .cli_engine import progress_bar

    results = run_chaos(
        a.seeds, a.start, a.tasks, report, workers=a.workers, scheduler=a.scheduler, progress=progress_bar(a)
    )
    print(
        f"chaos: {len(results)} seed(s) from {a.start}, {len(failed)} failed"
        + (f": {', '.join(str(r.seed) for r in failed)}" if failed else ", zero violations")
    )
    return 1 if failed else 0
