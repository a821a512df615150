"""Demo data for a fresh dashboard: the baseline scenario, run once into an empty database."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, inspect, select

from rivya_core import schema
from rivya_core.db import make_engine

from .runner import run_scenario
from .scenarios import load_scenario

DEMO_TASKS = 1500


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
    run_scenario(load_scenario("baseline"), url, tasks=tasks, progress=progress)
    return True
