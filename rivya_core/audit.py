"""The audit: every invariant of DESIGN.md as one set-based SQL query per kind
(`audit_checks`), run, reported and stored.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Select, exists, func, insert, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from . import rules
from .audit_checks import AUDIT_KINDS, CHECKS, _Ctx, balance_mismatch
from .domain import (
    EntryType,
    RivyaError,
    ValidationError,
)
from .policy import DEFAULT_POLICY, BillingPolicy
from .read.queries import Bind, connect, jsonable, reference_now
from .sources import facts as source_facts
from .stores.db import add_missing_columns
from .stores.schema import (
    account,
    ai_task,
    audit_run,
    chat_message,
    credit_ledger,
    notification,
    task_event,
)

ROW_CAP = 50
CHAT_SETTLE_GRACE_S = 600.0  # a chat reservation older than this and still open is a finding


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
        return {
            "kind": self.kind,
            "title": self.title,
            "message": self.message,
            "count": self.count,
            "rows": jsonable(self.rows),
        }


@dataclass
class AuditReport:
    findings: list[Finding]
    now: datetime
    policy: str
    checked: list[str] = field(default_factory=list)
    now_why: str = ""  # why ages were judged at `now` (clock.judging_now)
    # kinds not judged because the database's source never recorded their facts: kind -> what to say
    not_recorded: dict[str, str] = field(default_factory=dict)

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
        return {
            "ok": self.ok,
            "total": self.total,
            "now": self.now.isoformat(),
            "now_why": self.now_why,
            "policy": self.policy,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "not_recorded": dict(self.not_recorded),
        }


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


def audit(
    bind: Bind,
    policy: BillingPolicy = DEFAULT_POLICY,
    now: datetime | None = None,
    *,
    kinds: list[str] | None = None,
    row_cap: int = ROW_CAP,
    chat_grace_s: float = CHAT_SETTLE_GRACE_S,
    workers: int | None = None,
    record: bool = False,
    stored_by: str | None = None,
) -> AuditReport:
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
    facts = source_facts.source_facts(bind)
    not_recorded = {
        k: facts.describe(source_facts.AUDIT_NEEDS[k]) for k in kinds or CHECKS if not facts.audit_kind_recorded(k)
    }
    tables = set(inspect(bind).get_table_names())
    todo = [
        (k, q)
        for k in kinds or CHECKS
        if k not in not_recorded
        and (k != "grant_below_zero" or "source_grant" in tables)
        and (q := CHECKS[k](ctx)) is not None
    ]

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
    report = AuditReport(findings, at, policy.name, [k for k, _ in todo], judged.why, not_recorded)
    if keep and isinstance(bind, Engine):
        record_audit(bind, report, policy, duration_s=time.perf_counter() - started, mark=mark, stored_by=stored_by)
    return report


def ledger_sums(bind: Bind) -> dict[str, int]:
    """The whole ledger's amounts summed per entry type: the one place credits by type are computed."""
    with connect(bind) as conn:
        return {
            t: int(v or 0)
            for t, v in conn.execute(
                select(credit_ledger.c.entry_type, func.sum(credit_ledger.c.amount)).group_by(
                    credit_ledger.c.entry_type
                )
            )
        }


def ledger_users_without_account(limit: int) -> Select:
    """Users the ledger names that have no account: made distinct first (through the
    (user_id, ...) index), so each user's account is looked up once, not once per entry."""
    users = select(credit_ledger.c.user_id).distinct().subquery()
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
        "consumes": of(EntryType.CONSUME),
        "refunds": of(EntryType.REFUND),
        "chat_reserves": of(EntryType.CHAT_RESERVE),
        "chat_charges": of(EntryType.CHAT_CHARGE),
        "chat_refunds": of(EntryType.CHAT_REFUND),
        "adjustments": of(EntryType.ADJUSTMENT),
        "by_type": by_type,
        "ledger_total": ledger_total,
        "balances_total": balances,
        "broken_count": broken_count,
        "broken_accounts": jsonable(broken),
        "ledger_users_without_account": orphans,
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
        findings = [
            Finding(f["kind"], f["message"], int(f["count"]), list(f.get("rows", []))) for f in r.get("findings", [])
        ]
        return AuditReport(
            findings,
            datetime.fromisoformat(r["now"]),
            r["policy"],
            list(r.get("counts", {})),
            r.get("now_why", ""),
            dict(r.get("not_recorded", {})),
        )


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


