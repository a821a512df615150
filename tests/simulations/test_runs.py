"""Runs of the shipped scenarios: invariants, determinism, common random numbers, faults, scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rivya_core.policy import BillingPolicy
from simulations.farm import Farm
from simulations.scenarios import list_scenarios, load_scenario
from simulations.streams import Streams

from .conftest import dump, rows

ROOT = Path(__file__).resolve().parents[2]
NAMES = [p.stem for p in list_scenarios() if p.stem != "chaos"]


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_scenario_runs_small_without_violations(run_small, name):
    summary, path = run_small(name, tasks=120)
    assert summary.violations == [], summary.render_text()
    assert summary.liveness_ok
    assert summary.tasks > 0
    assert rows(path, "select count(*) from ai_task where status in ('WAITING','GENERATING')") == [(0,)]
    assert rows(path, "select count(*) from sim_run where fingerprint = ?", summary.fingerprint) == [(1,)]


def test_same_seed_same_bytes_and_fingerprint_other_seed_differs(run_small):
    a, pa = run_small("chaos", tasks=150, db="a.db")
    b, pb = run_small("chaos", tasks=150, db="b.db")
    c, _ = run_small("chaos", tasks=150, seed=12345, db="c.db")
    assert a.fingerprint == b.fingerprint
    assert pa.read_bytes() == pb.read_bytes()
    assert c.fingerprint != a.fingerprint


@pytest.mark.slow  # a run in each of two interpreters
def test_same_seed_same_bytes_across_processes(tmp_path):
    """Two processes (different string-hash seeds, as two runs of the CLI have) write identical files."""
    code = (
        "import sys; from simulations.runner import run_scenario; from simulations.scenarios import load_scenario;"
        "run_scenario(load_scenario('chaos'), sys.argv[1], tasks=60)"
    )
    files = []
    for hash_seed in ("1", "2"):
        path = tmp_path / f"h{hash_seed}.db"
        subprocess.run(
            [sys.executable, "-c", code, f"sqlite:///{path}"],
            cwd=ROOT,
            check=True,
            timeout=300,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        files.append(path.read_bytes())
    assert files[0] == files[1]


def test_chaos_exercises_every_fault_kind(run_small):
    summary, path = run_small("chaos", tasks=400)
    assert summary.violations == [] and summary.liveness_ok
    outcomes = dict(rows(path, "select outcome, count(*) from provider_callback group by outcome"))
    for outcome in ("applied", "deferred", "duplicate", "rejected_signature", "rejected_stale", "malformed"):
        assert outcomes.get(outcome, 0) > 0, (outcome, outcomes)
    sent = summary.farm["sent"]
    for kind in ("early", "duplicate", "forged", "stale", "malformed", "progress"):
        assert sent.get(kind, 0) > 0, (kind, sent)
    assert summary.farm["dropped"].get("final", 0) > 0  # lost callbacks
    assert set(summary.farm["submit_faults"]) == {"refused", "error", "timeout"}
    kinds = dict(rows(path, "select kind, count(*) from task_event group by kind"))
    for kind in ("deferred", "poll", "recheck", "refunded", "refund_skipped", "submit_failed", "charge_refused"):
        assert kinds.get(kind, 0) > 0, (kind, kinds)
    assert summary.completion_paths.get("polling", 0) > 0
    codes = {c for (c,) in rows(path, "select distinct error_code from ai_task where status = 'FAILED'")}
    assert {"content_policy_violation", "model_error", "upstream_timeout"} <= codes


def test_changing_only_the_refund_policy_keeps_arrivals_and_latencies(tmp_path):
    """Common random numbers: the same seed, two policies, the same draws."""
    from simulations.runner import run_scenario

    sc = load_scenario("provider_outage")
    db_a, db_b = tmp_path / "a.db", tmp_path / "b.db"
    run_scenario(sc, f"sqlite:///{db_a}", tasks=150)
    run_scenario(
        sc.with_policy(BillingPolicy(name="no_refunds", refund_classes=frozenset())), f"sqlite:///{db_b}", tasks=150
    )
    q = "select id, created_at, model, prompt from ai_task order by id"
    assert rows(db_a, q) == rows(db_b, q)
    lat = (
        "select t.id, (julianday(t.finished_at) - julianday(t.submitted_at)) from ai_task t "
        "where t.status = 'SUCCESS' and t.id in (select task_id from provider_callback) order by t.id"
    )
    assert rows(db_a, lat) == rows(db_b, lat)
    refunds = "select count(*) from credit_ledger where entry_type = 'refund'"
    assert rows(db_a, refunds)[0][0] > 0 and rows(db_b, refunds) == [(0,)]


def test_streams_are_independent_of_each_other():
    s1, s2 = Streams(5), Streams(5)
    s1.get("arrivals").random()  # consuming one stream
    assert s1.get("latency").random() == s2.get("latency").random()
    assert s1.keyed("x", "task-1").random() == s2.keyed("x", "task-1").random()


def test_scripted_story_replays_exactly(run_small):
    summary, path = run_small("scripted_early_then_lost", tasks=None)
    story = rows(path, "select task_id, strftime('%H:%M:%S', at), kind from task_event order by id")
    assert story == [
        (1, "00:00:10", "created"),
        (1, "00:00:10", "charged"),
        (1, "00:00:10", "submitted"),
        (1, "00:00:20", "callback"),
        (1, "00:00:20", "deferred"),
        (1, "00:00:25", "recheck"),
        (2, "00:00:30", "created"),
        (2, "00:00:30", "charged"),
        (2, "00:00:30", "submitted"),
        (1, "00:00:40", "recheck"),
        (2, "00:01:02", "callback"),
        (2, "00:01:02", "failed"),
        (2, "00:01:02", "refunded"),
        (2, "00:01:02", "notified"),
        (1, "00:01:25", "recheck"),
        (1, "00:01:25", "succeeded"),
        (1, "00:01:25", "notified"),
    ]
    assert rows(path, "select id, status from ai_task order by id") == [(1, "SUCCESS"), (2, "FAILED")]
    assert summary.farm["dropped"] == {"final": 1}


def test_provider_status_only_knows_the_present():
    import simpy

    from simulations.clock import SimClock
    from simulations.scenarios import ProviderConfig, Range

    env = simpy.Environment()
    cfg = ProviderConfig(capacity=1, image_s=Range(10, 10))
    farm = Farm(env, SimClock(env), Streams(1), ["lumen"], lambda n: cfg, lambda m: "image", False)
    p = farm.providers["lumen"]
    a, b = p.submit("task-1", "lumen-flash", "x", {}), p.submit("task-2", "lumen-flash", "y", {})
    assert p.submit("task-1", "lumen-flash", "x", {}) == a and p.find("task-2") == b
    env.run(until=5)
    assert (p.status(a).state, p.status(b).state) == ("running", "queued")
    env.run(until=15)
    assert p.status(a).state == "succeeded" and p.status(a).result_urls
    assert p.status(b).state == "running"
    assert p.status("nope").state == "unknown"


def test_realtime_mode_writes_as_it_goes_and_tells_the_same_story(tmp_path):
    from simulations.runner import run_scenario

    sc = load_scenario("scripted_early_then_lost")
    fast = run_scenario(sc, f"sqlite:///{tmp_path / 'fast.db'}")
    live = run_scenario(sc, f"sqlite:///{tmp_path / 'live.db'}", realtime=2000.0)
    assert live.fingerprint == fast.fingerprint and live.ok
    q = "select id, status, result_urls from ai_task order by id"
    assert rows(tmp_path / "live.db", q) == rows(tmp_path / "fast.db", q)


def test_chaos_into_postgresql_has_no_violations_and_the_sqlite_fingerprint(pg_url, run_small):
    from sqlalchemy import func, select

    from rivya_core.audit import audit
    from rivya_core.stores import schema
    from rivya_core.stores.db import make_engine
    from simulations.runner import run_scenario
    from simulations.writer import read_sim_runs

    sc = load_scenario("chaos")
    summary = run_scenario(sc, pg_url, tasks=200)
    assert summary.violations == [] and summary.liveness_ok, summary.render_text()
    engine = make_engine(pg_url)
    try:
        report = audit(engine, sc.policy)
        assert report.ok, [(f.kind, f.message) for f in report.findings]
        with engine.connect() as conn:
            tasks = conn.scalar(select(func.count()).select_from(schema.ai_task))
            active = conn.scalar(
                select(func.count())
                .select_from(schema.ai_task)
                .where(schema.ai_task.c.status.in_(["WAITING", "GENERATING"]))
            )
        [stored] = read_sim_runs(engine)
    finally:
        engine.dispose()
    assert tasks == summary.tasks > 0 and active == 0
    assert stored["fingerprint"] == summary.fingerprint
    on_sqlite, _ = run_small("chaos", tasks=200)
    assert on_sqlite.fingerprint == summary.fingerprint  # the database does not change the run


def test_demo_data_seeds_an_empty_database_once(tmp_path):
    from rivya_core.audit import audit
    from rivya_core.stores.db import make_engine
    from simulations.demo import ensure_demo_data

    path = tmp_path / "demo.db"
    url = f"sqlite:///{path}"
    steps: list[float] = []
    assert ensure_demo_data(url, progress=lambda f, _msg: steps.append(f), tasks=150) is True
    assert steps and steps[-1] == 1.0
    tasks = rows(path, "select count(*) from ai_task")[0][0]
    assert tasks > 0 and rows(path, "select scenario_name from sim_run") == [("demo",)]
    seeded = dump(path)
    assert ensure_demo_data(url, tasks=150) is False
    assert dump(path) == seeded  # the second call wrote no row (opening it may switch the journal to WAL)
    engine = make_engine(url)
    try:
        report = audit(engine, load_scenario(str(ROOT / "data" / "demo.toml")).policy)
    finally:
        engine.dispose()
    assert report.ok, [(f.kind, f.message) for f in report.findings]


def test_a_summary_says_how_its_arrivals_became_tasks(run_small):
    """--tasks counts arrivals (generation requests and chat turns); tasks are the ai_task rows:
    one per generation request, one per tool-backed chat turn, and one per user rerun."""
    summary, path = run_small("baseline", tasks=600)
    a, t = summary.arrivals, summary.task_sources
    assert sum(a.values()) == 600 and set(a) <= {"generation", "chat", "tool_chat"}
    assert sum(t.values()) == summary.tasks == rows(path, "select count(*) from ai_task")[0][0]
    assert t["tool_chat"] == rows(path, "select count(*) from ai_task where chat_message_id is not null")[0][0]
    assert t["generation"] <= a["generation"] and t["tool_chat"] <= a["tool_chat"]
    text = summary.tasks_explained()
    assert f"{summary.tasks:,} tasks from 600 arrivals" in text
    assert f"{a['generation']:,} generation requests" in text and f"{a['chat'] + a['tool_chat']:,} chat turns" in text
    assert text in summary.render_text()
