"""`python -m simulations`: run, replay, compare and list scenarios.

  run SCENARIO --db URL [--seed N] [--tasks N] [--json] [--realtime FACTOR] [--force]
  replay DB_URL_OR_FINGERPRINT [--check]
  compare SCENARIO --policy A.toml --policy B.toml [--replications R] [--workers W] [--json]
  list
  chaos --seeds N [--start S] [--tasks N]
  backtest --db URL [--since T] [--until T] --policy A.toml --policy B.toml [--json]
  calibrate --db URL [--since T] [--until T] -o scenario.toml [--force]
  fork --db URL (--task N | --user ID [--since T] [--until T]) -o story.toml [--force]

SCENARIO is a path to a .toml file or a name in data/scenarios. `--realtime
FACTOR` makes the SimPy clock follow the wall clock at FACTOR simulated seconds
per wall second (60: one simulated minute per second) and writes as it goes.
Errors print one line and exit with status 2; a run with an invariant
violation or a liveness failure exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rivya_core.cli import OneLineParser, run_command
from rivya_core.domain import RivyaError

EXIT_VIOLATION = 1


class Bar:
    """A simple progress bar on stderr (only when stderr is a terminal or forced)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.last = 0.0

    def __call__(self, frac: float, label: str) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and frac < 1.0):
            return
        self.last = now
        width = 30
        filled = int(width * max(0.0, min(1.0, frac)))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% {label[:40]:40}")
        if frac >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m simulations", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a scenario into a database", description="Run a scenario, write every "
                       "row to --db, print the summary; exit 1 on any invariant violation.")
    r.add_argument("scenario", help="scenario file or name in data/scenarios")
    r.add_argument("--db", required=True, help="database URL (sqlite:///path.db or postgresql://...)")
    r.add_argument("--seed", type=int, help="master seed (default: the scenario's)")
    r.add_argument("--tasks", type=int, help="stop arrivals after this many (default: the scenario's)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--realtime", type=float, metavar="FACTOR",
                   help="follow the wall clock: FACTOR simulated seconds per wall second")
    r.add_argument("--progress", action="store_true", help="show the progress bar even when not a terminal")
    r.add_argument("--force", action="store_true",
                   help="replace a SQLite file that already holds data (never empties a server database)")

    rp = sub.add_parser("replay", help="re-run a recorded run and compare fingerprints",
                        description="Re-run the run recorded in a database (its sim_run row) or under "
                        "data/runs/<fingerprint>.json from its stored scenario and seed, into a temporary "
                        "database, and compare fingerprints.")
    rp.add_argument("target", help="database URL or run fingerprint (a unique prefix is enough)")
    rp.add_argument("--check", action="store_true", help="exit 1 when the fingerprint differs")
    rp.add_argument("--json", action="store_true")

    c = sub.add_parser("compare", help="compare two billing policies on the same seeds",
                       description="Run both policies on the same seeds (common random numbers) and report "
                       "each KPI with the paired difference and its 95%% confidence interval.")
    c.add_argument("scenario")
    c.add_argument("--policy", action="append", required=True, help="policy TOML file (give exactly two)")
    c.add_argument("--replications", type=int, default=4)
    c.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    c.add_argument("--tasks", type=int, help="tasks per replication (default: the scenario's)")
    c.add_argument("--json", action="store_true")

    sub.add_parser("list", help="list the shipped scenarios", description="List data/scenarios/*.toml.")
    from .history_cli import add_parsers as add_history_parsers

    add_history_parsers(sub)
    from .bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    from .chaos import add_parser as add_chaos_parser

    add_chaos_parser(sub)
    return p


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import run_scenario
    from .scenarios import load_scenario

    if a.tasks is not None and a.tasks < 1:
        raise RivyaError("--tasks must be at least 1", code="bad_argument")
    if a.realtime is not None and not a.realtime > 0:
        raise RivyaError("--realtime must be a positive factor", code="bad_argument")
    scenario = load_scenario(a.scenario)
    bar = Bar(a.progress or (sys.stderr.isatty() and not a.json))
    summary = run_scenario(scenario, a.db, seed=a.seed, tasks=a.tasks, progress=bar, realtime=a.realtime,
                           force=a.force)
    print(json.dumps(summary.to_dict(), indent=1, default=str) if a.json else summary.render_text())
    return 0 if summary.ok else EXIT_VIOLATION


def cmd_replay(a: argparse.Namespace) -> int:
    from .runner import find_recorded, run_in_tempdir
    from .scenarios import parse_scenario

    rec = find_recorded(a.target)
    scenario = parse_scenario(rec["scenario_toml"], f"<recorded {rec['scenario_name']}>", rec["scenario_name"])
    summary = run_in_tempdir(scenario, seed=rec["seed"], tasks=rec["tasks"] or None, prefix="rivya-replay-")
    same = summary.fingerprint == rec["fingerprint"]
    out = {"recorded": rec["fingerprint"], "replayed": summary.fingerprint, "match": same,
           "scenario": rec["scenario_name"], "seed": rec["seed"]}
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{rec['scenario_name']} seed {rec['seed']}: recorded {rec['fingerprint'][:16]} "
              f"replayed {summary.fingerprint[:16]} -> {'MATCH' if same else 'DIFFERENT'}")
    return EXIT_VIOLATION if (a.check and not same) else 0


def cmd_compare(a: argparse.Namespace) -> int:
    from rivya_core.policy import BillingPolicy

    from .compare import compare
    from .scenarios import load_scenario

    if len(a.policy) != 2:
        raise RivyaError("compare takes exactly two --policy files", code="bad_argument")
    if a.replications < 1 or (a.workers is not None and a.workers < 1):
        raise RivyaError("--replications and --workers must be at least 1", code="bad_argument")
    scenario = load_scenario(a.scenario)
    policies = [BillingPolicy.load(p) for p in a.policy]
    report = compare(scenario, policies, a.replications, workers=a.workers, tasks=a.tasks)
    print(json.dumps(report.to_dict(), indent=1, default=str) if a.json else report.render_text())
    return 0


def cmd_list(_a: argparse.Namespace) -> int:
    from .scenarios import list_scenarios, load_scenario

    for path in list_scenarios():
        try:
            desc = load_scenario(path).description
        except RivyaError as exc:
            desc = f"(invalid: {exc.message})"
        print(f"{path.stem:28} {desc}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import cmd_bench as bench

    return bench(a)


def cmd_chaos(a: argparse.Namespace) -> int:
    from .chaos import cmd_chaos as chaos

    return chaos(a)


def cmd_history(a: argparse.Namespace) -> int:
    from .history_cli import COMMANDS as HISTORY

    return HISTORY[a.command](a)


COMMANDS = {"run": cmd_run, "replay": cmd_replay, "compare": cmd_compare, "list": cmd_list, "bench": cmd_bench,
            "chaos": cmd_chaos, "backtest": cmd_history, "calibrate": cmd_history, "fork": cmd_history}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
