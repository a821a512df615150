"""Backtest: the exact part against hand-computed figures, and the self-check on every shipped scenario."""

from __future__ import annotations

import json
import sqlite3

import pytest

from rivya_core.policy import BillingPolicy
from rivya_core.stores.db import open_reader
from simulations.__main__ import main
from simulations.backtest import backtest
from simulations.history import load_history
from simulations.runner import run_scenario
from simulations.scenarios import list_scenarios, load_scenario

POLICIES = "data/policies"


def _policy(tmp_path, name: str, body: str) -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'[policy]\nname = "{name}"\n{body}\n')
    return str(p)


def _run_backtest(capsys, *argv) -> tuple[int, dict]:
    code = main(["backtest", *argv, "--json", "--exact-only"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_known_policy_change_matches_the_hand_computed_figures(small_history, tmp_path, capsys):
    url, ids = small_history
    cheap = _policy(
        tmp_path,
        "half_price_refund_all",
        'price_multiplier = 0.5\nrefund_classes = ["user", "provider", "infrastructure"]',
    )
    code, rep = _run_backtest(capsys, "--db", url, "--policy", f"{POLICIES}/default.toml", "--policy", cheap)
    assert code == 0
    k = {name: (v["a"], v["b"]) for name, v in rep["exact"]["kpis"].items()}
    # default: charged 2 + 6 + 2, refund 2 (provider), chat reserve 2 settled at 1
    # half price: 1 + 3 + 1, and the refused lumen-pro (3) is now affordable; refunds 3 (user) + 1 (provider)
    assert k["charged"] == (10, 8)
    assert k["refunded"] == (2, 4)
    assert k["kept"] == (8, 4)
    assert k["chat_charged"] == (1, 1)
    assert k["revenue"] == (9, 5)
    assert k["failures_without_refund"] == (1, 0)
    assert k["insufficient_credit_rejections"] == (1, 0)
    assert k["rejections_avoided"] == (0, 1)
    by_model = {r["model"]: r for r in rep["exact"]["by_model"]}
    assert by_model["lumen-pro"]["refunded_diff"] == 3 and by_model["lumen-pro"]["charged_diff"] == 0
    assert by_model["lumen-flash"]["charged_diff"] == -2
    assert rep["self_check"]["ok"] is True


def test_a_dearer_policy_causes_rejections_through_the_ledger(small_history):
    url, _ = small_history
    engine = open_reader(url)
    try:
        h = load_history(engine)
    finally:
        engine.dispose()
    default = BillingPolicy()
    double = BillingPolicy(name="double", price_multiplier=2.0)
    rep = backtest(h, [default, double], default, "test")
    b = rep.results[1].kpis()
    # 10 credits: flash 4 (6 left), pro 12 refused, flash 4 (2 left) refunded (6), pro 12 refused
    assert (b["charged"], b["refunded"], b["insufficient_credit_rejections"], b["rejections_caused"]) == (8, 4, 2, 1)
    assert rep.results[1].balances[1] == 10 - 8 + 4 - 1


def test_self_check_fails_with_the_first_diverging_row_when_the_ledger_was_tampered(small_history, capsys):
    url, ids = small_history
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "update credit_ledger set amount = amount - 1, balance_after = balance_after - 1 "
            "where entry_type = 'refund'"
        )
    code, rep = _run_backtest(
        capsys, "--db", url, "--policy", f"{POLICIES}/default.toml", "--policy", f"{POLICIES}/no_refunds.toml"
    )
    assert code == 1
    first = rep["self_check"]["first_diverging_rows"][0]
    assert first["recorded"]["entry_type"] == "refund" and first["recorded"]["amount"] == 1
    assert first["replayed"]["amount"] == 2


def test_bad_arguments_are_one_line(small_history, capsys):
    url, _ = small_history
    assert main(["backtest", "--db", url, "--policy", f"{POLICIES}/default.toml"]) == 2
    assert (
        main(
            [
                "backtest",
                "--db",
                url,
                "--policy",
                f"{POLICIES}/default.toml",
                "--policy",
                f"{POLICIES}/default.toml",
                "--since",
                "yesterday",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_a_window_counts_only_its_tasks_and_still_checks_out(small_history, capsys):
    url, ids = small_history
    # tasks are created at 12:01, 12:02:30, 12:04, 12:05:30; the chat turn at 12:07
    code, rep = _run_backtest(
        capsys,
        "--db",
        url,
        "--since",
        "2026-01-01T12:03",
        "--until",
        "2026-01-01T12:06",
        "--policy",
        f"{POLICIES}/default.toml",
        "--policy",
        f"{POLICIES}/no_refunds.toml",
    )
    assert code == 0, rep["self_check"]
    assert rep["window"]["tasks"] == 2 and rep["window"]["chat_turns"] == 0
    assert rep["exact"]["kpis"]["charged"]["a"] == 2
    assert rep["exact"]["kpis"]["refunded"] == {**rep["exact"]["kpis"]["refunded"], "a": 2, "b": 0}


@pytest.mark.parametrize("scenario", [p.stem for p in list_scenarios()])
def test_self_check_on_every_shipped_scenario(scenario, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'run.db'}"
    run_scenario(load_scenario(scenario), url, tasks=250)
    code, rep = _run_backtest(
        capsys, "--db", url, "--policy", f"{POLICIES}/default.toml", "--policy", f"{POLICIES}/premium_prices.toml"
    )
    assert rep["self_check"]["ok"], rep["self_check"]["first_diverging_rows"]
    assert code == 0
    assert rep["self_check"]["rows_compared"] > 0


@pytest.mark.parametrize("scenario", ["credit_shortfall", "chaos"])
def test_self_check_on_postgresql(scenario, pg_url, capsys):
    run_scenario(load_scenario(scenario), pg_url, tasks=250)
    code, rep = _run_backtest(
        capsys, "--db", pg_url, "--policy", f"{POLICIES}/default.toml", "--policy", f"{POLICIES}/refund_everything.toml"
    )
    assert code == 0, rep["self_check"]["first_diverging_rows"]
    assert rep["exact"]["kpis"]["refunded"]["diff"] >= 0


def test_blocking_heavier_duplicates_blocks_only_warned_runs(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'chaos.db'}"
    run_scenario(load_scenario("chaos"), url, tasks=600)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        warned = conn.execute(
            "select count(distinct task_id) from task_event where kind = 'duplicate_warning'"
        ).fetchone()[0]
    block = _policy(tmp_path, "block", 'duplicate_runs = "block"')
    code, rep = _run_backtest(capsys, "--db", url, "--policy", f"{POLICIES}/default.toml", "--policy", block)
    assert code == 0 and warned > 0
    k = rep["exact"]["kpis"]
    # a run is blocked only where the history warned (a warned run whose running twin was itself blocked runs)
    assert 0 < k["duplicates_blocked"]["b"] <= warned and k["duplicates_blocked"]["a"] == 0
    assert k["tasks"]["diff"] == -k["duplicates_blocked"]["b"] and k["charged"]["diff"] < 0


def _write_skewed_history(url: str) -> None:
    """Two workers on one database whose clocks disagree: the second runs five minutes behind, so
    its ledger rows get later ids but earlier timestamps than rows written before them."""
    from datetime import datetime

    from rivya_core.catalog import default_catalog
    from rivya_core.clock import ManualClock
    from rivya_core.lifecycle import LifecycleService
    from rivya_core.policy import DEFAULT_POLICY
    from rivya_core.stores.sql import open_store
    from rivya_core.validation import GenerationRequest
    from tests.fakes import SECRET, FakeProvider

    store = open_store(url, create=True)
    catalog = default_catalog()
    providers = {name: FakeProvider(name) for name in catalog.providers()}
    ahead, behind = ManualClock(datetime(2026, 1, 1, 12, 10)), ManualClock(datetime(2026, 1, 1, 12, 5))
    a, b = (
        LifecycleService(store, clock, providers, catalog, DEFAULT_POLICY, secrets={n: [SECRET] for n in providers})
        for clock in (ahead, behind)
    )
    lumen = providers["lumen"]
    user = a.create_account("ada@example.com", "Ada", grant=20).id  # 12:10, balance 20
    flash = a.submit(user, GenerationRequest("lumen-flash", "first", {}))  # 12:10, 18
    pro = b.submit(user, GenerationRequest("lumen-pro", "second", {}))  # 12:05 (id after 12:10), 12
    ahead.advance(60)
    lumen.fail(flash.upstream_task_id, "model_error", "provider")
    a.recheck(flash.id)  # 12:11 refund 2, 14
    behind.advance(30)
    lumen.fail(pro.upstream_task_id, "content_policy_violation", "user")
    b.recheck(pro.id)  # 12:05:30, kept
    b.submit(user, GenerationRequest("lumen-pro", "third", {}))  # 12:05:30, 8
    b.submit(user, GenerationRequest("lumen-pro", "fourth", {}))  # 12:05:30, 2
    b.submit(user, GenerationRequest("lumen-pro", "fifth", {}))  # refused for credits (2 left)
    store.engine.dispose()


def test_self_check_passes_when_ledger_ids_and_timestamps_disagree(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'skewed.db'}"
    _write_skewed_history(url)
    with sqlite3.connect(tmp_path / "skewed.db") as conn:  # the history really is out of order
        ids = [r[0] for r in conn.execute("select id from credit_ledger order by created_at, id")]
    assert ids != sorted(ids)
    code, rep = _run_backtest(
        capsys, "--db", url, "--policy", f"{POLICIES}/default.toml", "--policy", f"{POLICIES}/refund_everything.toml"
    )
    assert rep["self_check"]["ok"], rep["self_check"]["first_diverging_rows"]
    assert code == 0
    k = rep["exact"]["kpis"]
    assert (k["charged"]["a"], k["refunded"]["a"], k["insufficient_credit_rejections"]["a"]) == (20, 2, 1)
    assert k["refunded"]["b"] == 2 + 6  # the content-policy failure is refunded too under B


def test_the_text_report_names_the_windows_dates(small_history, capsys):
    url, _ = small_history
    assert (
        main(
            [
                "backtest",
                "--db",
                url,
                "--policy",
                f"{POLICIES}/default.toml",
                "--policy",
                f"{POLICIES}/no_refunds.toml",
                "--exact-only",
            ]
        )
        == 0
    )
    head = capsys.readouterr().out.splitlines()[0]
    assert "start .. end" not in head
    # the small history: the grant at 12:00, the chat turn settled at 12:07:05
    assert "2026-01-01 12:00:00 to 2026-01-01 12:07:05 UTC (the whole history)" in head, head
    assert (
        main(
            [
                "backtest",
                "--db",
                url,
                "--policy",
                f"{POLICIES}/default.toml",
                "--policy",
                f"{POLICIES}/no_refunds.toml",
                "--exact-only",
                "--since",
                "2026-01-01T12:03",
            ]
        )
        == 0
    )
    head = capsys.readouterr().out.splitlines()[0]
    assert "from 2026-01-01 12:03:00 (the window's start) to 2026-01-01 12:07:05 UTC (the latest record)" in head, head


def test_where_clocks_agree_a_refusal_stays_at_its_moment(tmp_path):
    """Placing refusals by the balance they saw must not move them off their moment when the
    timestamps follow the ids: each lands among the rows written at its creation time."""
    from bisect import bisect_left, bisect_right
    from collections import defaultdict

    from simulations import backtest as bt

    url = f"sqlite:///{tmp_path / 'short.db'}"
    run_scenario(load_scenario("credit_shortfall"), url, tasks=600)
    engine = open_reader(url)
    try:
        h = load_history(engine)
    finally:
        engine.dispose()
    assert [r.at for r in h.ledger] == bt.reached(h.ledger)  # the clocks agree
    mine = defaultdict(list)
    for i, r in enumerate(h.ledger):
        mine[r.user_id].append(i)
    times = bt.reached(h.ledger)
    assert len(h.refused_for_credits) > 20
    for t in h.refused_for_credits:
        p = bt._refusal_position(h, times, mine[t.user_id], t)
        assert bisect_left(times, t.created) - 0.5 <= p <= bisect_right(times, t.created) - 0.5, t.id
