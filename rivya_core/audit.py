"""The audit: every invariant of DESIGN.md as one set-based SQL query per kind.

Each check is a Core `select()` of the rows that break one invariant; the audit
runs it once with `count(*) OVER ()`, so a finding's count is exact while its
rows are capped. Nothing loops over rows in Python, so the audit stays fast on
millions of tasks. Ledger conventions: consume, chat_reserve and chat_charge
amounts are negative; grant, refund and chat_refund positive; a refund with
`support` set was issued by a support action and is allowed on any failed task.
The checks are the set-based SQL form of `rivya_core.rules` (`rules_sql`, the
same names), so the audit judges a row exactly as the service decided it.

`now` (for "stuck" and "not settled" ages) defaults to the one rule every page
and support action uses (`queries.reference_now`, `clock.judging_now`): the wall
clock for a live database, its latest recorded activity for one whose clock
stopped (a simulation database is judged at the moment its run stopped).

An audit only reads. When asked (`run_and_record`, `audit(record=True)`, the
CLI's `audit --record`, an operator's "Run the audit now") a full audit on an
Engine is stored in the `audit_run` table (`record_audit`), keyed by the policy
it judged with and by the newest row ids the database held (`data_mark`):
pages show `latest_audit` instead of running the audit on every load, and tell
whether new rows arrived since (`current_audit` runs a small database's audit
afresh, without storing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, and_, case, cast, exists, func, insert, inspect, literal, or_, select
from sqlalchemy import Text as SAText
from sqlalchemy.exc import SQLAlchemyError

from . import rules, rules_sql
from .domain import (
    INSUFFICIENT_CREDITS,
    ChatStatus,
    EntryType,
    EventKind,
    RivyaError,
    TaskStatus,
    ValidationError,
)
from .policy import DEFAULT_POLICY, BillingPolicy
from .read.queries import ACTIVE_STATES, TERMINAL_STATES, Bind, connect, jsonable, reference_now
from .stores.db import add_missing_columns
from .stores.schema import (
    account,
    ai_task,
    audit_run,
    chat_message,
    chat_session,
    credit_ledger,
    notification,
    task_event,
)

ROW_CAP = 50
CHAT_SETTLE_GRACE_S = 600.0  # a chat reservation older than this and still open is a finding

AUDIT_KINDS: dict[str, str] = {
    "ledger_running_sum": "Ledger balance_after differs from the running sum",
    "negative_balance": "Negative balance_after",
    "balance_mismatch": "Account balance differs from its ledger sum",
    "failed_after_charge_without_refund": "Failed after charge without refund",
    "double_refund": "Double refund",
    "refund_exceeds_charge": "Refund exceeds charge",
    "refund_on_success": "Refund on success",
    "refund_not_due": "Refund not due under the policy",
    "charged_twice": "Charged twice",
    "upstream_without_charge": "Submitted upstream without a charge",
    "charged_after_submit": "Charged after provider submission",
    "credit_failure_inconsistent": "Failed for credits, yet charged or submitted",
    "success_without_urls": "SUCCESS without result URLs",
    "failed_without_error_code": "FAILED without an error code",
    "multiple_terminal_events": "More than one terminal transition",
    "notification_missing": "Terminal task without its notification",
    "notification_wrong_kind": "Notification of the wrong kind",
    "notification_duplicate": "Duplicate outcome notification",
    "stuck_past_timeout": "Stuck past the timeout",
    "consume_without_task": "Charge without a task",
    "chat_reserve_not_settled": "Chat reserve not settled",
    "chat_overcharge": "Chat charged more than reserved",
    "chat_refund_mismatch": "Chat settlement does not net to the charge",
}


@dataclass
class Finding:
    kind: str
    message: str
    count: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return AUDIT_KINDS.get(self.kind, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "message": self.message, "count": self.count,
                "rows": jsonable(self.rows)}


@dataclass
class AuditReport:
    findings: list[Finding]
    now: datetime
    policy: str
    checked: list[str] = field(default_factory=list)
    now_why: str = ""  # why ages were judged at `now` (clock.judging_now)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def total(self) -> int:
        return sum(f.count for f in self.findings)

    def by_kind(self) -> dict[str, Finding]:
        return {f.kind: f for f in self.findings}

    def counts(self) -> dict[str, int]:
        """Every checked kind with its count, zeros included."""
        found = {f.kind: f.count for f in self.findings}
        return {k: found.get(k, 0) for k in self.checked}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "total": self.total, "now": self.now.isoformat(), "now_why": self.now_why,
                "policy": self.policy, "counts": self.counts(), "findings": [f.to_dict() for f in self.findings]}


@dataclass(frozen=True)
class _Ctx:
    policy: BillingPolicy
    now: datetime
    dialect: str
    chat_grace_s: float


L, T, N, M = credit_ledger, ai_task, notification, chat_message
_L2 = credit_ledger.alias("l2")
_TASK_COLS = (T.c.id.label("task_id"), T.c.user_id, T.c.model, T.c.category, T.c.status, T.c.reserved_credits,
              T.c.upstream_task_id, T.c.error_code, T.c.failure_class, T.c.created_at, T.c.submitted_at,
              T.c.finished_at)
_LEDGER_COLS = (L.c.id.label("ledger_id"), L.c.user_id, L.c.entry_type, L.c.amount, L.c.balance_after,
                L.c.task_id, L.c.chat_message_id, L.c.idempotency_key, L.c.created_at, L.c.note, L.c.support)


def _has_entry(entry_type: str, task_col=T.c.id):
    return exists().where(_L2.c.task_id == task_col, _L2.c.entry_type == entry_type)


def _empty_url_list(col, dialect: str):
    if dialect in ("sqlite", "postgresql"):
        typeof = func.json_type if dialect == "sqlite" else func.json_typeof
        length = case((typeof(col) == "array", func.json_array_length(col)), else_=0)
        return or_(col.is_(None), length == 0)
    return or_(col.is_(None), cast(col, SAText).in_(["[]", "null", ""]))


# --- the checks: each returns the offending rows, or None when it does not apply ---------


def ledger_running_sum(c: _Ctx) -> Select:
    # The window reads only columns of the covering (user_id, id, amount, balance_after)
    # index; the table is read for the mismatching rows alone.
    w = select(L.c.id, L.c.balance_after, func.sum(L.c.amount).over(partition_by=L.c.user_id, order_by=L.c.id)
               .label("running_sum")).subquery()
    return (select(*_LEDGER_COLS, w.c.running_sum).select_from(w.join(L, L.c.id == w.c.id))
            .where(w.c.running_sum != w.c.balance_after))


def negative_balance(c: _Ctx) -> Select:
    return select(*_LEDGER_COLS).where(L.c.balance_after < 0)


def balance_mismatch(c: _Ctx | None = None) -> Select:
    sums = select(L.c.user_id, func.sum(L.c.amount).label("ledger_sum")).group_by(L.c.user_id).subquery()
    ledger_sum = func.coalesce(sums.c.ledger_sum, 0)
    return (select(account.c.id.label("user_id"), account.c.email, account.c.balance,
                   ledger_sum.label("ledger_sum"))
            .select_from(account.outerjoin(sums, sums.c.user_id == account.c.id))
            .where(account.c.balance != ledger_sum))


def failed_after_charge_without_refund(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(rules_sql.refund_due(T.c.status, T.c.failure_class, _has_entry(EntryType.CONSUME),
                                                          _has_entry(EntryType.REFUND), c.policy))


def _is_charge():
    """Ledger rows that are task charges. They are most of the ledger, so they are read in
    one pass over the table (or the task index) rather than through the (entry_type, amount)
    index, where each was a random table read (3-4x the CPU at a million tasks): the type is
    compared as an expression, which no index serves."""
    return (L.c.entry_type + "") == EntryType.CONSUME


def _per_task(entry_type: str, having) -> Select:
    of_type = _is_charge() if entry_type == EntryType.CONSUME else L.c.entry_type == entry_type
    return (select(L.c.task_id, func.min(L.c.user_id).label("user_id"), func.count().label("entries"),
                   func.sum(L.c.amount).label("total"))
            .where(of_type, L.c.task_id.is_not(None))
            .group_by(L.c.task_id).having(having))


def double_refund(c: _Ctx) -> Select:
    return _per_task(EntryType.REFUND, func.count() > 1)


def refund_exceeds_charge(c: _Ctx) -> Select:
    r = _per_task(EntryType.REFUND, literal(True)).subquery()
    charged = func.coalesce(select(-func.sum(_L2.c.amount)).where(
        _L2.c.task_id == r.c.task_id, _L2.c.entry_type == EntryType.CONSUME).scalar_subquery(), 0)
    return select(r.c.task_id, r.c.user_id, r.c.total.label("refunded"), charged.label("charged")).where(
        r.c.total > charged)


def _refunds_with_task() -> Select:
    return select(*_LEDGER_COLS, T.c.status, T.c.failure_class, T.c.error_code).select_from(
        L.join(T, T.c.id == L.c.task_id)).where(L.c.entry_type == EntryType.REFUND)


def _courtesy():
    """A courtesy re-run's refund (rules.courtesy_refund): allowed whatever the re-run's state."""
    return rules_sql.courtesy_refund(L.c.support, T.c.rerun_of.is_not(None))


def refund_on_success(c: _Ctx) -> Select:
    return _refunds_with_task().where(T.c.status == TaskStatus.SUCCESS, ~_courtesy())


def refund_not_due(c: _Ctx) -> Select:
    """Refunds the rules do not allow (a refund on a delivered task is refund_on_success)."""
    allowed = rules_sql.refund_allowed(T.c.status, T.c.failure_class, L.c.support, c.policy,
                                       T.c.rerun_of.is_not(None))
    return _refunds_with_task().where(T.c.status != TaskStatus.SUCCESS, ~allowed)


def charged_twice(c: _Ctx) -> Select:
    return _per_task(EntryType.CONSUME, func.count() > 1)


def upstream_without_charge(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(T.c.upstream_task_id.is_not(None), ~_has_entry(EntryType.CONSUME))


def charged_after_submit(c: _Ctx) -> Select:
    return (select(*_TASK_COLS, L.c.created_at.label("charged_at"))
            .select_from(T.join(L, and_(L.c.task_id == T.c.id, _is_charge())))
            .where(T.c.submitted_at.is_not(None), L.c.created_at > T.c.submitted_at))


def credit_failure_inconsistent(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(T.c.error_code == INSUFFICIENT_CREDITS, or_(
        T.c.upstream_task_id.is_not(None), _has_entry(EntryType.CONSUME)))


def success_without_urls(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(T.c.status == TaskStatus.SUCCESS, _empty_url_list(T.c.result_urls, c.dialect))


def failed_without_error_code(c: _Ctx) -> Select:
    return select(*_TASK_COLS).where(T.c.status == TaskStatus.FAILED,
                                     or_(T.c.error_code.is_(None), T.c.error_code == ""))


def multiple_terminal_events(c: _Ctx) -> Select:
    # Grouped by an expression, so SQLite sorts the terminal events alone instead of walking
    # every event through the (task_id, id) index with a table read each to test its kind.
    terminal = [EventKind.SUCCEEDED, EventKind.FAILED]
    task_id = task_event.c.task_id + 0
    return (select(task_id.label("task_id"), func.count().label("terminal_events"))
            .where(task_event.c.kind.in_(terminal)).group_by(task_id).having(func.count() > 1))


def _expected_kind():
    return rules_sql.outcome_notification(T.c.status, T.c.error_code)


_NOTE_TASK_COLS = (T.c.id.label("task_id"), T.c.user_id, T.c.status, T.c.error_code)


def notification_missing(c: _Ctx) -> Select:
    none = ~exists().where(N.c.task_id == T.c.id)
    return select(*_NOTE_TASK_COLS, _expected_kind().label("expected_kind")).where(
        T.c.status.in_(TERMINAL_STATES), none)


def notification_wrong_kind(c: _Ctx) -> Select:
    expected = _expected_kind()
    return (select(N.c.id.label("notification_id"), *_NOTE_TASK_COLS, N.c.kind, expected.label("expected_kind"))
            .select_from(N.join(T, T.c.id == N.c.task_id))
            # the status compared as an expression: one pass over the notifications, each task
            # by its key, instead of every finished task through the status index first
            .where((T.c.status + "").in_(TERMINAL_STATES), N.c.kind != expected))


def notification_duplicate(c: _Ctx) -> Select:
    several = (select(N.c.task_id).where(N.c.task_id.is_not(None)).group_by(N.c.task_id)
               .having(func.count() > 1).subquery())
    matching = (select(func.count()).where(N.c.task_id == T.c.id, N.c.kind == _expected_kind())
                .scalar_subquery())
    q = (select(*_NOTE_TASK_COLS, _expected_kind().label("expected_kind"), matching.label("notifications"))
         .select_from(several.join(T, T.c.id == several.c.task_id)).where(T.c.status.in_(TERMINAL_STATES))
         .subquery())
    return select(q).where(q.c.notifications > 1)


def stuck_past_timeout(c: _Ctx) -> Select:
    default = c.now - timedelta(seconds=c.policy.timeout_for("\0"))
    per_category = {cat: c.now - timedelta(seconds=c.policy.timeout_for(cat)) for cat in c.policy.timeout_s}
    cutoff = case(per_category, value=T.c.category, else_=default) if per_category else literal(default)
    started = func.coalesce(T.c.submitted_at, T.c.created_at)
    return select(*_TASK_COLS, started.label("started_at")).where(T.c.status.in_(ACTIVE_STATES), started < cutoff)


def consume_without_task(c: _Ctx) -> Select:
    no_task = ~exists().where(T.c.id == L.c.task_id)
    return select(*_LEDGER_COLS).where(_is_charge(), or_(L.c.task_id.is_(None), no_task))


_MSG_COLS = (M.c.id.label("message_id"), M.c.session_id, chat_session.c.user_id, M.c.status, M.c.reserved_credits,
             M.c.charged_credits, M.c.created_at, M.c.settled_at)


def _messages() -> Select:
    return select(*_MSG_COLS).select_from(M.outerjoin(chat_session, chat_session.c.id == M.c.session_id))


def chat_reserve_not_settled(c: _Ctx) -> Select:
    cutoff = c.now - timedelta(seconds=c.chat_grace_s)
    return _messages().where(M.c.status == ChatStatus.RESERVED, M.c.created_at < cutoff)


def chat_overcharge(c: _Ctx) -> Select | None:
    if c.policy.chat_allow_overrun:
        return None
    return _messages().where(M.c.charged_credits > M.c.reserved_credits)


def chat_refund_mismatch(c: _Ctx) -> Select:
    chat_types = [EntryType.CHAT_RESERVE, EntryType.CHAT_CHARGE, EntryType.CHAT_REFUND]
    agg = (select(L.c.chat_message_id, func.sum(L.c.amount).label("net"),
                  func.sum(case((L.c.entry_type == EntryType.CHAT_REFUND, 1), else_=0)).label("refunds"))
           .where(L.c.entry_type.in_(chat_types), L.c.chat_message_id.is_not(None))
           .group_by(L.c.chat_message_id).subquery())
    net, refunds = func.coalesce(agg.c.net, 0), func.coalesce(agg.c.refunds, 0)
    return (select(*_MSG_COLS, net.label("ledger_net"), refunds.label("chat_refunds"))
            .select_from(M.outerjoin(chat_session, chat_session.c.id == M.c.session_id)
                         .outerjoin(agg, agg.c.chat_message_id == M.c.id))
            .where(M.c.status != ChatStatus.RESERVED,
                   or_(net != -func.coalesce(M.c.charged_credits, 0), refunds > 1)))


CHECKS: dict[str, Callable[[_Ctx], Select | None]] = {kind: globals()[kind] for kind in AUDIT_KINDS}


def _run(conn, q: Select, cap: int) -> tuple[int, list[dict[str, Any]]]:
    sub = q.subquery()
    first = list(sub.c)[0]
    capped = select(sub, func.count().over().label("_total")).order_by(first).limit(cap)
    found = [dict(r._mapping) for r in conn.execute(capped)]
    count = int(found[0].pop("_total")) if found else 0
    for r in found[1:]:
        r.pop("_total")
    return count, found


def _parallel(bind: Bind) -> bool:
    """Checks run side by side on their own connections, except on an in-memory
    SQLite database (each connection would see a different, empty one)."""
    if not isinstance(bind, Engine):
        return False
    return bind.dialect.name != "sqlite" or bind.url.database not in (None, "", ":memory:")


def audit(bind: Bind, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None, *,
          kinds: list[str] | None = None, row_cap: int = ROW_CAP,
          chat_grace_s: float = CHAT_SETTLE_GRACE_S, workers: int | None = None,
          record: bool = False, stored_by: str | None = None) -> AuditReport:
    """Run every check (or `kinds`) and report the violated ones with their rows.
    On an Engine the checks run on `workers` connections at once (default: up to 4).
    `record=True` (a full audit on an Engine) also stores the report with
    `record_audit` (under `stored_by`: who asked), so pages can show it without running
    the audit again; by default an audit only reads."""
    started = time.perf_counter()
    keep = record and kinds is None and isinstance(bind, Engine)
    mark = data_mark(bind) if keep else ""
    unknown = [k for k in kinds or () if k not in CHECKS]
    if unknown:
        raise ValidationError(f"unknown audit kind(s): {', '.join(unknown)}", code="audit_kind_unknown")
    judged = reference_now(bind, now)
    at = judged.at
    ctx = _Ctx(policy, at, bind.dialect.name, chat_grace_s)
    todo = [(k, q) for k in kinds or CHECKS if (q := CHECKS[k](ctx)) is not None]

    def run(item: tuple[str, Select]) -> tuple[str, int, list[dict[str, Any]]]:
        with connect(bind) as conn:
            return (item[0], *_run(conn, item[1], max(0, row_cap)))

    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and len(todo) > 1 and _parallel(bind):
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, todo))
    else:
        results = [run(item) for item in todo]
    findings = [Finding(k, f"{AUDIT_KINDS[k]}: {n}", n, found) for k, n, found in results if n]
    report = AuditReport(findings, at, policy.name, [k for k, _ in todo], judged.why)
    if keep and isinstance(bind, Engine):
        record_audit(bind, report, policy, duration_s=time.perf_counter() - started, mark=mark,
                     stored_by=stored_by)
    return report


def ledger_sums(bind: Bind) -> dict[str, int]:
    """The whole ledger's amounts summed per entry type: the one place credits by type are computed."""
    with connect(bind) as conn:
        return {t: int(v or 0) for t, v in conn.execute(
            select(L.c.entry_type, func.sum(L.c.amount)).group_by(L.c.entry_type))}


