"""Chaos seeds: each fault kind on for some seeds and off for others, every
seed passes the audit and liveness, and a failure prints its replay command."""

from __future__ import annotations

from simulations.chaos import FAULT_KINDS, SeedResult, draw_faults, run_chaos
from tests.cli import run_main


def test_fault_draws_are_deterministic_and_switch_every_kind_on_and_off():
    draws = [draw_faults(s)[0] for s in range(40)]
    assert draws == [draw_faults(s)[0] for s in range(40)]
    for kind in FAULT_KINDS:
        on = sum(kind in d for d in draws)
        assert 0 < on < 40, kind


def test_a_few_chaos_seeds_hold_every_invariant():
    results = run_chaos(3, start=0, tasks=60, workers=0)  # in this process: the engine is tested in test_sweep
    assert [r.seed for r in results] == [0, 1, 2]
    assert all(r.ok for r in results), [r.render(60) for r in results if not r.ok]


def test_a_failed_seed_prints_rows_and_replay_command():
    bad = SeedResult(
        7,
        1,
        {"lost": 0.2},
        False,
        True,
        [{"kind": "double_refund", "message": "Double refund: 1", "rows": [{"task_id": 3}]}],
    )
    text = bad.render(50)
    assert "seed 7: FAILED" in text and "double_refund" in text and "{'task_id': 3}" in text
    assert "python -m simulations chaos --seeds 1 --start 7 --tasks 50" in text


def test_chaos_command_exit_status():
    ok = run_main("simulations", "chaos", "--seeds", "1", "--start", "5", "--tasks", "30", timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "zero violations" in ok.stdout
    bad = run_main("simulations", "chaos", "--seeds", "0", timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
