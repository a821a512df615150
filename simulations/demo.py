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
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, inspect, select

from rivya_core import schema
from rivya_core.clock import ManualClock
from rivya_core.db import make_engine
from rivya_core.domain import RivyaError, TaskStatus
from rivya_core.queries import latest_timestamp
from rivya_core.service import service_for_url
from rivya_core.validation import GenerationRequest

from .runner import run_scenario
from .scenarios import load_scenario

DEMO_TASKS = 1500
CRASHED_SUBMISSIONS = 4  # image tasks a dying submission worker leaves WAITING
CRASH_BEFORE_END_S = 480  # minutes before the end: past an image's stuck threshold (5 min)
DEMO_SCENARIO = Path(__file__).resolve().parent.parent / "data" / "demo.toml"


def ensure_demo_data(url: str, progress: Callable[[float, str], None] | None = None,
                     tasks: int = DEMO_TASKS) -> bool:
    """Seed `url` with a baseline run when it holds no tasks. True when it seeded."""
    engine = make_engine(url)
    try:
        if "ai_task" in inspect(engine).get_table_names():
            with engine.connect() as conn:
                if conn.scalar(select(func.count()).select_from(schema.ai_task)):
                    return False
    finally:
        engine.dispose()
    run_scenario(load_scenario(str(DEMO_SCENARIO)), url, tasks=tasks, progress=progress)
    crash_submissions(url)
    return True


class _WorkerDied(BaseException):
    """The submission worker's process ended inside the provider call (not an error the
    lifecycle handles: nothing after the call runs)."""


class _DyingProvider:
    def submit(self, task_ref, model, prompt, params):
        raise _WorkerDied(task_ref)


def crash_submissions(url: str, count: int = CRASHED_SUBMISSIONS) -> list[int]:
    """Users submit image tasks again (the prompts and models of the run's last image successes)
    to a worker that dies between the charge and the provider's answer: each task stays WAITING
    and charged, as after a real crash. Deterministic: the run's own rows decide everything.
    Returns the WAITING task ids."""
    engine = make_engine(url)
    try:
        t = schema.ai_task.c
        with engine.connect() as conn:
            end = latest_timestamp(conn)
            recent = conn.execute(select(t.user_id, t.model, t.prompt, t.params, t.provider).where(
                t.category == "image", t.status == TaskStatus.SUCCESS).order_by(t.id.desc()).limit(50)).all()
    finally:
        engine.dispose()
    if end is None:
        return []
    clock = ManualClock(end - timedelta(seconds=CRASH_BEFORE_END_S))
    svc = service_for_url(url, clock=clock, providers={row.provider: _DyingProvider() for row in recent})
    made = 0
    try:
        for row in recent:
            if made == count:
                break
            try:
                svc.submit(row.user_id, GenerationRequest(row.model, row.prompt, dict(row.params or {})))
            except _WorkerDied:
                made += 1
            except RivyaError:
                continue  # this one would not pass validation or the balance check: the next
            clock.advance(45.0)
        with svc.store.engine.connect() as conn:
            return list(conn.scalars(select(t.id).where(t.status == TaskStatus.WAITING).order_by(t.id)))
    finally:
        svc.store.engine.dispose()
