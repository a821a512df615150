"""The Python invariant checker and the SQL audit agree, kind by kind, on every chaos seed
the suite runs (test_chaos's seeds) and on damaged copies of each seed's database.
(The Hypothesis stateful model makes the same check on every run it explores.)"""

from __future__ import annotations

import pytest

from rivya_core.audit import audit
from rivya_core.read.queries import latest_timestamp
from rivya_core.stores.db import make_engine
from rivya_core.stores.sql import SqlStore
from simulations.chaos import chaos_scenario, draw_faults
from simulations.runner import run_scenario
from simulations.scenarios import load_scenario

from .support import audit_snapshot, corruptions, differential, violations_by_kind


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_checker_and_audit_agree_on_each_chaos_seed(seed, tmp_path):
    faults, run_seed = draw_faults(seed)
    scenario = chaos_scenario(load_scenario("chaos"), faults)
    url = f"sqlite:///{tmp_path / 'run.db'}"
    run_scenario(scenario, url, seed=run_seed, tasks=60)
    engine = make_engine(url)
    try:
        snap = SqlStore(engine).snapshot()
        now = latest_timestamp(engine)
        report = audit(engine, scenario.policy, now)
    finally:
        engine.dispose()
    assert report.ok and violations_by_kind(snap, scenario.policy, now) == {}
    damaged = corruptions(snap)
    assert len(damaged) >= 4  # a chaos run has refunds, deliveries and kept failures to damage
    for damage, bad in damaged:
        found = audit_snapshot(bad, scenario.policy, now)
        assert not found.ok, damage
        assert differential(bad, found, scenario.policy, now) == {}, damage
