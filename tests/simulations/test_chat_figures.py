""" "Chat charged" means one thing everywhere: what users were finally charged for their chat turns
(reservations plus any overrun charge, less the unused part refunded), the sum of the messages'
charged_credits once every turn settled. Reservations are a separate figure."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from rivya_core import credits
from rivya_core.audit import ledger_sums
from rivya_core.read import reports
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine
from simulations.runner import run_scenario
from simulations.scenarios import load_scenario


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('chat') / 'chat.db'}"
    summary = run_scenario(load_scenario("chat_heavy"), url, tasks=150)
    engine = make_engine(url)
    yield summary, engine, url
    engine.dispose()


def test_the_summary_reports_what_users_were_finally_charged(chat_run):
    summary, engine, _ = chat_run
    with engine.connect() as conn:
        final = conn.scalar(select(func.coalesce(func.sum(schema.chat_message.c.charged_credits), 0)))
        reserved = -conn.scalar(
            select(func.coalesce(func.sum(schema.credit_ledger.c.amount), 0)).where(
                schema.credit_ledger.c.entry_type == "chat_reserve"
            )
        )
    assert summary.ok
    assert 0 < final < reserved  # the run has turns that used less than they reserved
    c = summary.credits
    assert c["chat_charged"] == final
    assert c["chat_reserved"] == reserved
    assert c["chat_reserved"] + c["chat_overrun"] - c["chat_refunded"] == c["chat_charged"]
    assert c["net"] == c["charged"] - c["refunded"] + c["chat_charged"]
    text = summary.render_text()
    assert f"chat charged {final}" in text and f"reserved {reserved}" in text


def test_reports_and_the_ledger_agree(chat_run):
    summary, engine, _ = chat_run
    figures = credits.chat_figures(ledger_sums(engine))
    assert figures.charged == summary.credits["chat_charged"]
    assert figures.reserved == summary.credits["chat_reserved"]
    totals = reports.credit_totals(engine)
    assert totals["chat_charged"] == figures.charged
    assert totals["chat_reserved"] == figures.reserved
