"""The guide's troubleshooting checklist, answered for one task or chat turn with evidence.

`diagnose(engine, task_id)` reads the task's rows (`queries.task_detail`) and
answers, in the guide's order: what type of task this is; whether credits were
reserved before provider submission; what the callbacks, polls and re-checks
said, and which status reads the provider failed (`poll_error`: while every read
since the provider last answered failed, a stuck task is re-checked later, after
looking for a provider incident); whether it is in history and was notified; whether the failure is the
user's to correct; whether credits should be reversed and were. It ends with a
verdict and the next action for support. `diagnose_chat_message` does the same
for a chat turn's settlement, and `recheck_signals` raises the guide's
"Recheck Before Running Again" signals for a user. Ages are judged at `now`,
which defaults to the latest timestamp in the database (see `audit`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, select

from .. import rules, upstream_cancel
from ..audit import CHAT_SETTLE_GRACE_S
from ..domain import INSUFFICIENT_CREDITS, TERMINAL, EntryType, EventKind, NotFound, TaskStatus
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..stores.schema import ai_task, chat_message, chat_session, credit_ledger
from .alerts import provider_incident
from .queries import ACTIVE_STATES, Bind, connect, jsonable, resolve_now, rows, task_detail

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
_USER_ADVICE = {
    "prompt_too_long": "tell the user to shorten the prompt",
    "prompt_empty": "tell the user to write a prompt",
    "content_policy": "tell the user to rephrase the prompt (content policy)",
    "nsfw": "tell the user to rephrase the prompt (content policy)",
    "moderation": "tell the user to rephrase the prompt (moderation)",
    "reference_too_large": "tell the user to upload a smaller reference file",
}


@dataclass
class ChecklistItem:
    key: str
    question: str
    answer: str
    status: str  # ok | warn | fail | info
    evidence: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Signal:
    kind: str
    message: str
    evidence: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Diagnosis:
    subject: str  # "task" | "chat_message"
    id: int
    task_type: str
    items: list[ChecklistItem]
    verdict: str
    next_action: str
    now: datetime
    signals: list[Signal] = field(default_factory=list)
    verdict_code: rules.Verdict | None = None     # what pages and tests key on; `verdict` is its sentence
    action_code: rules.NextAction | None = None   # likewise for `next_action`

    def item(self, key: str) -> ChecklistItem:
        return next(i for i in self.items if i.key == key)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def render_text(self) -> str:
        mark = {OK: "[ok]  ", WARN: "[warn]", FAIL: "[FAIL]", INFO: "[info]"}
        lines = [f"{self.subject.replace('_', ' ')} #{self.id} ({self.task_type}) at {self.now:%Y-%m-%d %H:%M:%S}"]
        for it in self.items:
            lines += [f"{mark.get(it.status, it.status)} {it.question}", f"       {it.answer}"]
        lines += [f"Verdict: {self.verdict}", f"Next action: {self.next_action}"]
        lines += [f"Recheck signal ({s.kind}): {s.message}" for s in self.signals]
        return "\n".join(lines)


def _when(value: Any) -> str:
    """A stored time as support reads it: to the second, no microseconds."""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)[:19] if value else "—"


def _cap(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _slim(row: dict[str, Any], *drop: str) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in drop}
    if isinstance(out.get("body"), str) and len(out["body"]) > 500:
        out["body"] = out["body"][:500] + "…"
    return out


# --- one task -------------------------------------------------------------------------------


def diagnose(bind: Bind, task_id: int, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None,
             *, with_signals: bool = True) -> Diagnosis:
    """The checklist for one task; raises NotFound for a missing id."""
    detail = task_detail(bind, task_id)
    at = resolve_now(bind, now)
    t = detail["task"]
    if t["status"] in ACTIVE_STATES and policy.stuck_for(t["category"]) <= _age_s(t, at) \
            < policy.timeout_for(t["category"]):  # stuck: is a named provider incident on it?
        detail = {**detail, "provider_incident": provider_incident(bind, t["provider"], task_id, at)}
    diag = checklist_for_task(detail, policy, at)
    if with_signals:
        t = detail["task"]
        diag.signals = recheck_signals(bind, t["user_id"], policy, at, prompt=t["prompt"])
    return diag


def checklist_for_task(d: dict[str, Any], policy: BillingPolicy, now: datetime) -> Diagnosis:
    """Pure: the checklist from a `task_detail` dict."""
    t = d["task"]
    tid, status = t["id"], t["status"]
    mine = [e for e in d["ledger"] if e["task_id"] == tid]
    consumes = [e for e in mine if e["entry_type"] == EntryType.CONSUME]
    refunds = [e for e in mine if e["entry_type"] == EntryType.REFUND]
    charged = -sum(e["amount"] for e in consumes)
    refunded = sum(e["amount"] for e in refunds)
    for_credits = t["error_code"] == INSUFFICIENT_CREDITS
    age_s = _age_s(t, now)
    stuck_s, timeout_s = policy.stuck_for(t["category"]), policy.timeout_for(t["category"])
    events = d["events"]

    items = [
        _type_item(t, d.get("chat_message"), [e for e in d["ledger"] if e["task_id"] != tid]),
        _credits_item(t, consumes, for_credits),
        _callbacks_item(d["callbacks"]),
        _polling_item(events, status, age_s, stuck_s),
        _history_item(t, events, age_s),
        _notification_item(t, d["notifications"], for_credits),
        _failure_item(t),
        _refund_item(t, policy, consumes, refunds, charged, refunded),
    ]
    cancel_item = _upstream_cancel_item(t, events, refunded)
    if cancel_item is not None:  # only for a task we gave up on, or whose output came after its failure
        items.append(cancel_item)
    reads = _stuck_reads(t, events, stuck_s, d.get("provider_incident"))
    verdict, action, how = _verdict(t, policy, items, charged, refunds, for_credits, age_s, stuck_s, timeout_s,
                                    reads)
    task_type = "tool-backed chat" if t["chat_message_id"] is not None else t["category"]
    return Diagnosis("task", tid, task_type, items, rules.VERDICT_TEXT[verdict], how or rules.ACTION_TEXT[action],
                     now, verdict_code=verdict, action_code=action)


def _age_s(t: dict[str, Any], now: datetime) -> float:
    """A task's age: since submission, else creation (what stuck and the timeout are judged on)."""
    return (now - (t["submitted_at"] or t["created_at"])).total_seconds()


