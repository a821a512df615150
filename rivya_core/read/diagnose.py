"""The guide's troubleshooting checklist, answered for one task or chat turn with evidence.

`diagnose(engine, task_id)` reads the task's rows (`queries.task_detail`) and
answers, in the guide's order: what type of task this is; whether credits were
reserved before provider submission; what the callbacks, polls and re-checks
said, and which status reads the provider failed (`poll_error`: while every read
since the provider last answered failed, a stuck task is re-checked later, after
looking for a provider incident); whether it is in history and was notified; whether the failure is the
user's to correct; whether credits should be reversed and were. It ends with a
verdict and the next action for support. `chat_checklist.diagnose_chat_message`
does the same for a chat turn's settlement, and `signals.recheck_signals` raises
the guide's "Recheck Before Running Again" signals for a user. Ages are judged at `now`,
which defaults to the latest timestamp in the database (see `audit`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .. import rules, upstream_cancel, verdicts
from ..domain import INSUFFICIENT_CREDITS, TERMINAL, EntryType, EventKind, TaskStatus
from ..policy import DEFAULT_POLICY, BillingPolicy
from ..results import provider_retention_s
from ..sources import checklist as source_checklist
from ..sources.facts import NATIVE, SourceFacts, source_facts
from ..verdicts import Severity
from .alerts import provider_incident
from .queries import ACTIVE_STATES, Bind, jsonable, resolve_now, task_detail
from .signals import Signal, _cap, recheck_signals

_USER_ADVICE = {
    "prompt_too_long": "tell the user to shorten the prompt",
    "prompt_empty": "tell the user to write a prompt",
    "content_policy": "tell the user to rephrase the prompt (content policy)",
    "nsfw": "tell the user to rephrase the prompt (content policy)",
    "moderation": "tell the user to rephrase the prompt (moderation)",
    "reference_too_large": "tell the user to upload a smaller reference file",
    # an imported source's cancel (rivya_core.sources): its credits were kept, as the template keeps them
    "upstream_canceled": "tell the user the task was canceled upstream; its credits were kept (a support "
    "refund gives them back)",
}


@dataclass
class ChecklistItem:
    key: str
    question: str
    answer: str
    status: Severity  # ok | warn | fail | info: its colour, the scale of a verdict's severity
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
    verdict_code: verdicts.Verdict | None = None  # what pages and tests key on; `verdict` is its sentence
    action_code: verdicts.NextAction | None = None  # likewise for `next_action`

    def item(self, key: str) -> ChecklistItem:
        return next(i for i in self.items if i.key == key)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def render_text(self) -> str:
        mark = {Severity.OK: "[ok]  ", Severity.WARN: "[warn]", Severity.FAIL: "[FAIL]", Severity.INFO: "[info]"}
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


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _slim(row: dict[str, Any], *drop: str) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in drop}
    if isinstance(out.get("body"), str) and len(out["body"]) > 500:
        out["body"] = out["body"][:500] + "…"
    return out


# --- one task -------------------------------------------------------------------------------


def diagnose(
    bind: Bind,
    task_id: int,
    policy: BillingPolicy = DEFAULT_POLICY,
    now: datetime | None = None,
    *,
    with_signals: bool = True,
) -> Diagnosis:
    """The checklist for one task; raises NotFound for a missing id."""
    detail = task_detail(bind, task_id)
    at = resolve_now(bind, now)
    t = detail["task"]
    if t["status"] in ACTIVE_STATES and policy.stuck_for(t["category"]) <= _age_s(t, at) < policy.timeout_for(
        t["category"]
    ):  # stuck: is a named provider incident on it?
        detail = {**detail, "provider_incident": provider_incident(bind, t["provider"], task_id, at)}
    facts = source_facts(bind)
    if facts.imported:  # what the source never recorded, and the grants its findings are about
        detail = {**detail, "facts": facts, "source_grants": source_checklist.source_grants_of(bind, detail["ledger"])}
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
    facts: SourceFacts = d.get("facts") or NATIVE
    unrecorded = source_checklist.unrecorded

    items = [
        _type_item(t, d.get("chat_message"), [e for e in d["ledger"] if e["task_id"] != tid]),
        _credits_item(t, consumes, for_credits),
        unrecorded("callbacks", facts, ChecklistItem) or _callbacks_item(d["callbacks"]),
        unrecorded("polling", facts, ChecklistItem) or _polling_item(events, status, age_s, stuck_s),
        _history_item(t, events, age_s, now),
        unrecorded("notification", facts, ChecklistItem) or _notification_item(t, d["notifications"], for_credits),
        _failure_item(t),
        _refund_item(t, policy, consumes, refunds, charged, refunded),
    ]
    cancel_item = _upstream_cancel_item(t, events, refunded)
    if cancel_item is not None:  # only for a task we gave up on, or whose output came after its failure
        items.append(cancel_item)
    if facts.imported:
        items.append(source_checklist.source_item(t, mine, d.get("source_grants") or [], facts, ChecklistItem))
    reads = _stuck_reads(t, events, stuck_s, d.get("provider_incident"))
    verdict, action, how = _verdict(t, policy, items, charged, refunds, for_credits, age_s, stuck_s, timeout_s, reads)
    task_type = "tool-backed chat" if t["chat_message_id"] is not None else t["category"]
    return Diagnosis(
        "task",
        tid,
        task_type,
        items,
        verdicts.VERDICT_TEXT[verdict],
        how or verdicts.ACTION_TEXT[action],
        now,
        verdict_code=verdict,
        action_code=action,
    )


def _age_s(t: dict[str, Any], now: datetime) -> float:
    """A task's age: since submission, else creation (what stuck and the timeout are judged on)."""
    return (now - (t["submitted_at"] or t["created_at"])).total_seconds()


