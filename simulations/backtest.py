"""Backtest billing policies on recorded history: the exact part and its self-check.

What a policy decides without changing time is re-applied to every recorded
task and chat turn as it happened, in the ledger's own order:

- the task price (`BillingPolicy.price` over the catalogue's base credits of the
  recorded params), spent before submission; a balance too low under the new
  price is an insufficient-credit rejection the policy *caused*, and a task the
  history refused for credits that the new price lets through is one it
  *avoided* (its outcome is unknown: it never ran, so its credits are counted
  as charged and kept);
- the refund of a failed task (`BillingPolicy.refunds` of its recorded failure
  class), at the moment the history refunded it or, when it did not, the
  moment it failed;
- the chat reservation (`BillingPolicy.chat_reservation` of the recorded turn's
  full-answer cost, recovered exactly from its recorded reservation and the
  recorded margin) and the settlement on recorded usage
  (`BillingPolicy.chat_settlement`, the overrun charged only when the balance
  covers it); a chat turn the history refused stays refused (its estimate is
  not recorded);
- duplicate blocking (`duplicate_runs = "block"`): a task with the same user,
  model and prompt as a still-running task created within the window, priced
  at least as high (`BillingPolicy.is_heavier_duplicate`), is not run.
  Duplicates a history recorded under "block" never became rows and cannot
  be re-added.

Balances are re-run through the ledger in order (grants, top-ups and
adjustments as recorded), so rejections follow from the balances each policy
leaves. Everything is counted per policy, per model, per provider and per day
(of the task or turn's creation), with the paired difference.

Money (rivya_core.cost): revenue in money is each policy's revenue times its `credit_value`;
provider cost is what each task that ran under the policy was billed — *exact* where the record
says (the provider's reported run seconds `ai_task.provider_run_s`; for per-output prices, the
outputs it delivered; chat tokens as recorded), *simulated* where it does not (a per-second model
without reported seconds: its recorded submitted → finished time, queueing included, an upper
bound) — and the report counts how many tasks each covers; margin is the difference.

The self-check replays the history under the policy it was recorded under and
compares with the database's own ledger row by row (amount and balance after),
by entry type, and per account at the end of the window: any difference is a
bug, reported with the first diverging rows.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from rivya_core import cost, rules
from rivya_core.credits import chat_figures
from rivya_core.domain import INSUFFICIENT_CREDITS, EntryType, TaskStatus
from rivya_core.policy import BillingPolicy

from . import kpis
from .history import ChatRow, History, LedgerRow, TaskRow

EXACT_KPIS = (
    "tasks",
    "charged",
    "refunded",
    "kept",
    "chat_charged",
    "revenue",
    "failures_without_refund",
    "insufficient_credit_rejections",
    "rejections_caused",
    "rejections_avoided",
    "duplicates_blocked",
)
KPI_HELP = {k: kpis.meaning(k) for k in EXACT_KPIS}  # what each counts: simulations/kpis.py
DIMENSIONS = ("model", "provider", "day")

# timeline kinds
_PASS, _CHARGE, _FINISH, _RESERVE, _SETTLE = range(5)


@dataclass
class Timeline:
    """The policy-independent order of everything that moved (or could move) credits."""

    events: list[tuple[int, int]]  # (kind, index into tasks / chats / ledger)
    task_base: list[int | None]  # catalogue base credits of each task (None: model unknown)
    chat_full: list[int | None]  # full-answer credits of each chat turn's reservation
    chat_used: list[int | None]  # credits of each turn's recorded usage
    task_charged: list[bool]  # the history charged it
    chat_reserved: list[bool]


def reached(ledger: list[LedgerRow]) -> list[float]:
    """For each ledger row (in id order, the order of writing), the latest time any row up to it
    carries: a non-decreasing clock to place unrecorded moments (a refusal, a failure kept by the
    policy) among the rows, also when writers' clocks disagree and a later row has an earlier time.
    Where the timestamps follow the ids it is the rows' own times."""
    out, top = [], float("-inf")
    for r in ledger:
        top = r.at if r.at > top else top
        out.append(top)
    return out


