"""Streaming the in-memory run state to the target database, in batches.

The runner keeps live state in a StreamingStore (`buffer.py`).
`BatchWriter.flush()` writes, in ONE transaction, a consistent cut of the run at that simulated moment: the
rows created since the last flush (`store.drain_changes()`, Core bulk
inserts, no ORM, no round-trip per event), an upsert of every task touched
since then (active ones included: every change to a task comes with one of
its events), of every chat message still held, of the balances that moved,
and of the provider farm's jobs that changed (the `upstream_job` table). So a
database whose writer was killed at any moment is a state the lifecycle could
have been in: `python -m rivya_core recover` finishes it from there.

Then the store forgets what later callbacks and polls no longer need
(`store.evict()`): a task that is terminal, that the provider will send
nothing more about, and that no user is still watching leaves memory with its
events, ledger rows, notifications and callbacks. Memory stays bounded by the
number of live tasks, not the length of the run. The writer uses only the
store's public API.

Append-only tables are written in id order whatever the flush cadence, so
their hashes give the run fingerprint. KPI counters are gathered as rows go
by, so the summary never re-reads the database.
"""

from __future__ import annotations

import hashlib
import statistics
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    event,
    insert,
    text,
    update,
)

from rivya_core import rules
from rivya_core.domain import TERMINAL, ChatStatus, EntryType, TaskStatus
from rivya_core.policy import BillingPolicy
from rivya_core.stores import jsontext, schema
from rivya_core.stores.rows import Prepared, row_values

from .buffer import StreamingStore
from .reads import NotificationReads

