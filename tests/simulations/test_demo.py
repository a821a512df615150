"""The first-start demo database has a live slice and a provider incident to practise on."""

from __future__ import annotations

from datetime import datetime

from rivya_core.audit import audit
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.read import alerts, incidents
from rivya_core.read.diagnose import diagnose
from rivya_core.stores import db
from rivya_core.support import bulk
from rivya_core.verdicts import NextAction
from rivya_core.wiring import service_for_url
from simulations import recorded  # noqa: F401  (registers the recorded providers)
from simulations.demo import ensure_demo_data

from .conftest import rows


def test_demo_has_running_and_stuck_tasks_an_incident_and_alerts_that_lead_to_bulk_actions(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert ensure_demo_data(url) is True
    path = tmp_path / "demo.db"
    running = dict(
        rows(path, "select status, count(*) from ai_task where status in ('WAITING','GENERATING') group by status")
    )
    assert running.get("GENERATING", 0) >= 20
    assert running.get("WAITING", 0) >= 3  # submissions cut off by a worker that died after charging
    outage = rows(
        path, "select count(*) from ai_task where provider = 'kinetica' and error_code = 'service_unavailable'"
    )
    assert outage[0][0] >= 20

    engine = db.open_reader(url)
    found = alerts.alerts(engine, DEFAULT_POLICY)
    engine.dispose()
    assert 3 <= sum(a.stuck for a in found.stuck) <= 40
    waiting_providers = {p for (p,) in rows(path, "select distinct provider from ai_task where status = 'WAITING'")}
    assert {a.provider for a in found.stuck} == {"kinetica"} | waiting_providers  # the incident and the crash
    assert [(a.provider, a.kind) for a in found.degraded] == [("kinetica", "failure_rate")]

    svc = service_for_url(url)  # the recorded providers, on the database's own clock
    stuck = next(a for a in found.stuck if a.provider == "kinetica")
    p = bulk.plan(svc, svc.store.engine, "mark-failed", stuck.filter)
    assert p.matched == stuck.stuck and p.would_act == stuck.stuck  # every alerted task may be marked failed
    crashed = next(a for a in found.stuck if a.provider != "kinetica")  # WAITING: ask the provider first
    p = bulk.plan(svc, svc.store.engine, crashed.action, crashed.filter)
    assert crashed.action == "recheck" and crashed.generating == 0 and p.would_act == crashed.stuck
    assert "waiting to be submitted past" in crashed.message and "running" not in crashed.message
    assert {t.would for t in p.tasks} == {
        f"ask {crashed.provider} for a job under the task's reference; else resubmit or fail it"
    }  # what a re-check does to a WAITING task
    svc.store.engine.dispose()


def test_demo_waiting_tasks_are_charged_crash_leftovers_that_recover_finishes(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    ensure_demo_data(url)
    path = tmp_path / "demo.db"
    waiting = [r[0] for r in rows(path, "select id from ai_task where status = 'WAITING' order by id")]
    assert len(waiting) >= 3
    charged = rows(
        path,
        "select count(distinct task_id) from credit_ledger where entry_type = 'consume' "
        f"and task_id in ({','.join(map(str, waiting))})",
    )[0][0]
    assert charged == len(waiting)  # charged before submission, as the guide orders
    svc = service_for_url(url)  # the recorded providers, on the database's own clock
    for task_id in waiting:  # the checklist's next action is one the dashboard can take
        assert diagnose(svc.store.engine, task_id, DEFAULT_POLICY).action_code == NextAction.RECHECK_UPSTREAM
    after = svc.support_recheck(waiting[0], "olga", "customer asked where the image is")
    assert after.status == "FAILED"  # the recorded provider takes no new job: failed, and refunded
    report = svc.recover()
    svc.store.engine.dispose()
    assert {a["task_id"] for a in report.actions if "task_id" in a} >= set(waiting[1:])
    finished = rows(path, f"select status from ai_task where id in ({','.join(map(str, waiting))})")
    assert {s for (s,) in finished} == {"FAILED"}
    refunded = rows(
        path,
        "select count(distinct task_id) from credit_ledger where entry_type = 'refund' "
        f"and task_id in ({','.join(map(str, waiting))})",
    )[0][0]
    assert refunded == len(waiting)
    engine = db.open_reader(url)
    report = audit(engine, DEFAULT_POLICY)
    engine.dispose()
    assert report.ok, [(f.kind, f.message) for f in report.findings]


def test_demo_history_runs_forward_in_time_and_its_backtest_self_checks(tmp_path, capsys):
    """The demo writes every row on one clock that never goes back: in id order the ledger's,
    the tasks' and the events' times never decrease; and the backtest's self-check on it passes."""
    import json

    from simulations.__main__ import main

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    ensure_demo_data(url)
    path = tmp_path / "demo.db"
    for table, col in (("credit_ledger", "created_at"), ("ai_task", "created_at"), ("task_event", "at")):
        back = rows(path, f"select count(*) from {table} a join {table} b on b.id = a.id + 1 and b.{col} < a.{col}")
        assert back == [(0,)], f"{table}: a row dated before the row written just before it"
    code = main(
        [
            "backtest",
            "--db",
            url,
            "--policy",
            "data/policies/default.toml",
            "--policy",
            "data/policies/refund_everything.toml",
            "--exact-only",
            "--json",
        ]
    )
    check = json.loads(capsys.readouterr().out)["self_check"]
    assert check["ok"], check["first_diverging_rows"]
    assert code == 0


def test_on_the_demo_acts_and_ages_are_never_before_the_last_poll(tmp_path):
    """The demo's writer drains tasks out of time order: the newest event by id is not the latest.
    A stuck kinetica task's last poll is at T; the judged "now", the support act on it and the
    incident that acts on its neighbours are all at T or later."""
    from rivya_core.read import queries
    from rivya_core.stores.schema import incident

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    ensure_demo_data(url)
    path = tmp_path / "demo.db"
    [(task_id, last_poll)] = rows(
        path,
        "select e.task_id, max(e.at) from task_event e join ai_task t on t.id = "
        "e.task_id where t.status = 'GENERATING' and t.provider = 'kinetica' and "
        "e.kind = 'poll' group by e.task_id order by max(e.at) desc, e.task_id limit 1",
    )
    svc = service_for_url(url)
    try:
        engine = svc.store.engine
        t = datetime.fromisoformat(last_poll)
        assert queries.reference_now(engine).at >= t  # "Ages judged at"
        svc.support_mark_failed(task_id, "sam", "kinetica hang; upstream lost the job")
        events = queries.task_detail(engine, task_id)["events"]
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        assert all(e["at"] >= t for e in events if e["kind"] in ("support_action", "failed", "refunded", "notified"))
        bulk.execute(
            svc,
            svc.store.engine,
            "mark-failed",
            incidents.BulkFilter(provider="kinetica", status=("GENERATING",), min_age_s=1800),
            operator="sam",
            reason="kinetica hang",
            name="kinetica hang",
        )
        with engine.connect() as conn:
            created = conn.execute(incident.select()).first()._mapping["created_at"]
        assert created >= t
    finally:
        svc.store.engine.dispose()
