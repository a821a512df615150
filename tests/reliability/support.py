"""Shared pieces of the reliability tests: a provider whose truth is a hash,
the DESIGN.md invariants checked in Python over a Snapshot, and the audit run
on a snapshot loaded into SQLite."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rivya_core.audit import audit
from rivya_core.db import snapshot_to_engine
from rivya_core.domain import INSUFFICIENT_CREDITS, TaskStatus
from rivya_core.policy import DEFAULT_POLICY, BillingPolicy
from rivya_core.ports import Snapshot, UpstreamStatus

TERMINAL = {TaskStatus.SUCCESS.value, TaskStatus.FAILED.value}
OUTCOME_KIND = {"SUCCESS": "generation_success", "FAILED": "generation_failed"}


def upstream_truth(upstream_id: str) -> UpstreamStatus:
    """The same final answer for an upstream id in every process."""
    h = int.from_bytes(hashlib.sha256(upstream_id.encode()).digest()[:4], "big") % 100
    if h < 60:
        return UpstreamStatus("succeeded", (f"https://cdn.example/{upstream_id}.png",))
    if h < 85:
        return UpstreamStatus("failed", (), "model_error", "the model failed", "provider")
    if h < 95:
        return UpstreamStatus("failed", (), "content_policy", "prompt refused", "user")
    return UpstreamStatus("failed", (), "gpu_lost", "worker lost", "infrastructure")


@dataclass
class HashProvider:
    """Deterministic provider: the upstream id is derived from the task ref, and
    its status is `upstream_truth`, so any process can answer for any job."""

    name: str

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        return f"{self.name}-{task_ref}"

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        if not upstream_task_id.startswith(f"{self.name}-task-"):
            return UpstreamStatus("unknown")
        return upstream_truth(upstream_task_id)

    def find(self, task_ref: str) -> str | None:
        return f"{self.name}-{task_ref}"


def invariant_violations(snap: Snapshot, policy: BillingPolicy = DEFAULT_POLICY) -> list[str]:
    """Every DESIGN.md invariant over the rows, in plain Python: [] when all hold."""
    bad: list[str] = []
    running: dict[int, int] = defaultdict(int)
    for e in sorted(snap.ledger, key=lambda e: e.id):
        running[e.user_id] += e.amount
        if e.amount == 0:
            bad.append(f"ledger {e.id}: amount 0")
        if e.balance_after != running[e.user_id]:
            bad.append(f"ledger {e.id}: balance_after {e.balance_after} != running sum {running[e.user_id]}")
        if e.balance_after < 0:
            bad.append(f"ledger {e.id}: negative balance_after")
    for a in snap.accounts:
        if a.balance != running[a.id]:
            bad.append(f"account {a.id}: balance {a.balance} != ledger sum {running[a.id]}")
    if sum(e.amount for e in snap.ledger) != sum(a.balance for a in snap.accounts):
        bad.append("conservation: ledger total != sum of balances")
    by_task: dict[int, Counter] = defaultdict(Counter)
    amounts: dict[tuple[int, str], int] = defaultdict(int)
    for e in snap.ledger:
        if e.task_id is not None:
            by_task[e.task_id][e.entry_type] += 1
            amounts[e.task_id, e.entry_type] += e.amount
    notes: dict[int, list[str]] = defaultdict(list)
    for n in snap.notifications:
        if n.task_id is not None:
            notes[n.task_id].append(str(n.kind))
    terminal_events = Counter(ev.task_id for ev in snap.events if ev.kind in ("succeeded", "failed"))
    for t in snap.tasks:
        c = by_task[t.id]
        where = f"task {t.id} ({t.status}, {t.error_code}, {t.failure_class})"
        if c["consume"] > 1:
            bad.append(f"{where}: charged {c['consume']} times")
        if c["refund"] > 1:
            bad.append(f"{where}: refunded {c['refund']} times")
        if amounts[t.id, "refund"] > -amounts[t.id, "consume"]:
            bad.append(f"{where}: refund exceeds charge")
        if t.upstream_task_id and c["consume"] != 1:
            bad.append(f"{where}: upstream id without exactly one charge")
        if t.error_code == INSUFFICIENT_CREDITS and (c["consume"] or t.upstream_task_id):
            bad.append(f"{where}: failed for credits yet charged or submitted")
        if t.status == "SUCCESS" and (c["refund"] or not t.result_urls):
            bad.append(f"{where}: success refunded or without URLs")
        if t.status == "FAILED" and not t.error_code:
            bad.append(f"{where}: failed without an error code")
        if (t.status == "FAILED" and c["consume"] and policy.refunds(t.failure_class) and c["refund"] != 1):
            bad.append(f"{where}: reversible failure after charge not refunded exactly once")
        if t.status in TERMINAL:
            want = "insufficient_credits" if t.error_code == INSUFFICIENT_CREDITS else OUTCOME_KIND[t.status]
            if notes[t.id] != [want]:
                bad.append(f"{where}: notifications {notes[t.id]} instead of [{want}]")
            if terminal_events[t.id] != 1:
                bad.append(f"{where}: {terminal_events[t.id]} terminal transitions")
        elif notes[t.id] or terminal_events[t.id]:
            bad.append(f"{where}: active yet notified or finished")
    for m in snap.messages:
        if m.charged_credits is not None and m.charged_credits > m.reserved_credits and not policy.chat_allow_overrun:
            bad.append(f"chat message {m.id}: charged more than reserved")
    return bad


def audit_snapshot(snap: Snapshot, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None):
    """rivya_core.audit.audit over the snapshot loaded into in-memory SQLite."""
    engine = snapshot_to_engine(snap)
    try:
        return audit(engine, policy, now)
    finally:
        engine.dispose()
