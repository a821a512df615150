"""`python -m simulations`: run, replay, compare and list scenarios.

  run SCENARIO --db URL [--seed N] [--tasks N] [--json] [--realtime FACTOR] [--force]
  replay DB_URL_OR_FINGERPRINT [--check]
  sweep SCENARIO [--policy A.toml ...] [--grid key=v1,v2 ...] [--replications R] [-o results.db|.parquet]
  compare SCENARIO --policy A.toml --policy B.toml [--replications R] [--json]
  list
  chaos --seeds N [--start S] [--tasks N]
  backtest --db URL [--since T] [--until T] --policy A.toml --policy B.toml [--json]
  calibrate --db URL [--since T] [--until T] -o scenario.toml [--force]
  fork --db URL (--task N | --user ID [--since T] [--until T]) -o story.toml [--force]
  serve-provider --flavor replicate|fal --port N [--scenario FILE] [--seed S] [--config-out FILE]
  live --flavor replicate|fal --tasks N --db URL [--scenario FILE] [--seed S] [--speed F]
  receiver-load --db URL [--tasks N] [--concurrency C]
  faults --db URL --flavor replicate|fal --tasks N --fault KIND [--seed S] [--speed X]

sweep, compare and chaos run their jobs on Dask distributed: a local cluster
of one process per core by default (`--workers N`; `--workers 0` runs them in
this process), or an existing cluster with `--scheduler tcp://host:8786`.

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

from rivya_core.cli import OneLineParser, number, run_command
from rivya_core.domain import RivyaError

from .cli_engine import Bar, add_engine_flags, progress_bar

EXIT_VIOLATION = 1


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m simulations",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run a scenario into a database",
        description="Run a scenario, write every row to --db, print the summary; exit 1 on any invariant violation.",
    )
    r.add_argument("scenario", help="scenario file or name in data/scenarios")
    r.add_argument("--db", required=True, help="database URL (sqlite:///path.db or postgresql://...)")
    r.add_argument("--seed", type=number("seed"), help="master seed (default: the scenario's)")
    r.add_argument("--tasks", type=number("tasks"), help="stop arrivals after this many (default: the scenario's)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument(
        "--realtime",
        type=number("realtime"),
        metavar="FACTOR",
        help="follow the wall clock: FACTOR simulated seconds per wall second",
    )
    r.add_argument("--progress", action="store_true", help="show the progress bar even when not a terminal")
    r.add_argument(
        "--force",
        action="store_true",
        help="replace a SQLite file that already holds data (never empties a server database)",
    )
    r.add_argument(
        "--policy",
        metavar="FILE",
        help="run under this billing policy TOML instead of the "
        "scenario's own (e.g. data/policies/gift_expires_14_days.toml)",
    )
    r.add_argument(
        "--shape",
        choices=["rivya", "shipany"],
        default="rivya",
        help="rivya (default): the data contract; shipany: the ShipAny template's schema, written "
        "by its own credit code paths (docs/import.md)",
    )

    rp = sub.add_parser(
        "replay",
        help="re-run a recorded run and compare fingerprints",
        description="Re-run the run recorded in a database (its sim_run row; by fingerprint, "
        "found among the simulation databases under data/ and the runs folder) from its stored "
        "scenario and seed, into a temporary database, and compare fingerprints.",
    )
    rp.add_argument(
        "target",
        help="database URL, or the fingerprint of a run under data/ or the runs folder (a unique prefix is enough)",
    )
    rp.add_argument("--check", action="store_true", help="exit 1 when the fingerprint differs")
    rp.add_argument("--json", action="store_true")

    c = sub.add_parser(
        "compare",
        help="compare two billing policies on the same seeds",
        description="Run both policies on the same seeds (common random numbers) and report "
        "each KPI with the paired difference and its 95%% confidence interval.",
    )
    c.add_argument("scenario")
    c.add_argument("--policy", action="append", required=True, help="policy TOML file (give exactly two)")
    c.add_argument("--replications", type=number("replications"), default=4)
    c.add_argument("--tasks", type=number("tasks"), help="tasks per replication (default: the scenario's)")
    c.add_argument("--json", action="store_true")
    add_engine_flags(c)

    s = sub.add_parser(
        "sweep",
        help="many policies x grid points x replications on Dask",
        description="Run every (policy, grid point) x replication as one job (seed: the master "
        "seed + the replication, so variants share their draws), collect the KPI rows in one "
        "table, print each variant's means and the paired differences against the first variant "
        "with 95%% confidence intervals. Exit 1 when a job failed or broke an invariant.",
    )
    s.add_argument("scenario")
    s.add_argument(
        "--policy", action="append", default=[], help="policy TOML file (repeatable; default: the scenario's own)"
    )
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a scenario key and its values, e.g. farm.capacity=8,12 (repeatable: the product)",
    )
    s.add_argument("--replications", type=number("replications"), default=4)
    s.add_argument("--seed", type=number("seed"), help="master seed (default: the scenario's)")
    s.add_argument("--tasks", type=number("tasks"), help="arrivals per job (default: the scenario's)")
    s.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the results table and the sweep's definition to FILE (.db: SQLite, .parquet: Parquet)",
    )
    s.add_argument("--force", action="store_true", help="replace an output file that already holds data")
    s.add_argument("--only", metavar="KEY", help="run just this job (the replay of a failed one)")
    s.add_argument("--json", action="store_true")
    add_engine_flags(s)

    sub.add_parser("list", help="list the shipped scenarios", description="List data/scenarios/*.toml.")
    from .history_cli import add_parsers as add_history_parsers

    add_history_parsers(sub)
    from .benchmarks.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
    from .chaos import add_parser as add_chaos_parser

    add_chaos_parser(sub)

    from .receiver_load import add_parser as add_load_parser

    add_load_parser(sub)
    from .faults import add_parser as add_faults_parser

    add_faults_parser(sub)
    sp = sub.add_parser(
        "serve-provider",
        help="serve the mock farm over HTTP in a real provider's protocol",
        description="Serve every catalogue provider over HTTP as a Replicate-style or fal-style "
        "API, with the scenario's generation times and faults, and deliver signed webhooks "
        "over real HTTP to the webhook URL each submission names.",
    )
    sp.add_argument("--flavor", required=True, choices=("replicate", "fal"))
    sp.add_argument("--port", type=number("port"), required=True)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--scenario", default="baseline", help="scenario file or name (default: baseline)")
    sp.add_argument("--seed", type=number("seed"), help="master seed (default: the scenario's)")
    sp.add_argument(
        "--speed",
        type=number("realtime"),
        default=1.0,
        help="simulated seconds per wall second for generation and callback delays (default 1)",
    )
    sp.add_argument(
        "--receiver",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="the webhook receiver's base URL, written into --config-out (default http://127.0.0.1:8080)",
    )
    sp.add_argument(
        "--config-out",
        metavar="FILE",
        help="write the RIVYA_PROVIDERS file a deployment needs to use this fake (its test keys)",
    )
    sp.add_argument("--force", action="store_true", help="overwrite --config-out if it exists")
    sp.add_argument(
        "--rate-limit",
        type=number("realtime"),
        metavar="N",
        help="answer 429 with Retry-After past N submissions a second per provider (default: no limit)",
    )

    lv = sub.add_parser(
        "live",
        help="a run over real HTTP: receiver + fake provider + the real clients",
        description="Start the webhook receiver and the fake provider on 127.0.0.1, submit N "
        "tasks through the real provider client, wait until every task is terminal, print the "
        "summary; exit 1 on any invariant violation or a task left active.",
    )
    lv.add_argument("--flavor", required=True, choices=("replicate", "fal"))
    lv.add_argument("--tasks", type=number("tasks"), required=True)
    lv.add_argument("--db", required=True, help="database URL (sqlite:///path.db or postgresql://...)")
    lv.add_argument("--scenario", default="baseline", help="scenario file or name (default: baseline)")
    lv.add_argument("--seed", type=number("seed"), help="master seed (default: the scenario's)")
    lv.add_argument(
        "--speed",
        type=number("realtime"),
        default=120.0,
        help="simulated seconds per wall second; the policy's waits scale with it (default 120)",
    )
    lv.add_argument("--force", action="store_true", help="add the run to a database that already holds tasks")
    lv.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import run_scenario
    from .scenarios import load_scenario

    if a.tasks is not None and a.tasks < 1:
        raise RivyaError("--tasks must be at least 1", code="bad_argument")
    if a.realtime is not None and not a.realtime > 0:
        raise RivyaError("--realtime must be a positive factor", code="bad_argument")
    scenario = load_scenario(a.scenario)
    if a.policy:
        from rivya_core.policy import BillingPolicy

        scenario = scenario.with_policy(BillingPolicy.load(a.policy))
    bar = progress_bar(a)
    if a.shape == "shipany":
        if a.realtime is not None:
            raise RivyaError(
                "--realtime writes the contract as it goes; it cannot be combined with --shape shipany",
                code="bad_argument",
            )
        from .shipany_shape import run_shipany

        shaped = run_shipany(scenario, a.db, seed=a.seed, tasks=a.tasks, force=a.force, progress=bar)
        print(json.dumps(shaped.to_dict(), indent=1, default=str) if a.json else shaped.render_text())
        return 0 if shaped.ok else EXIT_VIOLATION
    summary = run_scenario(scenario, a.db, seed=a.seed, tasks=a.tasks, progress=bar, realtime=a.realtime, force=a.force)
    print(json.dumps(summary.to_dict(), indent=1, default=str) if a.json else summary.render_text())
    return 0 if summary.ok else EXIT_VIOLATION


def cmd_replay(a: argparse.Namespace) -> int:
    from .runner import find_recorded, run_in_tempdir
    from .scenarios import parse_scenario

    rec = find_recorded(a.target)
    scenario = parse_scenario(rec["scenario_toml"], f"<recorded {rec['scenario_name']}>", rec["scenario_name"])
    summary = run_in_tempdir(scenario, seed=rec["seed"], tasks=rec["tasks"] or None, prefix="rivya-replay-")
    same = summary.fingerprint == rec["fingerprint"]
    out = {
        "recorded": rec["fingerprint"],
        "replayed": summary.fingerprint,
        "match": same,
        "scenario": rec["scenario_name"],
        "seed": rec["seed"],
    }
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{rec['scenario_name']} seed {rec['seed']}: recorded {rec['fingerprint'][:16]} "
            f"replayed {summary.fingerprint[:16]} -> {'MATCH' if same else 'DIFFERENT'}"
        )
    return EXIT_VIOLATION if (a.check and not same) else 0


def _policies(paths: list[str]):
    from rivya_core.policy import BillingPolicy

    return [BillingPolicy.load(p) for p in paths]


def _engine_flags(a: argparse.Namespace) -> None:
    from .engine import check_flags

    check_flags(a.workers, a.scheduler)


def cmd_compare(a: argparse.Namespace) -> int:
    from .compare import compare
    from .scenarios import load_scenario

    if len(a.policy) != 2:
        raise RivyaError("compare takes exactly two --policy files", code="bad_argument")
    if a.replications < 1 or (a.tasks is not None and a.tasks < 1):
        raise RivyaError("--replications and --tasks must be at least 1", code="bad_argument")
    _engine_flags(a)
    scenario = load_scenario(a.scenario)
    command = [
        "python",
        "-m",
        "simulations",
        "sweep",
        a.scenario,
        *[x for p in a.policy for x in ("--policy", p)],
        "--replications",
        str(a.replications),
        *(["--tasks", str(a.tasks)] if a.tasks else []),
    ]
    report = compare(
        scenario,
        _policies(a.policy),
        a.replications,
        workers=a.workers,
        tasks=a.tasks,
        scheduler=a.scheduler,
        progress=progress_bar(a),
        command=tuple(command),
    )
    print(json.dumps(report.to_dict(), indent=1, default=str) if a.json else report.render_text())
    return EXIT_VIOLATION if report.failed else 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from .scenarios import load_scenario
    from .sweep import Sweep, check_output, mean_table, parse_grid, render_text, run_sweep, write_results

    _engine_flags(a)
    if a.output:
        check_output(a.output, a.force)
    scenario = load_scenario(a.scenario)
    command = [
        "python",
        "-m",
        "simulations",
        "sweep",
        a.scenario,
        *[x for p in a.policy for x in ("--policy", p)],
        *[x for g in a.grid for x in ("--grid", g)],
        "--replications",
        str(a.replications),
        *(["--seed", str(a.seed)] if a.seed is not None else []),
        *(["--tasks", str(a.tasks)] if a.tasks else []),
    ]
    sweep = Sweep(
        scenario, tuple(_policies(a.policy)), parse_grid(a.grid), a.replications, a.seed, a.tasks, tuple(command)
    )
    sweep.variants()  # a bad grid key or value is refused before any job runs
    result = run_sweep(sweep, workers=a.workers, scheduler=a.scheduler, progress=progress_bar(a), only=a.only)
    if a.output:
        write_results(result, a.output, a.force)
    if a.json:
        print(
            json.dumps(
                {
                    "definition": sweep.definition(),
                    "variants": mean_table(result.frame),
                    "failed": [{"key": o.key, "error": o.error, "replay": o.replay} for o in result.failed],
                    "output": a.output,
                },
                indent=1,
                default=str,
            )
        )
    else:
        print(render_text(result) + (f"\nresults: {a.output}" if a.output else ""))
    return 0 if result.ok else EXIT_VIOLATION


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
    from .benchmarks.cli import cmd_bench as bench

    return bench(a)


def cmd_chaos(a: argparse.Namespace) -> int:
    from .chaos import cmd_chaos as chaos

    return chaos(a)


def cmd_serve_provider(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .httpfarm import FakeProvider, providers_toml
    from .scenarios import load_scenario

    if not 0 < a.port < 65536 or not a.speed > 0 or (a.rate_limit is not None and not a.rate_limit > 0):
        raise RivyaError("--port must be 1-65535, --speed and --rate-limit positive", code="bad_argument")
    fake = FakeProvider(a.flavor, load_scenario(a.scenario), a.seed, speed=a.speed, rate_limit_per_s=a.rate_limit)
    base = f"http://{a.host}:{a.port}"
    if a.config_out:
        out = Path(a.config_out)
        if out.exists() and out.stat().st_size and not a.force:
            raise RivyaError(f"{out} exists; pass --force to overwrite it", code="file_exists")
        out.write_text(providers_toml(a.flavor, base, a.receiver, fake.keys, fake.provider_names))
    import uvicorn

    print(
        f"fake {a.flavor} provider for {', '.join(fake.provider_names)} on {base} "
        f"(scenario {fake.scenario.name}, seed {fake.seed}, speed {a.speed:g})"
        + (f"; deployment config in {a.config_out}" if a.config_out else ""),
        flush=True,
    )
    uvicorn.run(fake.app, host=a.host, port=a.port, log_level="warning", access_log=False)
    return 0


def cmd_live(a: argparse.Namespace) -> int:
    from .live import run_live
    from .scenarios import load_scenario

    if a.tasks < 1 or not a.speed > 0:
        raise RivyaError("--tasks must be at least 1 and --speed positive", code="bad_argument")
    summary, _farm = run_live(
        load_scenario(a.scenario),
        a.flavor,
        a.tasks,
        a.db,
        seed=a.seed,
        speed=a.speed,
        force=a.force,
        progress=Bar(sys.stderr.isatty() and not a.json),
    )
    print(json.dumps(summary.to_dict(), indent=1, default=str) if a.json else summary.render_text())
    return 0 if summary.ok else EXIT_VIOLATION


def cmd_receiver_load(a: argparse.Namespace) -> int:
    from .receiver_load import cmd_receiver_load as load

    return load(a)


def cmd_faults(a: argparse.Namespace) -> int:
    from .faults import cmd_faults as faults

    return faults(a)


def cmd_history(a: argparse.Namespace) -> int:
    from .history_cli import COMMANDS as HISTORY

    return HISTORY[a.command](a)


COMMANDS = {
    "run": cmd_run,
    "replay": cmd_replay,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "list": cmd_list,
    "bench": cmd_bench,
    "chaos": cmd_chaos,
    "backtest": cmd_history,
    "calibrate": cmd_history,
    "fork": cmd_history,
    "serve-provider": cmd_serve_provider,
    "live": cmd_live,
    "receiver-load": cmd_receiver_load,
    "faults": cmd_faults,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