_READS = (EventKind.POLL, EventKind.RECHECK, EventKind.CALLBACK)


def _stuck_reads(t, events, stuck_s, incident: str | None) -> verdicts.StuckReads:
    """What upstream said since the task became stuck: the latest read's state (a poll, a re-check, or
    a callback reporting its state), whether every read since the provider last answered failed,
    and the named provider incident covering it (diagnose looks it up for a stuck task)."""
    stuck_at = (t["submitted_at"] or t["created_at"]) + timedelta(seconds=stuck_s)
    last = next(
        (e for e in reversed(events) if e["kind"] in _READS and e["at"] >= stuck_at and e["detail"].get("state")), None
    )
    return verdicts.StuckReads(
        last["detail"]["state"] if last else None,
        bool(_failed_reads(events)[1]),
        incident,
        last["kind"] if last else None,
        last["at"] if last else None,
    )


def _type_item(t, msg, chat_rows) -> ChecklistItem:
    q = "What type of task is this: chat settlement, image, video, audio, or tool-backed chat?"
    what = (
        f"{t['category']} generation with {t['model']} via {t['provider']} ({t['billing_type']}, "
        f"{t['reserved_credits']} credits)"
    )
    summary = {
        k: t[k]
        for k in (
            "id",
            "user_id",
            "model",
            "category",
            "provider",
            "status",
            "billing_type",
            "reserved_credits",
            "upstream_task_id",
            "chat_message_id",
            "created_at",
        )
    }
    if t["chat_message_id"] is None:
        return ChecklistItem("task_type", q, what[0].upper() + what[1:] + ".", Severity.INFO, [summary])
    if msg is None:
        return ChecklistItem(
            "task_type",
            q,
            f"Tool-backed chat: {what}, but chat message #{t['chat_message_id']} is missing.",
            Severity.WARN,
            [summary],
        )
    return ChecklistItem(
        "task_type",
        q,
        f"Tool-backed chat: {what}, started by chat message #{msg['id']} and billed on the task path.",
        Severity.INFO,
        [summary, msg, *chat_rows],
    )


def _credits_item(t, consumes, for_credits) -> ChecklistItem:
    q = "Were credits reserved before provider submission?"
    sub = t["submitted_at"]
    if for_credits:
        if consumes or t["upstream_task_id"]:
            return ChecklistItem(
                "credits",
                q,
                "Failed for credits, yet charged or submitted upstream: inconsistent.",
                Severity.FAIL,
                consumes,
            )
        return ChecklistItem(
            "credits",
            q,
            f"Not charged: the balance could not cover {t['reserved_credits']} "
            "credits, so the task failed before submission and the provider was never called.",
            Severity.OK,
            consumes,
        )
    if not consumes:
        if t["upstream_task_id"]:
            return ChecklistItem("credits", q, "Submitted upstream without any charge.", Severity.FAIL)
        return ChecklistItem("credits", q, "No charge recorded (the task never reached the spend step).", Severity.INFO)
    if len(consumes) > 1:
        return ChecklistItem("credits", q, f"Charged {len(consumes)} times.", Severity.FAIL, consumes)
    c = consumes[0]
    if sub is not None and c["created_at"] > sub:
        return ChecklistItem(
            "credits",
            q,
            f"Charged {-c['amount']} credits at {_when(c['created_at'])}, after submission at {_when(sub)}.",
            Severity.FAIL,
            consumes,
        )
    when = f"before submission at {_when(sub)}" if sub else "not submitted upstream"
    return ChecklistItem(
        "credits",
        q,
        f"Yes: {-c['amount']} credits consumed at {_when(c['created_at'])}, {when}.",
        Severity.OK,
        consumes,
    )