def record_audit(
    engine: Engine,
    report: AuditReport,
    policy: BillingPolicy,
    *,
    duration_s: float = 0.0,
    mark: str | None = None,
    conservation_result: dict[str, Any] | None = None,
    stored_by: str | None = None,
) -> None:
    """Store `report` in `audit_run` under `stored_by` (creating the table, or the columns it
    lacks, on an older database). Raises AuditNotRecorded when the database refuses the write."""
    try:
        audit_run.create(engine, checkfirst=True)
        add_missing_columns(engine, audit_run.name)
        with engine.begin() as conn:
            conn.execute(
                insert(audit_run).values(
                    ran_at=_wall_now(),
                    judged_at=report.now,
                    policy=report.policy,
                    policy_key=policy_key(policy),
                    data_mark=mark if mark is not None else data_mark(engine),
                    total=report.total,
                    duration_s=float(duration_s),
                    report=report.to_dict(),
                    conservation=jsonable(conservation_result) if conservation_result is not None else None,
                    stored_by=str(stored_by)[:100] if stored_by else None,
                )
            )
    except SQLAlchemyError as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        raise AuditNotRecorded(f"the audit ran but could not be stored: {lines[0]}") from exc


def latest_audit(bind: Bind, policy: BillingPolicy = DEFAULT_POLICY) -> StoredAudit | None:
    """The newest stored audit judged with `policy`, or None (never run, or an older database)."""
    with connect(bind) as conn:
        if not inspect(conn).has_table(audit_run.name):
            return None
        row = (
            conn.execute(
                select(audit_run)
                .where(audit_run.c.policy_key == policy_key(policy))
                .order_by(audit_run.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    report = row["report"] if isinstance(row["report"], dict) else json.loads(row["report"])
    return StoredAudit(
        row["ran_at"],
        row["judged_at"],
        row["policy"],
        int(row["total"]),
        float(row["duration_s"]),
        report,
        row["conservation"],
        row["data_mark"] == data_mark(bind),
        stored_by=row.get("stored_by"),
    )


def run_now(engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, *, row_cap: int = ROW_CAP) -> StoredAudit:
    """Run the whole audit and conservation now and return them shaped as a stored result,
    without storing anything (a reader may call it on a read-only engine)."""
    started, mark = time.perf_counter(), data_mark(engine)
    report = audit(engine, policy, row_cap=row_cap, record=False)
    cons = conservation(engine, row_cap)
    return StoredAudit(
        _wall_now(),
        report.now,
        report.policy,
        report.total,
        time.perf_counter() - started,
        report.to_dict(),
        jsonable(cons),
        mark == data_mark(engine),
        stored=False,
    )


def run_and_record(
    engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, *, row_cap: int = ROW_CAP, stored_by: str | None = None
) -> StoredAudit:
    """Run the whole audit and conservation now, store both under `stored_by` (an operator's
    act: it writes `audit_run`), and return them as stored."""
    mark = data_mark(engine)
    result = run_now(engine, policy, row_cap=row_cap)
    record_audit(
        engine,
        result.as_report(),
        policy,
        duration_s=result.duration_s,
        mark=mark,
        conservation_result=result.conservation,
        stored_by=stored_by,
    )
    return replace(result, stored=True, stored_by=stored_by)


def current_audit(
    engine: Engine, policy: BillingPolicy = DEFAULT_POLICY, *, row_cap: int = ROW_CAP, run_below_tasks: int = 50_000
) -> StoredAudit | None:
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