def ledger_users_without_account(limit: int) -> Select:
    """Users the ledger names that have no account: made distinct first (through the
    (user_id, ...) index), so each user's account is looked up once, not once per entry."""
    users = select(L.c.user_id).distinct().subquery()
    return select(users.c.user_id).where(~exists().where(account.c.id == users.c.user_id)).limit(limit)


def conservation(bind: Bind, row_cap: int = ROW_CAP) -> dict[str, Any]:
    """Credits conserved: grants − charges + refunds + adjustments = sum of balances,
    and each account's balance equals its ledger sum (the accounts that break it)."""
    with connect(bind) as conn:
        by_type = ledger_sums(conn)
        balances = int(conn.execute(select(func.coalesce(func.sum(account.c.balance), 0))).scalar() or 0)
        orphans = [r[0] for r in conn.execute(ledger_users_without_account(row_cap))]
        broken_count, broken = _run(conn, balance_mismatch(), row_cap)

    def of(t: EntryType) -> int:
        return by_type.get(t.value, 0)

    ledger_total = sum(by_type.values())
    flows = rules.credit_flows(by_type)
    out = {
        "grants": of(EntryType.GRANT),
        "charged": flows.task_charged + flows.chat_reserved + flows.chat_overrun,  # gross: reservations as held
        "refunded": flows.task_refunded + flows.chat_refunded,
        "consumes": of(EntryType.CONSUME), "refunds": of(EntryType.REFUND),
        "chat_reserves": of(EntryType.CHAT_RESERVE), "chat_charges": of(EntryType.CHAT_CHARGE),
        "chat_refunds": of(EntryType.CHAT_REFUND), "adjustments": of(EntryType.ADJUSTMENT),
        "by_type": by_type, "ledger_total": ledger_total, "balances_total": balances,
        "broken_count": broken_count, "broken_accounts": jsonable(broken), "ledger_users_without_account": orphans,
    }
    out["ok"] = ledger_total == balances and not broken_count and not orphans
    return out