def _callbacks_item(callbacks) -> ChecklistItem:
    q = "Did the provider call back, and what was each callback's verdict?"
    if not callbacks:
        return ChecklistItem("callbacks", q, "No provider callback received.", Severity.INFO)
    counts = Counter(c["outcome"] for c in callbacks)
    said = ", ".join(f"{k} ×{n}" for k, n in counts.items())
    rejected = any(str(k).startswith("rejected") or k == "malformed" for k in counts)
    status = Severity.OK if "applied" in counts else Severity.WARN if rejected else Severity.INFO
    return ChecklistItem(
        "callbacks", q, f"{_cap(len(callbacks), 'callback')}: {said}.", status, [_slim(c) for c in callbacks]
    )


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
        return ChecklistItem(
            "polling",
            q,
            "No polls or re-checks recorded" + (" although the task is past the stuck threshold." if stale else "."),
            Severity.WARN if stale else Severity.INFO,
        )
    counts = Counter(e["kind"] for e in checks if e["kind"] != EventKind.POLL_ERROR)
    last = next((e for e in reversed(checks) if e["kind"] not in (EventKind.DEFERRED, EventKind.POLL_ERROR)), None)
    tail = f"; last upstream state: {last['detail'].get('state')}" if last else ""
    parts = ", ".join(f"{k} ×{n}" for k, n in counts.items())
    errors, unanswered = _failed_reads(events)
    if not errors:
        return ChecklistItem("polling", q, f"{parts}{tail}.", Severity.INFO, checks)
    faults = ", ".join(f"{k} ×{n}" for k, n in Counter(str(e["detail"].get("error_kind")) for e in errors).items())
    said = f"{parts}{tail}; {_cap(len(errors), 'status read')} failed ({faults})"
    if not unanswered:
        return ChecklistItem("polling", q, f"{said}, and the provider answered since.", Severity.INFO, checks)
    first, latest = unanswered[0], unanswered[-1]
    said += (
        f"; the provider has not answered since {_when(first['at'])} (latest: "
        f"{latest['detail'].get('message')}): upstream unreachable or erring. Polling asks again; "
        "while it fails, a re-check fails too — look for a provider incident."
    )
    return ChecklistItem("polling", q, said, Severity.WARN if status in ACTIVE_STATES else Severity.INFO, checks)


def _history_item(t, events, age_s, now: datetime | None = None) -> ChecklistItem:
    q = "Is the task in history?"
    end = next((e for e in events if e["kind"] in (EventKind.SUCCEEDED, EventKind.FAILED)), None)
    path = f" (completed via {end['detail'].get('path')})" if end and end["detail"].get("path") else ""
    if t["status"] == TaskStatus.SUCCESS:
        urls = t["result_urls"] or []
        if not urls:
            return ChecklistItem(
                "history", q, "SUCCESS but without result URLs: nothing to show.", Severity.FAIL, [end] if end else []
            )
        expired = _expired_provider_urls(urls, t["finished_at"], now)
        if expired:
            return ChecklistItem(
                "history",
                q,
                f"Delivered at {_when(t['finished_at'])}, but "
                f"{_cap(len(expired), 'result URL')} {'is' if len(expired) == 1 else 'are'} the "
                "provider's own, past the time the provider keeps outputs: the link no longer "
                "opens. The output is gone; re-run the task for the user.",
                Severity.WARN,
                [{"result_urls": urls, "expired": expired}] + ([end] if end else []),
            )
        return ChecklistItem(
            "history",
            q,
            f"Yes: delivered at {_when(t['finished_at'])} with {_cap(len(urls), 'result URL')}{path}.",
            Severity.OK,
            [{"result_urls": urls}] + ([end] if end else []),
        )
    if t["status"] == TaskStatus.FAILED:
        return ChecklistItem(
            "history",
            q,
            f"Yes, as a failure at {_when(t['finished_at'])}: {t['error_code']}{path}.",
            Severity.OK,
            [end] if end else [],
        )
    return ChecklistItem(
        "history", q, f"Not yet: {t['status']} for {_age(age_s)}, shown in the active studio.", Severity.INFO
    )


def _expired_provider_urls(urls: list[str], finished_at: Any, now: datetime | None) -> list[str]:
    """The result URLs a provider serves and has deleted by `now` (results.provider_retention_s)."""
    if not isinstance(finished_at, datetime) or now is None:
        return []
    age = (now - finished_at).total_seconds()
    return [u for u in urls if (keep := provider_retention_s(u)) is not None and age > keep]


