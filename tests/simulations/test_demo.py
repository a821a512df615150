"""The first-start demo database has a live slice and a provider incident to practise on."""

from __future__ import annotations

from rivya_core import alerts, bulk, db
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.service import service_for_url
from simulations import recorded  # noqa: F401  (registers the recorded providers)
from simulations.demo import ensure_demo_data

from .conftest import rows


def test_demo_has_running_and_stuck_tasks_an_incident_and_alerts_that_lead_to_bulk_actions(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert ensure_demo_data(url) is True
    path = tmp_path / "demo.db"
    running = dict(rows(path, "select status, count(*) from ai_task where status in ('WAITING','GENERATING') "
                              "group by status"))
    assert running.get("GENERATING", 0) >= 20
    outage = rows(path, "select count(*) from ai_task where provider = 'kinetica' and error_code = 'service_unavailable'")
    assert outage[0][0] >= 20

    engine = db.open_reader(url)
    found = alerts.alerts(engine, DEFAULT_POLICY)
    engine.dispose()
    assert 3 <= sum(a.stuck for a in found.stuck) <= 40 and {a.provider for a in found.stuck} == {"kinetica"}
    assert [(a.provider, a.kind) for a in found.degraded] == [("kinetica", "failure_rate")]

    svc = service_for_url(url)  # the recorded providers, on the database's own clock
    stuck = found.stuck[0]
    p = bulk.plan(svc, "mark-failed", stuck.filter)
    assert p.matched == stuck.stuck and p.would_act == stuck.stuck  # every alerted task may be marked failed
    svc.store.engine.dispose()