def build_timeline(h: History, recorded: BillingPolicy) -> Timeline:
    times = reached(h.ledger)
    tix = {t.id: i for i, t in enumerate(h.tasks)}
    cix = {c.id: i for i, c in enumerate(h.chats)}
    keyed: list[tuple[float, float, int, int, int]] = []  # (position, time, kind, index, seq)
    charged = [False] * len(h.tasks)
    refunded = [False] * len(h.tasks)
    reserved = [False] * len(h.chats)
    charged_at = [0] * len(h.tasks)  # ledger position of each task's charge
    reserved_at = [0] * len(h.chats)  # ... and of each chat turn's reservation
    settled = [False] * len(h.chats)
    for i, r in enumerate(h.ledger):
        et = r.entry_type
        if r.own and r.task_id is not None and r.task_id in tix:
            ti = tix[r.task_id]
            if et == EntryType.CONSUME and not charged[ti]:
                charged[ti] = True
                charged_at[ti] = i
                keyed.append((i, r.at, _CHARGE, ti, 0))
                continue
            if et == EntryType.REFUND and not refunded[ti]:
                refunded[ti] = True
                keyed.append((i, r.at, _FINISH, ti, 0))
                continue
        elif r.own and r.chat_message_id is not None and r.chat_message_id in cix and r.task_id is None:
            ci = cix[r.chat_message_id]
            if et == EntryType.CHAT_RESERVE and not reserved[ci]:
                reserved[ci] = True
                reserved_at[ci] = i
                keyed.append((i, r.at, _RESERVE, ci, 0))
                continue
            if et in (EntryType.CHAT_REFUND, EntryType.CHAT_CHARGE):
                if not settled[ci]:
                    settled[ci] = True
                    keyed.append((i, r.at, _SETTLE, ci, 0))
                continue  # the settlement's second row is part of the same step
        keyed.append((i, r.at, _PASS, i, 0))
    seq = 0
    by_user: defaultdict[int, list[int]] = defaultdict(list)
    if h.refused_for_credits:
        for i, r in enumerate(h.ledger):
            by_user[r.user_id].append(i)
    for ti, t in enumerate(h.tasks):
        seq += 1
        if t.error_code == INSUFFICIENT_CREDITS and not charged[ti]:
            keyed.append((_refusal_position(h, times, by_user[t.user_id], t), t.created, _CHARGE, ti, seq))
        elif t.status == TaskStatus.FAILED and not refunded[ti] and charged[ti] and t.finished is not None:
            # never before its own charge, whatever the clocks say
            keyed.append((max(bisect_right(times, t.finished), charged_at[ti] + 1) - 0.5, t.finished, _FINISH, ti, seq))
    for ci, c in enumerate(h.chats):
        seq += 1
        if not reserved[ci]:
            keyed.append((bisect_left(times, c.created) - 0.5, c.created, _RESERVE, ci, seq))
        elif not settled[ci] and c.settled is not None:
            keyed.append((max(bisect_right(times, c.settled), reserved_at[ci] + 1) - 0.5, c.settled, _SETTLE, ci, seq))
    keyed.sort()
    cat = h.catalog
    specs = {m.id: m for m in cat.models}
    base_cache: dict[tuple[str, Any], int | None] = {}
    task_base: list[int | None] = []
    for t in h.tasks:
        spec = specs.get(t.model)
        dur = spec.pricing.duration_param if spec is not None else None
        k = (t.model, repr(t.params.get(dur)) if dur and t.params else None)  # only a duration moves a price
        if k not in base_cache:
            base_cache[k] = spec.base_credits(t.params) if spec is not None else None
        task_base.append(base_cache[k])
    chat_full, chat_used = [], []
    for c in h.chats:
        spec = specs.get(c.model)
        chat_full.append(_full_turn_credits(c.reserved, recorded) if reserved[cix[c.id]] else None)
        if spec is None or c.completion_tokens is None:
            chat_used.append(None if spec is not None or c.charged is None else int(c.charged))
        else:
            chat_used.append(spec.chat_credits(int(c.prompt_tokens), int(c.completion_tokens)))
    return Timeline([(k[2], k[3]) for k in keyed], task_base, chat_full, chat_used, charged, reserved)