_READS = (EventKind.POLL, EventKind.RECHECK, EventKind.CALLBACK)


def _stuck_reads(t, events, stuck_s, incident: str | None) -> rules.StuckReads:
    """What upstream said since the task became stuck: the latest read's state (a poll, a re-check, or
    a callback reporting its state), whether every read since the provider last answered failed,
    and the named provider incident covering it (diagnose looks it up for a stuck task)."""
    stuck_at = (t["submitted_at"] or t["created_at"]) + timedelta(seconds=stuck_s)
    last = next((e for e in reversed(events) if e["kind"] in _READS and e["at"] >= stuck_at
                 and e["detail"].get("state")), None)
    return rules.StuckReads(last["detail"]["state"] if last else None, bool(_failed_reads(events)[1]), incident,
                            last["kind"] if last else None, last["at"] if last else None)


def _type_item(t, msg, chat_rows) -> ChecklistItem:
    q = "What type of task is this: chat settlement, image, video, audio, or tool-backed chat?"
    what = f"{t['category']} generation with {t['model']} via {t['provider']} ({t['billing_type']}, " \
           f"{t['reserved_credits']} credits)"
    summary = {k: t[k] for k in ("id", "user_id", "model", "category", "provider", "status", "billing_type",
                                 "reserved_credits", "upstream_task_id", "chat_message_id", "created_at")}
    if t["chat_message_id"] is None:
        return ChecklistItem("task_type", q, what[0].upper() + what[1:] + ".", INFO, [summary])
    if msg is None:
        return ChecklistItem("task_type", q, f"Tool-backed chat: {what}, but chat message "
                             f"#{t['chat_message_id']} is missing.", WARN, [summary])
    return ChecklistItem("task_type", q, f"Tool-backed chat: {what}, started by chat message #{msg['id']} "
                         "and billed on the task path.", INFO, [summary, msg, *chat_rows])


