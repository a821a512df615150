"""The dashboard's reads on a big database (`bench --dashboard URL`): the median wall time of
every data function a page calls (lookups, page data, the audit) against its target."""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

LOOKUP_TARGET_S = 0.05
PAGE_TARGET_S = 0.5
AUDIT_TARGET_S = 10.0


def dashboard_calls(engine: Any) -> list[tuple[str, str, Any]]:
    """(kind, name, call) for every dashboard data function, on sample rows of the database."""
    from sqlalchemy import func, select

    from rivya_core import audit as au
    from rivya_core.read import alerts as al
    from rivya_core.read import incidents
    from rivya_core.read import ledger_views as lv
    from rivya_core.read import queries as q
    from rivya_core.read import reports as rp
    from rivya_core.read import user_view as uv
    from rivya_core.read.diagnose import diagnose
    from rivya_core.stores.schema import account, ai_task, chat_message, chat_session, credit_ledger

    with engine.connect() as conn:
        top = conn.scalar(select(func.max(ai_task.c.id)))
        tid, upstream, uid = conn.execute(
            select(ai_task.c.id, ai_task.c.upstream_task_id, ai_task.c.user_id)
            .where(ai_task.c.id >= top // 2, ai_task.c.upstream_task_id.is_not(None))
            .order_by(ai_task.c.id)
            .limit(1)
        ).one()
        email = conn.scalar(select(account.c.email).where(account.c.id == uid))
        busiest = conn.scalar(
            select(credit_ledger.c.user_id).group_by(credit_ledger.c.user_id).order_by(func.count().desc()).limit(1)
        )
        sid = conn.scalar(select(func.max(chat_session.c.id))) or 1
        has_msgs = conn.scalar(select(func.count()).select_from(chat_message))
    now = q.resolve_now(engine, None)
    e = engine
    lookups = [
        ("find_tasks(id)", lambda: q.find_tasks(e, str(tid))),
        ("find_tasks(upstream)", lambda: q.find_tasks(e, upstream)),
        ("find_tasks(email)", lambda: q.find_tasks(e, email)),
        ("task_detail", lambda: q.task_detail(e, tid)),
        ("find_accounts(email)", lambda: q.find_accounts(e, email)),
    ]
    pages = [
        ("queries.active_studio", lambda: q.active_studio(e)),
        ("queries.history", lambda: q.history(e, uid)),
        ("queries.history(all)", lambda: q.history(e)),
        ("queries.notifications_centre", lambda: q.notifications_centre(e, uid)),
        ("queries.unread_counts", lambda: q.unread_counts(e, uid)),
        ("queries.recent_generations", lambda: q.recent_generations(e)),
        ("reports.tasks_by_state", lambda: rp.tasks_by_state(e)),
        ("reports.throughput", lambda: rp.throughput(e)),
        ("reports.failures_by_code", lambda: rp.failures_by_code(e)),
        ("reports.ledger_by_type", lambda: rp.ledger_by_type(e)),
        ("reports.credit_totals", lambda: rp.credit_totals(e)),
        ("reports.audit_summary", lambda: rp.audit_summary(e)),
        ("queries.reference_now", lambda: q.reference_now(e)),
        ("reports.filter_options", lambda: rp.filter_options(e)),
        ("reports.active_tasks", lambda: rp.active_tasks(e, now=now)),
        ("ledger_views.account_overview", lambda: lv.account_overview(e, busiest)),
        ("ledger_views.balance_series", lambda: lv.balance_series(e, busiest)),
        ("ledger_views.ledger_page", lambda: lv.ledger_page(e, busiest, page=3)),
        ("ledger_views.chat_credits", lambda: lv.chat_credits(e)),
        ("ledger_views.chat_sessions", lambda: lv.chat_sessions(e)),
        ("ledger_views.chat_messages", lambda: lv.chat_messages(e, sid if has_msgs else None)),
        ("ledger_views.chat_gap_distribution", lambda: lv.chat_gap_distribution(e)),
        ("ledger_views.tool_backed_turns", lambda: lv.tool_backed_turns(e)),
        ("ledger_views.notification_kinds", lambda: lv.notification_kinds(e)),
        ("ledger_views.state_timeline", lambda: lv.state_timeline(e)),
        ("ledger_views.credit_flow", lambda: lv.credit_flow(e)),
        ("ledger_views.latency_histogram", lambda: lv.latency_histogram(e)),
        ("ledger_views.busiest_accounts", lambda: lv.busiest_accounts(e)),
        ("audit.conservation", lambda: au.conservation(e)),
        ("diagnose.diagnose", lambda: diagnose(e, tid)),
        ("alerts.alerts", lambda: al.alerts(e)),
        ("user_view.user_tasks", lambda: uv.user_tasks(e, busiest, limit=500)),
        (
            "user_view.user_tasks(FAILED, 7 days)",
            lambda: uv.user_tasks(e, busiest, statuses=("FAILED",), since=now - timedelta(days=7), limit=500),
        ),
        ("user_view.outcome_seen", lambda: uv.outcome_seen(e, tid)),
        ("user_view.find_chat_messages", lambda: uv.find_chat_messages(e, email)),
        ("bulk.incidents", lambda: incidents.incidents(e)),
    ]
    return (
        [("lookup", n, f) for n, f in lookups]
        + [("page", n, f) for n, f in pages]
        + [("audit", "audit.audit", lambda: au.audit(e))]
    )


def dashboard(url: str, reps: int = 3, only: str = "") -> dict[str, Any]:
    """Median wall time of each dashboard data function on the database at url."""
    from rivya_core.stores.db import make_engine

    engine = make_engine(url)
    target = {"lookup": LOOKUP_TARGET_S, "page": PAGE_TARGET_S, "audit": AUDIT_TARGET_S}
    out = []
    try:
        for kind, name, call in dashboard_calls(engine):
            if only and only not in name:
                continue
            times = []
            for _ in range(1 if kind == "audit" else reps):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "median_s": round(med, 4),
                    "target_s": target[kind],
                    "ok": med <= target[kind],
                }
            )
    finally:
        engine.dispose()
    return {"url": url, "reps": reps, "calls": out}


def render_dashboard(report: dict[str, Any]) -> str:
    lines = [f"dashboard reads on {report['url']} (median of {report['reps']})"]
    for c in report["calls"]:
        lines.append(
            f"  {c['name']:38} {c['median_s'] * 1000:10,.1f} ms  (target {c['target_s'] * 1000:,.0f} ms)"
            f"  {'ok' if c['ok'] else 'SLOW'}"
        )
    return "\n".join(lines)


__all__ = ["dashboard", "dashboard_calls", "render_dashboard"]
