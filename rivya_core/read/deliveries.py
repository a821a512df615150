"""The webhook delivery log: every `provider_callback` row across tasks.

    delivery_log(bind, *, providers=(), outcomes=(), since=None, until=None, limit=50, offset=0) -> DeliveryPage
        The deliveries a filter matches, newest first (received_at, then id), one page of them with
        every stored field, whether each is parked (and claimed) and may be re-processed now
        (`rivya_core.support.reprocess`), the total and the count per outcome over the whole filter.
    delivery_providers(bind) -> list[str]        the providers that ever called back

Every text here came from outside: pages show it as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from .. import rules
from ..domain import CallbackOutcome
from ..stores.schema import ai_task, parked_callback, provider_callback
from .queries import Bind, _page, connect, naive_utc, rows

OUTCOMES = [o.value for o in CallbackOutcome]


@dataclass
class DeliveryPage:
    rows: list[dict[str, Any]]
    total: int
    counts: dict[str, int]  # outcome -> deliveries over the whole filter
    limit: int
    offset: int


def _filtered(q, providers, outcomes, since, until):
    c = provider_callback.c
    if providers:
        q = q.where(c.provider.in_([str(p) for p in providers]))
    if outcomes:
        q = q.where(c.outcome.in_([str(o) for o in outcomes]))
    if since is not None:
        q = q.where(c.received_at >= naive_utc(since))
    if until is not None:
        q = q.where(c.received_at < naive_utc(until))
    return q


def delivery_log(
    bind: Bind,
    *,
    providers: tuple[str, ...] = (),
    outcomes: tuple[str, ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> DeliveryPage:
    """See the module doc. The page reads the received-at index backwards; the counts are one grouped
    read over the filter."""
    limit, offset = _page(limit, offset)
    c = provider_callback.c
    page_q = _filtered(select(*provider_callback.c), providers, outcomes, since, until)
    page_q = page_q.order_by(c.received_at.desc(), c.id.desc()).limit(limit).offset(offset)
    count_q = _filtered(select(c.outcome, func.count()), providers, outcomes, since, until).group_by(c.outcome)
    with connect(bind) as conn:
        found = rows(conn.execute(page_q))
        counts = {str(o): int(n) for o, n in conn.execute(count_q)}
        ids = [r["id"] for r in found]
        parked = (
            {
                r.callback_id: r
                for r in conn.execute(
                    select(
                        parked_callback.c.callback_id,
                        parked_callback.c.claimed_task_id,
                        parked_callback.c.claimed_at,
                        parked_callback.c.task_ref,
                    ).where(parked_callback.c.callback_id.in_(ids))
                )
            }
            if ids
            else {}
        )
        waiting = {
            (r["provider"], r["upstream_task_id"])
            for r in found
            if r["upstream_task_id"] and r["outcome"] == CallbackOutcome.UNKNOWN_TASK
        }
        holders = _holders(conn, waiting)
    for r in found:
        p = parked.get(r["id"])
        holder = holders.get((r["provider"], r["upstream_task_id"]))
        r["parked"] = p is not None
        r["claimed_task_id"] = p.claimed_task_id if p is not None else None
        r["claimed_at"] = p.claimed_at if p is not None else None
        r["holder_task_id"] = holder
        facts = rules.ReprocessFacts(
            r["outcome"], p is not None, p is not None and p.claimed_task_id is not None, holder is not None
        )
        r["reprocessable"] = rules.reprocess_refusal(facts) is None and not facts.claimed
    ordered = {o: counts[o] for o in OUTCOMES if o in counts}
    ordered.update({o: n for o, n in sorted(counts.items()) if o not in ordered})
    return DeliveryPage(found, sum(counts.values()), ordered, limit, offset)


def _holders(conn: Any, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(provider, upstream id) -> the newest task holding it, for the given keys (the upstream-id index)."""
    if not keys:
        return {}
    t = ai_task.c
    q = (
        select(t.provider, t.upstream_task_id, func.max(t.id))
        .where(t.upstream_task_id.in_(sorted({u for _, u in keys})))
        .group_by(t.provider, t.upstream_task_id)
    )
    return {(p, u): int(i) for p, u, i in conn.execute(q) if (p, u) in keys}


def delivery_providers(bind: Bind) -> list[str]:
    with connect(bind) as conn:
        return sorted(str(p) for p in conn.scalars(select(provider_callback.c.provider).distinct()))
