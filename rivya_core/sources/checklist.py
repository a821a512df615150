"""The checklist on an imported database (rivya_core.read.diagnose calls these).

`unrecorded` answers a question about a fact the source never recorded with "Not recorded by
this source" (neither failed nor hidden); `source_item` answers, for one task, the findings only
an imported source can have (rivya_core.sources.findings); `source_grants_of` reads the grants
a task's derived ledger rows name.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from ..domain import EntryType, TaskStatus
from ..read.queries import Bind, connect, rows
from ..stores.schema import source_grant
from ..verdicts import Severity
from .facts import FACTS, NOT_RECORDED, SourceFacts
from .findings import CANCELED

# checklist item key -> (the fact it needs, its question)
ITEM_FACT = {
    "callbacks": ("callbacks", "Did the provider call back, and what was each callback's verdict?"),
    "polling": ("timeline", "What did polling and upstream re-checks find?"),
    "notification": ("notifications", "Was the user notified of the outcome?"),
}


def unrecorded(key: str, facts: SourceFacts, item: type) -> Any:
    """The checklist item `key` said "not recorded by this source", or None when the source has its fact."""
    fact, question = ITEM_FACT[key]
    if facts.has(fact):
        return None
    return item(
        key, question, f"{NOT_RECORDED[0].upper()}{NOT_RECORDED[1:]} ({facts.source}): {FACTS[fact]}.", Severity.INFO
    )


def source_grants_of(bind: Bind, ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The source_grant rows the task's derived ledger rows name (`credit/<id>`)."""
    refs: set[str] = set()
    for e in ledger:
        try:
            names = json.loads(e.get("derived_from") or "[]")
        except ValueError:
            continue
        refs.update(n.split("/", 1)[1] for n in names if isinstance(n, str) and n.startswith("credit/"))
    if not refs:
        return []
    with connect(bind) as conn:
        return rows(
            conn.execute(
                select(*source_grant.c).where(source_grant.c.external_ref.in_(sorted(refs))).order_by(source_grant.c.id)
            )
        )


def source_item(
    t: dict[str, Any], mine: list[dict[str, Any]], grants: list[dict[str, Any]], facts: SourceFacts, item: type
) -> Any:
    """Does the source's own record show a problem with this task's credits? (its findings, for one task)"""
    q = f"Does the source's own record ({facts.source}) show a problem with this task's credits?"
    said: list[str] = []
    bad: list[dict[str, Any]] = []
    consumes = [e for e in mine if e["entry_type"] == EntryType.CONSUME]
    refunds = [e for e in mine if e["entry_type"] == EntryType.REFUND]
    lost = [e for e in mine if e["entry_type"] == EntryType.EXPIRE and ":lost-refund:" in str(e["idempotency_key"])]
    if t["status"] == TaskStatus.FAILED and t["error_code"] == CANCELED and consumes and not refunds:
        said.append(f"canceled and not refunded: {-sum(e['amount'] for e in consumes)} credits kept")
        bad += consumes
    if lost:
        said.append(
            f"refunded onto a grant that had already expired: {-sum(e['amount'] for e in lost)} "
            "credits lost to the user"
        )
        bad += lost
    if len(refunds) > 1:
        said.append(f"refunded {len(refunds)} times")
        bad += refunds
    if t["status"] == TaskStatus.SUCCESS and not t["result_urls"]:
        said.append("success with no output")
    below = [g for g in grants if g["remaining_credits"] < 0]
    if below:
        said.append(
            "drew on a grant the source shows below zero ("
            + ", ".join(f"{g['external_ref']}: {g['remaining_credits']}" for g in below)
            + ")"
        )
        bad += below
    if not said:
        return item(
            "source",
            q,
            "No: none of the source's own findings (canceled not refunded, refund onto an "
            "expired grant, refunded twice, success with no output, grant below zero) applies.",
            Severity.OK,
            grants,
        )
    return item("source", q, "Yes: " + "; ".join(said) + ".", Severity.FAIL, bad or grants)
