"""Step 5a: a signed callback verified, recorded and routed (apply, defer, ignore), and parking:
a callback for an upstream id no task holds yet is kept and claimed when a task takes that id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import upstream_cancel, webhooks
from ..domain import (
    CallbackOutcome,
    EventKind,
    FailureClass,
    ParkedCallback,
    ProviderCallback,
    Task,
    TaskEvicted,
    TaskStatus,
    known,
)
from ..ports import CallbackFormat, Tx, UpstreamState
from .base import MAX_CALLBACK_BODY, PARKED_DETAIL, STORED_BODY_LIMIT, WEBHOOK_SEEN
from .outputs import Outputs
from .parsing import (
    _already,
    _callback_outcome,
    _epoch,
    _Parsed,
    parse_callback,
    parse_with,
)


@dataclass(frozen=True)
class CallbackResult:
    outcome: str
    callback_id: int
    task_id: int | None = None
    reason: str | None = None


class Callbacks(Outputs):
    def handle_callback(
        self, provider: str, headers: Mapping[str, str], body: bytes, task_ref: str | None = None
    ) -> CallbackResult:
        """Verify, record and route one delivery. `task_ref`: our own reference for the task
        when the webhook URL carried it (unsigned: it only links a parked callback to its task)."""
        now = self._now()
        provider = str(provider)[:50]
        raw = bytes(body) if isinstance(body, (bytes, bytearray)) else b""
        stored = raw[:STORED_BODY_LIMIT].decode("utf-8", "replace")
        record = ProviderCallback(
            id=0,
            provider=provider,
            received_at=now,
            signature_valid=False,
            outcome=CallbackOutcome.MALFORMED,
            body=stored,
        )

        def reject(outcome: CallbackOutcome, reason: str) -> CallbackResult:
            cb = self._tx(lambda tx: tx.add_callback(replace(record, outcome=outcome, detail=reason)))
            return CallbackResult(outcome, cb.id, None, reason)

        if not isinstance(body, (bytes, bytearray)) or len(raw) > MAX_CALLBACK_BODY:
            return reject(CallbackOutcome.MALFORMED, f"body is not bytes or over {MAX_CALLBACK_BODY} bytes")
        fmt: CallbackFormat | None = getattr(self.providers.get(provider), "callbacks", None)
        secrets = self._secrets.get(provider)
        if fmt is None and not secrets:
            return reject(CallbackOutcome.REJECTED_SIGNATURE, "no webhook secret configured for this provider")
        headers = headers if isinstance(headers, Mapping) else {}
        now_ts = now.timestamp() if now.tzinfo else _epoch(now)
        try:
            webhook_id = (
                fmt.verify(headers, raw, now_ts)
                if fmt is not None
                else webhooks.verify(secrets or [], headers, raw, now_ts)
            )
            record.webhook_id = webhook_id[:200]
        except webhooks.WebhookError as exc:
            outcome = {"stale": CallbackOutcome.REJECTED_STALE, "malformed": CallbackOutcome.MALFORMED}.get(
                exc.code, CallbackOutcome.REJECTED_SIGNATURE
            )
            return reject(outcome, exc.message)
        record.signature_valid = True
        parsed = parse_with(fmt, raw) if fmt else parse_callback(raw)
        if isinstance(parsed, str):
            return reject(CallbackOutcome.MALFORMED, parsed)
        record.upstream_task_id = parsed.upstream_task_id[:200]
        ref = task_ref[:100] if isinstance(task_ref, str) and task_ref else None
        parsed, copied = self._copy_for_callback(provider, parsed)

        def step(tx: Tx) -> CallbackResult:  # builds its own row: a retried attempt starts clean
            upstream_id = parsed.upstream_task_id
            try:
                task = tx.task_by_upstream(provider, upstream_id, for_update=True)  # found: its row lock orders us
                if task is None:  # look again under the upstream lock, against _mark_generating's claim
                    tx.lock_upstream(provider, upstream_id)
                    task = tx.task_by_upstream(provider, upstream_id, for_update=True)
            except TaskEvicted as gone:
                return self._late(tx, record, parsed, gone)
            if task is None:
                return self._park(tx, record, parsed, ref)
            if task.terminal:
                cb = tx.add_callback(
                    replace(
                        record,
                        task_id=task.id,
                        outcome=CallbackOutcome.DUPLICATE,
                        detail=upstream_cancel.late_detail(task, parsed.state) or _already(task.status),
                    )
                )
            else:  # the insert itself turns a webhook id already applied or deferred into a duplicate
                cb = tx.add_callback_unless_seen(
                    replace(record, task_id=task.id, outcome=_callback_outcome(parsed)), WEBHOOK_SEEN
                )
            outcome = CallbackOutcome(cb.outcome)
            if (
                copied is not None
                and outcome == CallbackOutcome.APPLIED
                and self._record_copy(tx, task, copied, "callback")
            ):
                self._callback_event(tx, task.id, parsed, record.webhook_id, outcome, cb.id)
            else:
                self._take(tx, task, parsed, record.webhook_id, outcome, cb.id)
            return CallbackResult(outcome, cb.id, task.id, cb.detail)

        return self._tx(step)

    def _route(self, tx: Tx, task: Task, parsed: _Parsed, webhook_id: str | None) -> tuple[CallbackOutcome, str | None]:
        """What a valid callback does to its task: nothing (duplicate, progress), defer or apply."""
        if task.terminal:
            return CallbackOutcome.DUPLICATE, _already(task.status)
        if webhook_id and tx.webhook_seen(task.provider, webhook_id):
            return CallbackOutcome.DUPLICATE, WEBHOOK_SEEN
        return _callback_outcome(parsed), None

    def _late(self, tx: Tx, record: ProviderCallback, parsed: _Parsed, gone: TaskEvicted) -> CallbackResult:
        """A valid callback for a task the store wrote out and forgot: the task is
        finished, so the callback is a repeat, recorded as for a task still held."""
        outcome, detail = CallbackOutcome.DUPLICATE, _already(gone.status)
        cb = tx.add_callback(replace(record, task_id=gone.task_id, outcome=outcome, detail=detail))
        self._callback_event(tx, gone.task_id, parsed, record.webhook_id, outcome, cb.id)
        return CallbackResult(outcome, cb.id, gone.task_id, detail)

    def _callback_event(
        self,
        tx: Tx,
        task_id: int,
        parsed: _Parsed,
        webhook_id: str | None,
        outcome: CallbackOutcome,
        callback_id: int,
        **extra: Any,
    ) -> None:
        self._event(
            tx,
            task_id,
            EventKind.CALLBACK,
            webhook_id=webhook_id,
            outcome=str(outcome),
            state=parsed.state,
            callback_id=callback_id,
            **extra,
        )

    def _take(
        self,
        tx: Tx,
        task: Task,
        parsed: _Parsed,
        webhook_id: str | None,
        outcome: CallbackOutcome,
        callback_id: int,
        **extra: Any,
    ) -> None:
        self._callback_event(tx, task.id, parsed, webhook_id, outcome, callback_id, **extra)
        if outcome == CallbackOutcome.DEFERRED:
            self._defer(tx, task)
        elif outcome == CallbackOutcome.APPLIED:
            self._apply_status(tx, task, parsed, path="callback")

    def _park(self, tx: Tx, record: ProviderCallback, parsed: _Parsed, ref: str | None) -> CallbackResult:
        """A valid callback for an upstream id no task holds yet: kept, and applied by
        _mark_generating when a task takes that id (the provider answered before our write)."""
        owner = self._task_for_ref(tx, record.provider, ref)
        cb = tx.add_callback(replace(record, task_id=owner, outcome=CallbackOutcome.UNKNOWN_TASK, detail=PARKED_DETAIL))
        tx.park_callback(
            ParkedCallback(
                id=0,
                callback_id=cb.id,
                provider=record.provider,
                upstream_task_id=parsed.upstream_task_id,
                received_at=record.received_at,
                state=parsed.state,
                webhook_id=record.webhook_id,
                result_urls=list(parsed.result_urls) or None,
                error_code=parsed.error_code,
                error_message=parsed.error_message,
                failure_class=parsed.failure_class,
                task_ref=ref,
            )
        )
        return CallbackResult(cb.outcome, cb.id, owner, PARKED_DETAIL)

    @staticmethod
    def _task_for_ref(tx: Tx, provider: str, ref: str | None) -> int | None:
        """The still-waiting task of this provider that our reference names, if any."""
        if not ref or not ref.startswith("task-") or not ref[5:].isdigit():
            return None
        task = tx.get_task(int(ref[5:]))
        return task.id if task and task.provider == provider and task.status == TaskStatus.WAITING else None

    def _claim_parked(self, tx: Tx, task_id: int, provider: str, upstream_id: str) -> list[tuple[int, str]]:
        """Apply, in arrival order, the callbacks that came before this task had its upstream id;
        (callback id, outcome) of each."""
        tx.lock_upstream(provider, upstream_id)
        claimed = []
        for p in tx.claim_parked(provider, upstream_id, task_id, self._now()):
            parsed = _Parsed(
                p.upstream_task_id,
                known(UpstreamState, p.state),
                tuple(p.result_urls or ()),
                p.error_code,
                p.error_message,
                known(FailureClass, p.failure_class) if p.failure_class is not None else None,
            )
            task = self._task_in(tx, task_id, for_update=True)
            outcome, detail = self._route(tx, task, parsed, p.webhook_id)
            tx.settle_callback(p.callback_id, task_id, outcome, detail or "parked until the upstream id was stored")
            self._take(tx, task, parsed, p.webhook_id, outcome, p.callback_id, parked=True)
            claimed.append((p.callback_id, str(outcome)))
        return claimed
