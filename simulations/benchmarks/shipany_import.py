"""`python -m simulations bench --import N`: a ShipAny-style source of N tasks, imported into SQLite.

The source is a SQLite file in the template's schema, written by the template's own credit code
paths (`shipany_shape.ShipAnyWriter`), user by user so memory stays bounded: N/10 users, each
with a sign-up gift that lapses after 14 days and a paid pack (more packs when they run low), and
their tasks spread over 60 days: mostly delivered, some failed (refunded onto their grants,
expired or not), some canceled (not refunded), a few still running. The import (`import shipany`)
runs in a child process, so its `ru_maxrss` is its own peak memory; then 1% of the tasks change
(new tasks, running ones finishing) and a second, incremental import is timed the same way.
Only the workdir given (or a temporary one) is written.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from ..shipany_shape import ShipAnyWriter, create_schema

T0 = datetime(2026, 1, 1)
SPAN = timedelta(days=60)
MEDIA = (("image", 0.6, 4), ("video", 0.2, 20), ("music", 0.12, 8), ("speech", 0.05, 2), ("text", 0.03, 1))
INDEXES = (
    "CREATE INDEX ix_ai_task_updated ON ai_task (updated_at)",
    "CREATE INDEX ix_credit_user ON credit (user_id, created_at)",
    "CREATE INDEX ix_credit_updated ON credit (updated_at)",
)


def _user_story(w: ShipAnyWriter, rng: random.Random, i: int, n_tasks: int, start: datetime, end: datetime) -> None:
    joined = start + timedelta(seconds=rng.random() * (end - start).total_seconds() * 0.5)
    uid = w.add_user(f"User {i}", f"user{i}@example.com", joined)
    w.grant(uid, 50, "gift", joined, joined + timedelta(days=14))
    w.grant(uid, 200, "payment", joined)
    times = sorted(joined + timedelta(seconds=rng.random() * (end - joined).total_seconds()) for _ in range(n_tasks))
    for k, at in enumerate(times):
        r, acc = rng.random(), 0.0
        media, cost = MEDIA[0][0], MEDIA[0][2]
        for name, share, price in MEDIA:
            acc += share
            if r < acc:
                media, cost = name, price
                break
        if w.balance(uid, at) < cost:
            w.grant(uid, 500, "payment", at - timedelta(seconds=1))
        tid = w.generate(
            uid,
            media_type=media,
            provider="lumen",
            model=f"{media}-v1",
            prompt=f"prompt {i}-{k}",
            options={"seed": k},
            cost=cost,
            at=at,
            upstream_id=f"up-{i}-{k}",
        )
        done = at + timedelta(seconds=20 + rng.random() * 300)
        if done > end:
            continue  # still processing
        outcome = rng.random()
        if outcome < 0.86:
            w.succeed(tid, [f"https://cdn.example/{i}/{k}"], done)
        elif outcome < 0.97:
            w.fail(tid, "provider_error", "upstream failure", done)
        else:
            w.cancel(tid, done)


def make_source(path: Path, tasks: int, seed: int = 1) -> dict[str, int]:
    """A ShipAny-style SQLite source of `tasks` tasks at `path` (replaced)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    create_schema(engine)
    rng = random.Random(seed)
    users = max(1, tasks // 10)
    end = T0 + SPAN
    counts = {"user": 0, "ai_task": 0, "credit": 0}
    w = ShipAnyWriter(random.Random(seed + 1))
    left = tasks
    for i in range(users):
        n = left if i == users - 1 else min(left, 10)
        _user_story(w, rng, i, n, T0, end)
        left -= n
        if len(w.tasks) >= 20_000 or i == users - 1:
            w.expire_due(end)
            for t, c in w.flush(engine).items():
                counts[t] += c
            w.users.clear(), w.tasks.clear(), w.credits.clear(), w.grants.clear()
    with engine.begin() as conn:
        for ddl in INDEXES:
            conn.execute(text(ddl))
    engine.dispose()
    return counts


def change_one_percent(path: Path, tasks: int, seed: int = 1_000_002) -> int:
    """1% of `tasks` new tasks (new users, their grants and consumes) after the source's last time."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        latest = datetime.fromisoformat(str(conn.execute(text("SELECT max(updated_at) FROM ai_task")).scalar()))
    new = max(1, tasks // 100)
    w = ShipAnyWriter(random.Random(seed))
    rng = random.Random(seed + 1)
    start = latest + timedelta(minutes=1)
    for i in range(max(1, new // 10)):
        _user_story(w, rng, 10_000_000 + i, 10, start, start + timedelta(hours=1))
    w.flush(engine)
    engine.dispose()
    return len(w.tasks)


def _child_import(source: Path, into: Path) -> dict[str, Any]:
    from rivya_core.sources.shipany import import_shipany

    started = time.perf_counter()
    cpu0 = time.process_time()
    summary = import_shipany(f"sqlite:///{source}", f"sqlite:///{into}")
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "cpu_s": round(time.process_time() - cpu0, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "read": dict(summary.read),
        "written": dict(summary.written),
        "updated": dict(summary.updated),
    }


def _run_child(source: Path, into: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "simulations.benchmarks.shipany_import", "--child", str(source), str(into)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_import(tasks: int, workdir: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rivya-bench-import-") as tmp:
        base = Path(workdir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        source, into = base / "shipany.db", base / "imported.db"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(into) + suffix).unlink(missing_ok=True)
        t = time.perf_counter()
        counts = make_source(source, tasks)
        made = time.perf_counter() - t
        full = _run_child(source, into)
        added = change_one_percent(source, tasks)
        incremental = _run_child(source, into)
        return {
            "tasks": tasks,
            "source_rows": counts,
            "source_build_s": round(made, 1),
            "import": full,
            "incremental_new_tasks": added,
            "incremental": incremental,
        }


def render(r: dict[str, Any]) -> str:
    f, i = r["import"], r["incremental"]
    return (
        f"ShipAny source: {r['source_rows']['ai_task']:,} tasks, {r['source_rows']['credit']:,} credit rows, "
        f"{r['source_rows']['user']:,} users (built in {r['source_build_s']} s)\n"
        f"import into SQLite: {f['wall_s']} s wall, {f['cpu_s']} CPU-s, peak RSS {f['peak_rss_mib']} MiB; "
        f"wrote {f['written']}\n"
        f"incremental import of {r['incremental_new_tasks']:,} new tasks: {i['wall_s']} s wall, "
        f"{i['cpu_s']} CPU-s, peak RSS {i['peak_rss_mib']} MiB; read {i['read']}, wrote {i['written']}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_child_import(Path(sys.argv[2]), Path(sys.argv[3]))))