# --- stored results: the latest audit without running it again ---------------------------


@dataclass
class StoredAudit:
    """An audit stored in `audit_run`: the report as a dict (AuditReport.to_dict) and when it ran.
    `fresh` is False when rows were added to the database after it ran. The same shape holds an
    audit computed now and not stored (`run_now`): `stored` is False; `stored_by` names who
    stored a stored one (None on rows older than the column)."""
    ran_at: datetime
    judged_at: datetime
    policy: str
    total: int
    duration_s: float
    report: dict[str, Any]
    conservation: dict[str, Any] | None
    fresh: bool
    stored: bool = True
    stored_by: str | None = None

    def as_report(self) -> AuditReport:
        """The stored report as an AuditReport (rows as stored: JSON values)."""
        r = self.report
        findings = [Finding(f["kind"], f["message"], int(f["count"]), list(f.get("rows", [])))
                    for f in r.get("findings", [])]
        return AuditReport(findings, datetime.fromisoformat(r["now"]), r["policy"], list(r.get("counts", {})),
                           r.get("now_why", ""))


def policy_key(policy: BillingPolicy) -> str:
    """A digest of every setting of `policy`: results judged with another policy are not reused."""
    text = json.dumps(policy.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def data_mark(bind: Bind) -> str:
    """The newest id of each table an audit reads: new tasks, events, ledger rows, notifications
    and chat turns change it (every state change writes an event or a ledger row). Index lookups."""
    tables = (ai_task, task_event, credit_ledger, notification, chat_message)
    with connect(bind) as conn:
        return ":".join(str(conn.scalar(select(func.max(t.c.id))) or 0) for t in tables)


def _wall_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class AuditNotRecorded(RivyaError):
    """The audit ran but its result could not be stored in `audit_run` (a read-only copy,
    a full disk, a refused write): nothing was stored. `message` is one line."""

    code = "audit_not_recorded"


def record_audit(engine: Engine, report: AuditReport, policy: BillingPolicy, *, duration_s: float = 0.0,
                 mark: str | None = None, conservation_result: dict[str, Any] | None = None,
                 stored_by: str | None = None) -> None:
    """Store `report` in `audit_run` under `stored_by` (creating the table, or the columns it
    lacks, on an older database). Raises AuditNotRecorded when the database refuses the write."""
    try:
        audit_run.create(engine, checkfirst=True)
        add_missing_columns(engine, audit_run.name)
        with engine.begin() as conn:
            conn.execute(insert(audit_run).values(
                ran_at=_wall_now(), judged_at=report.now, policy=report.policy, policy_key=policy_key(policy),
                data_mark=mark if mark is not None else data_mark(engine), total=report.total,
                duration_s=float(duration_s), report=report.to_dict(),
                conservation=jsonable(conservation_result) if conservation_result is not None else None,
                stored_by=str(stored_by)[:100] if stored_by else None))
    except SQLAlchemyError as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        raise AuditNotRecorded(f"the audit ran but could not be stored: {lines[0]}") from exc


def latest_audit(bind: Bind, policy: BillingPolicy = DEFAULT_POLICY) -> StoredAudit | None:
    """The newest stored audit judged with `policy`, or None (never run, or an older database)."""
    with connect(bind) as conn:
        if not inspect(conn).has_table(audit_run.name):
            return None
        row = conn.execute(select(audit_run).where(audit_run.c.policy_key == policy_key(policy))
                           .order_by(audit_run.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        return None
    report = row["report"] if isinstance(row["report"], dict) else json.loads(row["report"])
    return StoredAudit(row["ran_at"], row["judged_at"], row["policy"], int(row["total"]), float(row["duration_s"]),
                       report, row["conservation"], row["data_mark"] == data_mark(bind),
                       stored_by=row.get("stored_by"))


def run_now(engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, *, row_cap: int = ROW_CAP) -> StoredAudit:
    """Run the whole audit and conservation now and return them shaped as a stored result,
    without storing anything (a reader may call it on a read-only engine)."""
    started, mark = time.perf_counter(), data_mark(engine)
    report = audit(engine, policy, row_cap=row_cap, record=False)
    cons = conservation(engine, row_cap)
    return StoredAudit(_wall_now(), report.now, report.policy, report.total, time.perf_counter() - started,
                       report.to_dict(), jsonable(cons), mark == data_mark(engine), stored=False)


def run_and_record(engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, *,
                   row_cap: int = ROW_CAP, stored_by: str | None = None) -> StoredAudit:
    """Run the whole audit and conservation now, store both under `stored_by` (an operator's
    act: it writes `audit_run`), and return them as stored."""
    mark = data_mark(engine)
    result = run_now(engine, policy, row_cap=row_cap)
    record_audit(engine, result.as_report(), policy, duration_s=result.duration_s, mark=mark,
                 conservation_result=result.conservation, stored_by=stored_by)
    return replace(result, stored=True, stored_by=stored_by)


def current_audit(engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, *, row_cap: int = ROW_CAP,
                  run_below_tasks: int = 50_000) -> StoredAudit | None:
    """The stored audit for `policy`; when there is none or it is stale and the database holds
    fewer than `run_below_tasks` tasks (seconds of work at most), one run now (`run_now`: read
    only, not stored). On a bigger database a stale result is returned as such and a missing one
    is None. Only `run_and_record` (or `audit --record`) stores a result."""
    stored = latest_audit(engine, policy)
    if stored is not None and stored.fresh:
        return stored
    with connect(engine) as conn:
        tasks = int(conn.scalar(select(func.max(ai_task.c.id))) or 0)
    if tasks < run_below_tasks:
        return run_now(engine, policy, row_cap=row_cap)
    return stored
