"""Bulk remediation on a big database.

`python -m simulations bench --bulk sqlite:///big.db` times bulk remediation on a copy
of that SQLite database (the file given is only read): dry runs of `refund` over
every failed task and over every finished one, and of `mark-failed` over every
succeeded one, then the execution
of the refund incident (under `refund_everything`, so content-policy failures are
really refunded and the rest refused, each with its support_action event), and a
second execution that must change nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..paths import ROOT
from .common import BenchError

BROAD_DAYS = 14  # bench --bulk: the window of the broad dry runs


def bulk(url: str) -> dict[str, Any]:
    """Dry-run and execution rates of rivya_core.support.bulk on a temporary copy of the SQLite database at url."""
    import sqlite3

    from rivya_core.policy import BillingPolicy
    from rivya_core.read import incidents
    from rivya_core.stores.db import sqlite_path
    from rivya_core.support import bulk as bulk_actions
    from rivya_core.wiring import wire

    from .. import recorded  # noqa: F401  (the recorded providers answer re-checks)

    src = sqlite_path(url)
    if src is None or not src.is_file():
        raise BenchError(f"--bulk needs an existing SQLite database file, not {url!r}")
    out: dict[str, Any] = {"url": url}
    with tempfile.TemporaryDirectory(prefix="rivya-bulk-") as tmp:
        copy = Path(tmp) / "bulk.db"
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as a, sqlite3.connect(copy) as b:
            a.backup(b)  # a consistent copy, WAL included
        curl = f"sqlite:///{copy}"
        wired = wire(curl, create=True)  # create: the incident table on an older file
        svc, engine = wired.service, wired.engine
        svc.policy = BillingPolicy.load(str(ROOT / "data" / "policies" / "refund_everything.toml"))
        out["tasks"] = engine.connect().exec_driver_sql("select count(*) from ai_task").scalar()
        # The broad dry runs cover the latest BROAD_DAYS of creation: a filter matching more than
        # incidents.MAX_TASKS is refused (narrow it), which on a million-task history the whole of it does.
        since = svc.judge_clock.now() - timedelta(days=BROAD_DAYS)
        for label, action, states, start in (
            ("refund_failed", "refund", ("FAILED",), None),
            ("refund_all_finished", "refund", ("FAILED", "SUCCESS"), since),
            ("mark_failed_succeeded", "mark-failed", ("SUCCESS",), since),
        ):
            flt = incidents.BulkFilter(status=states, since=start)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                p = bulk_actions.plan(svc, engine, action, flt)
            except incidents.BulkError as exc:
                out[f"dry_run_{label}"] = {"filter": flt.describe(), "refused": str(exc)}
                continue
            out[f"dry_run_{label}"] = {
                "filter": flt.describe(),
                "matched": p.matched,
                "would_act": p.would_act,
                "would_refuse": p.would_refuse,
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),
            }
        from rivya_core.read import alerts

        t0 = time.perf_counter()
        found = alerts.alerts(engine, svc.policy)
        out["alerts"] = {
            "stuck": len(found.stuck),
            "degraded": len(found.degraded),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        flt = incidents.BulkFilter(status=("FAILED",))
        if "refused" in out["dry_run_refund_failed"]:
            out["execute_refund"] = {"refused": out["dry_run_refund_failed"]["refused"]}
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            r = bulk_actions.execute(
                svc, engine, "refund", flt, operator="bench", reason="bulk benchmark", name="bench"
            )
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            out["execute_refund"] = {
                "matched": r.matched,
                "acted": r.acted,
                "refused": r.refused,
                "credits_moved": r.credits_moved,
                "seconds": round(dt, 2),
                "cpu_seconds": round(dc, 2),
                "tasks_per_s": round(r.matched / dt, 1) if dt else None,
                "tasks_per_cpu_s": round(r.matched / dc, 1) if dc else None,
            }
            t0 = time.perf_counter()
            again = bulk_actions.execute(
                svc, engine, "refund", flt, operator="bench", reason="bulk benchmark", name="bench"
            )
            out["execute_again"] = {
                "acted": again.acted,
                "refused": again.refused,
                "skipped": again.skipped,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        out["load_average"] = [round(x, 1) for x in os.getloadavg()]
        wired.close()
    return out


__all__ = ["BROAD_DAYS", "bulk"]