def _notification_item(t, notes, for_credits) -> ChecklistItem:
    q = "Was the user notified of the outcome?"
    if t["status"] not in TERMINAL:
        return ChecklistItem(
            "notification",
            q,
            "None expected while the task runs." if not notes else "Notified although the task is still running.",
            Severity.INFO if not notes else Severity.WARN,
            notes,
        )
    expected = str(rules.outcome_notification(t["status"], t["error_code"]))
    matching = [n for n in notes if n["kind"] == expected]
    if not notes:
        return ChecklistItem("notification", q, f"Missing: no {expected} notification.", Severity.FAIL)
    if len(matching) != len(notes):
        return ChecklistItem(
            "notification",
            q,
            f"Wrong kind: expected {expected}, found {', '.join(n['kind'] for n in notes)}.",
            Severity.FAIL,
            notes,
        )
    if len(matching) > 1:
        return ChecklistItem(
            "notification", q, f"Duplicate: {len(matching)} {expected} notifications.", Severity.FAIL, notes
        )
    read = f", read at {_when(notes[0]['read_at'])}" if notes[0]["read_at"] else ", unread"
    return ChecklistItem(
        "notification", q, f"Yes: {expected} at {_when(notes[0]['created_at'])}{read}.", Severity.OK, notes
    )


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
        parts.append(
            f"Cancel asked at {_when(cancel['at'])} after the {d.get('reason', 'failure')}; "
            f"the provider answered {said}"
        )
    if late:
        money = f"the user was refunded {refunded} credits" if refunded else "the user was not refunded"
        parts.append(
            f"the output arrived late ({_cap(len(late), 'success callback')} after the failure, from "
            f"{_when(late[0]['at'])}), recorded as a duplicate: the task stays FAILED and {money}"
        )
    status = Severity.WARN if late else Severity.INFO
    return ChecklistItem(
        "upstream_cancel", q, "; ".join(parts) + ".", status, [_slim(e) for e in ([cancel] if cancel else []) + late]
    )


def _failure_item(t) -> ChecklistItem:
    q = "Is the failure user-correctable, or a provider/infrastructure/billing failure?"
    if t["status"] != TaskStatus.FAILED:
        return ChecklistItem("failure", q, "Not failed.", Severity.INFO)
    fc = t["failure_class"]
    msg = f"{t['error_code']}: {t['error_message'] or ''}".rstrip(": .")
    what = {
        "user": "User-correctable",
        "provider": "Provider failure (not the user's fault)",
        "infrastructure": "Infrastructure failure (not the user's fault)",
        "billing": "Billing: not enough credits; the user can top up",
    }.get(fc)
    if what is None:
        return ChecklistItem("failure", q, f"Failure class not recorded ({msg}).", Severity.WARN)
    return ChecklistItem(
        "failure",
        q,
        f"{what} — {msg}.",
        Severity.INFO,
        [{"error_code": t["error_code"], "failure_class": fc, "error_message": t["error_message"]}],
    )


def _refund_item(t, policy, consumes, refunds, charged, refunded) -> ChecklistItem:
    q = "Should credits be reversed under the policy, and were they?"
    ev = consumes + refunds
    support = refunds and all(r.get("support") for r in refunds)
    if (
        rules.courtesy_refund(bool(support), t.get("rerun_of") is not None)
        and len(refunds) == 1
        and refunded <= charged
        and t["status"] != TaskStatus.FAILED
    ):
        return ChecklistItem(
            "refund",
            q,
            f"No, and none is due: a courtesy re-run of task #{t['rerun_of']}, "
            f"whose {refunded} credits support refunded at once.",
            Severity.OK,
            ev,
        )
    if t["status"] == TaskStatus.SUCCESS:
        return (
            ChecklistItem("refund", q, f"No: delivered, yet refunded {refunded} credits.", Severity.FAIL, ev)
            if refunds
            else ChecklistItem("refund", q, "No: delivered, nothing to reverse.", Severity.OK, ev)
        )
    if t["status"] != TaskStatus.FAILED:
        return (
            ChecklistItem("refund", q, "Refunded although the task has not failed.", Severity.FAIL, ev)
            if refunds
            else ChecklistItem("refund", q, "Not yet: decided when the task settles.", Severity.INFO, ev)
        )
    if not consumes:
        return (
            ChecklistItem("refund", q, "Refunded although never charged.", Severity.FAIL, ev)
            if refunds
            else ChecklistItem("refund", q, "No: never charged.", Severity.OK, ev)
        )
    if len(refunds) > 1 or refunded > charged:
        return ChecklistItem(
            "refund",
            q,
            f"Refunded {len(refunds)} times, {refunded} credits for a charge of {charged}.",
            Severity.FAIL,
            ev,
        )
    facts = rules.RefundFacts(t["status"], t["failure_class"], charged=True, refunded=False)
    if rules.refund_due(facts, policy):
        if refunds:
            return ChecklistItem(
                "refund",
                q,
                f"Yes, and refunded {refunded} credits at {_when(refunds[0]['created_at'])}.",
                Severity.OK,
                ev,
            )
        return ChecklistItem(
            "refund",
            q,
            f"Yes ({t['failure_class']} failure under policy {policy.name!r}), but "
            f"not refunded: {charged} credits due.",
            Severity.FAIL,
            ev,
        )
    why = f"No: policy {policy.name!r} keeps credits for {t['failure_class']} failures"
    if support:
        return ChecklistItem(
            "refund", q, f"{why}; support refunded {refunded} credits as a goodwill gesture.", Severity.INFO, ev
        )
    if refunds:
        return ChecklistItem("refund", q, f"{why}, yet {refunded} credits were refunded.", Severity.WARN, ev)
    return ChecklistItem("refund", q, f"{why}; {charged} credits kept.", Severity.OK, ev)


