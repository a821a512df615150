"""The troubleshooting checklist for a chat turn's settlement (and its tool-backed tasks)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from .. import verdicts
from ..audit import CHAT_SETTLE_GRACE_S
from ..domain import EntryType, NotFound
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..stores.schema import ai_task, chat_message, chat_session, credit_ledger
from ..verdicts import Severity
from .diagnose import ChecklistItem, Diagnosis, _age, _slim, diagnose
from .queries import Bind, connect, resolve_now, rows
from .signals import _cap


def diagnose_chat_message(
    bind: Bind,
    message_id: int,
    policy: BillingPolicy = DEFAULT_POLICY,
    now: datetime | None = None,
    *,
    grace_s: float = CHAT_SETTLE_GRACE_S,
) -> Diagnosis:
    """The checklist for a chat turn's settlement (and its tool-backed tasks); NotFound for a missing id."""
    mid = message_id if isinstance(message_id, int) and 0 <= message_id < 2**63 else None
    with connect(bind) as conn:
        row = (
            conn.execute(
                select(*chat_message.c, chat_session.c.user_id, chat_session.c.model)
                .select_from(chat_message.outerjoin(chat_session, chat_session.c.id == chat_message.c.session_id))
                .where(chat_message.c.id == mid)
            ).first()
            if mid is not None
            else None
        )
        if row is None:
            raise NotFound(f"chat message {message_id} not found")
        msg = dict(row._mapping)
        ledger = rows(
            conn.execute(
                select(*credit_ledger.c).where(credit_ledger.c.chat_message_id == mid).order_by(credit_ledger.c.id)
            )
        )
        tasks = [
            r[0]
            for r in conn.execute(
                select(ai_task.c.id).where(ai_task.c.chat_message_id == mid).order_by(ai_task.c.id).limit(20)
            )
        ]
    at = resolve_now(bind, now)
    tool = [diagnose(bind, tid, policy, at, with_signals=False) for tid in tasks]
    return checklist_for_chat(msg, ledger, tool, policy, at, grace_s)


def checklist_for_chat(msg, ledger, tool: list[Diagnosis], policy, now, grace_s) -> Diagnosis:
    chat_rows = [
        e for e in ledger if e["entry_type"] in (EntryType.CHAT_RESERVE, EntryType.CHAT_CHARGE, EntryType.CHAT_REFUND)
    ]
    reserve = -sum(e["amount"] for e in chat_rows if e["entry_type"] == EntryType.CHAT_RESERVE)
    chat_refunds = [e for e in chat_rows if e["entry_type"] == EntryType.CHAT_REFUND]
    net = sum(e["amount"] for e in chat_rows)
    charged = msg["charged_credits"] or 0
    status = msg["status"]
    kind = "tool-backed chat" if tool else "chat settlement"
    type_item = ChecklistItem(
        "task_type",
        "What type of task is this?",
        (
            f"{kind.capitalize()}: turn #{msg['id']} in session #{msg['session_id']} ({msg['model']}); no ai_task, "
            "billed by message-level settlement"
            + (f"; started {_cap(len(tool), 'generation task')}" if tool else "")
            + "."
        ),
        Severity.INFO,
        [_slim(msg, "content")],
    )
    q = "Were credits reserved first and settled after usage?"
    age = (now - msg["created_at"]).total_seconds()
    if status == "reserved":
        late = age > grace_s
        credit = ChecklistItem(
            "credits",
            q,
            f"Reserved {reserve} credits {_age(age)} ago, not settled yet"
            + (", past the grace period." if late else "."),
            Severity.WARN if late else Severity.INFO,
            chat_rows,
        )
        verdict = (
            (verdicts.Verdict.CHAT_RESERVATION_OVERDUE, verdicts.NextAction.SETTLE_OR_FAIL_TURN)
            if late
            else (verdicts.Verdict.CHAT_RESERVED, verdicts.NextAction.WAIT)
        )
    else:
        over = charged > (msg["reserved_credits"] or 0) and not policy.chat_allow_overrun
        broken = net != -charged or len(chat_refunds) > 1 or over
        credit = ChecklistItem(
            "credits",
            q,
            f"{status}: reserved {reserve}, charged {charged}, refunded "
            f"{sum(e['amount'] for e in chat_refunds)} in {_cap(len(chat_refunds), 'refund')}; "
            f"ledger net {net}" + (" — does not match the charge." if broken else "."),
            Severity.FAIL if broken else Severity.OK,
            chat_rows,
        )
        V, A = verdicts.Verdict, verdicts.NextAction
        if broken:
            verdict = (V.CHAT_SETTLEMENT_MISMATCH, A.INVESTIGATE_LEDGER)
        elif status == "failed":
            verdict = (V.CHAT_FAILED_REFUNDED, A.NOTHING)
        elif status == "refused":
            verdict = (V.CHAT_REFUSED, A.TELL_USER_TOP_UP)
        else:
            verdict = (V.CHAT_SETTLED_REFUNDED if chat_refunds else V.CHAT_SETTLED, A.NOTHING)
    code, action = verdict
    verdict_text, action_text = verdicts.VERDICT_TEXT[code], verdicts.ACTION_TEXT[action]
    items = [type_item, credit]
    if tool:
        bad = [
            d
            for d in tool
            if d.action_code != verdicts.NextAction.NOTHING and d.verdict_code != verdicts.Verdict.GENERATING
        ]
        items.append(
            ChecklistItem(
                "tool_tasks",
                "Did the tool-backed generations finish?",
                "; ".join(f"task #{d.id}: {d.verdict}" for d in tool) + ".",
                Severity.WARN if bad else Severity.OK,
                [{"task_id": d.id, "verdict": d.verdict, "next_action": d.next_action} for d in tool],
            )
        )
        if bad and action == verdicts.NextAction.NOTHING:
            verdict_text += f"; tool task #{bad[0].id}: {bad[0].verdict}"
            action, action_text = bad[0].action_code or action, bad[0].next_action
    return Diagnosis(
        "chat_message", msg["id"], kind, items, verdict_text, action_text, now, verdict_code=code, action_code=action
    )
