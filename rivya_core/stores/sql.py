"""The SQL Store: the data contract through SQLAlchemy Core, on SQLite or PostgreSQL.

A unit of work is one connection and one transaction (`engine.begin()`); a
nested `begin()` on the same thread becomes a SAVEPOINT. Rows map onto the
domain dataclasses by column name. Ledger posts lock the account row
(`FOR UPDATE` on PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the write
lock) and insert with ON CONFLICT DO NOTHING on the idempotency key, so a
repeat or a racing twin is recognised instead of written twice. Lost races
(deadlock, serialization failure, "database is locked") surface as
ports.RetryableConflict.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, case, exists, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from ..domain import (
    WEBHOOK_SEEN_OUTCOMES,
    Account,
    CallbackOutcome,
    ChatMessage,
    ChatSession,
    ChatStatus,
    LedgerEntry,
    NotFound,
    ParkedCallback,
    ProviderCallback,
    Task,
    TaskEvent,
    TaskStatus,
    ValidationError,
    balance_after,
    replayed_entry,
)
from ..ports import PostResult, RetryableConflict, Snapshot
from .db import _checked_engine, _first_line
from .rows import SNAPSHOT_TABLES, row_values
from .schema import (
    account,
    ai_task,
    chat_message,
    chat_session,
    credit_ledger,
    notification,
    parked_callback,
    provider_callback,
    task_event,
)

_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available
_SEEN = sorted(o.value for o in WEBHOOK_SEEN_OUTCOMES)


def is_retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return True
    msg = str(orig).lower()
    return "database is locked" in msg or "database is busy" in msg


def _naive(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, str) and hasattr(value, "value"):  # StrEnum -> plain str
        return str(value)
    if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL (hostile input)
        return value.replace("\x00", "\ufffd")
    return value


def _values(table: Any, row: Any, skip_id: bool) -> dict[str, Any]:
    vals = {k: _naive(v) for k, v in row_values(table, row).items()}
    if skip_id:
        vals.pop("id", None)
    return vals


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _to(cls: type, row: Any) -> Any:
    m = row._mapping
    return cls(**{name: m[name] for name in _field_names(cls) if name in m})


# Statements built once and executed with parameters (SQLAlchemy then reuses their compiled form)
def _plain_and_locked(stmt: Any) -> tuple[Any, Any]:
    return stmt, stmt.with_for_update()


_TASK_BY_ID = _plain_and_locked(select(ai_task).where(ai_task.c.id == bindparam("task_id")))
_TASK_BY_UPSTREAM = _plain_and_locked(
    select(ai_task)
    .where(
        ai_task.c.upstream_task_id == bindparam("upstream_task_id"),
        ai_task.c.provider == bindparam("provider"),
    )
    .order_by(ai_task.c.id.desc())
    .limit(1)
)


def _constants(column: Any, values: Iterable[str]) -> list[Any]:
    """The values of a fixed IN list, one bound parameter each: a statement built once and run many
    times then needs no per-execution expansion of the list (SQLAlchemy re-renders the SQL text of
    an `in_` over plain values at every execution)."""
    return [literal(v, column.type) for v in values]


@functools.lru_cache(maxsize=512)
def _task_update(keys: tuple[str, ...], expect: tuple[str, ...] | None) -> Any:
    """UPDATE ai_task SET <keys> WHERE id = :task_id [AND status IN expect], one per shape."""
    stmt = update(ai_task).where(ai_task.c.id == bindparam("task_id"))
    if expect is not None:
        stmt = stmt.where(ai_task.c.status.in_(_constants(ai_task.c.status, expect)))
    return stmt.values({k: bindparam(f"set_{k}", type_=ai_task.c[k].type) for k in keys})


def _callback_unless_seen() -> Any:
    """INSERT a callback whose outcome turns into duplicate (with :seen_detail) when its webhook id
    was already applied or deferred for its provider; RETURNING the row's id, outcome and detail."""
    cb = provider_callback
    seen = exists().where(
        cb.c.provider == bindparam("provider"),
        cb.c.webhook_id == bindparam("webhook_id"),
        cb.c.outcome.in_(_constants(cb.c.outcome, _SEEN)),
    )
    names = [c.name for c in cb.c if c.name != "id"]
    values: dict[str, Any] = {name: bindparam(name, type_=cb.c[name].type) for name in names}
    values["outcome"] = case(
        (seen, literal(CallbackOutcome.DUPLICATE.value, cb.c.outcome.type)), else_=values["outcome"]
    )
    values["detail"] = case((seen, bindparam("seen_detail", type_=cb.c.detail.type)), else_=values["detail"])
    return (
        insert(cb).from_select(names, select(*[values[n] for n in names])).returning(cb.c.id, cb.c.outcome, cb.c.detail)
    )