def _verdict(
    t, policy, items, charged, refunds, for_credits, age_s, stuck_s, timeout_s, reads: verdicts.StuckReads
) -> tuple[verdicts.Verdict, verdicts.NextAction, str | None]:
    """(verdict, next action, how to say the action when it depends on the task). `reads`: what the
    upstream reads since the task became stuck found (verdicts.stuck_next_action decides with it)."""
    V, A = verdicts.Verdict, verdicts.NextAction
    refund_item = next(i for i in items if i.key == "refund")
    status = t["status"]
    if status in ACTIVE_STATES:
        if age_s >= timeout_s:
            return (
                V.STUCK_PAST_TIMEOUT,
                A.MARK_FAILED,
                f"mark failed (past the timeout): {_mark_failed_money(charged, refunds, policy)}",
            )
        if age_s >= stuck_s:
            action = verdicts.stuck_next_action(reads)
            return V.STUCK, action, _stuck_how(action, reads, t, charged, refunds, policy, timeout_s)
        return (V.GENERATING if status == TaskStatus.GENERATING else V.WAITING), A.WAIT, None
    if status == TaskStatus.SUCCESS:
        if not t["result_urls"]:
            return V.SUCCESS_WITHOUT_URLS, A.RECHECK_UPSTREAM, None
        if refund_item.status == Severity.FAIL:
            return V.DELIVERED_BUT_REFUNDED, A.INVESTIGATE_LEDGER, None
        return V.DELIVERED, A.NOTHING, None
    code = t["error_code"] or ""
    advice = next(
        (a for k, a in _USER_ADVICE.items() if k in code), f"tell the user how to correct the request ({code})"
    )
    if for_credits:
        if charged or t["upstream_task_id"]:
            return V.FAILED_FOR_CREDITS_BUT_CHARGED, A.INVESTIGATE_LEDGER, None
        return V.FAILED_FOR_CREDITS, A.TELL_USER_TOP_UP, None
    if rules.refund_due(rules.RefundFacts(status, t["failure_class"], charged != 0, bool(refunds)), policy):
        return V.REFUND_DUE, A.ISSUE_REFUND, None
    if refund_item.status in (Severity.FAIL, Severity.WARN):
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


def _stuck_how(action, reads: verdicts.StuckReads, t, charged, refunds, policy, timeout_s) -> str | None:
    """The words of a stuck task's next action, with what the last read found and the deadline."""
    A = verdicts.NextAction
    deadline = _when((t["submitted_at"] or t["created_at"]) + timedelta(seconds=timeout_s))
    read = f"the last upstream read ({reads.read_kind} at {_when(reads.read_at)})"
    if action == A.MARK_FAILED:
        return (
            f"mark failed: {read} found nothing (state {reads.last_state}); "
            f"{_mark_failed_money(charged, refunds, policy)}"
        )
    if action == A.WAIT_FOR_INCIDENT:
        return (
            f"wait for the provider incident: {reads.incident}. Act on its tasks together (Incidents page); "
            f"if it is still unfinished past the timeout at {deadline}, mark it failed"
        )
    if action == A.WAIT:
        return (
            f"wait: the provider still reports it {reads.last_state} ({read}); past the timeout at "
            f"{deadline}, mark it failed"
        )
    return None
