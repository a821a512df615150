"""The farm's knowledge, recorded in `upstream_job`, answers for the farm after the run:
status and find agree with the tasks' outcomes, submit refuses, and a support
re-check on an unfinished database settles a task whose job the farm had finished."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from rivya_core.ports import ProviderError
from rivya_core.read.queries import latest_timestamp
from rivya_core.stores import schema
from rivya_core.stores.db import init_db, make_engine
from rivya_core.wiring import service_for_url
from simulations.recorded import REFUSAL, RecordedProvider, providers_for
from simulations.runner import Run
from simulations.scenarios import load_scenario
from simulations.writer import sim_metadata, upstream_job

FARM_CODES = {"content_policy_violation", "model_error", "upstream_timeout", "service_unavailable"}


def test_recorded_provider_agrees_with_the_outcomes_of_a_finished_run(run_small):
    _, path = run_small("chaos", tasks=300)
    engine = make_engine(f"sqlite:///{path}")
    providers = providers_for(engine)
    with engine.connect() as conn:
        tasks = conn.execute(select(schema.ai_task)).all()
    checked = {"SUCCESS": 0, "FAILED": 0, "never submitted": 0}
    for t in tasks:
        p = providers[t.provider]
        if t.upstream_task_id is None:
            assert p.find(f"task-{t.id}") is None
            checked["never submitted"] += 1
            continue
        assert p.find(f"task-{t.id}") == t.upstream_task_id
        status = p.status(t.upstream_task_id)
        if t.status == "SUCCESS":
            assert status.state == "succeeded" and list(status.result_urls) == t.result_urls
            checked["SUCCESS"] += 1
        elif t.error_code in FARM_CODES:
            assert (status.state, status.error_code, status.failure_class) == ("failed", t.error_code, t.failure_class)
            checked["FAILED"] += 1
        elif t.error_code == "timeout":  # lost upstream (then canceled by us), or a success without URLs
            assert (status.state, status.error_code) == ("failed", "upstream_canceled") or (
                status.state == "succeeded" and not status.result_urls
            )
        elif t.error_code in ("upstream_canceled", "upstream_aborted"):  # stopped at its Cancel-After deadline
            assert (status.state, status.error_code) == ("failed", t.error_code)
    assert min(checked.values()) > 0, checked
    assert providers["lumen"].status("lumen-no-such-job").state == "unknown"
    with pytest.raises(ProviderError) as refused:
        providers["lumen"].submit("task-999999", "lumen-flash", "a prompt", {})
    assert refused.value.kind == "refused" and refused.value.message == REFUSAL
    engine.dispose()


def test_no_recorded_providers_for_a_database_that_is_not_a_simulations(sqlite_url):
    engine = make_engine(sqlite_url)
    init_db(engine)
    assert providers_for(engine) == {}
    assert service_for_url(sqlite_url).providers == {}
    engine.dispose()


def _unfinished_run(url: str, until_s: float) -> None:
    """A run with lost callbacks stopped after a batch, as a live run's database looks."""
    run = Run(load_scenario("lost_callbacks"), tasks=400)
    engine = make_engine(url)
    init_db(engine)
    sim_metadata.create_all(engine)
    run.start(engine)
    run.env.run(until=until_s)
    run.writer.flush()
    engine.dispose()


def test_support_recheck_on_an_unfinished_database_settles_a_job_the_farm_finished(sqlite_url):
    _unfinished_run(sqlite_url, until_s=1800)
    engine = make_engine(sqlite_url)
    j, t = upstream_job.c, schema.ai_task.c
    with engine.connect() as conn:
        waiting = conn.execute(
            select(t.id, j.result_urls)
            .join(upstream_job, (j.provider == t.provider) & (j.upstream_task_id == t.upstream_task_id))
            .where(t.status == "GENERATING", j.state == "succeeded")
            .order_by(t.id)
        ).first()
        running = conn.execute(
            select(t.id)
            .join(upstream_job, (j.provider == t.provider) & (j.upstream_task_id == t.upstream_task_id))
            .where(t.status == "GENERATING", j.state == "running")
        ).first()
    assert waiting is not None and running is not None
    pinned = latest_timestamp(engine)

    svc = service_for_url(sqlite_url)
    assert all(isinstance(p, RecordedProvider) for p in svc.providers.values())
    assert svc.clock.now() == pinned  # the run's own time, not wall time
    task = svc.support_recheck(waiting.id, "ops", "user says it never arrived")
    assert task.status == "SUCCESS" and task.result_urls == waiting.result_urls
    assert task.finished_at == pinned
    still = svc.support_recheck(running.id, "ops", "still running?")
    assert still.status == "GENERATING"
    engine.dispose()


def test_support_actions_wait_while_a_realtime_run_is_still_writing(sqlite_url):
    from datetime import UTC, datetime, timedelta

    from rivya_core.domain import ActionRefused
    from rivya_core.rules import SupportRefusal
    from simulations.writer import beat, end_beat, sim_live

    _unfinished_run(sqlite_url, until_s=600)
    engine = make_engine(sqlite_url)
    beat(engine, 1234)  # a realtime run wrote a moment ago
    with pytest.raises(ActionRefused) as busy:
        service_for_url(sqlite_url)
    assert busy.value.reason == SupportRefusal.SOURCE_BUSY and "still writing" in busy.value.message
    with engine.begin() as conn:  # the run was killed a minute ago: its heartbeat went stale
        conn.execute(
            sim_live.update().values(heartbeat_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=60))
        )
    assert service_for_url(sqlite_url).providers
    beat(engine, 1234)
    end_beat(engine)  # a run that ended removes its heartbeat
    assert service_for_url(sqlite_url).providers
    engine.dispose()


def test_a_realtime_run_ends_without_a_heartbeat(sqlite_url):
    from simulations.runner import run_scenario
    from simulations.writer import last_beat

    run_scenario(load_scenario("scripted_early_then_lost"), sqlite_url, realtime=10_000)
    engine = make_engine(sqlite_url)
    assert last_beat(engine) is None
    engine.dispose()
