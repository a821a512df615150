"""Ledger: one account's balance over time and its entries; credit conservation across accounts."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._cache import cached_df
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_flows, show_table
from pages._source import enter_page, open_db
from pages._support import policy_in_force
from pages._text import plain
from rivya_core import audit
from rivya_core.domain import EntryType
from rivya_core.read import ledger_views as lv
from rivya_core.read.queries import find_accounts
from rivya_core.read.reports import credit_breakdown
from rivya_core.stores import db

PAGE_SIZE = 50
ENTRY_TYPES = [t.value for t in EntryType]

enter_page()
st.title("Ledger")
engine = open_db(["account", "credit_ledger"], need_rows="account")

account_tab, conservation_tab = st.tabs(["One account", "Conservation across accounts"])


def pick_account() -> int | None:
    query = st.text_input(
        "Find an account", placeholder="email, name or account id", value=st.query_params.get("user", "")
    )
    if query.strip():
        found = find_accounts(engine, query, limit=50)
        if not found:
            st.info(f"No account matches {plain(query)}.")
            return None
        options = {r["id"]: f"{r['email']} — {r['name']} (#{r['id']})" for r in found}
    else:
        busy = cached_df(lv.busiest_accounts, 50)
        options = {int(r.id): f"{r.email} — {r.name} (#{r.id}, {r.entries} entries)" for r in busy.itertuples()}
        st.caption("Most recently active accounts; type to search all of them.")
    return st.selectbox("Account", list(options), format_func=options.get)


with account_tab, show_errors():
    user_id = pick_account()
    ov = lv.account_overview(engine, user_id) if user_id is not None else None
    if ov is not None:
        show_flows(credit_breakdown(ov["totals"]), "Balance")
        st.caption(f"{ov['entries']:,} ledger rows; cached balance on the account: {ov['balance']:,}.")
        if ov["balance"] != ov["ledger_sum"]:
            st.error(f"Cached balance {ov['balance']:,} differs from the sum of the ledger rows {ov['ledger_sum']:,}.")

        series = cached_df(lv.balance_series, user_id, 2000)
        if series.empty:
            st.info("This account has no ledger rows yet.")
        else:
            fig = px.line(
                series,
                x="created_at",
                y="balance_after",
                line_shape="hv",
                markers=len(series) < 200,
                hover_data=["entry_type", "amount"],
                labels={"created_at": "time", "balance_after": "balance (credits)"},
                title=f"Balance over time (last {len(series):,} entries)",
            )
            st.plotly_chart(fig, width="stretch")

        st.subheader("Chat credits: reserved vs settled")
        chat = (
            cached_df(lv.chat_credits, user_id)
            if not db.missing_tables(engine, ["chat_session", "chat_message"])
            else None
        )
        if chat is None:
            st.caption("No chat tables in this database.")
        else:
            c = st.columns(4)
            c[0].metric("Chat reserved", f"{chat['reserved']:,}", help="Estimated before each turn")
            c[1].metric("Chat charged", f"{chat['charged']:,}", help="Actual usage of settled turns")
            c[2].metric("Chat refunded", f"{chat['refunded']:,}", help="Reserved minus charged, given back once")
            c[3].metric(
                "Open reservations",
                f"{chat['open_reservations']:,}",
                help=f"{chat['open_credits']:,} credits reserved for turns not settled yet",
            )

        st.subheader("Entries")
        kinds = st.multiselect("Entry types", ENTRY_TYPES, placeholder="all types")
        rows, total = cached_df(lv.ledger_page, user_id, 1, PAGE_SIZE, tuple(kinds) or None)
        pages = max(1, -(-total // PAGE_SIZE))
        if pages > 1:
            page = int(st.number_input(f"Page (of {pages}; {total:,} rows, newest first)", 1, pages, 1))
            rows, total = cached_df(lv.ledger_page, user_id, page, PAGE_SIZE, tuple(kinds) or None)
        show_table(
            with_task_links(rows),
            width="stretch",
            hide_index=True,
            column_order=[
                "id",
                "created_at",
                "entry_type",
                "amount",
                "balance_after",
                "task",
                "chat_message_id",
                "note",
            ],
            column_config={
                "task": TASK_LINK,
                "chat_message_id": st.column_config.NumberColumn("chat message", format="%d"),
            },
        )

with conservation_tab, show_errors():
    st.caption(
        "Every credit is a ledger row: grants − charges + refunds must equal the sum of balances, "
        "and each row's balance_after must be the running sum of its account."
    )
    cons = cached_df(audit.conservation, 50)
    # the row-level checks read the whole ledger: take them from the stored audit
    # (run now on a small database), not a fresh scan on every page load
    stored = cached_df(audit.current_audit, policy_in_force()[0])
    row_kinds = ("ledger_running_sum", "negative_balance")
    rows_report = (
        None
        if stored is None
        else audit.AuditReport(
            [f for f in stored.as_report().findings if f.kind in row_kinds],
            stored.judged_at,
            stored.policy,
            list(row_kinds),
        )
    )
    if stored is None:
        st.info(
            "The per-row balance checks come from the stored audit, and this large database has none yet: "
            "run it on the **Refund audit** page or with `python -m rivya_core audit --record`."
        )
    elif not stored.fresh:
        st.caption(f"Per-row balance checks from the audit of {stored.ran_at:%Y-%m-%d %H:%M}; rows were added since.")
    show_flows(credit_breakdown(cons["by_type"]), "Ledger sum")
    st.metric(
        "Sum of the accounts' balances",
        f"{cons['balances_total']:,}",
        delta=None
        if cons["balances_total"] == cons["ledger_total"]
        else f"{cons['balances_total'] - cons['ledger_total']:+,} vs ledger",
        delta_color="inverse",
    )
    if cons["ok"] and (rows_report is None or rows_report.ok):
        st.success("Conservation holds: the ledger sums to the balances and every running balance checks out.")
    else:
        st.error(
            f"Conservation is broken: ledger sum {cons['ledger_total']:,} vs balances "
            f"{cons['balances_total']:,}. The accounts and rows that break it are below (first 50 of each)."
        )
        if cons["broken_count"]:
            st.markdown(f"**{cons['broken_count']:,} account(s) whose balance is not the sum of their ledger rows**")
            show_table(pd.DataFrame(cons["broken_accounts"]), width="stretch", hide_index=True)
        if cons["ledger_users_without_account"]:
            st.markdown(
                "**Ledger rows for users with no account:** "
                + ", ".join(str(u) for u in cons["ledger_users_without_account"])
            )
        for finding in rows_report.findings if rows_report else []:
            st.markdown(f"**{finding.title}: {finding.count:,} row(s)**")
            show_table(pd.DataFrame(finding.rows), width="stretch", hide_index=True)
