"""Refund audit: every rivya_core.audit finding grouped by kind, with counts, the rows behind each and CSV."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._access import operator_only
from pages._cache import cached_df
from pages._links import TASK_LINK, with_task_links
from pages._render import show_errors, show_table
from pages._source import enter_page, open_db
from pages._support import policy_in_force, record_audit_now
from pages._text import plain
from rivya_core import audit, audit_checks
from rivya_core.read import reports
from rivya_core.stores.schema import CONTRACT_TABLES

ROW_CAP = 200
# Money findings first, in the order a support person reads them.
MONEY_KINDS = [
    "failed_after_charge_without_refund",
    "double_refund",
    "refund_on_success",
    "refund_not_due",
    "refund_exceeds_charge",
    "chat_reserve_not_settled",
    "chat_overcharge",
    "chat_refund_mismatch",
    "charged_twice",
    "consume_without_task",
]


def csv(rows: pd.DataFrame) -> bytes:
    return rows.to_csv(index=False).encode("utf-8")


enter_page()
st.title("Refund audit")
st.caption(
    "Every invariant of the lifecycle checked in SQL over the whole database; "
    f"each finding shows its exact count and up to {ROW_CAP} of the rows that prove it."
)
engine = open_db(list(CONTRACT_TABLES))

with show_errors():
    policy, policy_source = policy_in_force()
    if operator_only("Running and storing the audit") and st.button(
        "Run the audit now",
        help="Checks every invariant over the whole database and stores the "
        "result; on millions of rows this takes seconds",
    ):
        with st.spinner("Running the audit over the whole database…"):
            try:
                record_audit_now(policy, ROW_CAP)
            except audit.AuditNotRecorded as exc:  # one message; the stored result below still shows
                st.error(f"{plain(exc.message)} ({plain(exc.code)})")
        st.cache_data.clear()
    stored = cached_df(audit.current_audit, policy, row_cap=ROW_CAP)
    if stored is None:
        st.info(
            "No stored audit for this policy yet. On a database this size it takes seconds: "
            "an operator presses **Run the audit now** (or runs `python -m rivya_core audit --record`)."
        )
        st.stop()
    report = stored.as_report()
    st.caption(
        reports.audit_provenance(
            stored.stored, stored.ran_at, stored.stored_by, stored.judged_at, stored.duration_s, plain
        )
        + ("" if stored.fresh else " **Rows were added since**: run it again for the latest figures.")
    )
    counts = report.counts()
    money = {k: counts.get(k, 0) for k in MONEY_KINDS if k in counts}
    c = st.columns(3)
    c[0].metric("Findings", f"{report.total:,}")
    c[1].metric("Money findings", f"{sum(money.values()):,}")
    c[2].metric("Checks run", f"{len(report.checked)}")
    st.info(
        f"**Policy in force:** {plain(policy_source)} ({plain(report.policy)}: refunds "
        f"{', '.join(sorted(policy.refund_classes)) or 'no'} failures). Ages judged at "
        f"{report.now:%Y-%m-%d %H:%M:%S} UTC ({plain(report.now_why or 'the moment the audit judged at')})."
    )
    if report.ok:
        st.success("No finding: every refund, charge and notification checks out.")

    table = pd.DataFrame(
        [
            {"kind": audit_checks.AUDIT_KINDS.get(k, k), "code": k, "rows": n, "money": k in MONEY_KINDS}
            for k, n in counts.items()
        ]
    )
    if not table.empty:
        table = table.sort_values(["rows", "money"], ascending=False)
        show_table(
            table, width="stretch", hide_index=True, column_config={"money": st.column_config.CheckboxColumn("money")}
        )

    if report.findings:
        everything = pd.concat([pd.DataFrame(f.rows).assign(kind=f.kind) for f in report.findings], ignore_index=True)
        st.download_button(
            "Download every finding's rows (CSV)", csv(everything), "audit_findings.csv", "text/csv", key="dl_all"
        )
    order = {k: i for i, k in enumerate(MONEY_KINDS)}
    for finding in sorted(report.findings, key=lambda f: (order.get(f.kind, len(order)), -f.count)):
        with st.expander(f"{finding.title} — {finding.count:,}", expanded=finding.kind in MONEY_KINDS):
            rows = pd.DataFrame(finding.rows)
            if finding.count > len(rows):
                st.caption(f"Showing the first {len(rows):,} of {finding.count:,} rows.")
            if "task_id" in rows.columns:
                show_table(
                    with_task_links(rows),
                    width="stretch",
                    hide_index=True,
                    column_order=["task", *rows.columns],
                    column_config={"task": TASK_LINK},
                )
            else:
                show_table(rows, width="stretch", hide_index=True)
            st.download_button(
                "Download these rows (CSV)",
                csv(rows),
                f"audit_{finding.kind}.csv",
                "text/csv",
                key=f"dl_{finding.kind}",
            )
