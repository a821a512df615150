"""Which facts a contract database's source recorded.

A database this project's service wrote records everything. One imported from a product's
production database records only what that source has: the ShipAny template keeps no provider
callbacks, no notifications, no timeline beyond a task's created/submitted/finished times and no
chat billing. Whatever is not recorded is not a violation: the audit, the checklist and the
pages say "not recorded by this source" for it instead of failing or hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect, select

from ..read.queries import Bind, connect
from ..stores.schema import data_source

NOT_RECORDED = "not recorded by this source"

# The facts a source may lack, and what each means.
FACTS: dict[str, str] = {
    "callbacks": "provider callbacks (webhook deliveries)",
    "notifications": "the user's outcome notifications",
    "timeline": "a task's timeline beyond its created, submitted and finished times",
    "chat_billing": "chat billing (reservations, charges and refunds of chat turns)",
}

# Audit kinds that judge a fact a source may not have.
AUDIT_NEEDS: dict[str, str] = {
    "notification_missing": "notifications",
    "notification_wrong_kind": "notifications",
    "notification_duplicate": "notifications",
    "multiple_terminal_events": "timeline",
    "chat_reserve_not_settled": "chat_billing",
    "chat_overcharge": "chat_billing",
    "chat_refund_mismatch": "chat_billing",
}


@dataclass(frozen=True)
class SourceFacts:
    """`source`: the kind of source an imported database came from (None: written by this
    project); `not_recorded`: the facts of FACTS it lacks."""

    source: str | None = None
    location: str | None = None
    not_recorded: frozenset[str] = frozenset()

    @property
    def imported(self) -> bool:
        return self.source is not None

    def has(self, fact: str) -> bool:
        return fact not in self.not_recorded

    def audit_kind_recorded(self, kind: str) -> bool:
        need = AUDIT_NEEDS.get(kind)
        return need is None or self.has(need)

    def describe(self, fact: str) -> str:
        """What to say for a fact: empty when it is recorded."""
        return "" if self.has(fact) else f"{FACTS.get(fact, fact)}: {NOT_RECORDED} ({self.source})"


NATIVE = SourceFacts()


def source_facts(bind: Bind) -> SourceFacts:
    """The facts recorded in the database at `bind` (read-only; a database without the
    data_source table, or with no row in it, records everything)."""
    with connect(bind) as conn:
        if not inspect(conn).has_table(data_source.name):
            return NATIVE
        row = conn.execute(
            select(data_source.c.key, data_source.c.source, data_source.c.not_recorded)
            .order_by(data_source.c.key)
            .limit(1)
        ).first()
    if row is None:
        return NATIVE
    missing = row.not_recorded
    if isinstance(missing, str):
        import json

        missing = json.loads(missing)
    return SourceFacts(row.key, row.source, frozenset(str(f) for f in missing or ()))


def external_refs(bind: Bind, kind: str, ids: list[int]) -> dict[int, str]:
    """Our id -> the source's original id, for tasks (`kind` "task") or accounts ("user"); ids
    with none (rows this project wrote, or a database older than the column) are left out."""
    from ..stores.schema import account, ai_task

    table = {"task": ai_task, "user": account}[kind]
    wanted = sorted({int(i) for i in ids if i is not None})
    out: dict[int, str] = {}
    with connect(bind) as conn:
        if "external_ref" not in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            return out
        for start in range(0, len(wanted), 1000):
            out.update(
                {
                    int(i): str(ref)
                    for i, ref in conn.execute(
                        select(table.c.id, table.c.external_ref).where(
                            table.c.id.in_(wanted[start : start + 1000]), table.c.external_ref.is_not(None)
                        )
                    )
                }
            )
    return out