def _credits_item(t, consumes, for_credits) -> ChecklistItem:
    q = "Were credits reserved before provider submission?"
    sub = t["submitted_at"]
    if for_credits:
        if consumes or t["upstream_task_id"]:
            return ChecklistItem("credits", q, "Failed for credits, yet charged or submitted upstream: "
                                 "inconsistent.", FAIL, consumes)
        return ChecklistItem("credits", q, f"Not charged: the balance could not cover {t['reserved_credits']} "
                             "credits, so the task failed before submission and the provider was never called.",
                             OK, consumes)
    if not consumes:
        if t["upstream_task_id"]:
            return ChecklistItem("credits", q, "Submitted upstream without any charge.", FAIL)
        return ChecklistItem("credits", q, "No charge recorded (the task never reached the spend step).", INFO)
    if len(consumes) > 1:
        return ChecklistItem("credits", q, f"Charged {len(consumes)} times.", FAIL, consumes)
    c = consumes[0]
    if sub is not None and c["created_at"] > sub:
        return ChecklistItem("credits", q, f"Charged {-c['amount']} credits at {_when(c['created_at'])}, after "
                             f"submission at {_when(sub)}.", FAIL, consumes)
    when = f"before submission at {_when(sub)}" if sub else "not submitted upstream"
    return ChecklistItem("credits", q, f"Yes: {-c['amount']} credits consumed at {_when(c['created_at'])}, {when}.",
                         OK, consumes)


def _callbacks_item(callbacks) -> ChecklistItem:
    q = "Did the provider call back, and what was each callback's verdict?"
    if not callbacks:
        return ChecklistItem("callbacks", q, "No provider callback received.", INFO)
    counts = Counter(c["outcome"] for c in callbacks)
    said = ", ".join(f"{k} ×{n}" for k, n in counts.items())
    rejected = any(str(k).startswith("rejected") or k == "malformed" for k in counts)
    status = OK if "applied" in counts else WARN if rejected else INFO
    return ChecklistItem("callbacks", q, f"{_cap(len(callbacks), 'callback')}: {said}.", status,
                         [_slim(c) for c in callbacks])


