"""The rows of one `import shipany` (rivya_core.sources.shipany): users into accounts, tasks into
tasks, and each user's credit rows replayed in time order into ledger entries.

A grant's history is replayed per user: each consume draws on the grants its `consumed_detail`
names, each refund (a consume set to `deleted`) puts them back, and a grant whose expiry passed
by the source's own latest time gives up what it still held (`expire`). Credits put back onto a
grant already expired are lost at once (`refund` then `expire`), and credits a grant shows put
back more than its history explains are a second refund. The grants are mirrored in
`source_grant`, so a later import goes on from where this one stopped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from ..domain import EntryType, TaskStatus
from ..stores.rows import Prepared
from ..stores.schema import account, ai_task, credit_ledger, source_grant
from .shipany_source import (
    CANCELED,
    CATEGORY,
    CHUNK,
    CREDIT_COLS,
    FAILED_WITHOUT_CODE,
    SOURCE,
    STATUS,
    TASK_COLS,
    USER_COLS,
    ImportSummary,
    Progress,
    ReadOnlySource,
    _int,
    _json,
    _ts,
    draws,
    record_import,
    result_urls,
)


@dataclass
class _Grant:
    """A source grant while its user's rows are replayed (mirrored in source_grant)."""

    ref: str
    user_id: int
    credits: int
    created_at: datetime
    replayed: int = 0
    live: int = 0
    remaining: int = 0
    local_id: int | None = None
    scene: str | None = None
    status: str = "active"
    expires_at: datetime | None = None
    expired_at: datetime | None = None
    new: bool = False
    dirty: bool = False