def _refusal_position(h: History, times: list[float], mine: list[int], t: TaskRow) -> float:
    """Where among the ledger rows a task was refused for credits: where the account held the
    balance the refusal recorded (`charge_refused` event), nearest to the moment it was refused
    (a top-up the refusal prompted comes after it); without that balance, before the rows written
    at that moment."""
    lo = bisect_left(times, t.created)
    seen = h.refused_balance.get(t.id)
    if seen is None:
        return lo - 0.5
    opening = h.opening.get(t.user_id, 0)

    def before(k: int) -> int:  # the account's balance before its k-th row (after its last: k = len)
        return h.ledger[mine[k - 1]].balance_after if k else opening

    def place(k: int) -> int:
        return mine[k] if k < len(mine) else len(h.ledger)

    # the balance before the account's k-th row holds from just after its (k-1)-th row up to that
    # row: the places nearest the moment, right of it (never before the moment) and left of it
    k0 = bisect_left(mine, lo)
    right = next((k for k in range(k0, len(mine) + 1) if before(k) == seen), None)
    at_right = None if right is None else max(lo, place(right - 1) + 1 if right else 0)
    reach = -1 if at_right is None else lo - (at_right - lo)  # a left place farther than that loses
    left = next((k for k in range(k0 - 1, -1, -1) if place(k) < reach or before(k) == seen), None)
    at_left = None if left is None or place(left) < reach else place(left)
    if at_left is None and at_right is None:
        return lo - 0.5
    if at_right is None or (at_left is not None and lo - at_left <= at_right - lo):
        return at_left - 0.5
    return at_right - 0.5


def _full_turn_credits(reserved: int, recorded: BillingPolicy) -> int | None:
    """The full-answer cost a recorded reservation was made from: the one whole number F with
    recorded.chat_reservation(F) == reserved (a margin of at least 1 leaves at most one)."""
    m = recorded.chat_reserve_margin
    lo = max(0, int((reserved - 1) / m) - 1)
    for f in range(lo, int(reserved / m) + 2):
        if recorded.chat_reservation(f) == reserved:
            return f
    return None


@dataclass
class PolicyResult:
    policy: BillingPolicy
    totals: Counter = field(default_factory=Counter)
    groups: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    balances: dict[int, int] = field(default_factory=dict)
    rows: list[tuple[str, int | None, int | None, int, int, int]] | None = None  # (type, task, msg, user, amount, bal)

    def kpis(self) -> dict[str, int]:
        return {k: int(self.totals[k]) for k in EXACT_KPIS}

    def money(self, counts: Counter | None = None) -> dict[str, float]:
        """Revenue (money), provider cost and margin, and how many tasks' cost is exact or simulated."""
        c = self.totals if counts is None else counts
        revenue = cost.money(c["revenue"], self.policy)
        return {
            "revenue_money": round(revenue, 6),
            "provider_cost": round(c["provider_cost"], 6),
            "margin": round(revenue - c["provider_cost"], 6),
            "cost_exact": int(c["cost_exact"]),
            "cost_simulated": int(c["cost_simulated"]),
        }