def _failed_reads(events) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every status read the provider failed, those since the provider last answered). The lifecycle
    records a failed read as a poll_error event followed by the read itself (state unknown); any
    other read, or a callback, is the provider answering."""
    errors: list[dict[str, Any]] = []
    since: list[dict[str, Any]] = []
    paired = False
    for e in events:
        if e["kind"] == EventKind.POLL_ERROR:
            errors.append(e)
            since.append(e)
            paired = True
        elif e["kind"] in (EventKind.POLL, EventKind.RECHECK) and paired:
            paired = False  # the failed read's own record
        elif e["kind"] in (EventKind.POLL, EventKind.RECHECK, EventKind.CALLBACK):
            since, paired = [], False
    return errors, since


def _polling_item(events, status, age_s, stuck_s) -> ChecklistItem:
    q = "What did polling and upstream re-checks find?"
    kinds = (EventKind.POLL, EventKind.RECHECK, EventKind.DEFERRED, EventKind.POLL_ERROR)
    checks = [e for e in events if e["kind"] in kinds]
    if not checks:
        stale = status in ACTIVE_STATES and age_s > stuck_s
        return ChecklistItem("polling", q, "No polls or re-checks recorded" + (
            " although the task is past the stuck threshold." if stale else "."), WARN if stale else INFO)
    counts = Counter(e["kind"] for e in checks if e["kind"] != EventKind.POLL_ERROR)
    last = next((e for e in reversed(checks) if e["kind"] not in (EventKind.DEFERRED, EventKind.POLL_ERROR)), None)
    tail = f"; last upstream state: {last['detail'].get('state')}" if last else ""
    parts = ", ".join(f"{k} ×{n}" for k, n in counts.items())
    errors, unanswered = _failed_reads(events)
    if not errors:
        return ChecklistItem("polling", q, f"{parts}{tail}.", INFO, checks)
    faults = ", ".join(f"{k} ×{n}" for k, n in Counter(str(e["detail"].get("error_kind")) for e in errors).items())
    said = f"{parts}{tail}; {_cap(len(errors), 'status read')} failed ({faults})"
    if not unanswered:
        return ChecklistItem("polling", q, f"{said}, and the provider answered since.", INFO, checks)
    first, latest = unanswered[0], unanswered[-1]
    said += (f"; the provider has not answered since {_when(first['at'])} (latest: "
             f"{latest['detail'].get('message')}): upstream unreachable or erring. Polling asks again; "
             "while it fails, a re-check fails too — look for a provider incident.")
    return ChecklistItem("polling", q, said, WARN if status in ACTIVE_STATES else INFO, checks)


def _history_item(t, events, age_s) -> ChecklistItem:
    q = "Is the task in history?"
    end = next((e for e in events if e["kind"] in (EventKind.SUCCEEDED, EventKind.FAILED)), None)
    path = f" (completed via {end['detail'].get('path')})" if end and end["detail"].get("path") else ""
    if t["status"] == TaskStatus.SUCCESS:
        urls = t["result_urls"] or []
        if not urls:
            return ChecklistItem("history", q, "SUCCESS but without result URLs: nothing to show.", FAIL,
                                 [end] if end else [])
        return ChecklistItem("history", q, f"Yes: delivered at {_when(t['finished_at'])} with "
                             f"{_cap(len(urls), 'result URL')}{path}.", OK, [{"result_urls": urls}] + (
                                 [end] if end else []))
    if t["status"] == TaskStatus.FAILED:
        return ChecklistItem("history", q, f"Yes, as a failure at {_when(t['finished_at'])}: {t['error_code']}"
                             f"{path}.", OK, [end] if end else [])
    return ChecklistItem("history", q, f"Not yet: {t['status']} for {_age(age_s)}, shown in the active "
                         "studio.", INFO)


def _notification_item(t, notes, for_credits) -> ChecklistItem:
    q = "Was the user notified of the outcome?"
    if t["status"] not in TERMINAL:
        return ChecklistItem("notification", q, "None expected while the task runs." if not notes else
                             "Notified although the task is still running.", INFO if not notes else WARN, notes)
    expected = str(rules.outcome_notification(t["status"], t["error_code"]))
    matching = [n for n in notes if n["kind"] == expected]
    if not notes:
        return ChecklistItem("notification", q, f"Missing: no {expected} notification.", FAIL)
    if len(matching) != len(notes):
        return ChecklistItem("notification", q, f"Wrong kind: expected {expected}, found "
                             f"{', '.join(n['kind'] for n in notes)}.", FAIL, notes)
    if len(matching) > 1:
        return ChecklistItem("notification", q, f"Duplicate: {len(matching)} {expected} notifications.", FAIL, notes)
    read = f", read at {_when(notes[0]['read_at'])}" if notes[0]["read_at"] else ", unread"
    return ChecklistItem("notification", q, f"Yes: {expected} at {_when(notes[0]['created_at'])}{read}.", OK, notes)


def _upstream_cancel_item(t, events, refunded) -> ChecklistItem | None:
    """Did we ask the provider to stop the job we gave up on, and did its output arrive late?"""
    cancel, late = upstream_cancel.story(events)
    if cancel is None and not late:
        return None
    q = "Did we ask the provider to stop the job, and did its output arrive after the failure?"
    parts = []
    if cancel is not None:
        d = cancel.get("detail") or {}
        said = f"{d.get('answer')}" + (f" ({d['detail']})" if d.get("detail") else "")
        parts.append(f"Cancel asked at {_when(cancel['at'])} after the {d.get('reason', 'failure')}; "
                     f"the provider answered {said}")
    if late:
        money = f"the user was refunded {refunded} credits" if refunded else "the user was not refunded"
        parts.append(f"the output arrived late ({_cap(len(late), 'success callback')} after the failure, from "
                     f"{_when(late[0]['at'])}), recorded as a duplicate: the task stays FAILED and {money}")
    status = WARN if late else INFO
    return ChecklistItem("upstream_cancel", q, "; ".join(parts) + ".", status,
                         [_slim(e) for e in ([cancel] if cancel else []) + late])


def _failure_item(t) -> ChecklistItem:
    q = "Is the failure user-correctable, or a provider/infrastructure/billing failure?"
    if t["status"] != TaskStatus.FAILED:
        return ChecklistItem("failure", q, "Not failed.", INFO)
    fc = t["failure_class"]
    msg = f"{t['error_code']}: {t['error_message'] or ''}".rstrip(": .")
    what = {"user": "User-correctable", "provider": "Provider failure (not the user's fault)",
            "infrastructure": "Infrastructure failure (not the user's fault)",
            "billing": "Billing: not enough credits; the user can top up"}.get(fc)
    if what is None:
        return ChecklistItem("failure", q, f"Failure class not recorded ({msg}).", WARN)
    return ChecklistItem("failure", q, f"{what} — {msg}.", INFO,
                         [{"error_code": t["error_code"], "failure_class": fc, "error_message": t["error_message"]}])


def _refund_item(t, policy, consumes, refunds, charged, refunded) -> ChecklistItem:
    q = "Should credits be reversed under the policy, and were they?"
    ev = consumes + refunds
    support = refunds and all(r.get("support") for r in refunds)
    if rules.courtesy_refund(bool(support), t.get("rerun_of") is not None) and len(refunds) == 1 \
            and refunded <= charged and t["status"] != TaskStatus.FAILED:
        return ChecklistItem("refund", q, f"No, and none is due: a courtesy re-run of task #{t['rerun_of']}, "
                             f"whose {refunded} credits support refunded at once.", OK, ev)
    if t["status"] == TaskStatus.SUCCESS:
        return (ChecklistItem("refund", q, f"No: delivered, yet refunded {refunded} credits.", FAIL, ev) if refunds
                else ChecklistItem("refund", q, "No: delivered, nothing to reverse.", OK, ev))
    if t["status"] != TaskStatus.FAILED:
        return (ChecklistItem("refund", q, "Refunded although the task has not failed.", FAIL, ev) if refunds
                else ChecklistItem("refund", q, "Not yet: decided when the task settles.", INFO, ev))
    if not consumes:
        return (ChecklistItem("refund", q, "Refunded although never charged.", FAIL, ev) if refunds
                else ChecklistItem("refund", q, "No: never charged.", OK, ev))
    if len(refunds) > 1 or refunded > charged:
        return ChecklistItem("refund", q, f"Refunded {len(refunds)} times, {refunded} credits for a charge of "
                             f"{charged}.", FAIL, ev)
    facts = rules.RefundFacts(t["status"], t["failure_class"], charged=True, refunded=False)
    if rules.refund_due(facts, policy):
        if refunds:
            return ChecklistItem("refund", q, f"Yes, and refunded {refunded} credits at {_when(refunds[0]['created_at'])}.",
                                 OK, ev)
        return ChecklistItem("refund", q, f"Yes ({t['failure_class']} failure under policy {policy.name!r}), but "
                             f"not refunded: {charged} credits due.", FAIL, ev)
    why = f"No: policy {policy.name!r} keeps credits for {t['failure_class']} failures"
    if support:
        return ChecklistItem("refund", q, f"{why}; support refunded {refunded} credits as a goodwill gesture.",
                             INFO, ev)
    if refunds:
        return ChecklistItem("refund", q, f"{why}, yet {refunded} credits were refunded.", WARN, ev)
    return ChecklistItem("refund", q, f"{why}; {charged} credits kept.", OK, ev)


def _verdict(t, policy, items, charged, refunds, for_credits, age_s, stuck_s, timeout_s,
             reads: rules.StuckReads) -> tuple[rules.Verdict, rules.NextAction, str | None]:
    """(verdict, next action, how to say the action when it depends on the task). `reads`: what the
    upstream reads since the task became stuck found (rules.stuck_next_action decides with it)."""
    V, A = rules.Verdict, rules.NextAction
    refund_item = next(i for i in items if i.key == "refund")
    status = t["status"]
    if status in ACTIVE_STATES:
        if age_s >= timeout_s:
            return V.STUCK_PAST_TIMEOUT, A.MARK_FAILED, f"mark failed (past the timeout): " \
                f"{_mark_failed_money(charged, refunds, policy)}"
        if age_s >= stuck_s:
            action = rules.stuck_next_action(reads)
            return V.STUCK, action, _stuck_how(action, reads, t, charged, refunds, policy, timeout_s)
        return (V.GENERATING if status == TaskStatus.GENERATING else V.WAITING), A.WAIT, None
    if status == TaskStatus.SUCCESS:
        if not t["result_urls"]:
            return V.SUCCESS_WITHOUT_URLS, A.RECHECK_UPSTREAM, None
        if refund_item.status == FAIL:
            return V.DELIVERED_BUT_REFUNDED, A.INVESTIGATE_LEDGER, None
        return V.DELIVERED, A.NOTHING, None
    code = t["error_code"] or ""
    advice = next((a for k, a in _USER_ADVICE.items() if k in code),
                  f"tell the user how to correct the request ({code})")
    if for_credits:
        if charged or t["upstream_task_id"]:
            return V.FAILED_FOR_CREDITS_BUT_CHARGED, A.INVESTIGATE_LEDGER, None
        return V.FAILED_FOR_CREDITS, A.TELL_USER_TOP_UP, None
    if rules.refund_due(rules.RefundFacts(status, t["failure_class"], charged != 0, bool(refunds)), policy):
        return V.REFUND_DUE, A.ISSUE_REFUND, None
    if refund_item.status in (FAIL, WARN):
        return V.REFUND_INCONSISTENT, A.INVESTIGATE_LEDGER, None
    user = t["failure_class"] == "user"
    then = (A.TELL_USER_CORRECT, advice) if user else (A.NOTHING, None)
    if not charged:
        return V.FAILED_NEVER_CHARGED, *then
    if refunds:
        return V.FAILED_REFUNDED, *then
    return (V.FAILED_USER_CREDITS_KEPT if user else V.FAILED_CREDITS_KEPT), *then


def _mark_failed_money(charged, refunds, policy) -> str:
    """What marking the task failed would do to its credits (rules.mark_failed_refund)."""
    back = rules.mark_failed_refund(charged, bool(refunds), policy)
    if back:
        return f"marking it failed refunds its {back} credits"
    if charged and not refunds:
        return f"policy {policy.name!r} keeps its {charged} credits"
    return "no credits to refund"


def _stuck_how(action, reads: rules.StuckReads, t, charged, refunds, policy, timeout_s) -> str | None:
    """The words of a stuck task's next action, with what the last read found and the deadline."""
    A = rules.NextAction
    deadline = _when((t["submitted_at"] or t["created_at"]) + timedelta(seconds=timeout_s))
    read = f"the last upstream read ({reads.read_kind} at {_when(reads.read_at)})"
    if action == A.MARK_FAILED:
        return f"mark failed: {read} found nothing (state {reads.last_state}); " \
               f"{_mark_failed_money(charged, refunds, policy)}"
    if action == A.WAIT_FOR_INCIDENT:
        return (f"wait for the provider incident: {reads.incident}. Act on its tasks together (Incidents page); "
                f"if it is still unfinished past the timeout at {deadline}, mark it failed")
    if action == A.WAIT:
        return (f"wait: the provider still reports it {reads.last_state} ({read}); past the timeout at "
                f"{deadline}, mark it failed")
    return None


