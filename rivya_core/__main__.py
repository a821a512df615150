"""`python -m rivya_core`: database set-up, audit, the checklist, support actions, the webhook receiver.

Every command takes --db URL (default: the embedded SQLite database under
data/). Errors print one line and exit non-zero; audit exits 1 on violations.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from . import limits
from .cli import OneLineParser, number, run_command
from .clock import WallClock
from .domain import SupportAction
from .read.queries import naive_utc
from .stores.db import DEFAULT_URL, open_reader

if TYPE_CHECKING:
    from .lifecycle import LifecycleService
    from .wiring import Wired
from .stores.sql import open_store


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", default=DEFAULT_URL, metavar="URL", help=f"SQLAlchemy URL or SQLite file (default: {DEFAULT_URL})"
    )
    p.add_argument("--policy", metavar="FILE", help="billing policy TOML (default: the built-in policy)")


def _task_id(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"task id must be {limits.describe('id')}, not {value[:40]!r}")
    return int(number("id")(value))


def _moment(value: str) -> datetime:
    if value == "now":
        return WallClock().now()
    try:
        moment = naive_utc(datetime.fromisoformat(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected `now` or an ISO time, not {value[:40]!r}") from None
    if not limits.EARLIEST <= moment <= limits.LATEST:
        raise argparse.ArgumentTypeError(
            f"must be a time from {limits.EARLIEST:%Y-%m-%d} to {limits.LATEST:%Y-%m-%d}, not {value[:40]}"
        )
    return moment


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m rivya_core", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-db", help="create the tables (idempotent; upgrades an older Rivya database)")
    _db(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="add the Rivya tables to a database that holds other data (nothing is dropped)",
    )
    p = sub.add_parser(
        "audit",
        help="check every invariant (read-only; --record stores the result for the "
        "dashboard); exit 1 when any is violated",
    )
    _db(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--record",
        action="store_true",
        help="store the result in the database's audit_run table, where the dashboard shows it "
        "(the only case where audit writes)",
    )
    p.add_argument(
        "--at",
        type=_moment,
        metavar="WHEN",
        default=None,
        help="judge time-dependent checks (stuck tasks, open chat reservations) at WHEN: `now` "
        "(wall time, for a live database) or an ISO time; default: the latest time recorded "
        "in the database (right for a simulation's own time base)",
    )
    p = sub.add_parser("diagnose", help="the troubleshooting checklist answered for one task or one chat turn")
    p.add_argument("task_id", type=_task_id, nargs="?")
    p.add_argument("--chat-message", type=_task_id, metavar="N", help="a chat turn's settlement instead of a task")
    _db(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for action, text in (
        (SupportAction.REFUND, "issue a refund that is due (refused with the reason otherwise)"),
        (SupportAction.RECHECK, "re-check a generating task upstream"),
        (SupportAction.MARK_FAILED, "fail a task stuck past its threshold (refund by policy)"),
    ):
        p = sub.add_parser(action.value, help=text)
        p.add_argument("task_id", type=_task_id)
        _db(p)
        optional = action is SupportAction.RECHECK
        p.add_argument("--operator", required=not optional, default="cli", help="who is acting")
        p.add_argument("--reason", required=not optional, default="re-check requested", help="why")
    p = _act(
        sub,
        "rerun",
        "task_id",
        "run a task again for its user: a new task with the same model, prompt and "
        "params, linked to the original, charged by the policy (--courtesy: refunded at once)",
        "why (kept on the original's timeline, never shown to the user)",
    )
    p.add_argument("--courtesy", action="store_true", help="give the re-run's charge back at once, as a support refund")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _act(
        sub,
        "reprocess-callback",
        "callback_id",
        "apply a parked (unknown_task) provider callback to the task "
        "that now holds its upstream id; a repeat is recorded as a duplicate",
        "why (kept on the task's timeline)",
    )
    p = sub.add_parser(
        "export-task",
        help="a task's whole record (row, timeline, ledger, callbacks, "
        "notifications, re-run links) as one JSON document (read-only)",
    )
    p.add_argument("task_id", type=_task_id)
    _db(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (default: standard output)")
    p.add_argument("--force", action="store_true", help="overwrite FILE when it already holds data")
    p = sub.add_parser(
        "bulk",
        help="a support action on every task a filter matches, as a named incident "
        "(--dry-run first: what each task would do)",
    )
    p.add_argument("action", choices=[a.value for a in SupportAction])
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="repeatable; keys: provider, model, category, status (comma-separated), error_code, "
        "failure_class, min_age_s (seconds or 15m/2h/1d), since, until (ISO), user (id or email)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    p.add_argument("--operator", help="who is acting (required to execute)")
    p.add_argument("--reason", help="why (required to execute; kept on every task's timeline)")
    p.add_argument(
        "--name",
        help="the incident's name (default: the action and filter); running a name "
        "again skips the tasks it already handled",
    )
    _db(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("recover", help="bring tasks interrupted between steps to a consistent state")
    _db(p)
    p.add_argument(
        "--grace",
        type=number("grace_s"),
        default=60.0,
        metavar="S",
        help="leave tasks touched in the last S seconds alone (default 60)",
    )
    p = sub.add_parser("poll", help="one polling sweep over tasks due for an upstream check")
    _db(p)
    p.add_argument(
        "--every", type=_seconds, metavar="S", help="sweep again every S seconds until interrupted (default: once)"
    )
    p = sub.add_parser(
        "serve",
        help="the webhook receiver (POST /webhooks/PROVIDER, GET /healthz) and the polling sweep, in one process",
    )
    _db(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    p.add_argument(
        "--poll-every",
        type=number("poll_every_s"),
        default=30.0,
        metavar="S",
        help="run the polling sweep every S seconds in this process; 0: never (default 30)",
    )
    p.add_argument(
        "--workers",
        type=number("workers"),
        default=1,
        metavar="N",
        help="worker processes accepting webhooks on the one port (default 1); the polling "
        "sweep runs once, in the parent",
    )
    p.add_argument(
        "--threads",
        type=number("workers"),
        default=None,
        metavar="N",
        help="callbacks each process handles at once, and database connections it keeps "
        "(one more for the sweep) (default 8)",
    )
    p.add_argument(
        "--alerts-notify",
        metavar="URL",
        default=None,
        help="after each polling sweep, POST new and cleared alerts to this webhook (default: "
        "$RIVYA_ALERTS_NOTIFY; never printed)",
    )
    p = sub.add_parser(
        "import",
        help="read a production database (read-only) into a contract database "
        "every page, audit and backtest reads (docs/import.md)",
    )
    p.add_argument("kind", choices=["shipany"], help="the source's schema family")
    p.add_argument("--source", required=True, metavar="URL", help="the production database (only read)")
    p.add_argument("--into", required=True, metavar="URL", help="the contract database to write (SQLite or PostgreSQL)")
    p.add_argument(
        "--since",
        type=_moment,
        metavar="ISO",
        help="read only rows updated since this time "
        "(default: since the last import of this source, minus an overlap; everything the first time)",
    )
    p.add_argument(
        "--map",
        metavar="FILE.toml",
        help="table and column names of a fork (default: the template's, data/sources/shipany.toml)",
    )
    p.add_argument("--dry-run", action="store_true", help="read and derive everything, write nothing")
    p.add_argument("--force", action="store_true", help="replace a SQLite target that holds other data")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p = sub.add_parser(
        "alerts",
        help="the alert strip's alerts (stuck tasks, degraded providers); --notify "
        "POSTs each new one to a webhook once, and again when it clears",
    )
    _db(p)
    p.add_argument("--notify", metavar="URL", help="the alert webhook (Slack-compatible JSON; never printed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _act(sub, name: str, ident: str, text: str, why: str) -> argparse.ArgumentParser:
    """A support act on one row: its id, --db/--policy, and the operator and reason it needs."""
    p = sub.add_parser(name, help=text)
    p.add_argument(ident, type=_task_id)
    _db(p)
    p.add_argument("--operator", required=True, help="who is acting")
    p.add_argument("--reason", required=True, help=why)
    return p


_seconds = number("sweep_s")
_port = number("port")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(COMMANDS[args.command], args)


def _wired(args: argparse.Namespace, pool_size: int | None = None) -> Wired:
    from .wiring import policy_from, wire

    _provider_sources()
    return wire(args.db, policy=policy_from(args.policy), pool_size=pool_size)


def _service(args: argparse.Namespace) -> LifecycleService:
    return _wired(args).service


def _provider_sources() -> None:
    """On a simulation database, support actions and `recover` ask the farm's recorded
    jobs on the run's own clock: the simulations package registers that source
    (rivya_core.wiring.register_provider_source) when it is installed."""
    try:
        importlib.import_module("simulations.recorded")
    except ModuleNotFoundError as exc:
        if exc.name not in ("simulations", "simulations.recorded"):
            raise


def cmd_init_db(args: argparse.Namespace) -> int:
    from .targets import ensure_initialisable

    ensure_initialisable(args.db, force=args.force)
    store = open_store(args.db, create=True)
    print(f"schema ready at {store.engine.url.render_as_string(hide_password=True)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit
    from .wiring import policy_from

    engine = open_store(args.db).engine if args.record else open_reader(args.db)
    report = audit(
        engine, policy_from(args.policy), args.at, record=args.record, stored_by="the command line (audit --record)"
    )
    if args.json:
        print(json.dumps(report.to_dict(), default=str, indent=2))
    elif report.ok:
        print(f"audit: no violations ({len(report.checked)} checks)")
    if not args.json:
        for kind, said in report.not_recorded.items():
            print(f"{kind}: not judged; {said}")
    if not args.json and not report.ok:
        for f in report.findings:
            print(f"{f.kind}: {f.message}")
            for row in f.rows[:5]:
                print(f"    {json.dumps(row, default=str)}")
    return 0 if report.ok else 1


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .domain import ValidationError
    from .read.chat_checklist import diagnose_chat_message
    from .read.diagnose import diagnose
    from .wiring import policy_from

    if (args.task_id is None) == (args.chat_message is None):
        raise ValidationError("give a task id or --chat-message N (one of them)")
    engine = open_reader(args.db)
    if args.chat_message is not None:
        result = diagnose_chat_message(engine, args.chat_message, policy_from(args.policy))
    else:
        result = diagnose(engine, args.task_id, policy_from(args.policy))
    print(json.dumps(result.to_dict(), default=str, indent=2) if args.json else result.render_text())
    return 0


def _support(action: SupportAction):
    def run(args: argparse.Namespace) -> int:
        svc = _service(args)
        task = svc.support(action, args.task_id, args.operator, args.reason)
        print(
            f"task {task.id}: {task.status}"
            + (f" ({task.error_code})" if task.error_code else "")
            + f"; {svc.credits_outcome(task)}"
        )
        return 0

    return run


def cmd_rerun(args: argparse.Namespace) -> int:
    from .support.rerun import describe_rerun, support_rerun

    svc = _service(args)
    task = support_rerun(svc, args.task_id, args.operator, args.reason, courtesy=args.courtesy)
    said = describe_rerun(svc, args.task_id, task)
    if args.json:
        print(json.dumps(said, default=str, indent=2))
    else:
        print(said["text"])
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from .support.reprocess import reprocess_callback

    done = reprocess_callback(_service(args), args.callback_id, args.operator, args.reason)
    print(f"task {done.task_id}: {done.text}")
    return 0


def cmd_export_task(args: argparse.Namespace) -> int:
    from .read.export import task_record_json
    from .targets import file_target

    out = file_target(args.output, args.force) if args.output else None  # refused before anything is read
    engine = open_reader(args.db)
    try:
        text = task_record_json(engine, args.task_id)
    finally:
        engine.dispose()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote task {args.task_id}'s record to {out} ({len(text.encode()):,} bytes)")
    return 0


def cmd_bulk(args: argparse.Namespace) -> int:
    from .domain import ActionRefused
    from .read import incidents
    from .rules import SupportRefusal
    from .support import bulk

    flt = incidents.BulkFilter.parse(args.filter)
    if not args.dry_run and (not (args.operator or "").strip() or not (args.reason or "").strip()):
        raise ActionRefused(
            "executing a bulk action needs --operator and --reason (or use --dry-run)",
            reason=SupportRefusal.NO_REASON if (args.operator or "").strip() else SupportRefusal.NO_OPERATOR,
        )
    wired = _wired(args)
    svc, engine = wired.service, wired.engine
    if args.dry_run:
        existing = incidents.incident_by_name(engine, args.name) if args.name else None
        p = bulk.plan(svc, engine, args.action, flt, incident_id=existing["id"] if existing else None)
        if args.json:
            print(json.dumps(p.to_dict(), default=str, indent=2))
            return 0
        print(
            f"dry run of {args.action} on {flt.describe()} at {p.now:%Y-%m-%d %H:%M:%S} UTC: "
            f"{p.matched} task(s) match; {p.would_act} would be acted on, {p.would_refuse} refused"
            + (f", {p.already_done} already handled by this incident" if p.already_done else "")
            + f"; {p.credits:,} credits would go back to users"
        )
        texts = p.refusal_texts()
        for code, n in p.refusals().items():
            print(f"    refused ({n}) [{code}]: {texts[code]}")
        for t in p.tasks[:20]:
            print(f"    task {t.task_id} {t.status} {t.model}: {t.refusal or t.would}")
        if p.matched > 20:
            print(f"    ... and {p.matched - 20} more (--json lists every task)")
        return 0

    def progress(done: int, total: int) -> None:
        if not args.json and total and (done == total or done % 1000 == 0):
            print(f"    {done}/{total}", file=sys.stderr)

    r = bulk.execute(
        svc, engine, args.action, flt, operator=args.operator, reason=args.reason, name=args.name, progress=progress
    )
    if args.json:
        print(json.dumps(r.to_dict(), default=str, indent=2))
    else:
        print(
            f"incident {r.incident_id} ({r.name}): {r.matched} matched, {r.acted} acted on, {r.refused} "
            f"refused, {r.skipped} already handled; {r.money()}"
        )
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    report = _service(args).recover(grace_s=args.grace)
    for action in report.actions:
        what = f"task {action['task_id']}" if "task_id" in action else f"chat message {action['chat_message_id']}"
        print(f"{what}: {action['action']}")
    print(f"recover: examined {report.examined} interrupted task(s), changed {report.changed}")
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    svc = _service(args)
    while True:
        r = svc.poll()
        print(
            f"poll: checked {r.checked}, succeeded {r.succeeded}, failed {r.failed}, "
            f"timed out {r.timed_out}, still running {r.still_running}",
            flush=True,
        )
        if not args.every:
            return 0
        time.sleep(args.every)


def cmd_alerts(args: argparse.Namespace) -> int:
    from .read.alerts import alerts
    from .support.alert_push import push_alerts
    from .wiring import policy_from

    engine = open_store(args.db).engine if args.notify else open_reader(args.db)
    try:
        found = alerts(engine, policy_from(args.policy))
        report = push_alerts(engine, found, args.notify) if args.notify else None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**found.to_dict(), "push": report.to_dict() if report else None}, default=str, indent=2))
    else:
        print(
            f"{found.count} alert(s) at {found.now:%Y-%m-%d %H:%M:%S} UTC"
            if found.count
            else f"no alert at {found.now:%Y-%m-%d %H:%M:%S} UTC"
        )
        for kind, alist in (("stuck", found.stuck), ("degraded", found.degraded)):
            for a in alist:
                print(f"    {kind}: {a.message} (next: bulk {a.action} {a.filter.describe()})")
        if report is not None:
            for n in report.notices:
                print(
                    f"    pushed {n.state}: {n.key}"
                    if n.delivered
                    else f"    NOT pushed {n.state}: {n.key} ({n.error}; the next run tries again)"
                )
            if not report.notices:
                print("    nothing new to push")
            for key in report.deferred:
                print(f"    deferred to the next run (deadline): {key}")
    return 1 if report is not None and (report.failed or report.deferred) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .receiver import DEFAULT_THREADS, pool_size_for, serve
    from .support.alert_push import NOTIFY_ENV, check_notify_url

    notify = args.alerts_notify or os.environ.get(NOTIFY_ENV) or None
    if notify:
        check_notify_url(notify)
        if not args.poll_every:
            from .domain import ValidationError

            raise ValidationError("--alerts-notify pushes alerts after each polling sweep: give --poll-every above 0")
    threads = args.threads or DEFAULT_THREADS
    pool = pool_size_for(threads)
    wired = _wired(args, pool)  # checks the database and the configuration before anything is served
    svc = wired.service
    print(
        f"receiving webhooks on http://{args.host}:{args.port}/webhooks/PROVIDER for "
        f"{', '.join(sorted(svc.providers)) or 'no configured provider'}"
        + (f" in {args.workers} worker processes" if args.workers > 1 else "")
        + (f"; polling every {args.poll_every:g} s" if args.poll_every else "")
        + ("; pushing alerts after each sweep" if notify else ""),
        flush=True,
    )
    if args.workers <= 1:
        return serve(
            lambda: wired,
            args.host,
            args.port,
            poll_every=args.poll_every or None,
            threads=threads,
            alerts_notify=notify,
        )
    wired.close()  # no pooled connection crosses the forks
    return serve(
        lambda: _wired(args, pool),
        args.host,
        args.port,
        poll_every=args.poll_every or None,
        workers=args.workers,
        threads=threads,
        alerts_notify=notify,
    )


def cmd_import(args: argparse.Namespace) -> int:
    from .sources.shipany import import_shipany, stderr_progress

    summary = import_shipany(
        args.source,
        args.into,
        since=args.since,
        map_path=args.map,
        dry_run=args.dry_run,
        force=args.force,
        progress=None if args.json else stderr_progress,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), default=str, indent=2))
    else:
        print(file=sys.stderr)
        print("\n".join(summary.lines()))
    return 0


COMMANDS = {
    "import": cmd_import,
    "init-db": cmd_init_db,
    "audit": cmd_audit,
    "diagnose": cmd_diagnose,
    **{action.value: _support(action) for action in SupportAction},
    "rerun": cmd_rerun,
    "reprocess-callback": cmd_reprocess,
    "export-task": cmd_export_task,
    "bulk": cmd_bulk,
    "recover": cmd_recover,
    "poll": cmd_poll,
    "serve": cmd_serve,
    "alerts": cmd_alerts,
}

if __name__ == "__main__":
    sys.exit(main())
