"""Demo data for a fresh dashboard: data/demo.toml, run once into an empty database.

Five hours of a normal day, cut off thirty seconds after the last arrival so a live slice is
still running (videos generating, a dozen of them stuck past their model's threshold), with a
kinetica incident in the last hour and a half (its jobs fail, then hang), and a submission worker
that died in the last minutes after charging a few image tasks and before the provider answered
(they stay WAITING, charged, never submitted: what the inspector's re-check and `recover` finish).
The inspector, the User page, the Overview's alerts and a bulk incident all have something real
to show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select

from rivya_core.domain import RivyaError, TaskStatus
from rivya_core.lifecycle import LifecycleService
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine
from rivya_core.validation import GenerationRequest

from .runner import run_scenario
from .scenarios import load_scenario

DEMO_TASKS = 1500
CRASHED_SUBMISSIONS = 4  # image tasks a dying submission worker leaves WAITING
CRASH_BEFORE_END_S = 600  # before the arrivals end: past an image's stuck threshold (5 min) at the end
CRASH_SPACING_S = 45.0
DEMO_SCENARIO = Path(__file__).resolve().parent.parent / "data" / "demo.toml"


def ensure_demo_data(url: str, progress: Callable[[float, str], None] | None = None, tasks: int = DEMO_TASKS) -> bool:
    """Seed `url` with a baseline run when it holds no tasks. True when it seeded."""
    engine = make_engine(url)
    try:
        if "ai_task" in inspect(engine).get_table_names():
            with engine.connect() as conn:
                if conn.scalar(select(func.count()).select_from(schema.ai_task)):
                    return False
    finally:
        engine.dispose()
    run_scenario(
        load_scenario(str(DEMO_SCENARIO)), url, tasks=tasks, progress=progress, processes=(dying_submission_worker,)
    )
    return True


class _WorkerDied(BaseException):
    """The submission worker's process ended inside the provider call (not an error the
    lifecycle handles: nothing after the call runs)."""


class _DyingProvider:
    def submit(self, task_ref, model, prompt, params):
        raise _WorkerDied(task_ref)


def dying_submission_worker(run: Any, count: int = CRASHED_SUBMISSIONS):
    """A SimPy process of the demo run: about CRASH_BEFORE_END_S before the arrivals end (the
    horizon, or the last of the run's arrivals at the scenario's rate), users submit image tasks
    through a second submission worker that dies between the charge and the provider's answer,
    one every CRASH_SPACING_S: each task stays WAITING and charged, as after a real crash, and
    nothing reaches the provider. On the run's own clock, so no row is dated before one written
    earlier; its draws come from a stream of its own, so the run's other draws do not move."""
    sc, env, pop = run.sc, run.env, run.population
    before = round(CRASH_BEFORE_END_S * sc.arrivals.rate_per_hour / 3600.0)
    while (
        env.now < sc.horizon_s - CRASH_BEFORE_END_S
        and not (run.max_tasks and pop.arrived >= run.max_tasks - before)
        and not pop.arrivals_done
    ):
        yield env.timeout(15.0)
    if pop.arrivals_done:
        return
    worker = LifecycleService(
        run.store,
        run.clock,
        {p: _DyingProvider() for p in run.catalog.providers()},
        run.catalog,
        sc.policy,
        run.farm.secrets,
        callbacks_enabled=sc.callbacks,
    )
    rng = run.streams.get("demo_crash")
    models = [m for m in pop.models["image"] if not any(r.required for r in m.references)]
    made = tries = 0
    while made < count and tries < 10 * count:
        tries += 1
        user = pop.user_ids[rng.randrange(len(pop.user_ids))]
        request = GenerationRequest(models[rng.randrange(len(models))].id, pop.prompts[rng.randrange(len(pop.prompts))])
        try:
            task = worker.submit(user, request)
        except _WorkerDied:
            made += 1
            pop.task_sources["crashed_worker"] += 1
            yield env.timeout(CRASH_SPACING_S)
            continue
        except RivyaError:
            continue  # refused at validation: the next user
        pop.task_sources["crashed_worker"] += 1  # refused for credits: a task all the same
        if task.status != TaskStatus.WAITING:
            continue  # the worker never reached the provider
