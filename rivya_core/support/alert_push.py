"""Push alerts: the alert strip's alerts (rivya_core.read.alerts) POSTed to a webhook once when they appear
and once when they clear.

    alert_key(alert) -> str                    an alert's identity across runs ("stuck:lumen:lumen-flash")
    alert_doc(alert, state, judged_at) -> dict the structured alert
    payload(doc) -> dict                       what is POSTed: Slack-compatible {"text": ...} plus the
                                               structured alert under "rivya_alert"
    push_alerts(engine, found, url, ...) -> PushReport
        Announce what changed since the last run: every alert not announced yet is raised, every
        announced one that is gone is cleared. The sent state lives in `alert_notice` (init-db adds
        it), so a second run over the same alerts sends nothing. Each notice is claimed in a short
        transaction first (compare-and-set, with a lease), so two senders at once (the receiver's
        sweep and a cron `alerts --notify`) never send one twice; a delivery that fails releases its
        claim and is tried again by the next run. Deliveries retry with a bounded backoff, and the
        whole pass stops at `deadline_s`: a sink that is down or hangs never holds up its caller.
    notice_states(bind) -> dict[str, dict]      the alert_notice rows by key ({} without the table)
    check_notify_url(url) -> str                an http(s) URL with a host, else ValidationError

The webhook URL may carry a token (Slack's do): it is never printed, logged or stored; errors name
the alert webhook, not its address.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, inspect, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .. import clock
from ..domain import RivyaError, ValidationError
from ..read.alerts import Alerts, DegradationAlert, StuckAlert
from ..read.queries import Bind, connect, jsonable, rows
from ..stores.schema import alert_notice

NOTIFY_ENV = "RIVYA_ALERTS_NOTIFY"
QUIET, RAISED, RAISING, CLEARING = "quiet", "raised", "raising", "clearing"
TIMEOUT_S = 5.0  # one delivery attempt
ATTEMPTS = 3  # per notice and run
BACKOFF_S = (0.5, 2.0)  # between attempts (bounded by the pass's deadline)
DEADLINE_S = 15.0  # a whole pass
LEASE_S = 60.0  # a claim older than this was left by a sender that died: another may take it

Alert = StuckAlert | DegradationAlert


def alert_key(alert: Alert) -> str:
    if isinstance(alert, StuckAlert):
        return f"stuck:{alert.provider}:{alert.model}"[:200]
    return f"degraded:{alert.provider}:{alert.kind}"[:200]


def alert_doc(alert: Alert, state: str, judged_at: datetime) -> dict[str, Any]:
    kind = "stuck" if isinstance(alert, StuckAlert) else "degraded"
    return jsonable(
        {
            "key": alert_key(alert),
            "kind": kind,
            "state": state,
            "message": alert.message,
            "provider": alert.provider,
            "action": alert.action,
            "filter": alert.filter.to_dict(),
            "judged_at": judged_at,
        }
    )


def payload(doc: dict[str, Any]) -> dict[str, Any]:
    head = "Rivya alert" if doc["state"] == RAISED else "Rivya alert cleared"
    return {"text": f"{head} ({doc['kind']}): {doc['message']}", "rivya_alert": doc}


def check_notify_url(url: str) -> str:
    parts = urlsplit(str(url or "").strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("the alert webhook must be an http or https URL with a host", code="notify_url_invalid")
    return str(url).strip()


@dataclass
class Notice:
    key: str
    state: str  # raised | cleared: what was announced (or tried)
    message: str
    delivered: bool = False
    attempts: int = 0
    error: str | None = None


@dataclass
class PushReport:
    judged_at: datetime
    notices: list[Notice] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # another sender holds the claim
    deferred: list[str] = field(default_factory=list)  # the deadline came first: the next run sends them

    @property
    def failed(self) -> list[Notice]:
        return [n for n in self.notices if not n.delivered]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "judged_at": self.judged_at,
                "held": self.held,
                "deferred": self.deferred,
                "notices": [vars(n) for n in self.notices],
            }
        )


def has_notice_table(bind: Bind) -> bool:
    with connect(bind) as conn:
        return inspect(conn).has_table(alert_notice.name)


def notice_states(bind: Bind) -> dict[str, dict[str, Any]]:
    if not has_notice_table(bind):
        return {}
    with connect(bind) as conn:
        return {r["key"]: r for r in rows(conn.execute(select(*alert_notice.c)))}


def push_alerts(
    engine: Engine,
    found: Alerts,
    url: str,
    *,
    timeout_s: float = TIMEOUT_S,
    attempts: int = ATTEMPTS,
    backoff_s: tuple[float, ...] = BACKOFF_S,
    deadline_s: float = DEADLINE_S,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    transport: httpx.BaseTransport | None = None,
) -> PushReport:
    """See the module doc. Raises RivyaError when the database has no alert_notice table."""
    url = check_notify_url(url)
    if not has_notice_table(engine):
        raise RivyaError(
            "this database has no alert_notice table (an older schema): run "
            "`python -m rivya_core init-db --db URL` first",
            code="schema_missing",
        )
    end = monotonic() + deadline_s
    alerts: list[StuckAlert | DegradationAlert] = [*found.stuck, *found.degraded]
    current = {alert_key(a): a for a in alerts}
    known = notice_states(engine)
    now = clock.wall_now()
    report = PushReport(found.now)

    def announced(row: dict[str, Any] | None) -> bool:  # what the last finished sender announced
        if row is None:
            return False
        if row["state"] in (RAISING, CLEARING) and (row["claimed_until"] or now) < now:
            return row["state"] == CLEARING  # an expired claim: back to what it was before
        return row["state"] in (RAISED, CLEARING)

    work = [
        (k, RAISED, alert_doc(a, RAISED, found.now)) for k, a in sorted(current.items()) if not announced(known.get(k))
    ]
    work += [
        (
            k,
            "cleared",
            {
                **(known[k]["alert"] or {"key": k, "kind": k.split(":")[0]}),
                "state": "cleared",
                "message": known[k]["message"] or k,
                "judged_at": jsonable(found.now),
            },
        )
        for k in sorted(known)
        if k not in current and announced(known[k])
    ]
    with httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False) as client:
        for key, state, doc in work:
            if monotonic() >= end:
                report.deferred.append(key)
                continue
            if not _claim(engine, key, state, now):
                report.held.append(key)
                continue
            notice = Notice(key, state, doc["message"])
            notice.delivered, notice.attempts, notice.error = _deliver(
                client, url, payload(doc), attempts, backoff_s, timeout_s, end, sleep, monotonic
            )
            _finish(engine, key, state, notice, doc)
            report.notices.append(notice)
    return report


def _claim(engine: Engine, key: str, state: str, now: datetime) -> bool:
    """Compare-and-set the notice into raising / clearing; True when this sender holds it."""
    c = alert_notice.c
    lease = now + timedelta(seconds=LEASE_S)
    expired = c.claimed_until < now
    with engine.begin() as conn:
        if state == RAISED:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            made = conn.execute(
                insert(alert_notice)
                .values(key=key, state=RAISING, claimed_until=lease, attempts=0)
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(c.key)
            ).scalar()
            if made is not None:
                return True
            cond = or_(c.state == QUIET, (c.state == RAISING) & expired)
            return (
                conn.execute(
                    update(alert_notice).where(c.key == key, cond).values(state=RAISING, claimed_until=lease)
                ).rowcount
                == 1
            )
        cond = or_(c.state == RAISED, (c.state == CLEARING) & expired)
        return (
            conn.execute(
                update(alert_notice).where(c.key == key, cond).values(state=CLEARING, claimed_until=lease)
            ).rowcount
            == 1
        )


def _finish(engine: Engine, key: str, state: str, notice: Notice, doc: dict[str, Any]) -> None:
    c = alert_notice.c
    now = clock.wall_now()
    ok = notice.delivered
    if state == RAISED:
        values = dict(state=RAISED, raised_at=now, message=doc["message"], alert=doc) if ok else dict(state=QUIET)
    else:
        values = dict(state=QUIET, cleared_at=now) if ok else dict(state=RAISED)
    with engine.begin() as conn:
        conn.execute(
            update(alert_notice)
            .where(c.key == key, c.state == (RAISING if state == RAISED else CLEARING))
            .values(
                claimed_until=None,
                attempts=c.attempts + notice.attempts,
                last_error=None if ok else notice.error,
                **values,
            )
        )


def _deliver(
    client: httpx.Client,
    url: str,
    body: dict[str, Any],
    attempts: int,
    backoff_s: tuple[float, ...],
    timeout_s: float,
    end: float,
    sleep: Callable[[float], None],
    monotonic: Callable[[], float],
) -> tuple[bool, int, str | None]:
    """(delivered, attempts made, why not). A 2xx delivers; a 4xx other than 408/429 will not get
    better and is not retried; connection errors, timeouts and other answers are, with backoff."""
    error: str | None = None
    for attempt in range(max(1, attempts)):
        left = end - monotonic()
        if left <= 0:
            return False, attempt, error or "the pass's deadline came first"
        try:
            r = client.post(url, json=body, timeout=min(timeout_s, left))
        except httpx.HTTPError as exc:
            error = f"the alert webhook did not answer ({type(exc).__name__})"
        else:
            if 200 <= r.status_code < 300:
                return True, attempt + 1, None
            error = f"the alert webhook answered HTTP {r.status_code}"
            if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                return False, attempt + 1, error
        if attempt + 1 < attempts:
            pause = min(backoff_s[min(attempt, len(backoff_s) - 1)] if backoff_s else 0.0, end - monotonic())
            if pause > 0:
                sleep(pause)
    return False, max(1, attempts), error


class AlertPusher:
    """What the receiver's sweep calls after each polling pass: the alerts at the database's judging
    moment, pushed (bounded by `deadline_s`); failures are logged by the caller, never raised into it."""

    def __init__(self, engine: Engine, policy: Any, url: str, *, deadline_s: float = DEADLINE_S, **kw: Any):
        self.engine, self.policy, self.url = engine, policy, check_notify_url(url)
        self.deadline_s, self.kw = deadline_s, kw
        self.passes = 0
        self.last: PushReport | None = None

    def __repr__(self) -> str:  # the URL may hold a token
        return f"AlertPusher(deadline_s={self.deadline_s})"

    def __call__(self) -> PushReport:
        from ..read.alerts import alerts

        self.last = push_alerts(
            self.engine, alerts(self.engine, self.policy), self.url, deadline_s=self.deadline_s, **self.kw
        )
        self.passes += 1
        return self.last