def task_cost(spec: Any, t: TaskRow) -> tuple[float, bool]:
    """What the provider billed for a recorded task, and whether the record says it exactly."""
    price = spec.provider_price if spec is not None else None
    if price is None or price.unit == "per_output":
        return cost.job_cost(spec, None, t.outputs if t.status == TaskStatus.SUCCESS else 0), True
    if t.run_s is not None:
        return cost.job_cost(spec, t.run_s, 0), True
    ran = (t.finished - t.submitted) if t.finished is not None and t.submitted is not None else 0.0
    return cost.job_cost(spec, max(0.0, ran), 0), False


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def replay(h: History, tl: Timeline, policy: BillingPolicy, *, record: bool = False) -> PolicyResult:
    """Re-apply policy to the recorded history (the exact part)."""
    res = PolicyResult(policy, rows=[] if record else None)
    tot, groups, rows = res.totals, res.groups, res.rows
    bal: defaultdict[int, int] = defaultdict(int, h.opening)
    ntask = len(h.tasks)
    spent = [0] * ntask
    held = [0] * len(h.chats)
    ended = [None] * ntask  # end time of a task refused under the policy (created) or blocked
    block = policy.duplicate_runs == "block"
    running: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    window = policy.duplicate_window_s
    cells: dict[tuple[str, str, int], Counter] = {}  # (model, provider, day) -> KPI counts
    cat = h.catalog
    providers = {m.id: m.provider for m in cat.models}

    def gs(model: str, provider: str, created: float) -> Counter:
        key = (model, provider, int(created // 86400))
        g = cells.get(key)
        if g is None:
            g = cells[key] = Counter()
        return g

    def add(g: Counter, kpi: str, n: int = 1) -> None:
        g[kpi] += n

    for kind, i in tl.events:
        if kind == _PASS:
            r = h.ledger[i]
            bal[r.user_id] += r.amount
            if rows is not None:
                rows.append((r.entry_type, r.task_id, r.chat_message_id, r.user_id, r.amount, bal[r.user_id]))
        elif kind == _CHARGE:
            t: TaskRow = h.tasks[i]
            g = gs(t.model, t.provider, t.created)
            base = tl.task_base[i]
            price = (
                policy.price(t.model, base)
                if base is not None
                else (int(policy.price_overrides[t.model]) if t.model in policy.price_overrides else t.reserved)
            )
            if block:
                key = (t.user_id, t.model, t.prompt)
                mine = running[key]
                dup = False
                new = rules.Run(t.id, t.model, t.prompt, price, _at(t.created))
                for j in mine:
                    o = h.tasks[j]
                    end = ended[j] if ended[j] is not None else (o.finished if o.finished is not None else float("inf"))
                    if (
                        end > t.created
                        and o.created >= t.created - window
                        and rules.heavier_duplicate(
                            new, rules.Run(o.id, o.model, o.prompt, spent[j] or price, _at(o.created)), policy
                        )
                    ):
                        dup = True
                        break
                if dup:
                    ended[i] = t.created
                    add(g, "duplicates_blocked")
                    continue
                mine.append(i)
            add(g, "tasks")
            if bal[t.user_id] >= price:
                bal[t.user_id] -= price
                spent[i] = price
                add(g, "charged", price)
                add(g, "kept", price)
                add(g, "revenue", price)
                if t.submitted is not None:  # it reached the provider: what the provider billed for it
                    billed, exact = task_cost(cat.get(t.model), t)
                    g["provider_cost"] += billed
                    add(g, "cost_exact" if exact else "cost_simulated")
                if not tl.task_charged[i]:
                    add(g, "rejections_avoided")
                if rows is not None:
                    rows.append((EntryType.CONSUME.value, t.id, t.chat_message_id, t.user_id, -price, bal[t.user_id]))
            else:
                ended[i] = t.created
                add(g, "insufficient_credit_rejections")
                if tl.task_charged[i]:
                    add(g, "rejections_caused")
        elif kind == _FINISH:
            t = h.tasks[i]
            amount = spent[i]
            if not amount:
                continue
            g = gs(t.model, t.provider, t.created)
            if rules.refund_due(
                rules.RefundFacts(TaskStatus.FAILED, t.failure_class, charged=True, refunded=False), policy
            ):
                bal[t.user_id] += amount
                add(g, "refunded", amount)
                add(g, "kept", -amount)
                add(g, "revenue", -amount)
                if rows is not None:
                    rows.append((EntryType.REFUND.value, t.id, t.chat_message_id, t.user_id, amount, bal[t.user_id]))
            else:
                add(g, "failures_without_refund")
        elif kind == _RESERVE:
            c: ChatRow = h.chats[i]
            g = gs(c.model, providers.get(c.model, "chat"), c.created)
            full = tl.chat_full[i]
            if full is None:  # refused in the history: its estimate is not recorded
                add(g, "insufficient_credit_rejections")
                continue
            need = policy.chat_reservation(full)
            if bal[c.user_id] >= need:
                bal[c.user_id] -= need
                held[i] = need
                if rows is not None:
                    rows.append((EntryType.CHAT_RESERVE.value, None, c.id, c.user_id, -need, bal[c.user_id]))
            else:
                add(g, "insufficient_credit_rejections")
                add(g, "rejections_caused")
        elif kind == _SETTLE:
            c = h.chats[i]
            hold = held[i]
            if not hold:
                continue
            held[i] = 0
            g = gs(c.model, providers.get(c.model, "chat"), c.created)
            used = tl.chat_used[i]
            if c.status != "settled" or used is None:
                charged, overrun = 0, 0
            else:
                charged, overrun = policy.chat_settlement(used, hold)
            if overrun and bal[c.user_id] >= overrun:
                bal[c.user_id] -= overrun
                charged += overrun
                if rows is not None:
                    rows.append((EntryType.CHAT_CHARGE.value, None, c.id, c.user_id, -overrun, bal[c.user_id]))
            back = hold - charged if charged < hold else 0
            if back:
                bal[c.user_id] += back
                if rows is not None:
                    rows.append((EntryType.CHAT_REFUND.value, None, c.id, c.user_id, back, bal[c.user_id]))
            add(g, "chat_charged", charged)
            add(g, "revenue", charged)
            if c.status == "settled":  # recorded tokens: the provider's bill, exactly
                g["provider_cost"] += cost.chat_cost(cat.get(c.model), c.prompt_tokens, c.completion_tokens or 0)
    # turns still holding a reservation at the end: what they hold is spent so far
    for i, hold in enumerate(held):
        if hold:
            c = h.chats[i]
            g = gs(c.model, providers.get(c.model, "chat"), c.created)
            add(g, "chat_charged", hold)
            add(g, "revenue", hold)
    for (model, provider, day), g in cells.items():
        tot.update(g)
        for key in (("model", model), ("provider", provider), ("day", _day(day * 86400.0))):
            groups[key].update(g)
    res.balances = dict(bal)
    return res


# --- the self-check -------------------------------------------------------------------


@dataclass
class SelfCheck:
    policy: str
    ok: bool
    rows_compared: int
    recorded: dict[str, int]
    replayed: dict[str, int]
    diverging: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "ok": self.ok,
            "rows_compared": self.rows_compared,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "first_diverging_rows": self.diverging,
        }


def _sums(rows: list[tuple[str, int]]) -> dict[str, int]:
    out: Counter = Counter()
    for et, amount in rows:
        out[et] += amount
    return {k: int(v) for k, v in sorted(out.items())}


def self_check(h: History, tl: Timeline, recorded: BillingPolicy, limit: int = 5) -> tuple[SelfCheck, PolicyResult]:
    """Replay under the recorded policy and compare with the recorded ledger, row by row
    (type, task or turn, account, amount, balance after), by entry type, and per account."""
    res = replay(h, tl, recorded, record=True)
    mine = res.rows or []
    theirs = h.ledger
    diverging: list[dict[str, Any]] = []
    n = max(len(mine), len(theirs))
    for k in range(n):
        a = theirs[k] if k < len(theirs) else None
        b = mine[k] if k < len(mine) else None
        ra = (a.entry_type, a.task_id, a.chat_message_id, a.user_id, a.amount, a.balance_after) if a else None
        if ra != b:
            diverging.append(
                {
                    "position": k,
                    "recorded": None
                    if a is None
                    else {
                        "id": a.id,
                        "entry_type": a.entry_type,
                        "task_id": a.task_id,
                        "chat_message_id": a.chat_message_id,
                        "user_id": a.user_id,
                        "amount": a.amount,
                        "balance_after": a.balance_after,
                    },
                    "replayed": None
                    if b is None
                    else dict(
                        zip(
                            ("entry_type", "task_id", "chat_message_id", "user_id", "amount", "balance_after"),
                            b,
                            strict=True,
                        )
                    ),
                }
            )
            if len(diverging) >= limit:
                break
    rec_sums = _sums([(r.entry_type, r.amount) for r in theirs])
    rep_sums = _sums([(r[0], r[4]) for r in mine])
    final_rec: dict[int, int] = dict(h.opening)
    for r in theirs:
        final_rec[r.user_id] = r.balance_after
    bad_users = sorted(u for u in set(final_rec) | set(res.balances) if final_rec.get(u, 0) != res.balances.get(u, 0))
    if bad_users and not diverging:
        u = bad_users[0]
        diverging.append(
            {"account": u, "recorded_balance": final_rec.get(u, 0), "replayed_balance": res.balances.get(u, 0)}
        )
    recorded_kpis = {
        "charged": -rec_sums.get("consume", 0),
        "refunded": rec_sums.get("refund", 0),
        "kept": -rec_sums.get("consume", 0) - rec_sums.get("refund", 0),
        "chat_charged": chat_figures(rec_sums).charged,
        "accounts_differing": 0,
    }
    k = res.kpis()
    replayed_kpis = {
        "charged": k["charged"],
        "refunded": k["refunded"],
        "kept": k["kept"],
        "chat_charged": k["chat_charged"],
        "accounts_differing": len(bad_users),
    }
    ok = not diverging and rec_sums == rep_sums and recorded_kpis == replayed_kpis
    if not ok and not diverging:
        diverging.append({"totals": "by entry type", "recorded": rec_sums, "replayed": rep_sums})
    res.rows = None
    return SelfCheck(recorded.name, ok, len(theirs), recorded_kpis, replayed_kpis, diverging), res


# --- the report --------------------------------------------------------------------------


def describe_window(w: dict[str, Any]) -> str:
    """The window a report covers, in dates: the bounds asked for, else the first and the latest
    record it holds (`window` of BacktestReport.to_dict)."""

    def day(iso: str | None) -> str:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S") if iso else ""

    if "first" not in w:  # a report from before the window recorded its dates
        return f"({day(w['since']) or 'start'} to {day(w['until']) or 'end'})"
    if w["first"] is None:
        asked = " to ".join(x for x in (day(w["since"]) or "the start", day(w["until"]) or "now"))
        return f"(no records from {asked})"
    if not w["since"] and not w["until"]:
        return f"recorded {day(w['first'])} to {day(w['last'])} UTC (the whole history)"
    start = f"{day(w['since'])} (the window's start)" if w["since"] else f"{day(w['first'])} (the first record)"
    end = (
        f"{day(w['until'])} UTC (the window's end, exclusive)"
        if w["until"]
        else f"{day(w['last'])} UTC (the latest record)"
    )
    return f"from {start} to {end}"


@dataclass
class BacktestReport:
    window: dict[str, Any]
    policies: list[BillingPolicy]
    results: list[PolicyResult]
    self_check: SelfCheck
    recorded_from: str
    timing: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.self_check.ok

    def by(self, dim: str) -> list[dict[str, Any]]:
        a, b = self.results[0], self.results[-1]
        keys = sorted({k for r in self.results for (d, k) in r.groups if d == dim})
        out = []
        for key in keys:
            ga, gb = a.groups.get((dim, key), Counter()), b.groups.get((dim, key), Counter())
            row: dict[str, Any] = {dim: key}
            for kpi in (
                "tasks",
                "charged",
                "refunded",
                "kept",
                "chat_charged",
                "revenue",
                "failures_without_refund",
                "insufficient_credit_rejections",
                "duplicates_blocked",
            ):
                row[f"{kpi}_a"] = int(ga[kpi])
                row[f"{kpi}_b"] = int(gb[kpi])
                row[f"{kpi}_diff"] = int(gb[kpi] - ga[kpi])
            out.append(row)
        return out

    def money_table(self) -> dict[str, Any]:
        """Revenue (money), provider cost and margin of A and B, in total and per provider and model;
        `source` says how many tasks' cost the record gives exactly and how many are simulated."""
        a, b = self.results[0], self.results[-1]

        def pair(ma: dict[str, float], mb: dict[str, float]) -> dict[str, Any]:
            out = {
                k: {"a": ma[k], "b": mb[k], "diff": round(mb[k] - ma[k], 6)}
                for k in ("revenue_money", "provider_cost", "margin")
            }
            out["source"] = {"exact_tasks": mb["cost_exact"], "simulated_tasks": mb["cost_simulated"]}
            return out

        table: dict[str, Any] = {"currency": cost.CURRENCY, "total": pair(a.money(), b.money())}
        for dim in ("provider", "model"):
            keys = sorted({k for r in self.results for (d, k) in r.groups if d == dim})
            table[f"by_{dim}"] = {
                k: pair(a.money(a.groups.get((dim, k), Counter())), b.money(b.groups.get((dim, k), Counter())))
                for k in keys
            }
        return table

    def to_dict(self) -> dict[str, Any]:
        a, b = self.results[0], self.results[-1]
        ka, kb = a.kpis(), b.kpis()
        out = {
            "window": self.window,
            "policies": [p.name for p in self.policies],
            "exact": {
                "kpis": {
                    k: {"a": ka[k], "b": kb[k], "diff": kb[k] - ka[k], "source": "exact", "meaning": KPI_HELP[k]}
                    for k in EXACT_KPIS
                },
                **{f"by_{d}": self.by(d) for d in DIMENSIONS},
            },
            "money": self.money_table(),
            "self_check": {**self.self_check.to_dict(), "recorded_policy_from": self.recorded_from},
        }
        if self.timing is not None:
            out["timing"] = self.timing
        return out

    def render_text(self) -> str:
        a, b = self.results[0], self.results[-1]
        ka, kb = a.kpis(), b.kpis()
        na, nb = a.policy.name, b.policy.name
        w = self.window
        lines = [
            f"backtest {w['tasks']} tasks, {w['chat_turns']} chat turns, {w['ledger_rows']} ledger rows "
            f"{describe_window(w)}",
            "",
            f"exact part (re-applied to every recorded task and chat turn): A = {na}, B = {nb}",
            f"  {'kpi':34}{'A':>14}{'B':>14}{'B - A':>14}",
        ]
        for k in EXACT_KPIS:
            lines.append(f"  {k:34}{ka[k]:>14,}{kb[k]:>14,}{kb[k] - ka[k]:>+14,}")
        lines += ["", "  by model (revenue, refunded, failures without refund: B - A)"]
        for row in self.by("model"):
            lines.append(
                f"  {row['model']:34} revenue {row['revenue_diff']:>+10,}  refunded {row['refunded_diff']:>+10,}"
                f"  failures w/o refund {row['failures_without_refund_diff']:>+6,}"
            )
        money = self.money_table()
        src = money["total"]["source"]
        lines += [
            "",
            f"  money ({money['currency']}; provider cost exact for {src['exact_tasks']:,} tasks, simulated "
            f"for {src['simulated_tasks']:,} from their recorded submitted → finished time)",
        ]
        for name, row in [("total", money["total"]), *money["by_provider"].items()]:
            lines.append(
                f"  {name:20}"
                + "".join(
                    f"  {k.replace('_money', '')} {row[k]['a']:,.2f} → {row[k]['b']:,.2f} ({row[k]['diff']:+,.2f})"
                    for k in ("revenue_money", "provider_cost", "margin")
                )
            )
        sc = self.self_check
        lines += [
            "",
            f"self-check under the recorded policy {sc.policy!r} ({self.recorded_from}): "
            + (
                f"OK, the replay reproduces the recorded ledger to the credit ({sc.rows_compared:,} rows)"
                if sc.ok
                else "FAILED"
            ),
        ]
        if not sc.ok:
            lines += [f"  {json.dumps(d, default=str)}" for d in sc.diverging]
        if self.timing is not None:
            lines += ["", *self.timing.get("text", [])]
        return "\n".join(lines)


def backtest(h: History, policies: list[BillingPolicy], recorded: BillingPolicy, recorded_from: str) -> BacktestReport:
    tl = build_timeline(h, recorded)
    check, as_recorded = self_check(h, tl, recorded)
    same = lambda p: replace(p, name="") == replace(recorded, name="")  # noqa: E731
    results = [replace(as_recorded, policy=p) if same(p) else replay(h, tl, p) for p in policies]
    first, last = h.span()
    window = {
        "since": h.since.isoformat() if h.since else None,
        "until": h.until.isoformat() if h.until else None,
        "first": _at(first).isoformat() if first is not None else None,
        "last": _at(last).isoformat() if last is not None else None,
        "tasks": len(h.tasks),
        "chat_turns": len(h.chats),
        "ledger_rows": len(h.ledger),
    }
    return BacktestReport(window, policies, results, check, recorded_from)