class Importer:
    """One import's writes into the target connection (one transaction)."""

    def __init__(self, src: ReadOnlySource, conn: Any, summary: ImportSummary, progress: Progress):
        self.src, self.conn, self.s, self.progress = src, conn, summary, progress
        self.users: dict[str, int] = {}  # source user id -> account id
        self.next_account = self._next_id(account)
        self.next_task = self._next_id(ai_task)
        self.emails: set[str] = set()
        self.watermark = summary.watermark
        self._prepared: dict[tuple, Prepared] = {}

    def _insert(self, table: Any, rows: list[dict[str, Any]]) -> None:
        """Rows of one shape inserted as the driver's executemany, through the same bind processors
        (stores.rows.Prepared): a million-task import spends its time on the rows, not on building
        each insert's parameters."""
        key = (table.name, tuple(rows[0]))
        stmt = self._prepared.get(key)
        if stmt is None:
            stmt = self._prepared[key] = Prepared(insert(table), self.conn.dialect, list(rows[0]))
        for start in range(0, len(rows), CHUNK):
            stmt.run(self.conn, rows[start : start + CHUNK])

    def _next_id(self, table: Any) -> int:
        return int(self.conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar()) + 1

    def _seen(self, *times: Any) -> None:
        for t in times:
            if t is not None and (self.watermark is None or t > self.watermark):
                self.watermark = t

    def run(self, previous: dict[str, Any] | None) -> None:
        self._import_users()
        self._import_tasks()
        self._import_credits()
        self.s.watermark = self.watermark
        record_import(self.conn, self.s, previous)

    # users -----------------------------------------------------------------------------

    def _lookup_users(self, refs: Iterable[str]) -> None:
        need = [r for r in set(refs) if r not in self.users]
        for start in range(0, len(need), 1000):
            part = need[start : start + 1000]
            for local, ref in self.conn.execute(
                select(account.c.id, account.c.external_ref).where(account.c.external_ref.in_(part))
            ):
                self.users[ref] = local

    def _email_free(self, email: str, ref: str) -> str:
        taken = (
            email in self.emails
            or self.conn.execute(select(account.c.id).where(account.c.email == email)).first() is not None
        )
        if taken:
            email = f"{ref}+{email}"[:320]
        self.emails.add(email)
        return email

    def _import_users(self) -> None:
        batch: list[Any] = []
        for row in self.src.rows("user", USER_COLS, self.s.since, ["created_at", "id"]):
            batch.append(row)
            if len(batch) >= CHUNK:
                self._user_batch(batch)
                batch = []
        if batch:
            self._user_batch(batch)

    def _user_batch(self, rows: list[Any]) -> None:
        self.s.read["user"] += len(rows)
        self._lookup_users(str(r.id) for r in rows)
        new, changed = [], []
        for r in rows:
            ref = str(r.id)
            created = _ts(r.created_at) or _ts(r.updated_at)
            self._seen(_ts(r.updated_at), created)
            name = (r.name or "")[:200] or (r.email or ref)[:200]
            if ref in self.users:
                changed.append({"b_id": self.users[ref], "name": name})
                continue
            email = self._email_free(str(r.email or f"{ref}@source.invalid")[:320], ref)
            self.users[ref] = self.next_account
            new.append(
                {
                    "id": self.next_account,
                    "email": email,
                    "name": name,
                    "created_at": created or datetime(1970, 1, 1),
                    "balance": 0,
                    "external_ref": ref,
                }
            )
            self.next_account += 1
        if new:
            self._insert(account, new)
            self.s.written["account"] += len(new)
        if changed:
            self.conn.execute(
                update(account).where(account.c.id == bindparam("b_id")).values(name=bindparam("name")), changed
            )
            self.s.updated["account"] += len(changed)
        self.progress("users", self.s.read["user"])

    def _user(self, ref: Any, at: datetime | None) -> int:
        """The account of a source user id; one the user table lacks gets a placeholder account."""
        ref = str(ref)
        if ref not in self.users:
            self._lookup_users([ref])
        if ref not in self.users:
            email = self._email_free(f"{ref}@missing-user.invalid"[:320], ref)
            self.users[ref] = self.next_account
            self.conn.execute(
                insert(account).values(
                    id=self.next_account,
                    email=email,
                    name="(not in the source's user table)",
                    created_at=at or datetime(1970, 1, 1),
                    balance=0,
                    external_ref=ref,
                )
            )
            self.next_account += 1
            self.s.written["account"] += 1
            self.s.apart["users missing from the user table (placeholder accounts)"] += 1
        return self.users[ref]

    # tasks -----------------------------------------------------------------------------

    def _import_tasks(self) -> None:
        batch: list[Any] = []
        for row in self.src.rows("ai_task", TASK_COLS, self.s.since, ["created_at", "id"]):
            batch.append(row)
            if len(batch) >= CHUNK:
                self._task_batch(batch)
                batch = []
        if batch:
            self._task_batch(batch)

    def _task_batch(self, rows: list[Any]) -> None:
        self.s.read["ai_task"] += len(rows)
        refs = [str(r.id) for r in rows]
        existing = {}
        for start in range(0, len(refs), 1000):
            existing.update(
                {
                    ref: local
                    for local, ref in self.conn.execute(
                        select(ai_task.c.id, ai_task.c.external_ref).where(
                            ai_task.c.external_ref.in_(refs[start : start + 1000])
                        )
                    )
                }
            )
        self._lookup_users(str(r.user_id) for r in rows)
        new, changed = [], []
        for r in rows:
            created, updated = _ts(r.created_at), _ts(r.updated_at)
            self._seen(created, updated)
            media = str(r.media_type or "").lower()
            if media not in CATEGORY:
                self.s.apart[f"{media or 'untyped'} tasks (not generation tasks)"] += 1
                continue
            values = self._task_values(r, created, updated)
            ref = str(r.id)
            if ref in existing:
                values["b_id"] = existing[ref]
                changed.append(values)
            else:
                values["id"] = self.next_task
                self.next_task += 1
                values["external_ref"] = ref
                values["user_id"] = self._user(r.user_id, created)
                new.append(values)
        if new:
            self._insert(ai_task, new)
            self.s.written["ai_task"] += len(new)
        if changed:
            cols = [c for c in changed[0] if c != "b_id"]
            self.conn.execute(
                update(ai_task).where(ai_task.c.id == bindparam("b_id")).values({c: bindparam(c) for c in cols}),
                changed,
            )
            self.s.updated["ai_task"] += len(changed)
        self.progress("tasks", self.s.read["ai_task"])

    def _task_values(self, r: Any, created: datetime | None, updated: datetime | None) -> dict[str, Any]:
        raw = str(r.status or "").lower()
        status = STATUS.get(raw, TaskStatus.GENERATING)
        info = _json(r.task_info)
        info = info if isinstance(info, dict) else {}
        params = _json(r.options)
        params = params if isinstance(params, dict) else ({} if params is None else {"options": params})
        created = created or updated or datetime(1970, 1, 1)
        terminal = status in (TaskStatus.SUCCESS, TaskStatus.FAILED)
        finished = (updated or created) if terminal else None
        urls = result_urls(info) if status == TaskStatus.SUCCESS else []
        code = message = klass = None
        if status == TaskStatus.FAILED:
            if raw in ("canceled", "cancelled"):
                code, klass = CANCELED, "user"
                message = str(info.get("errorMessage") or "canceled upstream")
            else:
                code = str(info.get("errorCode") or FAILED_WITHOUT_CODE)[:80]
                message = str(info.get("errorMessage") or "the provider reported a failure")
                klass = "provider"
        return {
            "model": str(r.model or "unknown")[:100],
            "category": CATEGORY[str(r.media_type).lower()],
            "prompt": str(r.prompt or ""),
            "params": params,
            "status": status.value,
            "billing_type": "per_task",
            "reserved_credits": max(0, _int(r.cost_credits)),
            "provider": str(r.provider or "unknown")[:50],
            "upstream_task_id": str(r.task_id)[:200] if r.task_id else None,
            "result_urls": urls or None,
            "error_code": code,
            "error_message": message,
            "failure_class": klass,
            "created_at": created,
            "submitted_at": created if r.task_id else None,
            "finished_at": finished,
            "settled_at": finished,
            "check_attempts": 0,
        }

    # credits -----------------------------------------------------------------------------

    def _import_credits(self) -> None:
        self.processed_users: set[int] = set()
        chunk: list[Any] = []
        last_user = None
        for row in self.src.rows("credit", CREDIT_COLS, self.s.since, ["user_id", "created_at", "id"]):
            if len(chunk) >= CHUNK and row.user_id != last_user:
                self._credit_chunk(chunk)
                chunk = []
            chunk.append(row)
            last_user = row.user_id
        if chunk:
            self._credit_chunk(chunk)
        # users with no new credit row whose grants expired since the last import
        due = (
            [
                u
                for (u,) in self.conn.execute(
                    select(source_grant.c.user_id)
                    .distinct()
                    .where(
                        source_grant.c.expired_at.is_(None),
                        source_grant.c.expires_at.is_not(None),
                        source_grant.c.expires_at <= self.s.as_of,
                    )
                )
                if u not in self.processed_users
            ]
            if self.s.as_of
            else []
        )
        for start in range(0, len(due), 1000):
            self._replay({u: [] for u in due[start : start + 1000]}, {})

    def _credit_chunk(self, rows: list[Any]) -> None:
        self.s.read["credit"] += len(rows)
        self._lookup_users(str(r.user_id) for r in rows)
        by_user: dict[int, list[Any]] = defaultdict(list)
        for r in rows:
            self._seen(_ts(r.created_at), _ts(r.updated_at))
            by_user[self._user(r.user_id, _ts(r.created_at))].append(r)
        # the task each consume paid for: by ai_task.credit_id, else by the metadata's taskId
        consumes = [r for r in rows if str(r.transaction_type).lower() == "consume"]
        meta_task = {}
        for r in consumes:
            m = _json(r.metadata)
            if isinstance(m, dict) and m.get("taskId"):
                meta_task[str(r.id)] = str(m["taskId"])
        found = self.src.tasks_of_consumes([str(r.id) for r in consumes], sorted(set(meta_task.values())))
        media_of = {str(t.id): str(t.media_type or "").lower() for t in found}
        by_credit = {str(t.credit_id): str(t.id) for t in found if t.credit_id is not None}
        task_ref = {}
        for r in consumes:
            ref = by_credit.get(str(r.id)) or meta_task.get(str(r.id))
            task_ref[str(r.id)] = (ref, media_of.get(ref) if ref else None)
        locals_ = {}
        refs = sorted({ref for ref, media in task_ref.values() if ref and media in CATEGORY})
        for start in range(0, len(refs), 1000):
            locals_.update(
                {
                    ref: local
                    for local, ref in self.conn.execute(
                        select(ai_task.c.id, ai_task.c.external_ref).where(
                            ai_task.c.external_ref.in_(refs[start : start + 1000])
                        )
                    )
                }
            )
        self.task_links = {cid: (ref, media, locals_.get(ref)) for cid, (ref, media) in task_ref.items()}
        self._replay(by_user, self.task_links)
        self.progress("credits", self.s.read["credit"])

    def _load_grants(self, user_ids: list[int]) -> dict[str, _Grant]:
        out = {}
        for row in self.conn.execute(select(source_grant).where(source_grant.c.user_id.in_(user_ids))).mappings():
            out[row["external_ref"]] = _Grant(
                ref=row["external_ref"],
                local_id=row["id"],
                user_id=row["user_id"],
                credits=row["credits"],
                remaining=row["remaining_credits"],
                replayed=row["replayed_remaining"],
                live=row["live"],
                scene=row["scene"],
                status=row["status"],
                created_at=row["created_at"],
                expires_at=row["expires_at"],
                expired_at=row["expired_at"],
                new=False,
                dirty=False,
            )
        return out

    def _existing_keys(self, keys: list[str]) -> set[str]:
        got: set[str] = set()
        for start in range(0, len(keys), 1000):
            got.update(
                k
                for (k,) in self.conn.execute(
                    select(credit_ledger.c.idempotency_key).where(
                        credit_ledger.c.idempotency_key.in_(keys[start : start + 1000])
                    )
                )
            )
        return got

    def _replay(self, by_user: dict[int, list[Any]], links: dict[str, Any]) -> None:
        """Each user's new credit rows and due expiries as ledger entries in time order."""
        users = sorted(by_user)
        self.processed_users.update(users)
        grants = self._load_grants(users)
        balances = dict(self.conn.execute(select(account.c.id, account.c.balance).where(account.c.id.in_(users))).all())
        keys = []
        for rows in by_user.values():
            for r in rows:
                cid = str(r.id)
                keys += [f"{SOURCE}:{k}:{cid}" for k in ("grant", "consume", "refund", "refund-again")]
        done = self._existing_keys(keys)
        entries: list[dict[str, Any]] = []
        for user in users:
            balances[user] = self._replay_user(
                user, by_user[user], grants, links, done, int(balances.get(user, 0)), entries
            )
        if entries:
            self._insert(credit_ledger, entries)
            self.s.written["credit_ledger"] += len(entries)
        changed = [{"b_id": u, "balance": b} for u, b in balances.items()]
        if changed:
            self.conn.execute(
                update(account).where(account.c.id == bindparam("b_id")).values(balance=bindparam("balance")), changed
            )
        new = [g for g in grants.values() if g.new]
        if new:
            self._insert(source_grant, [self._grant_values(g) for g in new])
            self.s.written["source_grant"] += len(new)
        dirty = [dict(self._grant_values(g), b_id=g.local_id) for g in grants.values() if g.dirty and not g.new]
        if dirty:
            cols = ["remaining_credits", "replayed_remaining", "live", "status", "expires_at", "expired_at"]
            self.conn.execute(
                update(source_grant)
                .where(source_grant.c.id == bindparam("b_id"))
                .values({c: bindparam(c) for c in cols}),
                dirty,
            )
            self.s.updated["source_grant"] += len(dirty)

    @staticmethod
    def _grant_values(g: _Grant) -> dict[str, Any]:
        return {
            "external_ref": g.ref,
            "user_id": g.user_id,
            "credits": g.credits,
            "remaining_credits": g.remaining,
            "replayed_remaining": g.replayed,
            "live": g.live,
            "scene": g.scene,
            "status": g.status,
            "created_at": g.created_at,
            "expires_at": g.expires_at,
            "expired_at": g.expired_at,
        }

    def _replay_user(
        self,
        user: int,
        rows: list[Any],
        grants: dict[str, _Grant],
        links: dict[str, Any],
        done: set[str],
        balance: int,
        entries: list[dict[str, Any]],
    ) -> int:
        events: list[tuple[datetime, int, str, str, Any]] = []  # (at, order, kind, ref, row)
        deleted: list[Any] = []
        for r in rows:
            cid, kind = str(r.id), str(r.transaction_type or "").lower()
            created = _ts(r.created_at) or _ts(r.updated_at) or datetime(1970, 1, 1)
            if kind == "grant":
                g = grants.get(cid)
                if g is None:
                    g = grants[cid] = _Grant(
                        ref=cid,
                        user_id=user,
                        credits=_int(r.credits),
                        replayed=0,
                        live=0,
                        created_at=created,
                        expired_at=None,
                        new=True,
                    )
                g.remaining = _int(r.remaining_credits)
                g.status = str(r.status or "active")[:20]
                g.scene = str(r.transaction_scene)[:50] if r.transaction_scene else None
                g.expires_at = _ts(r.expires_at)
                g.dirty = True
                if f"{SOURCE}:grant:{cid}" not in done:
                    events.append((created, 0, "grant", cid, r))
            elif kind == "consume":
                if f"{SOURCE}:consume:{cid}" not in done:
                    events.append((created, 1, "consume", cid, r))
                if str(r.status or "").lower() == "deleted":
                    deleted.append(r)
                    if f"{SOURCE}:refund:{cid}" not in done:
                        at = _ts(r.deleted_at) or _ts(r.updated_at) or created
                        events.append((max(at, created), 2, "refund", cid, r))
            else:
                self.s.apart[f"credit rows of type {kind or 'none'}"] += 1
        as_of = self.s.as_of
        for g in grants.values():
            if g.user_id != user or g.expired_at is not None:
                continue
            ends = g.expires_at
            if ends is None and str(g.status or "").lower() == "expired":
                ends = as_of
            if ends is not None and as_of is not None and ends <= as_of:
                events.append((ends, 3, "expire", g.ref, None))
        events.sort(key=lambda e: (e[0], e[1], e[3]))

        def entry(
            kind: str, amount: int, at: datetime, key: str, sources: list[str], note: str, task_id: int | None = None
        ) -> None:
            nonlocal balance
            balance += amount
            entries.append(
                {
                    "user_id": user,
                    "entry_type": kind,
                    "amount": amount,
                    "balance_after": balance,
                    "task_id": task_id,
                    "chat_message_id": None,
                    "idempotency_key": key,
                    "created_at": at,
                    "note": note,
                    "support": False,
                    "derived_from": json.dumps(sources),
                }
            )

        def put_back(r: Any, at: datetime, key_kind: str, note: str) -> None:
            cid = str(r.id)
            amount = abs(_int(r.credits)) or sum(n for _g, n in draws(r.consumed_detail))
            if amount <= 0:
                return
            ref, _media, local = links.get(cid, (None, None, None))
            lost, names = 0, []
            for gref, n in draws(r.consumed_detail) or []:
                g = grants.get(gref)
                names.append(f"credit/{gref}")
                if g is None:
                    continue
                g.replayed += n
                g.dirty = True
                if g.expired_at is not None:
                    lost += n
                else:
                    g.live += n
            sources = [f"credit/{cid}", *names] + ([f"ai_task/{ref}"] if ref else [])
            entry(EntryType.REFUND.value, amount, at, f"{SOURCE}:{key_kind}:{cid}", sources, note, local)
            if lost and min(lost, balance) > 0:
                entry(
                    EntryType.EXPIRE.value,
                    -min(lost, balance),
                    at,
                    f"{SOURCE}:lost-refund:{key_kind}:{cid}",
                    sources,
                    f"refunded onto grant(s) that had already expired: {lost} credits lost",
                    local,
                )

        for at, _order, kind, ref, r in events:
            if kind == "grant":
                g = grants[ref]
                g.replayed += g.credits
                g.live += g.credits
                if g.credits > 0:
                    entry(
                        EntryType.GRANT.value,
                        g.credits,
                        at,
                        f"{SOURCE}:grant:{ref}",
                        [f"credit/{ref}"],
                        f"grant ({g.scene or 'unspecified'})",
                    )
            elif kind == "consume":
                cost = abs(_int(r.credits)) or sum(n for _g, n in draws(r.consumed_detail))
                names = []
                for gref, n in draws(r.consumed_detail):
                    names.append(f"credit/{gref}")
                    g = grants.get(gref)
                    if g is not None:
                        g.replayed -= n
                        g.live -= n
                        g.dirty = True
                tref, media, local = links.get(ref, (None, None, None))
                sources = [f"credit/{ref}", *names]
                note = "consume"
                if tref and media == "text":
                    sources.append(f"text_task/{tref}")
                    note = "consume for a text task (not a generation task)"
                elif tref:
                    sources.append(f"ai_task/{tref}")
                    if local is None:
                        note = f"consume for task {tref}, which the source does not have"
                else:
                    note = "consume naming no task"
                charged = min(cost, balance)
                if charged < cost:
                    note += f"; {cost - charged} credits beyond the user's balance not recorded here (see source_grant)"
                    self.s.apart["consume credits beyond the balance"] += cost - charged
                if charged > 0:
                    entry(EntryType.CONSUME.value, -charged, at, f"{SOURCE}:consume:{ref}", sources, note, local)
            elif kind == "refund":
                put_back(r, at, "refund", "refund (the consume row set to deleted)")
            elif kind == "expire":
                g = grants[ref]
                left = min(max(0, g.live), balance)
                g.live -= left
                g.expired_at = at
                g.dirty = True
                if left > 0:
                    entry(
                        EntryType.EXPIRE.value,
                        -left,
                        at,
                        f"{SOURCE}:expire:{ref}",
                        [f"credit/{ref}"],
                        "credits left on the grant when it expired",
                    )
        # credits a grant shows put back once more than its history explains: a task refunded twice
        for r in deleted:
            cid = str(r.id)
            if f"{SOURCE}:refund-again:{cid}" in done:
                continue
            pairs = draws(r.consumed_detail)
            if pairs and all(
                gref in grants and grants[gref].remaining - grants[gref].replayed >= n for gref, n in pairs
            ):
                back = _ts(r.deleted_at) or _ts(r.updated_at) or _ts(r.created_at) or datetime(1970, 1, 1)
                at = back + timedelta(microseconds=1)
                put_back(r, at, "refund-again", "credits put back onto the grant(s) a second time")
        return balance