sim_metadata = MetaData()
sim_run = Table(
    "sim_run",
    sim_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scenario_name", String(200), nullable=False),
    Column("scenario_toml", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("tasks", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=False),
    Column("summary", JSON, nullable=False),
)
# A realtime run's heartbeat: one row while the run writes, refreshed at every
# flush (wall time) and deleted when the run ends, so support tools can tell a
# database a simulation is still writing from one a run left behind.
sim_live = Table(
    "sim_live",
    sim_metadata,
    Column("id", Integer, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("heartbeat_at", DateTime, nullable=False),
)
# What the mock provider farm knew about each job when the row was last written
# (times in the run's own time base): the recorded provider answers from it.
upstream_job = Table(
    "upstream_job",
    sim_metadata,
    Column("provider", String(50), primary_key=True),
    Column("upstream_task_id", String(200), primary_key=True),
    Column("task_ref", String(200), nullable=False, index=True),
    Column("model", String(100), nullable=False),
    Column("state", String(20), nullable=False),  # queued | running | succeeded | failed | lost
    Column("result_urls", JSON(none_as_null=True)),
    Column("error_code", String(80)),
    Column("error_message", Text),
    Column("failure_class", String(20)),
    Column("submitted_at", DateTime, nullable=False),
    Column("started_at", DateTime),
    Column("done_at", DateTime),
)
JOB_KEY = ("provider", "upstream_task_id")

# (Changes attribute, table): the append-only tables, written in id order
APPEND_ONLY = (
    ("ledger", schema.credit_ledger),
    ("events", schema.task_event),
    ("notifications", schema.notification),
    ("callbacks", schema.provider_callback),
    ("sessions", schema.chat_session),
)
FINGERPRINTED = ("ledger", "events", "notifications", "callbacks")


_KEPT = (None, rules.RefundRefusal.POLICY_KEEPS)  # charged and not refunded: due, or kept by the policy


def _canon(values: dict[str, Any]) -> bytes:
    """A row's bytes for the fingerprint. credit_ledger.support came after fingerprints were first
    recorded: left out while it is False (never in a simulation), so a run keeps its fingerprint."""
    if values.get("support") is False:
        values = {k: v for k, v in values.items() if k != "support"}
    return jsontext.canonical(values).encode()


@dataclass
class Kpis:
    """What the run summary and the policy comparison read, gathered while writing."""

    tasks: int = 0
    by_state: Counter = field(default_factory=Counter)
    by_outcome: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    paths: Counter = field(default_factory=Counter)
    ledger_sums: Counter = field(default_factory=Counter)  # amount per entry type; rules.credit_flows reads it
    failed_without_refund: int = 0
    insufficient: int = 0
    user_visible_failures: int = 0
    stuck: int = 0
    notifications: int = 0
    latencies: array = field(default_factory=lambda: array("d"))  # 8 bytes a task, not a float object
    credits_by_model: Counter = field(default_factory=Counter)  # net credits paid per model (tasks and chat)
    chat_tokens: dict = field(default_factory=dict)  # chat model -> [prompt tokens, completion tokens] settled

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    @property
    def flows(self) -> rules.CreditFlows:
        return rules.credit_flows(self.ledger_sums)

    def mean_latency(self) -> float:
        return statistics.fmean(self.latencies) if self.latencies else 0.0


class BatchWriter:
    def __init__(
        self,
        engine: Engine,
        store: StreamingStore,
        policy: BillingPolicy,
        *,
        quiet: Callable[[Any], bool],
        forget: Callable[[Any], None],
        realtime: bool = False,
        jobs: Callable[[], tuple[list[dict], list[dict]]] | None = None,
        reads: NotificationReads | None = None,
        now: Callable[[], datetime] | None = None,
    ):
        self.engine = engine
        self.store = store
        self.policy = policy
        self.quiet = quiet  # task -> True when nothing more will arrive for it
        self.forget = forget  # task -> drop the provider's job
        self.realtime = realtime
        self.jobs = jobs  # () -> (new, changed) upstream_job rows since the last call
        self.reads = reads  # simulated users opening their notifications (None: nobody reads)
        self.now = now  # the run's clock: reads up to it are written at each flush
        self.pinned: Counter = Counter()
        self.written_tasks: set[int] = set()  # held tasks already inserted (later writes update them)
        self.written_msgs: set[int] = set()
        self.top_ids: dict[str, int] = {}  # PostgreSQL: highest id written per table, this flush
        self.hashers = {name: hashlib.sha256() for name in FINGERPRINTED}
        self.finished: dict[int, None] = {}  # terminal tasks not yet evicted, in finishing order
        self.kpis = Kpis()
        self._prepared: dict[tuple[Any, ...], Prepared] = {}

    def pin(self, task_id: int, on: bool) -> None:
        self.pinned[task_id] += 1 if on else -1
        if self.pinned[task_id] <= 0:
            del self.pinned[task_id]

    # --- flushing ---------------------------------------------------------------------

    def flush(self, final: bool = False) -> None:
        s = self.store
        changes = s.drain_changes()
        touched = sorted({e.task_id for e in changes.events} | {e.task_id for e in changes.ledger if e.task_id})
        with self.engine.begin() as conn:
            if changes.accounts:
                self._insert(conn, schema.account, [row_values(schema.account, a) for a in changes.accounts])
                self.top_ids["account"] = changes.accounts[-1].id
            for name, table in APPEND_ONLY:
                rows = getattr(changes, name)
                if not rows:
                    continue
                values = [row_values(table, r) for r in rows]
                if name in self.hashers:
                    h = self.hashers[name]
                    for v in values:
                        h.update(_canon(v))
                self._count(name, rows)
                self._insert(conn, table, values)
                self.top_ids[table.name] = rows[-1].id
                if name == "notifications" and self.reads is not None:
                    for v in values:
                        self.reads.schedule(v)
            if self.reads is not None and self.now is not None:
                read = self.reads.due(self.now())
                if read:
                    self._update(
                        conn, schema.notification, ("id",), [{"id": r["_id"], "read_at": r["_read_at"]} for r in read]
                    )
            settled = self._flush_messages(conn, final)
            done = self._flush_tasks(conn, touched, final)
            moved = sorted({e.user_id for e in changes.ledger} - {a.id for a in changes.accounts})
            if moved:
                balances = s.balances()
                self._update(conn, schema.account, ("id",), [{"id": u, "balance": balances[u]} for u in moved])
            if self.jobs is not None:
                self._flush_jobs(conn)
            if conn.dialect.name == "postgresql":
                self._advance_sequences(conn)
        s.evict([t.id for t in done], settled)
        for t in done:
            if t.upstream_task_id:
                self.forget(t)

    def _advance_sequences(self, conn: Any) -> None:
        """Rows carry the run's own ids: move each id sequence past them, so what
        writes here next (support actions, `recover`) takes fresh ids."""
        for name, top in sorted(self.top_ids.items()):
            conn.execute(text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :top)"), {"t": name, "top": top})
        self.top_ids.clear()

    def _flush_jobs(self, conn: Any) -> None:
        new, changed = self.jobs()
        self._insert(conn, upstream_job, new)
        self._update(conn, upstream_job, JOB_KEY, changed)

    # --- statements compiled once per table and set of columns --------------------------

    def _insert(self, conn: Any, table: Table, rows: list[dict[str, Any]]) -> None:
        """INSERT rows (dicts with the same keys, the table's column names)."""
        if rows:
            self._statement(conn, ("insert", table.name), tuple(rows[0]), lambda keys: (insert(table), keys, None)).run(
                conn, rows
            )

    def _update(self, conn: Any, table: Table, key: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        """UPDATE, for each row (dicts with the same keys, column names), the row whose
        `key` columns hold the row's values there, setting its other columns."""
        if not rows:
            return

        def build(keys: tuple[str, ...]) -> tuple[Any, list[str], dict[str, str]]:
            stmt = (
                update(table)
                .where(*(table.c[k] == bindparam(f"_{k}") for k in key))
                .values({c: bindparam(f"_{c}") for c in keys if c not in key})
            )
            return stmt, [f"_{k}" for k in keys], {f"_{k}": k for k in keys}

        self._statement(conn, ("update", table.name, key), tuple(rows[0]), build).run(conn, rows)

    def _statement(self, conn: Any, what: tuple[Any, ...], keys: tuple[str, ...], build: Callable) -> Prepared:
        prepared = self._prepared.get((what, keys))
        if prepared is None:
            stmt, binds, source = build(keys)
            prepared = self._prepared[(what, keys)] = Prepared(stmt, conn.dialect, binds, source)
        return prepared

    def _count(self, name: str, rows: list[Any]) -> None:
        k = self.kpis
        if name == "events":
            for e in rows:
                k.events[e.kind] += 1
                if e.kind in ("succeeded", "failed"):
                    k.paths[e.detail.get("path", "?")] += 1
                    self.finished[e.task_id] = None
        elif name == "callbacks":
            k.by_outcome.update(c.outcome for c in rows)
        elif name == "notifications":
            k.notifications += len(rows)
        elif name == "ledger":
            sums = k.ledger_sums
            for e in rows:
                sums[e.entry_type] += e.amount

    def _flush_messages(self, conn: Any, final: bool) -> list[int]:
        """Upsert every held chat message (few: open turns and those settled since the
        last flush); returns the settled ones (all at the end), to evict."""
        held = self.store.held_messages()
        self._upsert(conn, schema.chat_message, held, self.written_msgs)
        done = [m for m in held if m.status != ChatStatus.RESERVED or final]
        for m in done:
            if m.status == ChatStatus.REFUSED:
                self.kpis.insufficient += 1
            elif m.charged_credits:
                session = self.store.sessions.get(m.session_id)
                model = session.model if session is not None else "(unknown)"
                self.kpis.credits_by_model[model] += m.charged_credits
                tokens = self.kpis.chat_tokens.setdefault(model, [0, 0])
                tokens[0] += m.prompt_tokens or 0
                tokens[1] += m.completion_tokens or 0
            self.written_msgs.discard(m.id)
        return [m.id for m in done]

    def _flush_tasks(self, conn: Any, touched: list[int], final: bool) -> list[Any]:
        """Upsert every held task touched since the last flush; return the finished
        ones that nothing will touch again (their rows are written), to evict."""
        s = self.store
        if final:
            self._upsert(conn, schema.ai_task, [r.task for r in s.rows_for(touched)], self.written_tasks)
            rows = s.held_tasks()
            held = {r.task.id: r.ledger for r in s.rows_for(t.id for t in rows if t.status in TERMINAL)}
            for t in rows:
                if t.status in TERMINAL:
                    self._settle_kpis(t, held[t.id])
                else:
                    self.kpis.tasks += 1
                    self.kpis.stuck += 1
                    self.kpis.by_state[t.status] += 1
            return []
        # one read of the store for both: the touched tasks to write, the finished ones to evict
        held = {r.task.id: r for r in s.rows_for(dict.fromkeys(touched) | self.finished)}
        self._upsert(conn, schema.ai_task, [held[t].task for t in touched if t in held], self.written_tasks)
        done = []
        candidates = [held[t] for t in self.finished if t in held]
        if len(candidates) < len(self.finished):  # evicted by someone else: nothing to write
            for tid in [t for t in self.finished if t not in held]:
                del self.finished[tid]
        for r in candidates:
            t = r.task
            if t.id not in self.pinned and self.quiet(t):
                done.append(r)
                del self.finished[t.id]
        for r in done:
            self._settle_kpis(r.task, r.ledger)
            self.written_tasks.discard(r.task.id)
        return [r.task for r in done]

    def _upsert(self, conn: Any, table: Table, rows: list[Any], written: set[int]) -> None:
        if not rows:
            return
        new = [row_values(table, r) for r in rows if r.id not in written]
        old = [row_values(table, r) for r in rows if r.id in written]
        if new:
            self._insert(conn, table, new)
            self.top_ids[table.name] = max(self.top_ids.get(table.name, 0), max(v["id"] for v in new))
        self._update(conn, table, ("id",), old)
        written.update(r.id for r in rows)

    def _settle_kpis(self, t: Any, entries: list[Any]) -> None:
        k = self.kpis
        k.tasks += 1
        k.by_state[t.status] += 1
        charged = any(e.entry_type == EntryType.CONSUME for e in entries)
        refunded = any(e.entry_type == EntryType.REFUND for e in entries)
        if charged:
            k.credits_by_model[t.model] -= sum(
                e.amount for e in entries if e.entry_type in (EntryType.CONSUME, EntryType.REFUND)
            )
        if t.status == TaskStatus.FAILED:
            if t.error_code == "insufficient_credits":
                k.insufficient += 1
            else:
                k.user_visible_failures += 1
            facts = rules.RefundFacts(t.status, t.failure_class, charged, refunded)
            if rules.refund_refusal(facts, self.policy) in _KEPT:
                k.failed_without_refund += 1
        if t.finished_at is not None:
            dt = (t.finished_at - t.created_at).total_seconds()
            k.latencies.append(dt)
            if dt > self.policy.stuck_for(t.category):
                k.stuck += 1

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name in FINGERPRINTED:
            h.update(name.encode() + self.hashers[name].digest())
        if self.reads is not None:
            h.update(b"reads" + self.reads.digest.to_bytes(32, "big"))
        return h.hexdigest()


def relax_sqlite_sync(engine: Engine) -> None:
    """WAL + synchronous=NORMAL for a simulation's SQLite file: a committed batch
    survives a killed process, without an fsync per batch. Call before connecting."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sync(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def compact_sqlite(path: Any) -> None:
    """Rewrite a finished SQLite file with VACUUM INTO, so the same rows give the
    same bytes whatever checkpoints and connections happened during the run."""
    import os
    import sqlite3
    import tempfile
    from pathlib import Path

    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".compact", dir=path.parent)  # a new empty file
    os.close(fd)
    tmp = Path(name)
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("VACUUM INTO ?", (str(tmp),))
        finally:
            conn.close()
        os.chmod(tmp, path.stat().st_mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def write_sim_run(engine: Engine, values: dict[str, Any]) -> None:
    sim_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(sim_run), [values])


def beat(engine: Engine, pid: int) -> None:
    """Say that a realtime run is writing this database now."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        if conn.execute(update(sim_live).where(sim_live.c.id == 1).values(pid=pid, heartbeat_at=now)).rowcount == 0:
            conn.execute(insert(sim_live).values(id=1, pid=pid, heartbeat_at=now))


def end_beat(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(sim_live))


def last_beat(engine: Engine) -> datetime | None:
    """When a realtime run last said it was writing (None: no run ever did, or it ended)."""
    from sqlalchemy import inspect, select

    if "sim_live" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        return conn.scalar(select(sim_live.c.heartbeat_at).where(sim_live.c.id == 1))


def read_sim_runs(engine: Engine) -> list[dict[str, Any]]:
    from sqlalchemy import inspect, select

    if "sim_run" not in inspect(engine).get_table_names():
        return []
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(sim_run).order_by(sim_run.c.id))]
