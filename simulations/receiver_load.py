"""Load on the webhook receiver: how many valid callbacks per second it holds on loopback.

`python -m simulations receiver-load --db URL [--tasks N] [--concurrency C] [--duplicates F] [--workers W]
[--in-process]`

1. creates N generating tasks in a fresh database (a stub provider hands out ids);
2. starts `python -m rivya_core serve --workers W` on a free 127.0.0.1 port in its own
   process(es), with a generated Standard Webhooks secret and no polling;
3. from this (second) process, sends every task's signed final callback, plus a
   fraction F of exact redeliveries, with at most C requests in flight (bounded);
4. checks the effects: every task SUCCESS, one notification each, no refund, one
   `applied` row per task and every redelivery recorded `duplicate` (nothing lost,
   nothing doubled), and the audit clean.

Prints callbacks per second (valid ones, over the send window), the receiver's
latency p50/p99 as the client saw it, and the CPU the receiver's processes spent
per valid callback (user + system over the send window: on a shared machine the
figure that does not depend on the load). `--in-process` hands the same deliveries
straight to LifecycleService.handle_callback from C threads of this process (no
HTTP): the core's own CPU and SQL statements per valid callback.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psutil
from sqlalchemy import event, func, select

from rivya_core import webhooks
from rivya_core.audit import audit
from rivya_core.catalog import default_catalog
from rivya_core.cli import number
from rivya_core.clock import WallClock
from rivya_core.domain import RivyaError
from rivya_core.lifecycle import LifecycleService
from rivya_core.ports import UpstreamStatus
from rivya_core.receiver import DEFAULT_THREADS, OneWriter, pool_size_for
from rivya_core.stores import schema
from rivya_core.stores.db import has_rows, safe_url
from rivya_core.stores.sql import open_store

from .live import free_port, stop_process

PROVIDER = "lumen"
MODEL = "lumen-flash"


class StubProvider:
    name = PROVIDER

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        return f"load-{task_ref}"

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        return UpstreamStatus("running")

    def find(self, task_ref: str) -> str | None:
        return None


@dataclass
class LoadResult:
    database: str
    tasks: int
    sent: int
    valid: int
    duplicates: int
    seconds: float
    valid_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    concurrency: int
    errors: int
    lost: int
    doubled: int
    audit_ok: bool
    workers: int = 1
    cpu_ms_per_callback: float = 0.0
    sender_cpu_ms_per_callback: float = 0.0
    statements_per_callback: float | None = None
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def render_text(self) -> str:
        how = "in process" if self.workers == 0 else f"{self.workers} receiver process" + "es" * (self.workers > 1)
        sql = "" if self.statements_per_callback is None else f", {self.statements_per_callback:.2f} SQL statements"
        return (
            f"{self.database} ({how}): {self.valid} valid callbacks (+{self.duplicates} redeliveries) in "
            f"{self.seconds:.1f} s -> {self.valid_per_s:,.0f} valid callbacks/s "
            f"({self.requests_per_s:,.0f} requests/s), latency p50 {self.p50_ms:.1f} ms p99 {self.p99_ms:.1f} ms, "
            f"concurrency {self.concurrency}; {self.cpu_ms_per_callback:.2f} CPU ms{sql} per valid callback"
            + ("" if self.workers == 0 else f" (the sender: {self.sender_cpu_ms_per_callback:.2f} CPU ms)")
            + "; "
            f"lost {self.lost}, doubled {self.doubled}, errors {self.errors}, "
            f"audit {'clean' if self.audit_ok else 'FINDINGS'}; load average "
            + " ".join(f"{x:.1f}" for x in self.load_average)
        )


def run_load(
    url: str,
    tasks: int = 2000,
    concurrency: int = 16,
    duplicates: float = 0.1,
    seed: int = 1,
    force: bool = False,
    workers: int = 1,
    threads: int = DEFAULT_THREADS,
) -> LoadResult:
    """workers: receiver processes (0: no HTTP, handle_callback in this process, from `concurrency`
    threads); threads: callbacks each receiver process handles at once (`serve --threads`)."""
    # this process's pool: a connection for each of its threads (the setup's 8, or the in-process senders)
    store = open_store(url, create=True, pool_size=pool_size_for(max(8, concurrency if workers == 0 else 1)))
    try:
        if has_rows(store.engine, "ai_task") and not force:
            raise RivyaError(f"database {safe_url(url)} already holds tasks; pass --force", code="db_not_empty")
        secret = webhooks.generate_secret(random.Random(seed))
        svc = LifecycleService(
            store, WallClock(), {PROVIDER: StubProvider()}, default_catalog(), secrets={PROVIDER: [secret]}
        )
        users = [svc.create_account(f"load{i}@qa.example", f"Load {i}", grant=10**9).id for i in range(50)]
        with ThreadPoolExecutor(8) as pool:
            made = list(
                pool.map(
                    lambda i: svc.submit(
                        users[i % len(users)],
                        {"model": MODEL, "prompt": f"load test task {i} of a lighthouse", "params": {}},
                    ),
                    range(tasks),
                )
            )
        ids = [t.upstream_task_id for t in made]
        rng = random.Random(seed)
        deliveries = [(uid, f"msg_{n}") for n, uid in enumerate(ids)]
        deliveries += [deliveries[i] for i in rng.sample(range(len(ids)), int(len(ids) * duplicates))]
        rng.shuffle(deliveries)
        signed = [_delivery(secret, uid, msg) for uid, msg in deliveries]  # before the clock starts
        if workers == 0:
            result = _direct(svc, signed, concurrency)
        else:
            result = _blast(url, secret, signed, concurrency, workers, threads)
        return _check(store, url, svc, made, deliveries, result, concurrency, workers)
    finally:
        store.engine.dispose()


def _delivery(secret: str, uid: str, msg: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "type": "task.succeeded",
            "data": {"upstream_task_id": uid, "state": "succeeded", "result_urls": [f"https://cdn.example/{uid}.png"]},
        }
    ).encode()
    return body, webhooks.signed_headers(secret, msg, int(time.time()), body)


Signed = tuple[bytes, dict[str, str]]


def _run_bounded(
    deliveries: list[Signed],
    concurrency: int,
    send: Callable[[Any, bytes, dict[str, str]], int],
    client: Callable[[], Any],
) -> dict[str, Any]:
    """Every delivery through send(client, body, headers) -> status, from `concurrency` threads."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    it = iter(deliveries)

    def worker() -> None:
        with client() as conn:
            while True:
                with lock:
                    item = next(it, None)
                if item is None:
                    return
                t0 = time.perf_counter()
                code = send(conn, *item)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    statuses[code] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "seconds": time.perf_counter() - start,
        "latencies": sorted(latencies),
        "statuses": statuses,
        "sender_cpu": time.process_time() - cpu0,
    }


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _direct(svc: LifecycleService, deliveries: list[Signed], concurrency: int) -> dict[str, Any]:
    """The deliveries straight into handle_callback (no HTTP), counting SQL statements."""
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1  # GIL-atomic enough for a count read after the threads join

    engine = svc.store.engine
    one_writer = OneWriter(None) if engine.dialect.name == "sqlite" else None  # as the receiver queues writers

    def send(_conn: Any, body: bytes, headers: dict[str, str]) -> int:
        with one_writer.held() if one_writer else contextlib.nullcontext():
            res = svc.handle_callback(PROVIDER, headers, body)
        return 200 if res.outcome in ("applied", "duplicate") else 500

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = _run_bounded(deliveries, concurrency, send, contextlib.nullcontext)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    r["cpu"] = r["sender_cpu"]
    r["statements"] = statements[0]
    return r


