"""Upstream cancel and reported run seconds on SQLite and PostgreSQL: the answer on the timeline,
the late success a duplicate, provider_run_s stored, and init-db adding the column to an older
database with its rows intact."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import MetaData, Table, inspect, select

from rivya_core.catalog import default_catalog
from rivya_core.clock import ManualClock
from rivya_core.lifecycle import LifecycleService
from rivya_core.ports import CancelAnswer, UpstreamCancel, UpstreamStatus
from rivya_core.read.diagnose import diagnose
from rivya_core.stores import db, schema
from rivya_core.stores.sql import open_store
from tests.fakes import IMAGE, SECRET, FakeProvider, callback


class Canceling(FakeProvider):
    def cancel(self, upstream_task_id: str) -> UpstreamCancel:
        self.jobs[upstream_task_id] = UpstreamStatus(
            "failed", (), "upstream_canceled", "canceled", "provider", run_s=61.5
        )
        return UpstreamCancel(CancelAnswer.CANCELED, "HTTP 200, status canceled", 61.5)


def test_timeout_cancel_late_success_and_run_seconds_in_the_database(db_url):
    store = open_store(db_url, create=True)
    try:
        clock = ManualClock()
        catalog = default_catalog()
        providers = {name: Canceling(name) for name in catalog.providers()}
        svc = LifecycleService(store, clock, providers, catalog, secrets={n: [SECRET] for n in providers})
        user = svc.create_account("u@example.com", "U", grant=100)
        task = svc.submit(user.id, IMAGE)
        clock.advance(svc.policy.timeout_for("image"))
        while svc.task(task.id).status == "GENERATING":
            svc.poll()
            clock.advance(svc.policy.poll_interval_s)
        headers, body = callback(clock, task.upstream_task_id, "succeeded", msg_id="msg_late")
        assert svc.handle_callback("lumen", headers, body).outcome == "duplicate"

        with store.engine.connect() as conn:
            ev = (
                conn.execute(
                    select(schema.task_event.c.detail).where(
                        schema.task_event.c.task_id == task.id, schema.task_event.c.kind == "upstream_cancel"
                    )
                )
                .scalars()
                .all()
            )
            row = conn.execute(select(schema.ai_task).where(schema.ai_task.c.id == task.id)).one()._mapping
        assert ev == [
            {
                "answer": "canceled",
                "detail": "HTTP 200, status canceled",
                "upstream_task_id": task.upstream_task_id,
                "reason": "timeout",
                "run_s": 61.5,
            }
        ]
        assert (row["status"], row["error_code"]) == ("FAILED", "timeout")
        answer = diagnose(store.engine, task.id, svc.policy, now=clock.now()).item("upstream_cancel").answer
        assert "refunded 2 credits" in answer and "arrived late" in answer

        second = svc.submit(user.id, IMAGE)
        providers["lumen"].jobs[second.upstream_task_id] = UpstreamStatus(
            "succeeded", ("https://cdn.example/b.png",), run_s=7.25
        )
        clock.advance(svc.policy.stuck_for("image"))
        svc.poll()
        with store.engine.connect() as conn:
            run_s = conn.scalar(select(schema.ai_task.c.provider_run_s).where(schema.ai_task.c.id == second.id))
        assert (svc.task(second.id).status, run_s) == ("SUCCESS", 7.25)
    finally:
        store.engine.dispose()


def test_init_db_adds_provider_run_s_to_an_older_database(db_url):
    engine = db.make_engine(db_url)
    try:
        old = MetaData()
        for table in schema.metadata.sorted_tables:
            Table(
                table.name,
                old,
                *[c._copy() for c in table.columns if not (table.name == "ai_task" and c.name == "provider_run_s")],
            )
        old.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                old.tables["ai_task"]
                .insert()
                .values(
                    id=1,
                    user_id=1,
                    model="lumen-flash",
                    category="image",
                    prompt="p",
                    params={},
                    status="SUCCESS",
                    billing_type="per_task",
                    reserved_credits=2,
                    provider="lumen",
                    created_at=datetime(2026, 4, 1),
                    check_attempts=0,
                )
            )
        assert db.missing_columns(engine) == ["ai_task.provider_run_s"]
        db.init_db(engine)
        assert "provider_run_s" in {c["name"] for c in inspect(engine).get_columns("ai_task")}
        with engine.connect() as conn:
            assert conn.execute(select(schema.ai_task.c.id, schema.ai_task.c.provider_run_s)).all() == [(1, None)]
    finally:
        engine.dispose()
