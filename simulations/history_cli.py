"""The command lines that read recorded history: backtest, calibrate, fork."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rivya_core.cli import number
from rivya_core.domain import RivyaError
from rivya_core.policy import DEFAULT_POLICY, BillingPolicy
from rivya_core.stores.db import open_reader

EXIT_VIOLATION = 1


def add_parsers(sub) -> None:
    b = sub.add_parser(
        "backtest",
        help="re-apply billing policies to recorded history",
        description="Re-apply two billing policies to every recorded task and chat turn of a "
        "database (the exact part), check that the recorded policy reproduces its ledger "
        "(exit 1 when not), and re-simulate what changes time trace-driven.",
    )
    b.add_argument("--db", required=True, help="database URL (sqlite:///path.db or postgresql://...)")
    b.add_argument("--since", help="window start (ISO date or date-time, UTC; inclusive)")
    b.add_argument("--until", help="window end (ISO date or date-time, UTC; exclusive)")
    b.add_argument("--policy", action="append", required=True, help="policy TOML file (give exactly two)")
    b.add_argument(
        "--recorded-policy",
        help="the policy the history was recorded under (default: a simulation "
        "database's own; otherwise the default policy)",
    )
    b.add_argument("--exact-only", action="store_true", help="skip the timing part (the trace-driven re-run)")
    b.add_argument("--resamples", type=number("resamples"), default=1000, help="bootstrap resamples of the timing part")
    b.add_argument("--json", action="store_true")

    c = sub.add_parser(
        "calibrate",
        help="fit a scenario to recorded history",
        description="Fit arrivals, population, mix, per-provider generation times and callback "
        "delays (empirical quantiles) and fault rates from a database; write a scenario file "
        "that `run` accepts.",
    )
    c.add_argument("--db", required=True, help="database URL")
    c.add_argument("--since", help="window start (ISO, UTC)")
    c.add_argument("--until", help="window end (ISO, UTC)")
    c.add_argument("-o", "--output", required=True, help="scenario file to write (.toml)")
    c.add_argument("--force", action="store_true", help="overwrite the output file")
    c.add_argument("--json", action="store_true", help="print the estimates as JSON")

    f = sub.add_parser(
        "fork",
        help="fork a recorded task or account into a replayable scripted scenario",
        description="Write a [[script]] scenario that replays what the database recorded for one "
        "task, or for one account's tasks and chat turns in a window; `run` it to reproduce "
        "the timeline, edit one line to ask what-if.",
    )
    who = f.add_mutually_exclusive_group(required=True)
    who.add_argument("--task", type=number("id"), help="task id")
    who.add_argument("--user", type=number("id"), help="account id")
    f.add_argument("--db", required=True, help="database URL")
    f.add_argument("--since", help="with --user: window start (ISO, UTC)")
    f.add_argument("--until", help="with --user: window end (ISO, UTC)")
    f.add_argument("-o", "--output", required=True, help="story file to write (.toml)")
    f.add_argument("--force", action="store_true", help="overwrite the output file")
    f.add_argument(
        "--check",
        action="store_true",
        help="run the story and compare it with the recorded timeline; exit 1 on a difference",
    )


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
    if a.resamples < 10:
        raise RivyaError("--resamples must be at least 10", code="bad_argument")
    since, until = parse_time(a.since, "--since"), parse_time(a.until, "--until")
    engine = open_reader(a.db)
    try:
        recorded, where = recorded_policy_for(engine, a.recorded_policy)
        t0, c0 = time.perf_counter(), time.process_time()
        history = load_history(engine, since, until)
        loaded, c1 = time.perf_counter() - t0, time.process_time()
        report = backtest(history, policies, recorded, where)
        report.window["read_s"] = round(loaded, 3)
        report.window["exact_s"] = round(time.perf_counter() - t0 - loaded, 3)
        report.window["read_cpu_s"] = round(c1 - c0, 3)
        report.window["exact_cpu_s"] = round(time.process_time() - c1, 3)
        if not a.exact_only:
            from .timing import timing_part

            t1 = time.perf_counter()
            report.timing = timing_part(engine, history, policies, resamples=a.resamples)
            report.window["timing_s"] = round(time.perf_counter() - t1, 3)
    finally:
        engine.dispose()
    print(json.dumps(report.to_dict(), indent=1, default=str) if a.json else report.render_text())
    return 0 if report.ok else EXIT_VIOLATION


def cmd_fork(a: argparse.Namespace) -> int:
    from .fork import check_fork, fork_story
    from .history import parse_time

    if a.task is not None and (a.since or a.until):
        raise RivyaError("--since/--until go with --user", code="bad_argument")
    out = refuse_overwrite(a.output, a.force)
    since, until = parse_time(a.since, "--since"), parse_time(a.until, "--until")
    engine = open_reader(a.db)
    try:
        story = fork_story(engine, task_id=a.task, user_id=a.user, since=since, until=until)
        diffs = check_fork(engine, story) if a.check else None
    finally:
        engine.dispose()
    out.write_text(story.to_toml(), encoding="utf-8")
    print(
        f"wrote {out}: {len(story.task_ids)} task(s), {len(story.chat_ids)} chat turn(s), "
        f"{len(story.scenario.script)} scripted steps; run it with `python -m simulations run {out} --db URL`"
    )
    if diffs is None:
        return 0
    if diffs:
        print("the story does NOT reproduce the recorded timeline:")
        for d in diffs[:20]:
            print(f"  {d}")
        return EXIT_VIOLATION
    print("checked: running the story reproduces the recorded timeline (states, ledger, notifications)")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .history import parse_time

    out = refuse_overwrite(a.output, a.force)
    since, until = parse_time(a.since, "--since"), parse_time(a.until, "--until")
    engine = open_reader(a.db)
    try:
        cal = calibrate(engine, since, until, name=out.stem)
    finally:
        engine.dispose()
    out.write_text(cal.to_toml(), encoding="utf-8")
    if a.json:
        print(json.dumps({k: {"value": e.value, "n": e.n, "se": e.se} for k, e in cal.estimates.items()}, indent=1))
    else:
        print(f"wrote {out}: {len(cal.estimates)} estimates; not fitted: {'; '.join(cal.not_fitted)}")
    return 0


COMMANDS = {"backtest": cmd_backtest, "fork": cmd_fork, "calibrate": cmd_calibrate}


def refuse_overwrite(path: str, force: bool) -> Path:
    """Outputs never overwrite a file that holds data unless --force (rivya_core.targets.file_target)."""
    from rivya_core.targets import file_target

    return file_target(path, force)