# --- one chat turn -----------------------------------------------------------------------------


def diagnose_chat_message(bind: Bind, message_id: int, policy: BillingPolicy = DEFAULT_POLICY,
                          now: datetime | None = None, *, grace_s: float = CHAT_SETTLE_GRACE_S) -> Diagnosis:
    """The checklist for a chat turn's settlement (and its tool-backed tasks); NotFound for a missing id."""
    mid = message_id if isinstance(message_id, int) and 0 <= message_id < 2**63 else None
    with connect(bind) as conn:
        msg = conn.execute(select(*chat_message.c, chat_session.c.user_id, chat_session.c.model).select_from(
            chat_message.outerjoin(chat_session, chat_session.c.id == chat_message.c.session_id)).where(
            chat_message.c.id == mid)).first() if mid is not None else None
        if msg is None:
            raise NotFound(f"chat message {message_id} not found")
        msg = dict(msg._mapping)
        ledger = rows(conn.execute(select(*credit_ledger.c).where(credit_ledger.c.chat_message_id == mid)
                                   .order_by(credit_ledger.c.id)))
        tasks = [r[0] for r in conn.execute(select(ai_task.c.id).where(ai_task.c.chat_message_id == mid)
                                            .order_by(ai_task.c.id).limit(20))]
    at = resolve_now(bind, now)
    tool = [diagnose(bind, tid, policy, at, with_signals=False) for tid in tasks]
    return checklist_for_chat(msg, ledger, tool, policy, at, grace_s)


