"""Shared pieces of the reliability tests: a provider whose truth is a hash,
the DESIGN.md invariants checked in Python over a Snapshot (by the audit's kinds,
decided with rivya_core.rules), and the audit run on a snapshot loaded into SQLite:
`differential` says where the two disagree."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rivya_core import rules
from rivya_core.audit import CHAT_SETTLE_GRACE_S, audit
from rivya_core.domain import INSUFFICIENT_CREDITS, ChatStatus, EntryType, TaskStatus
from rivya_core.policy import DEFAULT_POLICY, BillingPolicy
from rivya_core.ports import Snapshot, UpstreamStatus
from rivya_core.stores.rows import snapshot_to_engine

TERMINAL = {TaskStatus.SUCCESS.value, TaskStatus.FAILED.value}
CHAT_TYPES = {EntryType.CHAT_RESERVE, EntryType.CHAT_CHARGE, EntryType.CHAT_REFUND}


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


def violations_by_kind(
    snap: Snapshot, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None
) -> dict[str, list[str]]:
    """Every DESIGN.md invariant over the rows, in plain Python, decided by `rivya_core.rules`:
    the violations found, keyed by the audit kind that checks the same invariant in SQL (kinds
    the audit has no query for are prefixed `py_`). `now` judges ages (stuck tasks, open chat
    reservations); without it those are not judged."""
    bad: dict[str, list[str]] = defaultdict(list)
    running: dict[int, int] = defaultdict(int)
    for e in sorted(snap.ledger, key=lambda e: e.id):
        running[e.user_id] += e.amount
        if e.amount == 0:
            bad["py_amount_zero"].append(f"ledger {e.id}: amount 0")
        if e.balance_after != running[e.user_id]:
            bad["ledger_running_sum"].append(
                f"ledger {e.id}: balance_after {e.balance_after} != running sum {running[e.user_id]}"
            )
        if e.balance_after < 0:
            bad["negative_balance"].append(f"ledger {e.id}: negative balance_after")
    for a in snap.accounts:
        if a.balance != running[a.id]:
            bad["balance_mismatch"].append(f"account {a.id}: balance {a.balance} != ledger sum {running[a.id]}")
    if rules.credit_flows(_sums(snap.ledger)).balance != sum(a.balance for a in snap.accounts):
        bad["py_conservation"].append("conservation: ledger total != sum of balances")
    tasks = {t.id: t for t in snap.tasks}
    by_task: dict[int, Counter] = defaultdict(Counter)
    amounts: dict[tuple[int, str], int] = defaultdict(int)
    for e in snap.ledger:
        if e.task_id is not None:
            by_task[e.task_id][e.entry_type] += 1
            amounts[e.task_id, e.entry_type] += e.amount
        if e.entry_type == EntryType.CONSUME and tasks.get(e.task_id) is None:
            bad["consume_without_task"].append(f"ledger {e.id}: a charge without a task")
        t = tasks.get(e.task_id)
        if e.entry_type == EntryType.CONSUME and t is not None and t.submitted_at and e.created_at > t.submitted_at:
            bad["charged_after_submit"].append(f"task {t.id}: charged after submission")
        if (
            e.entry_type == EntryType.REFUND
            and t is not None
            and t.status != TaskStatus.SUCCESS
            and not rules.refund_allowed(t.status, t.failure_class, e.support, policy, t.rerun_of is not None)
        ):
            bad["refund_not_due"].append(f"ledger {e.id}: refund of task {t.id} ({t.status}, {t.failure_class})")
    support_refunded = {e.task_id for e in snap.ledger if e.entry_type == EntryType.REFUND and e.support}
    notes: dict[int, list[str]] = defaultdict(list)
    for n in snap.notifications:
        if n.task_id is not None:
            notes[n.task_id].append(str(n.kind))
    terminal_events = Counter(ev.task_id for ev in snap.events if ev.kind in ("succeeded", "failed"))
    for tid, n in terminal_events.items():
        if n > 1:
            bad["multiple_terminal_events"].append(f"task {tid}: {n} terminal transitions")
    for t in snap.tasks:
        c = by_task[t.id]
        where = f"task {t.id} ({t.status}, {t.error_code}, {t.failure_class})"
        if c[EntryType.CONSUME] > 1:
            bad["charged_twice"].append(f"{where}: charged {c['consume']} times")
        if c[EntryType.REFUND] > 1:
            bad["double_refund"].append(f"{where}: refunded {c['refund']} times")
        if c[EntryType.REFUND] and amounts[t.id, EntryType.REFUND] > -amounts[t.id, EntryType.CONSUME]:
            bad["refund_exceeds_charge"].append(f"{where}: refund exceeds charge")
        if t.upstream_task_id and not c[EntryType.CONSUME]:
            bad["upstream_without_charge"].append(f"{where}: upstream id without a charge")
        if t.error_code == INSUFFICIENT_CREDITS and (c[EntryType.CONSUME] or t.upstream_task_id):
            bad["credit_failure_inconsistent"].append(f"{where}: failed for credits yet charged or submitted")
        courtesy = t.rerun_of is not None and t.id in support_refunded
        if t.status == TaskStatus.SUCCESS and c[EntryType.REFUND] and not courtesy:
            bad["refund_on_success"].append(f"{where}: delivered and refunded")
        if t.status == TaskStatus.SUCCESS and not t.result_urls:
            bad["success_without_urls"].append(f"{where}: success without URLs")
        if t.status == TaskStatus.FAILED and not t.error_code:
            bad["failed_without_error_code"].append(f"{where}: failed without an error code")
        facts = rules.RefundFacts(t.status, t.failure_class, bool(c[EntryType.CONSUME]), bool(c[EntryType.REFUND]))
        if rules.refund_due(facts, policy):
            bad["failed_after_charge_without_refund"].append(f"{where}: refund due, not refunded")
        want = rules.outcome_notification(t.status, t.error_code)
        if want is not None:
            got = notes[t.id]
            if not got:
                bad["notification_missing"].append(f"{where}: no notification, {want} due")
            if any(k != want for k in got):
                bad["notification_wrong_kind"].append(f"{where}: notifications {got} instead of [{want}]")
            if len(got) > 1 and got.count(want) > 1:
                bad["notification_duplicate"].append(f"{where}: {got.count(want)} {want} notifications")
            if terminal_events[t.id] != 1:
                bad["py_terminal_event"].append(f"{where}: {terminal_events[t.id]} terminal transitions")
        elif notes[t.id] or terminal_events[t.id]:
            bad["py_active_yet_finished"].append(f"{where}: active yet notified or finished")
        elif now is not None and (now - (t.submitted_at or t.created_at)).total_seconds() > policy.timeout_for(
            t.category
        ):
            bad["stuck_past_timeout"].append(f"{where}: past the timeout")
    chat = {
        m.id: [e for e in snap.ledger if e.chat_message_id == m.id and e.entry_type in CHAT_TYPES]
        for m in snap.messages
    }
    for m in snap.messages:
        if m.charged_credits is not None and m.charged_credits > m.reserved_credits and not policy.chat_allow_overrun:
            bad["chat_overcharge"].append(f"chat message {m.id}: charged more than reserved")
        if m.status == ChatStatus.RESERVED:
            if now is not None and (now - m.created_at).total_seconds() > CHAT_SETTLE_GRACE_S:
                bad["chat_reserve_not_settled"].append(f"chat message {m.id}: reservation still open")
            continue
        net = sum(e.amount for e in chat[m.id])
        refunds = sum(e.entry_type == EntryType.CHAT_REFUND for e in chat[m.id])
        if net != -(m.charged_credits or 0) or refunds > 1:
            bad["chat_refund_mismatch"].append(f"chat message {m.id}: ledger net {net}, charged {m.charged_credits}")
    return dict(bad)


def invariant_violations(snap: Snapshot, policy: BillingPolicy = DEFAULT_POLICY) -> list[str]:
    """violations_by_kind as one list: [] when every invariant holds."""
    return [v for found in violations_by_kind(snap, policy).values() for v in found]


def _sums(ledger) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for e in ledger:
        sums[e.entry_type] += e.amount
    return sums


def differential(snap: Snapshot, report, policy: BillingPolicy, now: datetime) -> dict[str, tuple[bool, bool]]:
    """The audit kinds on which the Python checker and the SQL audit disagree: kind -> (python, sql)."""
    py = violations_by_kind(snap, policy, now)
    sql = report.counts()
    return {k: (k in py, sql[k] > 0) for k in sql if (k in py) != (sql[k] > 0)}


def audit_snapshot(snap: Snapshot, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None):
    """rivya_core.audit.audit over the snapshot loaded into in-memory SQLite."""
    engine = snapshot_to_engine(snap)
    try:
        return audit(engine, policy, now)
    finally:
        engine.dispose()


def corruptions(snap: Snapshot) -> list[tuple[str, Snapshot]]:
    """Copies of a healthy snapshot, each with one kind of damage the checkers must both see:
    a lost notification, a repeated refund, a lost refund, a failed task without its code, a
    refund the rules do not allow. Only the damage the snapshot has material for is made."""
    out: list[tuple[str, Snapshot]] = []
    ledger_ids = max((e.id for e in snap.ledger), default=0)
    terminal = [t for t in snap.tasks if t.status in TERMINAL]
    noted = {n.task_id for n in snap.notifications}
    victim = next((t for t in terminal if t.id in noted), None)
    if victim is not None:
        s = copy.deepcopy(snap)
        s.notifications = [n for n in s.notifications if n.task_id != victim.id]
        out.append(("notification lost", s))
    refund = next((e for e in snap.ledger if e.entry_type == EntryType.REFUND), None)
    if refund is not None:
        s = copy.deepcopy(snap)
        s.ledger.append(
            dataclasses.replace(refund, id=ledger_ids + 1, idempotency_key="again:" + refund.idempotency_key)
        )
        out.append(("refund repeated", s))
        s = copy.deepcopy(snap)
        s.ledger = [e for e in s.ledger if e.id != refund.id]
        out.append(("refund lost", s))
    success = next((t for t in snap.tasks if t.status == TaskStatus.SUCCESS), None)
    if success is not None:
        s = copy.deepcopy(snap)
        t = next(t for t in s.tasks if t.id == success.id)
        t.status, t.error_code = TaskStatus.FAILED.value, None
        out.append(("success turned failure without a code", s))
    kept = next(
        (
            t
            for t in snap.tasks
            if t.status == TaskStatus.FAILED
            and not t.error_code == INSUFFICIENT_CREDITS
            and any(e.task_id == t.id and e.entry_type == EntryType.CONSUME for e in snap.ledger)
        ),
        None,
    )
    if kept is not None:
        s = copy.deepcopy(snap)
        charge = next(e for e in s.ledger if e.task_id == kept.id and e.entry_type == EntryType.CONSUME)
        s.ledger.append(
            dataclasses.replace(
                charge,
                id=ledger_ids + 1,
                entry_type=EntryType.REFUND.value,
                amount=-charge.amount,
                idempotency_key=f"goodwill:{kept.id}",
                support=False,
                note="support: reads like one, is not one",
            )
        )
        out.append(("refund without the rules' leave", s))
    return out
