"""Re-run for the user on SQLite and PostgreSQL: the audit accepts a courtesy re-run in every state,
the checklist reads it as settled, an older database gains `ai_task.rerun_of`, and the CLI acts on a
database without provider clients (refused) and on a simulation database (the recorded providers
refuse new jobs: the re-run fails at submission, linked, refunded by policy)."""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import MetaData, Table, inspect, select

from rivya_core.audit import audit
from rivya_core.domain import TaskStatus
from rivya_core.read.diagnose import diagnose
from rivya_core.stores import db, schema
from rivya_core.support import rerun
from rivya_core.verdicts import Verdict
from tests.cli import run_main
from tests.fakes import IMAGE, callback


@pytest.fixture
def sql_env(sql_user_env):
    return sql_user_env


def _failed(svc, clock, user, prompt="a lighthouse at dusk"):
    t = svc.submit(user.id, {**IMAGE, "prompt": prompt})
    svc.handle_callback(
        "lumen",
        *callback(
            clock,
            t.upstream_task_id,
            state="failed",
            msg_id=f"f{t.id}",
            error_code="model_error",
            failure_class="provider",
        ),
    )
    return svc.task(t.id)


def test_courtesy_reruns_pass_the_audit_in_every_state_and_read_as_settled(sql_env):
    svc, clock, providers, store, user = sql_env
    delivered = rerun.support_rerun(svc, _failed(svc, clock, user, "one").id, "Dana", "goodwill", courtesy=True)
    running = rerun.support_rerun(svc, _failed(svc, clock, user, "two").id, "Dana", "goodwill", courtesy=True)
    failed = rerun.support_rerun(svc, _failed(svc, clock, user, "three").id, "Dana", "goodwill", courtesy=True)
    svc.handle_callback("lumen", *callback(clock, delivered.upstream_task_id, msg_id="ok"))
    svc.handle_callback(
        "lumen",
        *callback(
            clock,
            failed.upstream_task_id,
            state="failed",
            msg_id="no",
            error_code="model_error",
            failure_class="provider",
        ),
    )
    assert [svc.task(t.id).status for t in (delivered, running, failed)] == ["SUCCESS", "GENERATING", "FAILED"]
    report = audit(store.engine, svc.policy, now=clock.now())
    assert report.ok, report.findings
    diag = diagnose(store.engine, delivered.id, svc.policy, now=clock.now())
    assert diag.verdict_code == Verdict.DELIVERED
    assert "courtesy re-run" in diag.item("refund").answer and diag.item("refund").status == "ok"
    assert [r["id"] for r in rerun.reruns_of(store.engine, delivered.rerun_of)] == [delivered.id]


def test_a_support_refund_on_a_delivered_task_that_is_no_rerun_stays_a_violation(sql_env):
    svc, clock, providers, store, user = sql_env
    t = svc.submit(user.id, IMAGE)
    svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id="ok"))
    svc._tx(
        lambda tx: tx.post(
            user.id,
            "refund",
            t.reserved_credits,
            f"refund:task:{t.id}",
            clock.now(),
            task_id=t.id,
            support=True,
            note="goodwill",
        )
    )
    kinds = {f.kind for f in audit(store.engine, svc.policy, now=clock.now()).findings}
    assert "refund_on_success" in kinds


def test_init_db_adds_rerun_of_to_an_older_database(db_url):
    engine = db.make_engine(db_url)
    try:
        old = MetaData()
        for table in schema.metadata.sorted_tables:
            Table(
                table.name,
                old,
                *[c._copy() for c in table.columns if not (table.name == "ai_task" and c.name == "rerun_of")],
            )
        old.create_all(engine)
        with pytest.raises(db.SchemaMissing, match="ai_task.rerun_of"):
            db.require_schema(engine)
        db.init_db(engine)
        db.init_db(engine)
        assert "rerun_of" in {c["name"] for c in inspect(engine).get_columns("ai_task")}
        assert "ix_ai_task_rerun_of" in {i["name"] for i in inspect(engine).get_indexes("ai_task")}
    finally:
        engine.dispose()


def _cli(*args: str):
    """In process, with no RIVYA_ setting but an empty provider configuration."""
    unset = tuple(k for k in os.environ if k.startswith("RIVYA_"))
    return run_main("rivya_core", *args, env={"RIVYA_PROVIDERS": ""}, unset=unset)


def test_cli_rerun_without_provider_clients_is_refused_and_writes_nothing(sql_env, db_url):
    svc, clock, providers, store, user = sql_env
    original = _failed(svc, clock, user)
    tasks = len(store.snapshot().tasks)
    got = _cli("rerun", str(original.id), "--db", db_url, "--operator", "Dana", "--reason", "asked again")
    assert got.returncode == 2 and "[no_provider_client]" in got.stderr, got.stderr
    assert "nothing was created" in got.stderr and len(got.stderr.strip().splitlines()) == 1
    assert len(store.snapshot().tasks) == tasks


def test_cli_rerun_on_a_simulation_database_fails_at_submission_linked_and_refunded(sql_env, db_url):
    from simulations.writer import sim_metadata

    svc, clock, providers, store, user = sql_env
    original = _failed(svc, clock, user)
    sim_metadata.create_all(store.engine)  # upstream_job: the recorded providers answer for this database
    got = _cli("rerun", str(original.id), "--db", db_url, "--operator", "Dana", "--reason", "asked again", "--json")
    assert got.returncode == 0, got.stderr
    said = json.loads(got.stdout)
    new = svc.task(said["task_id"])
    assert (new.rerun_of, new.status, new.error_code) == (original.id, TaskStatus.FAILED, "submit_refused")
    assert said["refunded"] == said["charged"] == new.reserved_credits and "refunded by policy" in said["text"]
    assert new.created_at == clock.now()  # the database's own clock (pinned at its latest time)
    with store.engine.connect() as conn:
        kinds = [
            r.kind
            for r in conn.execute(select(schema.task_event.c.kind).where(schema.task_event.c.task_id == original.id))
        ]
    assert "rerun" in kinds and kinds[-1] == "support_action"
    assert audit(store.engine, svc.policy, now=clock.now()).ok
