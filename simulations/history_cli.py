"""The command lines that read recorded history: backtest, calibrate, fork."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rivya_core.db import open_reader
from rivya_core.domain import RivyaError
from rivya_core.policy import DEFAULT_POLICY, BillingPolicy

EXIT_VIOLATION = 1


def add_parsers(sub) -> None:
    b = sub.add_parser("backtest", help="re-apply billing policies to recorded history",
                       description="Re-apply two billing policies to every recorded task and chat turn of a "
                       "database (the exact part), check that the recorded policy reproduces its ledger "
                       "(exit 1 when not), and re-simulate what changes time trace-driven.")
    b.add_argument("--db", required=True, help="database URL (sqlite:///path.db or postgresql://...)")
    b.add_argument("--since", help="window start (ISO date or date-time, UTC; inclusive)")
    b.add_argument("--until", help="window end (ISO date or date-time, UTC; exclusive)")
    b.add_argument("--policy", action="append", required=True, help="policy TOML file (give exactly two)")
    b.add_argument("--recorded-policy", help="the policy the history was recorded under (default: a simulation "
                   "database's own; otherwise the default policy)")
    b.add_argument("--timing", action="store_true", help="also re-simulate the timing part trace-driven")
    b.add_argument("--json", action="store_true")


def recorded_policy_for(engine, path: str | None) -> tuple[BillingPolicy, str]:
    if path:
        return BillingPolicy.load(path), f"--recorded-policy {path}"
    from .recorded import recorded_policy

    found = recorded_policy(engine)
    if found is not None:
        return found
    return DEFAULT_POLICY, "the default policy (no --recorded-policy given and no simulation run recorded)"


def cmd_backtest(a: argparse.Namespace) -> int:
    from .backtest import backtest
    from .history import load_history, parse_time

    if len(a.policy) != 2:
        raise RivyaError("backtest takes exactly two --policy files", code="bad_argument")
    policies = [BillingPolicy.load(p) for p in a.policy]
    since, until = parse_time(a.since, "--since"), parse_time(a.until, "--until")
    engine = open_reader(a.db)
    try:
        recorded, where = recorded_policy_for(engine, a.recorded_policy)
        t0 = time.perf_counter()
        history = load_history(engine, since, until)
        loaded = time.perf_counter() - t0
        report = backtest(history, policies, recorded, where)
        report.window["read_s"] = round(loaded, 3)
        report.window["exact_s"] = round(time.perf_counter() - t0 - loaded, 3)
        if a.timing:
            from .timing import timing_part

            report.timing = timing_part(engine, history, policies)
    finally:
        engine.dispose()
    print(json.dumps(report.to_dict(), indent=1, default=str) if a.json else report.render_text())
    return 0 if report.ok else EXIT_VIOLATION


COMMANDS = {"backtest": cmd_backtest}


def refuse_overwrite(path: str, force: bool) -> Path:
    """Outputs never overwrite a file that holds data unless --force."""
    p = Path(path)
    if p.is_dir():
        raise RivyaError(f"{p} is a directory; give a file path", code="bad_argument")
    if p.exists() and p.stat().st_size > 0 and not force:
        raise RivyaError(f"{p} already exists; pass --force to overwrite it", code="output_exists")
    return p