def checklist_for_chat(msg, ledger, tool: list[Diagnosis], policy, now, grace_s) -> Diagnosis:
    chat_rows = [e for e in ledger if e["entry_type"] in (EntryType.CHAT_RESERVE, EntryType.CHAT_CHARGE,
                                                          EntryType.CHAT_REFUND)]
    reserve = -sum(e["amount"] for e in chat_rows if e["entry_type"] == EntryType.CHAT_RESERVE)
    chat_refunds = [e for e in chat_rows if e["entry_type"] == EntryType.CHAT_REFUND]
    net = sum(e["amount"] for e in chat_rows)
    charged = msg["charged_credits"] or 0
    status = msg["status"]
    kind = "tool-backed chat" if tool else "chat settlement"
    type_item = ChecklistItem("task_type", "What type of task is this?", (
        f"{kind.capitalize()}: turn #{msg['id']} in session #{msg['session_id']} ({msg['model']}); no ai_task, "
        "billed by message-level settlement" + (f"; started {_cap(len(tool), 'generation task')}" if tool else "")
        + "."), INFO, [_slim(msg, "content")])
    q = "Were credits reserved first and settled after usage?"
    age = (now - msg["created_at"]).total_seconds()
    if status == "reserved":
        late = age > grace_s
        credit = ChecklistItem("credits", q, f"Reserved {reserve} credits {_age(age)} ago, not settled yet" + (
            ", past the grace period." if late else "."), WARN if late else INFO, chat_rows)
        verdict = ((rules.Verdict.CHAT_RESERVATION_OVERDUE, rules.NextAction.SETTLE_OR_FAIL_TURN) if late
                   else (rules.Verdict.CHAT_RESERVED, rules.NextAction.WAIT))
    else:
        over = charged > (msg["reserved_credits"] or 0) and not policy.chat_allow_overrun
        broken = net != -charged or len(chat_refunds) > 1 or over
        credit = ChecklistItem("credits", q, f"{status}: reserved {reserve}, charged {charged}, refunded "
                               f"{sum(e['amount'] for e in chat_refunds)} in {_cap(len(chat_refunds), 'refund')}; "
                               f"ledger net {net}" + (" — does not match the charge." if broken else "."),
                               FAIL if broken else OK, chat_rows)
        V, A = rules.Verdict, rules.NextAction
        if broken:
            verdict = (V.CHAT_SETTLEMENT_MISMATCH, A.INVESTIGATE_LEDGER)
        elif status == "failed":
            verdict = (V.CHAT_FAILED_REFUNDED, A.NOTHING)
        elif status == "refused":
            verdict = (V.CHAT_REFUSED, A.TELL_USER_TOP_UP)
        else:
            verdict = (V.CHAT_SETTLED_REFUNDED if chat_refunds else V.CHAT_SETTLED, A.NOTHING)
    code, action = verdict
    verdict_text, action_text = rules.VERDICT_TEXT[code], rules.ACTION_TEXT[action]
    items = [type_item, credit]
    if tool:
        bad = [d for d in tool if d.action_code != rules.NextAction.NOTHING
               and d.verdict_code != rules.Verdict.GENERATING]
        items.append(ChecklistItem("tool_tasks", "Did the tool-backed generations finish?", "; ".join(
            f"task #{d.id}: {d.verdict}" for d in tool) + ".", WARN if bad else OK,
            [{"task_id": d.id, "verdict": d.verdict, "next_action": d.next_action} for d in tool]))
        if bad and action == rules.NextAction.NOTHING:
            verdict_text += f"; tool task #{bad[0].id}: {bad[0].verdict}"
            action, action_text = bad[0].action_code, bad[0].next_action
    return Diagnosis("chat_message", msg["id"], kind, items, verdict_text, action_text, now,
                     verdict_code=code, action_code=action)


