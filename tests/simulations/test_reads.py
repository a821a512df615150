"""Simulated users read their notifications: a delay distribution and a share never read, deterministic."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from simulations.reads import NotificationReads
from simulations.scenarios import load_scenario
from simulations.streams import Streams
from tests.simulations.conftest import rows


def test_users_read_some_notifications_after_they_were_sent_and_never_past_the_run(run_small):
    summary, path = run_small("baseline", tasks=300)
    total, read = rows(path, "select count(*), count(read_at) from notification")[0]
    assert total > 100 and 0.5 * total < read < total  # 20 % never read, the rest mostly within the run
    [(end,)] = rows(path, "select max(finished_at) from sim_run")
    early = rows(path, "select count(*) from notification where read_at < created_at or read_at > ?", end)
    assert early == [(0,)]


def test_reads_are_part_of_the_run_and_replay_byte_for_byte(run_small):
    a, pa = run_small("baseline", tasks=150, db="a.db")
    b, pb = run_small("baseline", tasks=150, db="b.db")
    assert a.fingerprint == b.fingerprint and pa.read_bytes() == pb.read_bytes()
    sc = load_scenario("baseline")
    nobody = dataclasses.replace(sc, behaviour=dataclasses.replace(sc.behaviour, read_never=1.0))
    c, pc = run_small("baseline", tasks=150, db="c.db", scenario=nobody)
    assert rows(pc, "select count(read_at) from notification") == [(0,)]
    assert c.fingerprint != a.fingerprint
    # what happened to tasks is untouched by who reads what (the read draws are their own stream)
    assert rows(pa, "select id, status from ai_task order by id") == rows(
        pc, "select id, status from ai_task order by id"
    )


def test_a_read_is_written_only_once_the_clock_passes_it():
    reads = NotificationReads(Streams(7), never=0.0, median_s=60.0, spread=0.0)
    t0 = datetime(2026, 1, 1)
    reads.schedule({"id": 1, "task_id": 10, "created_at": t0})
    assert reads.due(t0 + timedelta(seconds=59)) == []
    [due] = reads.due(t0 + timedelta(seconds=61))
    assert due["_id"] == 1 and abs((due["_read_at"] - t0).total_seconds() - 60.0) < 1e-3
    assert reads.due(t0 + timedelta(days=1)) == []
