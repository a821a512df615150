"""The audit: quiet on a consistent dataset, and each kind fires on its own crafted defect."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from rivya_core.audit import ROW_CAP, audit, conservation
from rivya_core.audit_checks import AUDIT_KINDS
from rivya_core.domain import ValidationError
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.stores import schema as s

from .dbrows import T0, Rows, make_engine

NOW = T0 + timedelta(minutes=10)


def build_clean(db: Rows) -> dict[str, int]:
    """Every healthy story once: delivered, failed+refunded, user failure kept,
    support refund, failed for credits, running, chat settled/failed/open."""
    ann = db.account("ann@example.com", "Ann")
    bob = db.account("bob@example.com", "Bob")
    db.grant(ann, 500)
    db.grant(bob, 5)
    ids = {"ann": ann, "bob": bob}
    ids["ok"] = db.success(ann)
    ids["refunded"] = db.failed(ann, failure_class="infrastructure", error_code="timeout")
    ids["kept"] = db.failed(ann, failure_class="user", error_code="content_policy", refund=False)
    ids["support"] = db.failed(ann, failure_class="user", error_code="content_policy", refund=False)
    db.ledger(
        ann,
        "refund",
        10,
        task_id=ids["support"],
        key=f"refund:task:{ids['support']}",
        note="goodwill (operator=kim)",
        support=True,
    )
    ids["broke"] = db.broke(bob, credits=50)
    ids["running"] = db.task(
        ann,
        status="GENERATING",
        upstream="up-run",
        at=NOW - timedelta(minutes=2),
        submitted_at=NOW - timedelta(minutes=2),
    )
    db.ledger(
        ann, "consume", -10, task_id=ids["running"], key=f"consume:task:{ids['running']}", at=NOW - timedelta(minutes=2)
    )
    ids["chat"] = db.chat_settled(ann, reserved=12, charged=8)
    sid = db.session(ann)
    ids["chat_failed"] = db.message(sid, reserved=6, charged=0, status="failed")
    db.ledger(ann, "chat_reserve", -6, msg_id=ids["chat_failed"], key=f"chat_reserve:msg:{ids['chat_failed']}")
    db.ledger(ann, "chat_refund", 6, msg_id=ids["chat_failed"], key=f"chat_refund:msg:{ids['chat_failed']}")
    ids["chat_open"] = db.message(sid, reserved=4, status="reserved", at=NOW - timedelta(seconds=30))
    db.ledger(ann, "chat_reserve", -4, msg_id=ids["chat_open"], key=f"chat_reserve:msg:{ids['chat_open']}")
    ids["sid"] = sid
    return ids


@pytest.fixture
def db(db_url):
    engine = make_engine(db_url, checks=False)
    yield Rows(engine)
    engine.dispose()


@pytest.fixture
def clean(db):
    return build_clean(db)


def set_task(db, task_id, **values):
    with db.engine.begin() as conn:
        conn.execute(update(s.ai_task).where(s.ai_task.c.id == task_id).values(**values))


def test_clean_dataset_has_no_findings(db, clean):
    report = audit(db.engine, now=NOW)
    assert report.ok, report.to_dict()
    assert set(report.counts()) == set(AUDIT_KINDS) and not any(report.counts().values())
    assert conservation(db.engine)["ok"]


def test_empty_database_is_clean(db):
    assert audit(db.engine).ok and conservation(db.engine)["ok"]


# each defect: (kind, how to inject it into the clean dataset, expected count)
def d_running_sum(db, ids):
    db.ledger(ids["ann"], "grant", 5, balance_after=999, touch_account=False)


def d_negative(db, ids):
    db.ledger(ids["bob"], "adjustment", -20)


def d_balance(db, ids):
    with db.engine.begin() as conn:
        conn.execute(update(s.account).where(s.account.c.id == ids["ann"]).values(balance=1))


def d_no_refund(db, ids):
    db.failed(ids["ann"], failure_class="provider", refund=False)


def d_double_refund(db, ids):
    db.ledger(ids["ann"], "refund", 10, task_id=ids["refunded"], key="refund:task:again")


def d_refund_exceeds(db, ids):
    t = db.failed(ids["ann"], failure_class="provider", refund=False, credits=10)
    db.ledger(ids["ann"], "refund", 11, task_id=t)


def d_refund_success(db, ids):
    db.ledger(ids["ann"], "refund", 10, task_id=ids["ok"])


def d_refund_not_due(db, ids):
    db.ledger(ids["ann"], "refund", 10, task_id=ids["kept"], note="auto")


def d_charged_twice(db, ids):
    db.ledger(ids["ann"], "consume", -10, task_id=ids["ok"], key="consume:task:again")


def d_upstream_no_charge(db, ids):
    t = db.task(ids["ann"], status="SUCCESS", upstream="up-free", urls=["u"])
    db.notify(ids["ann"], t, "generation_success")


def d_charged_after(db, ids):
    set_task(db, ids["ok"], submitted_at=T0 - timedelta(seconds=5))


def d_credit_inconsistent(db, ids):
    set_task(db, ids["broke"], upstream_task_id="up-should-not-exist")


def d_success_no_urls(db, ids):
    set_task(db, ids["ok"], result_urls=[])


def d_success_null_urls(db, ids):
    set_task(db, ids["ok"], result_urls=None)


def d_failed_no_code(db, ids):
    set_task(db, ids["kept"], error_code=None)


def d_terminal_twice(db, ids):
    db.event(ids["ok"], "failed")
    db.event(ids["ok"], "succeeded")


def d_callback_applied_twice(db, ids):
    db.callback(ids["ok"], "up-ok", outcome="applied")
    db.callback(ids["ok"], "up-ok", outcome="applied")
    db.callback(ids["kept"], "up-kept", outcome="applied")  # once: fine
    db.callback(ids["kept"], "up-kept", outcome="duplicate")  # a repeat recorded as one: fine


def d_notification_missing(db, ids):
    db.success(ids["ann"], notify=False)


def d_notification_wrong(db, ids):
    t = db.failed(ids["ann"], notify=False)
    db.notify(ids["ann"], t, "generation_success")


def d_notification_duplicate(db, ids):
    db.notify(ids["ann"], ids["ok"], "generation_success")


def d_stuck(db, ids):
    db.task(
        ids["ann"],
        status="GENERATING",
        upstream="up-stuck",
        at=NOW - timedelta(hours=1),
        submitted_at=NOW - timedelta(hours=1),
    )


def d_consume_no_task(db, ids):
    db.ledger(ids["ann"], "consume", -3, task_id=987654)


def d_chat_open(db, ids):
    mid = db.message(ids["sid"], reserved=4, status="reserved", at=NOW - timedelta(hours=2))
    db.ledger(ids["ann"], "chat_reserve", -4, msg_id=mid)


def d_chat_over(db, ids):
    db.chat_settled(ids["ann"], reserved=5, charged=9)


def d_chat_mismatch(db, ids):
    db.ledger(ids["ann"], "chat_refund", 1, msg_id=ids["chat"], key="chat_refund:again")


def d_canceled_not_refunded(db, ids):
    db.failed(ids["ann"], failure_class="user", error_code="upstream_canceled", refund=False)


def d_refund_onto_expired_grant(db, ids):
    t = db.failed(ids["ann"], failure_class="provider", error_code="provider_error")
    db.ledger(ids["ann"], "expire", -10, task_id=t, key=f"shipany:lost-refund:refund:{t}")


def d_grant_below_zero(db, ids):
    with db.engine.begin() as conn:
        conn.execute(
            s.source_grant.insert().values(
                external_ref="g-1",
                user_id=ids["ann"],
                credits=10,
                remaining_credits=-4,
                replayed_remaining=-4,
                live=0,
                status="active",
                created_at=NOW,
            )
        )


DEFECTS = [
    ("canceled_not_refunded", d_canceled_not_refunded, 1),
    ("refund_onto_expired_grant", d_refund_onto_expired_grant, 1),
    ("grant_below_zero", d_grant_below_zero, 1),
    ("ledger_running_sum", d_running_sum, 1),
    ("negative_balance", d_negative, 1),
    ("balance_mismatch", d_balance, 1),
    ("failed_after_charge_without_refund", d_no_refund, 1),
    ("double_refund", d_double_refund, 1),
    ("refund_exceeds_charge", d_refund_exceeds, 1),
    ("refund_on_success", d_refund_success, 1),
    ("refund_not_due", d_refund_not_due, 1),
    ("charged_twice", d_charged_twice, 1),
    ("upstream_without_charge", d_upstream_no_charge, 1),
    ("charged_after_submit", d_charged_after, 1),
    ("credit_failure_inconsistent", d_credit_inconsistent, 1),
    ("success_without_urls", d_success_no_urls, 1),
    ("success_without_urls", d_success_null_urls, 1),
    ("failed_without_error_code", d_failed_no_code, 1),
    ("multiple_terminal_events", d_terminal_twice, 1),
    ("callback_applied_twice", d_callback_applied_twice, 1),
    ("notification_missing", d_notification_missing, 1),
    ("notification_wrong_kind", d_notification_wrong, 1),
    ("notification_duplicate", d_notification_duplicate, 1),
    ("stuck_past_timeout", d_stuck, 1),
    ("consume_without_task", d_consume_no_task, 1),
    ("chat_reserve_not_settled", d_chat_open, 1),
    ("chat_overcharge", d_chat_over, 1),
    ("chat_refund_mismatch", d_chat_mismatch, 1),
]


def test_every_kind_has_a_defect_test():
    assert {k for k, _, _ in DEFECTS} == set(AUDIT_KINDS)


@pytest.mark.parametrize("kind, inject, count", DEFECTS, ids=[f"{k}-{f.__name__}" for k, f, _ in DEFECTS])
def test_each_kind_fires_on_its_defect(db, clean, kind, inject, count):
    inject(db, clean)
    report = audit(db.engine, now=NOW)
    finding = report.by_kind().get(kind)
    assert finding is not None, report.counts()
    assert finding.count == count and len(finding.rows) == count
    assert not report.ok and report.to_dict()["counts"][kind] == count


def test_a_support_refund_is_the_row_s_fact_not_its_note(db, clean):
    """The `support` column marks a support refund; a note that merely reads like one is not."""
    tid = db.failed(clean["ann"], failure_class="user", error_code="content_policy", refund=False)
    db.ledger(clean["ann"], "refund", 10, task_id=tid, key=f"refund:task:{tid}", note="support: kim: goodwill")
    found = audit(db.engine, now=NOW).by_kind()["refund_not_due"]
    assert found.count == 1 and found.rows[0]["task_id"] == tid and not found.rows[0]["support"]


def test_refund_not_due_follows_the_policy(db, clean):
    db.failed(clean["ann"], failure_class="provider")  # refunded under the default policy
    assert audit(db.engine, now=NOW).ok
    keep_provider = replace(DEFAULT_POLICY, refund_classes=frozenset({"infrastructure"}))
    report = audit(db.engine, keep_provider, now=NOW)
    assert report.by_kind()["refund_not_due"].count == 1


def test_chat_overrun_allowed_by_policy_is_not_a_finding(db, clean):
    d_chat_over(db, clean)
    report = audit(db.engine, replace(DEFAULT_POLICY, chat_allow_overrun=True), now=NOW)
    assert "chat_overcharge" not in report.by_kind() and "chat_overcharge" not in report.counts()


def test_stuck_depends_on_now(db, clean):
    d_stuck(db, clean)
    assert "stuck_past_timeout" not in audit(db.engine, now=NOW - timedelta(minutes=50)).by_kind()
    assert "stuck_past_timeout" in audit(db.engine).by_kind()  # default now: the latest recorded time


def test_rows_are_capped_but_count_is_exact(db, clean):
    for _ in range(ROW_CAP + 5):
        db.success(clean["ann"], notify=False)
    f = audit(db.engine, now=NOW, kinds=["notification_missing"]).by_kind()["notification_missing"]
    assert f.count == ROW_CAP + 5 and len(f.rows) == ROW_CAP
    assert audit(db.engine, now=NOW, kinds=["notification_missing"], row_cap=3).findings[0].rows.__len__() == 3


def test_unknown_kind_is_a_typed_error(db):
    with pytest.raises(ValidationError):
        audit(db.engine, kinds=["nope"])


def test_to_dict_is_json_ready(db, clean):
    import json

    d_stuck(db, clean)
    json.dumps(audit(db.engine, now=NOW).to_dict())


def test_conservation_names_the_accounts_that_break_it(db, clean):
    c = conservation(db.engine)
    assert c["grants"] == 505 and c["ledger_total"] == c["balances_total"]
    assert c["grants"] - c["charged"] + c["refunded"] + c["adjustments"] == c["balances_total"]
    d_balance(db, clean)
    c = conservation(db.engine)
    assert not c["ok"] and c["broken_count"] == 1 and c["broken_accounts"][0]["user_id"] == clean["ann"]


def test_parallel_and_sequential_runs_agree(db, clean):
    d_stuck(db, clean)
    d_double_refund(db, clean)
    one = audit(db.engine, now=NOW, workers=1).to_dict()
    many = audit(db.engine, now=NOW, workers=4).to_dict()
    assert one == many and one["counts"]["stuck_past_timeout"] == 1
    with db.engine.connect() as conn:  # a Connection runs the checks on itself
        assert audit(conn, now=NOW).to_dict() == one


# --- stored results ---------------------------------------------------------------------------


def test_a_full_audit_is_stored_and_read_back_without_running(db, clean):
    from rivya_core.audit import current_audit, latest_audit

    assert latest_audit(db.engine) is None
    set_task(db, clean["ok"], result_urls=None)
    audit(db.engine, now=NOW)
    assert latest_audit(db.engine) is None  # a plain audit only reads
    report = audit(db.engine, now=NOW, record=True)
    stored = latest_audit(db.engine)
    assert stored is not None and stored.fresh and stored.total == report.total == 1
    assert stored.as_report().counts() == report.counts()
    assert stored.as_report().findings[0].rows[0]["task_id"] == clean["ok"]
    assert latest_audit(db.engine, replace(DEFAULT_POLICY, refund_classes=frozenset())) is None  # other policy
    assert current_audit(db.engine, run_below_tasks=0) == stored  # big database: the stored one, not a new run


def test_partial_audits_are_not_stored(db, clean):
    from rivya_core.audit import latest_audit

    audit(db.engine, now=NOW, kinds=["double_refund"], record=True)
    audit(db.engine, now=NOW)
    assert latest_audit(db.engine) is None


def test_new_rows_make_a_stored_audit_stale(db, clean):
    from rivya_core.audit import current_audit, latest_audit, run_and_record

    first = run_and_record(db.engine)
    assert first.fresh and first.conservation["ok"]
    db.grant(clean["bob"], 5)
    stale = latest_audit(db.engine)
    assert not stale.fresh and stale.total == first.total
    assert current_audit(db.engine, run_below_tasks=0).fresh is False  # big: kept as it is, marked stale
    assert current_audit(db.engine).fresh  # small: run again now...
    assert latest_audit(db.engine).fresh is False  # ...but not stored: reading never writes


def test_a_database_without_the_audit_run_table_reads_none_and_gets_it(db, clean):
    from rivya_core.audit import latest_audit

    s.audit_run.drop(db.engine)
    assert latest_audit(db.engine) is None
    audit(db.engine, now=NOW, record=True)
    assert latest_audit(db.engine).fresh


def test_an_audit_that_cannot_be_stored_says_so_with_a_typed_error(db, clean, db_url):
    from rivya_core import audit as audit_mod
    from rivya_core.stores.db import make_engine as store_engine

    audit(db.engine, now=NOW, record=True)  # the table exists: the failure below is the write itself
    reader = store_engine(db_url, read_only=True)
    try:
        report = audit(reader, now=NOW)
        with pytest.raises(audit_mod.AuditNotRecorded) as err:
            audit_mod.record_audit(reader, report, DEFAULT_POLICY)
        assert err.value.code == "audit_not_recorded" and "\n" not in err.value.message
        with pytest.raises(audit_mod.AuditNotRecorded):
            audit_mod.run_and_record(reader)
    finally:
        reader.dispose()


def _check_plan(tmp_path, kind: str) -> str:
    from sqlalchemy.dialects import sqlite

    from rivya_core.audit_checks import CHECKS, _Ctx

    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        q = CHECKS[kind](_Ctx(DEFAULT_POLICY, NOW, "sqlite", 600.0))
        sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            return " / ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["consume_without_task", "charged_after_submit", "charged_twice"])
def test_checks_over_every_charge_do_not_read_charges_through_the_type_index(tmp_path, kind):
    """Charges are most of the ledger: read through the (entry_type, amount) index each one
    was a random table read (1.0-1.5 CPU-s per check at a million tasks, 3-4x a pass over
    the table in rowid or task order)."""
    plan = _check_plan(tmp_path, kind)
    assert "ix_credit_ledger_type_amount" not in plan, plan


def test_the_running_sum_check_reads_only_the_ledger_index(tmp_path):
    """The window sum over the whole ledger read every ledger row from the table (the check
    selected all its columns): 3 CPU-s of the audit's 12 at a million tasks. The sum is taken
    over the covering (user_id, id, amount, balance_after) index; only mismatches are joined
    back to the table."""
    plan = _check_plan(tmp_path, "ledger_running_sum")
    assert "SCAN credit_ledger USING COVERING INDEX ix_credit_ledger_user_running" in plan, plan
    assert "SCAN credit_ledger USING INDEX" not in plan, plan


def test_terminal_events_are_counted_without_walking_every_event_through_the_task_index(tmp_path):
    """To group by task_id SQLite walked all events (6M at a million tasks) through the
    (task_id, id) index, reading each from the table to test its kind: 1.25 CPU-s."""
    plan = _check_plan(tmp_path, "multiple_terminal_events")
    assert "ix_task_event_task" not in plan, plan


def test_ledger_users_without_account_look_up_each_user_once(tmp_path):
    """The orphan check of conservation looked up the account of every ledger row (1.3M at
    a million tasks) before DISTINCT; the users are made distinct first."""
    from sqlalchemy.dialects import sqlite

    from rivya_core.audit import ledger_users_without_account

    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        sql = str(
            ledger_users_without_account(50).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
        )
        with engine.connect() as conn:
            rows = list(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    finally:
        engine.dispose()
    parent = {r[0]: r[1] for r in rows}
    scan = next(r[0] for r in rows if r[3].startswith("SCAN credit_ledger"))
    probe = next(r[0] for r in rows if r[3].startswith("CORRELATED"))
    assert parent[probe] != parent[scan], rows


def test_notifications_of_the_wrong_kind_are_found_in_one_pass_over_the_notifications(tmp_path):
    """Through the status index the check read every finished task, then its notification
    through the task index and the table (0.69 CPU-s at a million tasks); one pass over the
    notifications with each task by its primary key costs a third less."""
    plan = _check_plan(tmp_path, "notification_wrong_kind")
    assert "SCAN notification" in plan and "ix_ai_task_status_created" not in plan, plan


def test_an_audit_computed_now_is_not_a_stored_one_and_a_stored_one_names_who_stored_it(db, clean):
    from rivya_core.audit import current_audit, latest_audit, run_and_record

    computed = current_audit(db.engine)  # a small database with no audit_run row: run on load, not stored
    assert computed is not None and computed.stored is False and computed.stored_by is None
    assert latest_audit(db.engine) is None
    stored = run_and_record(db.engine, stored_by="sam")
    assert stored.stored is True and stored.stored_by == "sam"
    again = latest_audit(db.engine)
    assert again.stored is True and again.stored_by == "sam"
    assert current_audit(db.engine) == again  # fresh: the stored one is what pages show
    audit(db.engine, now=NOW, record=True, stored_by="the command line")
    assert latest_audit(db.engine).stored_by == "the command line"
