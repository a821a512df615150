"""Helpers for the simulation tests: small runs into temporary SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from simulations.runner import run_scenario
from simulations.scenarios import load_scenario


@pytest.fixture
def run_small(tmp_path):
    def run(name: str, tasks: int = 150, seed: int | None = None, db: str = "run.db", scenario=None):
        path = tmp_path / db
        summary = run_scenario(scenario or load_scenario(name), f"sqlite:///{path}", tasks=tasks, seed=seed)
        return summary, path

    return run


def rows(path, sql: str, *args):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def dump(path) -> list[str]:
    """The SQLite file's rows as SQL statements (iterdump), to compare before and after."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()