_CALLBACK_UNLESS_SEEN = _callback_unless_seen()
_EVENT_INSERT = insert(task_event)
_NOTIFICATION_INSERT = insert(notification)
_NOTIFICATION_ONCE = {  # keyed by "is PostgreSQL": a repeat of the idempotency key writes nothing
    pg: upsert(notification).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(notification.c.id)
    for pg, upsert in ((True, pg_insert), (False, sqlite_insert))
}


R = TypeVar("R")


class SqlStore:
    """Store protocol over a SQLAlchemy engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._local = threading.local()
        # taken around each outermost unit of work when set (the receiver's one writer on SQLite:
        # rivya_core.receiver.OneWriter); what runs between units (a network call) never holds it
        self.write_gate: Callable[[], AbstractContextManager[None]] | None = None

    @contextmanager
    def begin(self) -> Iterator[SqlTx]:
        outer = getattr(self._local, "tx", None)
        if outer is not None:  # nested unit of work: a savepoint inside the outer one
            with _translated():
                outer.flush_events()
                with outer.conn.begin_nested():
                    try:
                        yield outer
                        outer.flush_events()
                    except BaseException:
                        outer.pending_events.clear()  # rolled back with the savepoint
                        raise
            return
        gate = self.write_gate() if self.write_gate is not None else nullcontext()
        with gate, _translated(), self.engine.begin() as conn:
            tx = SqlTx(conn)
            self._local.tx = tx
            try:
                yield tx
                tx.flush_events()
            finally:
                self._local.tx = None

    def snapshot(self) -> Snapshot:
        snap = Snapshot()
        reader = self.engine.execution_options(sqlite_begin="DEFERRED")  # one consistent read, no write lock
        with _translated(), reader.begin() as conn:
            for attr, (table, cls) in SNAPSHOT_TABLES.items():
                rows = conn.execute(select(table).order_by(table.c.id))
                setattr(snap, attr, [_to(cls, r) for r in rows])
        return snap

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if is_retryable(exc):
            raise RetryableConflict(_first_line(exc)) from exc
        raise


class SqlTx:
    """The Tx protocol over one open connection and transaction. Timeline events are
    written together (one executemany) when the unit of work ends or before
    anything reads them."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.pending_events: list[dict[str, Any]] = []

    def _one(self, cls: type, stmt: Any) -> Any:
        row = self.conn.execute(stmt).first()
        return _to(cls, row) if row is not None else None

    def _all(self, cls: type, stmt: Any) -> list[Any]:
        return [_to(cls, r) for r in self.conn.execute(stmt)]

    def _insert(self, table: Any, row: Any) -> int:
        explicit = bool(getattr(row, "id", 0))
        res = self.conn.execute(insert(table).values(**_values(table, row, skip_id=not explicit)))
        new_id = _stored(res.inserted_primary_key, f"the id of a new {table.name} row")[0]
        if explicit and self.pg:
            self.conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"GREATEST((SELECT max(id) FROM {table.name}), 1))"
                )
            )
        return int(new_id)

    def _upsert(self, table: Any) -> Any:
        return (pg_insert if self.pg else sqlite_insert)(table)

    # accounts
    def add_account(self, email: str, name: str, at: datetime) -> Account:
        acc = Account(id=0, email=email, name=name, created_at=_naive(at), balance=0)
        # ON CONFLICT: a racing sign-up with the same e-mail waits for the winner, then writes nothing
        stmt = (
            self._upsert(account)
            .values(**_values(account, acc, skip_id=True))
            .on_conflict_do_nothing(index_elements=["email"])
            .returning(account.c.id)
        )
        new_id = self.conn.execute(stmt).scalar()
        if new_id is None:
            raise ValidationError(f"an account with email {email!r} already exists", code="account_exists")
        acc.id = int(new_id)
        return acc

    def get_account(self, user_id: int) -> Account | None:
        return self._one(Account, select(account).where(account.c.id == user_id))

    def account_by_email(self, email: str) -> Account | None:
        return self._one(Account, select(account).where(account.c.email == email))

    # tasks
    def insert_task(self, task: Task) -> Task:
        row = dataclasses.replace(task)
        row.id = self._insert(ai_task, task)
        return _stored(self.get_task(row.id), f"task {row.id}")

    def get_task(self, task_id: int, *, for_update: bool = False) -> Task | None:
        row = self.conn.execute(_TASK_BY_ID[for_update], {"task_id": task_id}).first()
        return _to(Task, row) if row is not None else None

    def task_by_upstream(self, provider: str, upstream_task_id: str, *, for_update: bool = False) -> Task | None:
        if "\x00" in provider or "\x00" in upstream_task_id:  # never stored (see _naive): no such task
            return None
        row = self.conn.execute(
            _TASK_BY_UPSTREAM[for_update], {"upstream_task_id": upstream_task_id, "provider": provider}
        ).first()
        return _to(Task, row) if row is not None else None

    def update_task(self, task_id: int, expect_status: Iterable[str] | None = None, **fields: Any) -> bool:
        unknown = sorted(k for k in fields if k not in ai_task.c or k == "id")
        if unknown:
            raise ValueError(f"cannot update task field(s): {', '.join(unknown)}")
        if not fields:
            task = self.get_task(task_id)
            return task is not None and (expect_status is None or task.status in {str(x) for x in expect_status})
        expect = None if expect_status is None else tuple(str(s) for s in expect_status)
        params = {f"set_{k}": _naive(v) for k, v in fields.items()}
        params["task_id"] = task_id
        return self.conn.execute(_task_update(tuple(fields), expect), params).rowcount == 1

    def tasks_due_for_check(self, now: datetime, limit: int) -> list[Task]:
        return self._all(
            Task,
            select(ai_task)
            .where(
                ai_task.c.status == TaskStatus.GENERATING.value,
                ai_task.c.next_check_at <= _naive(now),
            )
            .order_by(ai_task.c.next_check_at, ai_task.c.id)
            .limit(limit),
        )

    def active_tasks_older_than(self, cutoff: datetime, limit: int) -> list[Task]:
        return self._all(
            Task,
            select(ai_task)
            .where(
                ai_task.c.status.in_([TaskStatus.WAITING.value, TaskStatus.GENERATING.value]),
                ai_task.c.created_at < _naive(cutoff),
            )
            .order_by(ai_task.c.created_at, ai_task.c.id)
            .limit(limit),
        )

    def user_tasks(
        self, user_id: int, *, statuses: Iterable[str] | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[Task]:
        stmt = select(ai_task).where(ai_task.c.user_id == user_id)
        if statuses is not None:
            stmt = stmt.where(ai_task.c.status.in_([str(s) for s in statuses]))
        if since is not None:
            stmt = stmt.where(ai_task.c.created_at >= _naive(since))
        return self._all(Task, stmt.order_by(ai_task.c.created_at.desc(), ai_task.c.id.desc()).limit(limit))

    # ledger
    def post(
        self,
        user_id: int,
        entry_type: str,
        amount: int,
        idempotency_key: str,
        at: datetime,
        *,
        task_id: int | None = None,
        chat_message_id: int | None = None,
        note: str | None = None,
        support: bool = False,
    ) -> PostResult:
        existing = self.entry(idempotency_key)
        if existing is not None:
            return PostResult(replayed_entry(existing, user_id, entry_type, amount), created=False)
        if amount == 0:
            raise ValueError("a ledger amount is never 0")
        balance = self.conn.execute(select(account.c.balance).where(account.c.id == user_id).with_for_update()).scalar()
        if balance is None:
            raise NotFound(f"account {user_id} does not exist")
        after = balance_after(balance, amount)
        entry = LedgerEntry(
            id=0,
            user_id=user_id,
            entry_type=str(entry_type),
            amount=int(amount),
            balance_after=after,
            idempotency_key=idempotency_key,
            created_at=_naive(at),
            task_id=task_id,
            chat_message_id=chat_message_id,
            note=note,
            support=bool(support),
        )
        stmt = (
            self._upsert(credit_ledger)
            .values(**_values(credit_ledger, entry, skip_id=True))
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(credit_ledger.c.id)
        )
        new_id = self.conn.execute(stmt).scalar()
        if new_id is None:  # a concurrent unit of work posted this key first
            existing = _stored(self.entry(idempotency_key), f"ledger entry {idempotency_key!r}")
            return PostResult(replayed_entry(existing, user_id, entry_type, amount), created=False)
        self.conn.execute(update(account).where(account.c.id == user_id).values(balance=after))
        entry.id = int(new_id)
        return PostResult(entry, created=True)

    def entry(self, idempotency_key: str) -> LedgerEntry | None:
        return self._one(LedgerEntry, select(credit_ledger).where(credit_ledger.c.idempotency_key == idempotency_key))

    def task_entries(self, task_id: int) -> list[LedgerEntry]:
        return self._all(
            LedgerEntry, select(credit_ledger).where(credit_ledger.c.task_id == task_id).order_by(credit_ledger.c.id)
        )

    def balance(self, user_id: int) -> int:
        return int(self.conn.execute(select(account.c.balance).where(account.c.id == user_id)).scalar() or 0)

    # timeline, notifications, callbacks
    def add_event(self, task_id: int, kind: str, detail: dict[str, Any], at: datetime) -> None:
        self.pending_events.append({"task_id": task_id, "kind": str(kind), "detail": dict(detail), "at": _naive(at)})

    def flush_events(self) -> None:
        """Write the buffered events, in the order they were added, in one round trip."""
        if self.pending_events:
            rows, self.pending_events = self.pending_events, []
            # executemany of one INSERT built once (psycopg sends it in one pipeline; ids follow the order)
            self.conn.execute(_EVENT_INSERT, rows if len(rows) > 1 else rows[0])

    def task_events(self, task_id: int) -> list[TaskEvent]:
        self.flush_events()
        return self._all(TaskEvent, select(task_event).where(task_event.c.task_id == task_id).order_by(task_event.c.id))

    def add_notification(
        self,
        user_id: int,
        kind: str,
        title: str,
        body: str,
        at: datetime,
        *,
        task_id: int | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        values = {
            "user_id": user_id,
            "kind": str(kind),
            "title": title,
            "body": body,
            "created_at": _naive(at),
            "task_id": task_id,
            "idempotency_key": idempotency_key,
        }
        if idempotency_key is None:
            self.conn.execute(_NOTIFICATION_INSERT, values)
            return True
        return self.conn.execute(_NOTIFICATION_ONCE[self.pg], values).scalar() is not None

    def add_callback(self, cb: ProviderCallback) -> ProviderCallback:
        row = dataclasses.replace(cb, id=0)
        row.id = self._insert(provider_callback, row)
        return row

    def add_callback_unless_seen(self, cb: ProviderCallback, seen_detail: str) -> ProviderCallback:
        if not cb.webhook_id:
            return self.add_callback(cb)
        params = _values(provider_callback, cb, skip_id=True)
        params["seen_detail"] = seen_detail
        row = self.conn.execute(_CALLBACK_UNLESS_SEEN, params).one()
        return dataclasses.replace(cb, id=int(row.id), outcome=CallbackOutcome(row.outcome), detail=row.detail)

    def webhook_seen(self, provider: str, webhook_id: str) -> bool:
        cond = exists().where(
            provider_callback.c.provider == provider,
            provider_callback.c.webhook_id == webhook_id,
            provider_callback.c.outcome.in_(_SEEN),
        )
        return bool(self.conn.execute(select(cond)).scalar())

    def get_callback(self, callback_id: int) -> ProviderCallback | None:
        return self._one(ProviderCallback, select(provider_callback).where(provider_callback.c.id == callback_id))

    def parked_of(self, callback_id: int) -> ParkedCallback | None:
        return self._one(
            ParkedCallback,
            select(parked_callback)
            .where(parked_callback.c.callback_id == callback_id)
            .order_by(parked_callback.c.id)
            .limit(1),
        )

    def settle_callback(self, callback_id: int, task_id: int, outcome: str, detail: str | None) -> None:
        self.conn.execute(
            update(provider_callback)
            .where(provider_callback.c.id == callback_id)
            .values(task_id=task_id, outcome=str(outcome), detail=detail)
        )

    def lock_upstream(self, provider: str, upstream_task_id: str) -> None:
        if self.pg:  # SQLite serialises writers already (BEGIN IMMEDIATE)
            digest = hashlib.sha256(f"upstream:{provider}:{upstream_task_id}".encode("utf-8", "replace")).digest()
            self.conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"), {"k": int.from_bytes(digest[:8], "big", signed=True)}
            )

    def park_callback(self, parked: ParkedCallback) -> ParkedCallback:
        row = dataclasses.replace(parked, id=0)
        row.id = self._insert(parked_callback, row)
        return row

    def parked_upstream_for_ref(self, provider: str, task_ref: str) -> str | None:
        return self.conn.execute(
            select(parked_callback.c.upstream_task_id)
            .where(
                parked_callback.c.provider == provider,
                parked_callback.c.task_ref == task_ref,
                parked_callback.c.claimed_task_id.is_(None),
            )
            .order_by(parked_callback.c.id)
            .limit(1)
        ).scalar()

    def claim_parked(self, provider: str, upstream_task_id: str, task_id: int, at: datetime) -> list[ParkedCallback]:
        found = self._all(
            ParkedCallback,
            select(parked_callback)
            .where(
                parked_callback.c.provider == provider,
                parked_callback.c.upstream_task_id == upstream_task_id,
                parked_callback.c.claimed_task_id.is_(None),
            )
            .order_by(parked_callback.c.id),
        )
        if found:
            self.conn.execute(
                update(parked_callback)
                .where(parked_callback.c.id.in_([p.id for p in found]))
                .values(claimed_task_id=task_id, claimed_at=_naive(at))
            )
        return found

    # chat
    def add_session(self, user_id: int, model: str, title: str, at: datetime) -> ChatSession:
        row = ChatSession(id=0, user_id=user_id, model=model, title=title, created_at=_naive(at))
        row.id = self._insert(chat_session, row)
        return row

    def get_session(self, session_id: int) -> ChatSession | None:
        return self._one(ChatSession, select(chat_session).where(chat_session.c.id == session_id))

    def add_message(self, msg: ChatMessage) -> ChatMessage:
        row = dataclasses.replace(msg, id=0)
        row.id = self._insert(chat_message, row)
        return _stored(self.get_message(row.id), f"chat message {row.id}")

    def get_message(self, message_id: int, *, for_update: bool = False) -> ChatMessage | None:
        stmt = select(chat_message).where(chat_message.c.id == message_id)
        return self._one(ChatMessage, stmt.with_for_update() if for_update else stmt)

    def reserved_messages_older_than(self, cutoff: datetime, limit: int) -> list[ChatMessage]:
        return self._all(
            ChatMessage,
            select(chat_message)
            .where(
                chat_message.c.status == ChatStatus.RESERVED.value,
                chat_message.c.created_at < _naive(cutoff),
            )
            .order_by(chat_message.c.created_at, chat_message.c.id)
            .limit(limit),
        )

    def update_message(self, message_id: int, expect_status: Iterable[str] | None = None, **fields: Any) -> bool:
        unknown = sorted(k for k in fields if k not in chat_message.c or k == "id")
        if unknown:
            raise ValueError(f"cannot update chat message field(s): {', '.join(unknown)}")
        current = self.get_message(message_id)
        if current is None:
            raise NotFound(f"chat message {message_id} does not exist")
        if not fields:
            return expect_status is None or current.status in {str(s) for s in expect_status}
        stmt = update(chat_message).where(chat_message.c.id == message_id)
        if expect_status is not None:
            stmt = stmt.where(chat_message.c.status.in_([str(s) for s in expect_status]))
        return self.conn.execute(stmt.values({k: _naive(v) for k, v in fields.items()})).rowcount == 1


def _stored(row: R | None, what: str) -> R:
    """A row this unit of work just wrote or found by its key, read back: it is there."""
    if row is None:
        raise NotFound(f"{what} vanished within its own unit of work")
    return row


def open_store(url: str, *, create: bool = False, pool_size: int | None = None) -> SqlStore:
    """Open (create=True: also create) the SQL store at url.

    Raises StoreUnavailable for a malformed URL, an unreachable server or a
    missing SQLite file, SchemaMissing for a database without the tables.
    """
    return SqlStore(_checked_engine(url, create=create, pool_size=pool_size))
