"""`import shipany` on PostgreSQL sources: read-only (a SELECT-only role), every planted finding
found and nothing else, the round trip from a `--shape shipany` run, incremental re-imports
that write nothing twice, and one-line refusals."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, select, text

from rivya_core.__main__ import main as rivya_main
from rivya_core.audit import audit
from rivya_core.read.diagnose import diagnose
from rivya_core.sources.facts import source_facts
from rivya_core.sources.shipany import import_shipany
from rivya_core.stores import schema
from rivya_core.stores.db import make_engine
from simulations.scenarios import load_scenario
from simulations.shipany_shape import ShipAnyWriter, run_shipany
from tests.conftest import _pg_reason, skip_or_fail_in_ci
from tests.shipany_source import T0, build_source, hand_written, pg_database, select_only_role, table_dump


@pytest.fixture(scope="module")
def pg():
    reason = _pg_reason()
    if reason:
        skip_or_fail_in_ci(reason)


@pytest.fixture
def planted_source(pg):
    """(URL of a SELECT-only role on a PostgreSQL source holding the hand-written rows, Planted)."""
    w, planted = hand_written()
    with pg_database() as url:
        build_source(url, w)
        with select_only_role(url) as reader:
            yield reader, planted


def _contract(url):
    engine = make_engine(url, read_only=True)
    return engine


def _task_ids(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {ref: i for i, ref in conn.execute(select(schema.ai_task.c.id, schema.ai_task.c.external_ref))}


def _dump(url) -> dict[str, list[tuple]]:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            return {
                t: [
                    tuple(r)
                    for r in conn.execute(select(schema.metadata.tables[t]).order_by(schema.metadata.tables[t].c.id))
                ]
                for t in ("account", "ai_task", "credit_ledger", "source_grant")
            }
    finally:
        engine.dispose()


def test_the_reader_role_can_only_select(planted_source):
    reader, _ = planted_source
    engine = create_engine(reader.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text('SELECT count(*) FROM "user"')).scalar() == 3
        with pytest.raises(Exception, match="permission denied"), engine.begin() as conn:
            conn.execute(text("UPDATE credit SET credits = 0"))
    finally:
        engine.dispose()


def test_every_planted_finding_is_found_and_nothing_else(planted_source, tmp_path):
    reader, planted = planted_source
    before = table_dump(reader)
    into = f"sqlite:///{tmp_path / 'imported.db'}"
    summary = import_shipany(reader, into)
    assert table_dump(reader) == before  # nothing reached the source (its role could not write anyway)
    assert summary.read == {"user": 3, "ai_task": 11, "credit": 18}
    assert summary.apart == {"text tasks (not generation tasks)": 1}
    engine = _contract(into)
    try:
        ids = _task_ids(engine)
        report = audit(engine)
        found = {f.kind: f.rows for f in report.findings}
        task_of = {kind: sorted(r.get("task_id") for r in rows) for kind, rows in found.items()}
        assert set(found) == {
            "canceled_not_refunded",
            "refund_onto_expired_grant",
            "consume_without_task",
            "double_refund",
            "refund_exceeds_charge",
            "success_without_urls",
            "grant_below_zero",
        }, report.counts()
        assert task_of["canceled_not_refunded"] == [ids[planted.canceled]]
        assert task_of["refund_onto_expired_grant"] == [ids[planted.refunded_after_expiry]]
        assert task_of["double_refund"] == [ids[planted.refunded_twice]]
        # a task refunded twice got back more than it was charged: the same task, the same rows
        assert task_of["refund_exceeds_charge"] == [ids[planted.refunded_twice]]
        assert task_of["success_without_urls"] == [ids[planted.empty_success]]
        [orphan] = found["consume_without_task"]
        assert orphan["task_id"] is None and orphan["idempotency_key"] == f"shipany:consume:{planted.orphan_consume}"
        [grant] = found["grant_below_zero"]
        assert grant["external_ref"] == planted.below_zero_grant and grant["remaining_credits"] == -5
        # the facts the source never had are said, not failed
        assert set(report.not_recorded) == {
            "notification_missing",
            "notification_wrong_kind",
            "notification_duplicate",
            "multiple_terminal_events",
            "chat_reserve_not_settled",
            "chat_overcharge",
            "chat_refund_mismatch",
        }
        assert all("not recorded by this source" in said for said in report.not_recorded.values())
        # the checklist answers them for one task
        items = {i.key: i for i in diagnose(engine, ids[planted.canceled]).items}
        assert items["source"].status == "fail" and "canceled and not refunded" in items["source"].answer
        assert "Not recorded by this source" in items["notification"].answer
        assert items["notification"].status == "info" and items["callbacks"].status == "info"
        lost = {i.key: i for i in diagnose(engine, ids[planted.refunded_after_expiry]).items}["source"]
        assert "already expired: 20 credits lost" in lost.answer
        ok = {i.key: i for i in diagnose(engine, ids[planted.tasks["delivered"]]).items}["source"]
        assert ok.status == "ok"
        with engine.connect() as conn:
            derived = conn.execute(select(schema.credit_ledger.c.derived_from)).scalars().all()
        assert derived and all(json.loads(d)[0].startswith("credit/") for d in derived)
    finally:
        engine.dispose()


def test_statuses_media_and_results_map_as_the_schema_notes_say(planted_source, tmp_path):
    reader, planted = planted_source
    into = f"sqlite:///{tmp_path / 'imported.db'}"
    import_shipany(reader, into)
    engine = _contract(into)
    try:
        with engine.connect() as conn:
            rows = {r.external_ref: r for r in conn.execute(select(schema.ai_task))}
    finally:
        engine.dispose()
    t = planted.tasks
    assert t["text"] not in rows  # counted apart
    assert rows[t["delivered"]].status == "SUCCESS" and rows[t["delivered"]].result_urls == [
        "https://cdn.example/1.png"
    ]
    assert rows[t["song"]].category == "audio" and rows[t["running"]].category == "audio"
    assert rows[t["running"]].status == "GENERATING"
    assert rows[t["canceled"]].error_code == "upstream_canceled" and rows[t["canceled"]].status == "FAILED"
    assert rows[t["failed_refunded"]].error_code == "provider_error"
    assert rows[t["failed_refunded"]].error_message == "upstream 500"
    assert rows[t["delivered"]].params == {"size": "1024"}


def test_a_postgresql_target_reads_the_same(planted_source, pg_url, tmp_path):
    reader, _ = planted_source
    import_shipany(reader, pg_url)
    engine = make_engine(pg_url, read_only=True)
    try:
        counts = audit(engine).counts()
    finally:
        engine.dispose()
    into = f"sqlite:///{tmp_path / 'imported.db'}"
    import_shipany(reader, into)
    engine = _contract(into)
    try:
        assert audit(engine).counts() == counts
    finally:
        engine.dispose()


def test_incremental_imports_write_nothing_twice(pg, tmp_path):
    w, planted = hand_written()
    with pg_database() as url:
        build_source(url, w)
        into = f"sqlite:///{tmp_path / 'imported.db'}"
        with select_only_role(url) as reader:
            import_shipany(reader, into)
            first = _dump(into)
        # the source moves on: the running task succeeds, a new user arrives and generates
        from datetime import timedelta

        later = T0 + timedelta(hours=31)
        w.succeed(planted.tasks["running"], ["https://cdn.example/late.mp3"], later)
        dee = w.add_user("Dee", "dee@example.com", later)
        w.grant(dee, 20, "payment", later)
        new = w.generate(
            dee,
            media_type="image",
            provider="lumen",
            model="image-model",
            prompt="new",
            options={},
            cost=5,
            at=later,
            upstream_id="up-new",
        )
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:  # the test writes as the owner; the importer reads as the role
            from simulations.shipany_shape import ai_task, credit, user

            conn.execute(
                ai_task.update()
                .where(ai_task.c.id == planted.tasks["running"])
                .values(status="success", updated_at=later, task_info=w.tasks[planted.tasks["running"]]["task_info"])
            )
            conn.execute(user.insert(), [w.users[-1]])
            conn.execute(credit.insert(), [r for r in w.credits.values() if r["user_id"] == dee])
            conn.execute(ai_task.insert(), [w.tasks[new]])
        engine.dispose()
        with select_only_role(url) as reader:
            second_summary = import_shipany(reader, into)
            second = _dump(into)
            third_summary = import_shipany(reader, into)
            third = _dump(into)
    assert second_summary.since is not None and second_summary.read["ai_task"] == 2  # the overlap re-read, not all
    assert second_summary.written["ai_task"] == 1 and second_summary.updated["ai_task"] >= 1
    assert second_summary.written["credit_ledger"] == 2  # Dee's grant and consume
    assert third == second  # twice: the same rows
    assert third_summary.written.get("credit_ledger", 0) == 0 and third_summary.written.get("ai_task", 0) == 0
    assert [r[0] for r in first["ai_task"]] == [r[0] for r in second["ai_task"]][: len(first["ai_task"])]
    assert first["credit_ledger"] == second["credit_ledger"][: len(first["credit_ledger"])]  # nothing renumbered


def test_round_trip_run_shipany_import_audit_backtest(pg, tmp_path, capsys):
    from dataclasses import replace

    from simulations.__main__ import main as sim_main

    scenario = load_scenario("shipany_gifts")
    scenario = scenario.with_policy(replace(scenario.policy, credit_expiry_days=0.25))  # gifts lapse in 6 h
    with pg_database() as url:
        shaped = run_shipany(scenario, url, tasks=150)
        assert shaped.ok and shaped.rows["ai_task"] > 100
        into = f"sqlite:///{tmp_path / 'imported.db'}"
        with select_only_role(url) as reader:
            before = table_dump(reader)
            assert rivya_main(["import", "shipany", "--source", reader, "--into", into]) == 0
            assert table_dump(reader) == before
    engine = _contract(into)
    try:
        assert source_facts(engine).source == "shipany"
        report = audit(engine)
        counts = {f.kind: f.count for f in report.findings}
        # the template's code paths leave only what they always leave: cancels kept, maybe lost refunds
        assert set(counts) <= {"canceled_not_refunded", "refund_onto_expired_grant"}, counts
        assert counts.get("canceled_not_refunded", 0) == shaped.canceled
        with engine.connect() as conn:
            expired = conn.execute(
                select(schema.credit_ledger.c.id).where(schema.credit_ledger.c.entry_type == "expire")
            ).first()
        assert expired is not None  # sign-up gifts lapsed after the policy's 6 hours
    finally:
        engine.dispose()
    capsys.readouterr()
    code = sim_main(
        [
            "backtest",
            "--db",
            into,
            "--policy",
            "data/policies/default.toml",
            "--policy",
            "data/policies/no_refunds.toml",
            "--resamples",
            "50",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "reproduces the recorded ledger" in out


def test_bad_url_and_missing_tables_exit_2_with_one_line(pg, tmp_path, capsys):
    into = f"sqlite:///{tmp_path / 'x.db'}"
    assert rivya_main(["import", "shipany", "--source", "postgresql://nobody@127.0.0.1:1/none", "--into", into]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read source")
    with pg_database() as url:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.execute(text('CREATE TABLE "user" (id text primary key)'))
        engine.dispose()
        assert rivya_main(["import", "shipany", "--source", url, "--into", into]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks the table(s) ai_task, credit" in err[0]
    assert not (tmp_path / "x.db").exists()  # refused before anything was written


def test_a_fork_s_names_through_a_map_file(tmp_path):
    """A fork that renamed the credit table and a column imports through --map (SQLite source)."""
    w, _ = hand_written(ShipAnyWriter(__import__("random").Random(3)))
    src = f"sqlite:///{tmp_path / 'src.db'}"
    build_source(src, w)
    engine = create_engine(src)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE credit RENAME TO credits"))
        conn.execute(text("ALTER TABLE credits RENAME COLUMN consumed_detail TO consumed"))
    engine.dispose()
    into = f"sqlite:///{tmp_path / 'into.db'}"
    assert rivya_main(["import", "shipany", "--source", src, "--into", into]) == 2
    mapping = tmp_path / "fork.toml"
    mapping.write_text('[tables]\ncredit = "credits"\n[columns.credit]\nconsumed_detail = "consumed"\n')
    summary = import_shipany(src, into, map_path=str(mapping))
    assert summary.read["credit"] == 18 and summary.written["credit_ledger"] > 0
    mapping.write_text('[columns.credit]\nconsumed_details = "consumed"\n')
    assert rivya_main(["import", "shipany", "--source", src, "--into", into, "--map", str(mapping)]) == 2


def test_a_target_holding_other_data_is_refused(tmp_path, capsys):
    w, _ = hand_written()
    src = f"sqlite:///{tmp_path / 'src.db'}"
    build_source(src, w)
    other = tmp_path / "other.db"
    from rivya_core.stores.db import init_db

    engine = make_engine(f"sqlite:///{other}")
    init_db(engine)
    with engine.begin() as conn:
        conn.execute(schema.account.insert().values(email="x@example.com", name="x", created_at=T0, balance=0))
    engine.dispose()
    assert rivya_main(["import", "shipany", "--source", src, "--into", str(other)]) == 2
    assert "holds rows" in capsys.readouterr().err
    assert rivya_main(["import", "shipany", "--source", src, "--into", str(other), "--dry-run"]) == 2
    dry = tmp_path / "dry.db"
    assert rivya_main(["import", "shipany", "--source", src, "--into", str(dry), "--dry-run"]) == 0
    assert not dry.exists()
    assert rivya_main(["import", "shipany", "--source", src, "--into", str(other), "--force"]) == 0


def test_only_reads_reach_the_source_even_as_its_owner(pg, tmp_path):
    """Every statement the importer sends to the source, through a role that could write, reads."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    w, _ = hand_written()
    with pg_database() as url:
        build_source(url, w)
        dbname = url.rsplit("/", 1)[1]
        sent: list[str] = []

        def spy(conn, _cursor, statement, *_args):
            if conn.engine.url.database == dbname:
                sent.append(" ".join(statement.split()).upper())

        event.listen(Engine, "before_cursor_execute", spy)
        try:
            import_shipany(url, f"sqlite:///{tmp_path / 'imported.db'}")
        finally:
            event.remove(Engine, "before_cursor_execute", spy)
    assert sent and "SET TRANSACTION READ ONLY" in sent
    writes = [s for s in sent if not s.startswith(("SELECT", "SET TRANSACTION READ ONLY", "SHOW", "WITH"))]
    assert not writes, writes