def _blast(
    url: str, secret: str, deliveries: list[Signed], concurrency: int, workers: int, threads: int
) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "RIVYA_WEBHOOK_SECRETS": json.dumps({PROVIDER: [secret]}), "RIVYA_PROVIDERS": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rivya_core",
            "serve",
            "--db",
            url,
            "--port",
            str(port),
            "--poll-every",
            "0",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RivyaError(
                    "the receiver did not start: " + (proc.stderr.read() or b"").decode()[-300:], code="server_failed"
                )
            time.sleep(0.1)

        def send(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> int:
            try:  # the standard library's client: the lightest sender, so the receiver gets the cores
                conn.request("POST", f"/webhooks/{PROVIDER}", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                conn.close()  # reconnects on the next request
                return 0

        receiver = psutil.Process(proc.pid)
        procs = [receiver, *receiver.children(recursive=True)]
        cpu0 = _cpu_seconds(procs)
        r = _run_bounded(
            deliveries,
            concurrency,
            send,
            lambda: contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=30)),
        )
        r["cpu"] = _cpu_seconds(procs) - cpu0
        return r
    finally:
        stop_process(proc, grace_s=30)


def _check(
    store: Any,
    url: str,
    svc: LifecycleService,
    made: list,
    deliveries: list,
    r: dict[str, Any],
    concurrency: int,
    workers: int,
) -> LoadResult:
    t, cb, note, led = schema.ai_task, schema.provider_callback, schema.notification, schema.credit_ledger
    with store.engine.connect() as conn:
        success = conn.scalar(select(func.count()).select_from(t).where(t.c.status == "SUCCESS"))
        outcomes = dict(conn.execute(select(cb.c.outcome, func.count()).group_by(cb.c.outcome)).all())
        notes = conn.scalar(select(func.count()).select_from(note))
        refunds = conn.scalar(select(func.count()).select_from(led).where(led.c.entry_type == "refund"))
    n = len(made)
    lat = r["latencies"]
    ok = r["statuses"].get(200, 0)
    report = audit(store.engine, svc.policy, WallClock().now())
    return LoadResult(
        database=store.engine.dialect.name,
        tasks=n,
        sent=len(deliveries),
        valid=n,
        duplicates=len(deliveries) - n,
        seconds=r["seconds"],
        valid_per_s=n / r["seconds"],
        requests_per_s=len(deliveries) / r["seconds"],
        p50_ms=lat[len(lat) // 2] * 1000 if lat else 0.0,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0,
        concurrency=concurrency,
        errors=len(deliveries) - ok,
        lost=max(n - success, n - outcomes.get("applied", 0), len(deliveries) - sum(outcomes.values())),
        doubled=max(0, notes - n) + refunds + max(0, outcomes.get("applied", 0) - n),
        audit_ok=report.ok,
        workers=workers,
        cpu_ms_per_callback=r["cpu"] * 1000 / n,
        sender_cpu_ms_per_callback=r["sender_cpu"] * 1000 / n,
        statements_per_callback=r["statements"] / n if "statements" in r else None,
        load_average=tuple(round(x, 2) for x in os.getloadavg()),
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "receiver-load",
        help="valid callbacks per second the webhook receiver holds on loopback",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--db", required=True, help="a fresh database URL (refused when it holds tasks, unless --force)")
    p.add_argument("--tasks", type=number("tasks"), default=2000)
    p.add_argument("--concurrency", type=number("workers"), default=16, help="requests in flight at most (default 16)")
    p.add_argument(
        "--duplicates", type=number("probability"), default=0.1, help="fraction of exact redeliveries (default 0.1)"
    )
    p.add_argument(
        "--workers", type=number("workers"), default=1, help="receiver processes (`serve --workers`, default 1)"
    )
    p.add_argument(
        "--threads",
        type=number("workers"),
        default=DEFAULT_THREADS,
        help=f"callbacks each receiver process handles at once (`serve --threads`, default {DEFAULT_THREADS})",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="no HTTP: the deliveries go straight to handle_callback in this process, which "
        "counts the CPU and the SQL statements per callback",
    )
    p.add_argument("--force", action="store_true")
    p.add_argument("--json", action="store_true")


def cmd_receiver_load(a: argparse.Namespace) -> int:
    if a.tasks < 1 or not 1 <= a.concurrency <= 256 or not 0 <= a.duplicates <= 1:
        raise RivyaError("--tasks >= 1, --concurrency 1-256, --duplicates 0-1", code="bad_argument")
    res = run_load(
        a.db,
        a.tasks,
        a.concurrency,
        a.duplicates,
        force=a.force,
        workers=0 if a.in_process else a.workers,
        threads=a.threads,
    )
    print(json.dumps(asdict(res), indent=1) if a.json else res.render_text())
    return 0 if res.audit_ok and not res.lost and not res.doubled and not res.errors else 1
