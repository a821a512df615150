"""Demo data for a fresh dashboard: data/demo.toml, run once into an empty database.

Five hours of a normal day, cut off thirty seconds after the last arrival so a live slice is
still running (videos generating, a dozen of them stuck past their model's threshold), with a
kinetica incident in the last hour and a half (its jobs fail, then hang): the inspector, the
User page, the Overview's alerts and a bulk incident all have something real to show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, inspect, select

from rivya_core import schema
from rivya_core.db import make_engine

from .runner import run_scenario
from .scenarios import load_scenario

DEMO_TASKS = 1500
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
    return True
