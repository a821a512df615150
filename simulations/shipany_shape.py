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

from rivya_core.stores.rows import Prepared

metadata = MetaData()

user = Table(
    "user",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("email", Text, unique=True),
    Column("email_verified", Integer),
    Column("image", Text),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
ai_task = Table(
    "ai_task",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("media_type", Text),
    Column("provider", Text),
    Column("model", Text),
    Column("prompt", Text),
    Column("options", Text),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("deleted_at", DateTime),
    Column("task_id", Text),
    Column("task_info", Text),
    Column("task_result", Text),
    Column("cost_credits", Integer),
    Column("scene", Text),
    Column("credit_id", Text),
)
credit = Table(
    "credit",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("user_email", Text),
    Column("order_no", Text),
    Column("subscription_no", Text),
    Column("transaction_no", Text, unique=True),
    Column("transaction_type", Text, nullable=False),
    Column("transaction_scene", Text),
    Column("credits", BigInteger, nullable=False),
    Column("remaining_credits", BigInteger),
    Column("description", Text),
    Column("expires_at", DateTime),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("deleted_at", DateTime),
    Column("consumed_detail", Text),
    Column("metadata", Text),
)
TABLES = (user, ai_task, credit)
URL_KEY = {
    "image": ("images", "imageUrl"),
    "video": ("videos", "videoUrl"),
    "music": ("songs", "audioUrl"),
    "speech": ("songs", "audioUrl"),
}


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
        self.users.append(
            {
                "id": uid,
                "name": name,
                "email": email,
                "email_verified": 1,
                "image": None,
                "created_at": at,
                "updated_at": at,
            }
        )
        self.grants[uid] = []
        return uid

    def grant(self, user_id: str, credits: int, scene: str, at: datetime, expires_at: datetime | None = None) -> str:
        gid = self.new_id()
        self.credits[gid] = {
            "id": gid,
            "user_id": user_id,
            "user_email": None,
            "order_no": None,
            "subscription_no": None,
            "transaction_no": gid,
            "transaction_type": "grant",
            "transaction_scene": scene,
            "credits": credits,
            "remaining_credits": credits,
            "description": f"{scene} credits",
            "expires_at": expires_at,
            "status": "active",
            "created_at": at,
            "updated_at": at,
            "deleted_at": None,
            "consumed_detail": None,
            "metadata": None,
        }
        self.grants[user_id].append(_Grant(gid, credits, expires_at, at))
        return gid

    def balance(self, user_id: str, at: datetime) -> int:
        """SUM(remaining_credits) over the user's active grants that have not expired."""
        return sum(g.remaining for g in self.grants[user_id] if g.expires_at is None or g.expires_at > at)

    def generate(
        self,
        user_id: str,
        *,
        media_type: str,
        provider: str,
        model: str,
        prompt: str,
        options: dict[str, Any],
        cost: int,
        at: datetime,
        upstream_id: str,
        status: str = "processing",
    ) -> str | None:
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
                "id": cid,
                "user_id": user_id,
                "user_email": None,
                "order_no": None,
                "subscription_no": None,
                "transaction_no": cid,
                "transaction_type": "consume",
                "transaction_scene": None,
                "credits": -cost,
                "remaining_credits": 0,
                "description": f"{media_type} generation",
                "expires_at": None,
                "status": "active",
                "created_at": at,
                "updated_at": at,
                "deleted_at": None,
                "consumed_detail": json.dumps(detail),
                "metadata": json.dumps({"type": "ai-task", "taskId": tid}),
            }
        self.tasks[tid] = {
            "id": tid,
            "user_id": user_id,
            "media_type": media_type,
            "provider": provider,
            "model": model,
            "prompt": prompt,
            "options": json.dumps(options, sort_keys=True),
            "status": status,
            "created_at": at,
            "updated_at": at,
            "deleted_at": None,
            "task_id": upstream_id,
            "task_info": None,
            "task_result": None,
            "cost_credits": cost,
            "scene": "generate",
            "credit_id": cid,
        }
        return tid

    def succeed(self, task_id: str, urls: list[str], at: datetime) -> None:
        t = self.tasks[task_id]
        key, url_key = URL_KEY.get(t["media_type"], ("images", "imageUrl"))
        t.update(
            status="success",
            updated_at=at,
            task_info=json.dumps({"status": "success", key: [{url_key: u} for u in urls]}),
        )

    def fail(self, task_id: str, code: str, message: str, at: datetime) -> None:
        """`failed`: the consume's credits go back onto their grants (expired or not), the consume row deleted."""
        t = self.tasks[task_id]
        t.update(
            status="failed",
            updated_at=at,
            task_info=json.dumps({"status": "failed", "errorCode": code, "errorMessage": message}),
        )
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
        self.tasks[task_id].update(
            status="canceled", updated_at=at, task_info=json.dumps({"status": "canceled", "errorMessage": "canceled"})
        )

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
            for table, rows in (
                (user, self.users),
                (ai_task, list(self.tasks.values())),
                (credit, list(self.credits.values())),
            ):
                stmt = Prepared(insert(table), conn.dialect, [c.name for c in table.columns])
                for start in range(0, len(rows), 5000):
                    stmt.run(conn, rows[start : start + 5000])
                counts[table.name] = len(rows)
        return counts


def upsert_changed(engine: Engine, tasks: list[dict[str, Any]], credits: list[dict[str, Any]]) -> None:
    """Rows changed after a flush (the benchmark's incremental 1%), written over their ids."""
    with engine.begin() as conn:
        for table, rows in ((ai_task, tasks), (credit, credits)):
            for r in rows:
                conn.execute(
                    update(table).where(table.c.id == r["id"]).values({k: v for k, v in r.items() if k != "id"})
                )