# --- "Recheck Before Running Again" -----------------------------------------------------------


def _stuck_cutoff(policy: BillingPolicy, now: datetime):
    per = {c: now - timedelta(seconds=policy.stuck_for(c)) for c in policy.stuck_after_s}
    default = now - timedelta(seconds=policy.stuck_for("\0"))
    return case(per, value=ai_task.c.category, else_=default) if per else literal(default)


_SIG_COLS = (ai_task.c.id.label("task_id"), ai_task.c.model, ai_task.c.status, ai_task.c.reserved_credits,
             ai_task.c.error_code, ai_task.c.failure_class, ai_task.c.created_at, ai_task.c.submitted_at)


def recheck_signals(bind: Bind, user_id: int, policy: BillingPolicy = DEFAULT_POLICY, now: datetime | None = None,
                    prompt: str | None = None, model: str | None = None) -> list[Signal]:
    """The guide's reasons to recheck before running again, for one user (optionally one prompt/model)."""
    at = resolve_now(bind, now)
    t = ai_task.c
    mine = t.user_id == user_id
    same = and_(mine, t.prompt == prompt) if prompt is not None else mine
    if model is not None:
        same = and_(same, t.model == model)
    started = func.coalesce(t.submitted_at, t.created_at)
    too_long = and_(t.status.in_(ACTIVE_STATES), started < _stuck_cutoff(policy, at))
    out: list[Signal] = []
    with connect(bind) as conn:
        fails = conn.execute(select(t.prompt, func.count().label("n")).where(same, t.status == TaskStatus.FAILED)
                             .group_by(t.prompt).having(func.count() >= 2).order_by(func.count().desc()).limit(5))
        for p, n in fails.all():
            ev = rows(conn.execute(select(*_SIG_COLS).where(mine, t.prompt == p, t.status == TaskStatus.FAILED)
                                   .order_by(t.id.desc()).limit(10)))
            out.append(Signal("same_prompt_failing", f"The same prompt failed {n} times: {p[:80]!r}.", ev))
        stuck = rows(conn.execute(select(*_SIG_COLS).where(mine, too_long).order_by(t.id).limit(20)))
        if stuck:
            out.append(Signal("in_progress_too_long", f"{_cap(len(stuck), 'task')} in progress past the stuck "
                              "threshold: " + ", ".join(f"#{r['task_id']}" for r in stuck) + ".", stuck))
        has = lambda et: exists().where(credit_ledger.c.task_id == t.id, credit_ledger.c.entry_type == et)  # noqa: E731
        lost = rows(conn.execute(select(*_SIG_COLS).where(
            mine, t.status != TaskStatus.SUCCESS, has(EntryType.CONSUME), ~has(EntryType.REFUND),
            (t.status == TaskStatus.FAILED) | too_long).order_by(t.id).limit(20)))
        if lost:
            out.append(Signal("credits_without_output", f"Credits consumed without output or refund on "
                              f"{_cap(len(lost), 'task')}: " + ", ".join(f"#{r['task_id']}" for r in lost) + ".",
                              lost))
        active = rows(conn.execute(select(*_SIG_COLS, t.prompt).where(same, t.status.in_(ACTIVE_STATES))
                                   .order_by(t.id).limit(50)))
        out += _duplicates(conn, user_id, active, policy, prompt, model)
    return out


