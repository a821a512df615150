"""A database in the ShipAny template's own schema, written by the template's own credit code paths.

`python -m simulations run SCENARIO --db URL --shape shipany` (and the import benchmark) write
through `ShipAnyWriter`, which does what the template's code does (docs/shipany-schema.md):

- a grant inserts a `credit` row (`grant`, `remaining_credits = credits`, `active`, maybe an
  `expires_at`);
- a generation (the provider already called) inserts the `ai_task` row and consumes its cost FIFO
  over the user's active, unexpired grants ordered by `expires_at` (never-expiring last): each
  touched grant's `remaining_credits` goes down, one consume row (`credits = -cost`,
  `consumed_detail` naming the grants) is inserted and `ai_task.credit_id` points at it; with too
  few unexpired credits nothing is written (the template refuses before calling anyone);
- `failed` puts each `creditsConsumed` back onto its grant and sets the consume row `deleted`
  (no refund row), also onto a grant that has expired meanwhile; `canceled` is not refunded.

Rows are kept in memory and written in batches (`flush`), ids are UUIDs drawn from the caller's
random.Random, so the same draws give the same rows.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Engine, Integer, MetaData, Table, Text, insert, update

from rivya_core.db import Prepared

metadata = MetaData()

user = Table(
    "user", metadata,
    Column("id", Text, primary_key=True), Column("name", Text, nullable=False), Column("email", Text, unique=True),
    Column("email_verified", Integer), Column("image", Text),
    Column("created_at", DateTime, nullable=False), Column("updated_at", DateTime, nullable=False),
)
ai_task = Table(
    "ai_task", metadata,
    Column("id", Text, primary_key=True), Column("user_id", Text, nullable=False), Column("media_type", Text),
    Column("provider", Text), Column("model", Text), Column("prompt", Text), Column("options", Text),
    Column("status", Text, nullable=False), Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False), Column("deleted_at", DateTime), Column("task_id", Text),
    Column("task_info", Text), Column("task_result", Text), Column("cost_credits", Integer),
    Column("scene", Text), Column("credit_id", Text),
)
credit = Table(
    "credit", metadata,
    Column("id", Text, primary_key=True), Column("user_id", Text, nullable=False), Column("user_email", Text),
    Column("order_no", Text), Column("subscription_no", Text), Column("transaction_no", Text, unique=True),
    Column("transaction_type", Text, nullable=False), Column("transaction_scene", Text),
    Column("credits", BigInteger, nullable=False), Column("remaining_credits", BigInteger),
    Column("description", Text), Column("expires_at", DateTime), Column("status", Text, nullable=False),
    Column("created_at", DateTime, nullable=False), Column("updated_at", DateTime, nullable=False),
    Column("deleted_at", DateTime), Column("consumed_detail", Text), Column("metadata", Text),
)
TABLES = (user, ai_task, credit)
URL_KEY = {"image": ("images", "imageUrl"), "video": ("videos", "videoUrl"), "music": ("songs", "audioUrl"),
           "speech": ("songs", "audioUrl")}


def create_schema(engine: Engine) -> None:
    """The template's three tables (the only DDL this module sends, to a database it creates)."""
    metadata.create_all(engine)


@dataclass
class _Grant:
    id: str
    remaining: int
    expires_at: datetime | None
    created_at: datetime