# --- a scenario's run in the template's shape -------------------------------------------------

MEDIA_OF = {"image": "image", "video": "video", "audio": "music"}


@dataclass
class ShapeSummary:
    """What `run --shape shipany` wrote, beside the run's own summary."""

    run: Any  # the RunSummary of the run the rows come from
    rows: dict[str, int]
    refused: int  # generations the template refused: too few unexpired credits
    canceled: int
    gift_expiry_days: float | None

    @property
    def ok(self) -> bool:
        return self.run.ok

    def render_text(self) -> str:
        rows = ", ".join(f"{n:,} {t}" for t, n in self.rows.items())
        expiry = f"{self.gift_expiry_days:g} days" if self.gift_expiry_days else "never"
        return (
            self.run.render_text() + f"\nShipAny shape: {rows}; {self.refused:,} generation(s) refused for too "
            f"few unexpired credits, {self.canceled:,} reported canceled (not refunded); sign-up gifts expire: "
            f"{expiry}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.run.to_dict(),
            "shipany": {
                "rows": self.rows,
                "refused": self.refused,
                "canceled": self.canceled,
                "gift_expiry_days": self.gift_expiry_days,
            },
        }


def run_shipany(
    scenario: Any,
    db_url: str,
    *,
    seed: int | None = None,
    tasks: int | None = None,
    force: bool = False,
    progress: Any = None,
) -> ShapeSummary:
    """Run `scenario` (the ordinary run, into a temporary database of its own) and write what it
    did into `db_url` in the ShipAny template's schema by the template's credit code paths: users
    with their paid packs (starting balance, top-ups) and sign-up gift, every generation that
    reached the provider, its outcome, the FIFO consumes and the refunds of failures."""
    import tempfile
    from datetime import timedelta
    from pathlib import Path

    from sqlalchemy import select

    from rivya_core.domain import INSUFFICIENT_CREDITS, EntryType, TaskStatus
    from rivya_core.stores import schema as contract
    from rivya_core.stores.db import make_engine, sqlite_path
    from rivya_core.targets import ensure_fresh

    from .runner import run_scenario

    ensure_fresh(db_url, force=force, command="run --shape shipany")
    days = scenario.policy.credit_expiry_days
    gift = scenario.grants.signup_gift
    with tempfile.TemporaryDirectory(prefix="rivya-shipany-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'run.db'}"
        summary = run_scenario(scenario, url, seed=seed, tasks=tasks, progress=progress)
        engine = make_engine(url, read_only=True)
        with engine.connect() as conn:
            accounts = list(conn.execute(select(contract.account).order_by(contract.account.c.id)).mappings())
            grants = list(
                conn.execute(
                    select(contract.credit_ledger)
                    .where(contract.credit_ledger.c.entry_type == EntryType.GRANT.value)
                    .order_by(contract.credit_ledger.c.id)
                ).mappings()
            )
            tasks_ = list(conn.execute(select(contract.ai_task).order_by(contract.ai_task.c.id)).mappings())
        engine.dispose()
    rng = random.Random(f"{summary.seed}:shipany")
    w = ShipAnyWriter(rng)
    uid = {}
    events: list[tuple[datetime, int, int, str, Any]] = []  # (at, order, seq, kind, row)
    for a in accounts:
        uid[a["id"]] = w.add_user(a["name"], a["email"], a["created_at"])
        if gift:
            expires = a["created_at"] + timedelta(days=days) if days else None
            w.grant(uid[a["id"]], gift, "gift", a["created_at"], expires)
    for g in grants:
        events.append((g["created_at"], 0, g["id"], "grant", g))
    for t in tasks_:
        if t["error_code"] == INSUFFICIENT_CREDITS or not t["upstream_task_id"]:
            continue  # the template checks credits, then calls the provider: neither leaves a row
        events.append((t["submitted_at"] or t["created_at"], 1, t["id"], "start", t))
        if t["status"] in (TaskStatus.SUCCESS, TaskStatus.FAILED) and t["finished_at"] is not None:
            events.append((t["finished_at"], 2, t["id"], "end", t))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    started: dict[int, str] = {}
    canceled = 0
    for at, _order, _seq, kind, row in events:
        if kind == "grant":
            w.grant(uid[row["user_id"]], int(row["amount"]), "payment", at)
        elif kind == "start":
            tid = w.generate(
                uid[row["user_id"]],
                media_type=MEDIA_OF.get(row["category"], "image"),
                provider=row["provider"],
                model=row["model"],
                prompt=row["prompt"],
                options=row["params"] if isinstance(row["params"], dict) else {},
                cost=int(row["reserved_credits"]),
                at=at,
                upstream_id=row["upstream_task_id"],
            )
            if tid is not None:
                started[row["id"]] = tid
        elif row["id"] in started:
            tid = started[row["id"]]
            if row["status"] == TaskStatus.SUCCESS:
                w.succeed(tid, list(row["result_urls"] or []), at)
            elif rng.random() < scenario.grants.canceled_fraction:
                w.cancel(tid, at)
                canceled += 1
            else:
                w.fail(tid, row["error_code"] or "failed", row["error_message"] or "", at)
    end = max((e[0] for e in events), default=None)
    if end is not None:
        w.expire_due(end)
    target = make_engine(db_url)
    try:
        path = sqlite_path(db_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        create_schema(target)
        rows = w.flush(target)
    finally:
        target.dispose()
    return ShapeSummary(summary, rows, w.refused, canceled, days)