def _duplicates(conn, user_id, active, policy, prompt, model) -> list[Signal]:
    out, window = [], timedelta(seconds=policy.duplicate_window_s)
    t = ai_task.c
    for a in active:
        running = rules.Run(a["task_id"], a["model"], a["prompt"], a["reserved_credits"], a["created_at"])
        later = rows(conn.execute(select(*_SIG_COLS).where(
            t.user_id == user_id, t.model == a["model"], t.prompt == a["prompt"], t.id > a["task_id"],
            t.created_at >= a["created_at"], t.created_at <= a["created_at"] + window).order_by(t.id).limit(50)))
        twins = [r for r in later if rules.heavier_duplicate(
            rules.Run(r["task_id"], r["model"], a["prompt"], r["reserved_credits"], r["created_at"]), running,
            policy)][:10]
        if twins:
            ev = [{k: v for k, v in a.items() if k != "prompt"}, *twins]
            out.append(Signal("heavier_duplicate", f"Task #{a['task_id']} is still running and "
                              f"{_cap(len(twins), 'same-prompt run')} as heavy or heavier started within "
                              f"{int(policy.duplicate_window_s)} s: " + ", ".join(f"#{r['task_id']}" for r in twins)
                              + ".", ev))
        elif prompt is not None and model is not None:
            out.append(Signal("heavier_duplicate", f"A run with the same model and prompt is still in progress "
                              f"(#{a['task_id']}): wait for it before running again.",
                              [{k: v for k, v in a.items() if k != "prompt"}]))
    return out