@dataclass
class ShipAnyWriter:
    """The template's credit code paths over rows held in memory; `flush` writes them."""

    rng: random.Random
    users: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    credits: dict[str, dict[str, Any]] = field(default_factory=dict)
    grants: dict[str, list[_Grant]] = field(default_factory=dict)
    refused: int = 0

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def add_user(self, name: str, email: str, at: datetime) -> str:
        uid = self.new_id()
        self.users.append({"id": uid, "name": name, "email": email, "email_verified": 1, "image": None,
                           "created_at": at, "updated_at": at})
        self.grants[uid] = []
        return uid

    def grant(self, user_id: str, credits: int, scene: str, at: datetime, expires_at: datetime | None = None) -> str:
        gid = self.new_id()
        self.credits[gid] = {
            "id": gid, "user_id": user_id, "user_email": None, "order_no": None, "subscription_no": None,
            "transaction_no": gid, "transaction_type": "grant", "transaction_scene": scene, "credits": credits,
            "remaining_credits": credits, "description": f"{scene} credits", "expires_at": expires_at,
            "status": "active", "created_at": at, "updated_at": at, "deleted_at": None,
            "consumed_detail": None, "metadata": None}
        self.grants[user_id].append(_Grant(gid, credits, expires_at, at))
        return gid

    def balance(self, user_id: str, at: datetime) -> int:
        """SUM(remaining_credits) over the user's active grants that have not expired."""
        return sum(g.remaining for g in self.grants[user_id] if g.expires_at is None or g.expires_at > at)

    def generate(self, user_id: str, *, media_type: str, provider: str, model: str, prompt: str,
                 options: dict[str, Any], cost: int, at: datetime, upstream_id: str,
                 status: str = "processing") -> str | None:
        """The task row and its FIFO consume in one step; None when the unexpired credits do not cover it."""
        if cost > 0 and self.balance(user_id, at) < cost:
            self.refused += 1
            return None
        tid, cid = self.new_id(), None
        if cost > 0:
            cid = self.new_id()
            left, detail = cost, []
            live = [g for g in self.grants[user_id] if g.remaining > 0 and (g.expires_at is None or g.expires_at > at)]
            live.sort(key=lambda g: (g.expires_at is None, g.expires_at or at, g.created_at))
            for g in live:
                take = min(left, g.remaining)
                g.remaining -= take
                self.credits[g.id]["remaining_credits"] = g.remaining
                self.credits[g.id]["updated_at"] = at
                detail.append({"creditId": g.id, "creditsConsumed": take})
                left -= take
                if not left:
                    break
            self.credits[cid] = {
                "id": cid, "user_id": user_id, "user_email": None, "order_no": None, "subscription_no": None,
                "transaction_no": cid, "transaction_type": "consume", "transaction_scene": None, "credits": -cost,
                "remaining_credits": 0, "description": f"{media_type} generation", "expires_at": None,
                "status": "active", "created_at": at, "updated_at": at, "deleted_at": None,
                "consumed_detail": json.dumps(detail), "metadata": json.dumps({"type": "ai-task", "taskId": tid})}
        self.tasks[tid] = {
            "id": tid, "user_id": user_id, "media_type": media_type, "provider": provider, "model": model,
            "prompt": prompt, "options": json.dumps(options, sort_keys=True), "status": status, "created_at": at,
            "updated_at": at, "deleted_at": None, "task_id": upstream_id, "task_info": None, "task_result": None,
            "cost_credits": cost, "scene": "generate", "credit_id": cid}
        return tid

    def succeed(self, task_id: str, urls: list[str], at: datetime) -> None:
        t = self.tasks[task_id]
        key, url_key = URL_KEY.get(t["media_type"], ("images", "imageUrl"))
        t.update(status="success", updated_at=at,
                 task_info=json.dumps({"status": "success", key: [{url_key: u} for u in urls]}))

    def fail(self, task_id: str, code: str, message: str, at: datetime) -> None:
        """`failed`: the consume's credits go back onto their grants (expired or not), the consume row deleted."""
        t = self.tasks[task_id]
        t.update(status="failed", updated_at=at,
                 task_info=json.dumps({"status": "failed", "errorCode": code, "errorMessage": message}))
        self.refund(task_id, at)

    def refund(self, task_id: str, at: datetime) -> None:
        cid = self.tasks[task_id]["credit_id"]
        if cid is None:
            return
        row = self.credits[cid]
        for d in json.loads(row["consumed_detail"]):
            g = self.credits[d["creditId"]]
            g["remaining_credits"] += d["creditsConsumed"]
            g["updated_at"] = at
            for mem in self.grants[row["user_id"]]:
                if mem.id == g["id"]:
                    mem.remaining = g["remaining_credits"]
        row.update(status="deleted", updated_at=at, deleted_at=at)

    def cancel(self, task_id: str, at: datetime) -> None:
        """`canceled`: not refunded."""
        self.tasks[task_id].update(status="canceled", updated_at=at,
                                   task_info=json.dumps({"status": "canceled", "errorMessage": "canceled"}))

    def expire_due(self, at: datetime) -> None:
        """Grants whose expiry passed get `status = expired` (what the template's balance query ignores anyway)."""
        for rows in self.grants.values():
            for g in rows:
                if g.expires_at is not None and g.expires_at <= at:
                    self.credits[g.id]["status"] = "expired"

    def flush(self, engine: Engine) -> dict[str, int]:
        """Insert every row held (in batches); returns rows per table."""
        counts = {}
        with engine.begin() as conn:
            for table, rows in ((user, self.users), (ai_task, list(self.tasks.values())),
                                (credit, list(self.credits.values()))):
                stmt = Prepared(insert(table), conn.dialect, [c.name for c in table.columns])
                for start in range(0, len(rows), 5000):
                    stmt.run(conn, rows[start:start + 5000])
                counts[table.name] = len(rows)
        return counts


def upsert_changed(engine: Engine, tasks: list[dict[str, Any]], credits: list[dict[str, Any]]) -> None:
    """Rows changed after a flush (the benchmark's incremental 1%), written over their ids."""
    with engine.begin() as conn:
        for table, rows in ((ai_task, tasks), (credit, credits)):
            for r in rows:
                conn.execute(update(table).where(table.c.id == r["id"]).values(
                    {k: v for k, v in r.items() if k != "id"}))
