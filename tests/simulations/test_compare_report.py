"""`compare` says what each KPI counts, gives relative changes beside absolute ones, and explains
when rounding makes a change differ from the price change; the definitions are the library's."""

from __future__ import annotations

import json

import pytest

from simulations.__main__ import main

PREMIUM = [
    "compare",
    "baseline",
    "--policy",
    "data/policies/default.toml",
    "--policy",
    "data/policies/premium_prices.toml",
    "--replications",
    "2",
    "--tasks",
    "80",
    "--workers",
    "0",
]


@pytest.fixture(scope="module")
def premium(tmp_path_factory):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*PREMIUM, "--json"]) == 0
    return json.loads(out.getvalue())


def test_each_kpi_has_its_relative_change_and_its_one_line_definition(premium):
    from simulations import kpis

    for row in premium["table"]:
        assert row["meaning"] == kpis.meaning(row["kpi"]) and "\n" not in row["meaning"]
        if row["policy_a"]:
            assert row["rel"] == pytest.approx(row["diff"] / abs(row["policy_a"]))
    rev = next(r for r in premium["table"] if r["kpi"] == "revenue")
    assert rev["rel_ci_low"] <= rev["rel"] <= rev["rel_ci_high"]


def test_a_price_change_that_rounding_bends_is_explained(premium):
    notes = " ".join(premium["notes"])
    rev = next(r for r in premium["table"] if r["kpi"] == "revenue")
    assert "1.25" in notes and "+25.0%" in notes
    assert "rounded up to whole credits" in notes
    assert "lumen-flash 2 → 3 (+50.0%)" in notes and "lumen-pro 6 → 8 (+33.3%)" in notes
    assert f"{100 * rev['rel']:+.1f}%" in notes  # the revenue's actual change, named
    assert "chat" in notes  # token-priced chat is not scaled by the multiplier


def test_the_text_report_shows_changes_definitions_and_the_note(capsys):
    assert main(PREMIUM) == 0
    out = capsys.readouterr().out
    assert "change" in out.splitlines()[1] and "%" in out  # a relative column beside diff (b-a)
    assert "failures without refund: tasks charged, then failed" in out
    assert "rounded up to whole credits" in out


def test_policies_with_the_same_prices_get_no_price_note(capsys):
    assert (
        main(
            [
                "compare",
                "baseline",
                "--policy",
                "data/policies/default.toml",
                "--policy",
                "data/policies/no_refunds.toml",
                "--replications",
                "2",
                "--tasks",
                "40",
                "--workers",
                "0",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["notes"] == []


def test_sweep_backtest_and_timing_take_their_definitions_from_one_place():
    from simulations import backtest, kpis, sweep, timing

    assert all(label == kpis.label(k) for k, label in sweep.KPIS)
    assert backtest.KPI_HELP == {k: kpis.meaning(k) for k in backtest.EXACT_KPIS}
    assert timing.TIMING_KPIS == {k: kpis.meaning(k) for k in timing.TIMING_KPIS}
    assert kpis.meaning("failures_without_refund") == backtest.KPI_HELP["failures_without_refund"]
