"""Stuck alerts against each model's observed p95, degradation against a provider's own baseline."""

from __future__ import annotations

import pytest

from rivya_core.policy import BillingPolicy
from rivya_core.read import alerts
from rivya_core.stores.sql import open_store
from rivya_core.support import bulk
from tests.fakes import IMAGE, callback, make_service


@pytest.fixture
def env(sqlite_url):
    store = open_store(sqlite_url, create=True)
    policy = BillingPolicy(stuck_after_s={"image": 5.0, "video": 5.0, "audio": 5.0})
    svc, clock, providers = make_service(policy=policy, store=store)
    user = svc.create_account("a@example.com", "A", grant=100_000)
    yield svc, clock, providers, store, user
    store.engine.dispose()


def _finish(svc, clock, user, seconds, n, *, fail=False, tag="t"):
    for i in range(n):
        t = svc.submit(user.id, {**IMAGE, "prompt": f"{tag} {i}"})
        clock.advance(seconds)
        kw = dict(state="failed", error_code="model_error", failure_class="provider") if fail else {}
        svc.handle_callback("lumen", *callback(clock, t.upstream_task_id, msg_id=f"{tag}{i}", **kw))


def test_stuck_is_judged_against_the_models_p95_with_the_static_floor(env):
    svc, clock, providers, store, user = env
    _finish(svc, clock, user, 10, 30)  # lumen-flash finishes in 10 s: p95 10 s, threshold 2 × 10 = 20 s
    young = svc.submit(user.id, {**IMAGE, "prompt": "young"})
    clock.advance(15)  # past the 5 s floor, within 2 × p95
    assert alerts.alerts(store.engine, svc.policy, clock.now()).stuck == []
    th = alerts.model_thresholds(store.engine, svc.policy, clock.now())["lumen-flash"]
    assert (th.p95_s, th.floor_s, th.threshold_s, th.finished) == (10.0, 5.0, 20.0, 30)
    clock.advance(10)
    [alert] = alerts.alerts(store.engine, svc.policy, clock.now()).stuck
    assert (alert.model, alert.stuck, alert.action) == ("lumen-flash", 1, "recheck")
    assert "2 × p95 10 s" in alert.message
    p = bulk.plan(svc, alert.action, alert.filter)
    assert [t.task_id for t in p.tasks] == [young.id] and p.would_act == 1


def test_a_model_without_history_uses_the_floor(env):
    svc, clock, providers, store, user = env
    svc.submit(user.id, IMAGE)
    clock.advance(6)
    [alert] = alerts.alerts(store.engine, svc.policy, clock.now()).stuck
    assert alert.threshold.p95_s is None and alert.threshold.threshold_s == 5.0
    assert "floor" in alert.message


def test_a_provider_failing_far_above_its_baseline_raises_an_alert_with_a_refund_filter(env):
    svc, clock, providers, store, user = env
    _finish(svc, clock, user, 600, 30, tag="base")  # a quiet day: no failures, 10 min each
    clock.advance(3600)
    assert alerts.degradation_alerts(store.engine, clock.now()) == []
    _finish(svc, clock, user, 60, 8, fail=True, tag="bad")
    _finish(svc, clock, user, 60, 4, tag="ok")
    [alert] = alerts.degradation_alerts(store.engine, clock.now())
    assert (alert.provider, alert.kind, alert.window_tasks, alert.action) == ("lumen", "failure_rate", 12, "refund")
    assert alert.value == pytest.approx(8 / 12) and alert.baseline == 0
    p = bulk.plan(svc, alert.action, alert.filter)
    assert p.matched == 8


def test_latency_far_above_baseline_is_an_alert(env):
    svc, clock, providers, store, user = env
    _finish(svc, clock, user, 60, 30, tag="base")
    clock.advance(3600)
    _finish(svc, clock, user, 240, 12, tag="slow")  # 4 min each within the last hour
    kinds = [(a.provider, a.kind) for a in alerts.degradation_alerts(store.engine, clock.now())]
    assert kinds == [("lumen", "latency")]


def test_p95_is_the_nearest_rank():
    assert alerts.p95([]) is None
    assert alerts.p95(list(range(1, 101))) == 95
    assert alerts.p95([3.0]) == 3.0


def test_degradation_reads_a_time_range_not_every_success_of_the_history(sqlite_url):
    """On SQLite, `status = 'SUCCESS'` made the planner walk every SUCCESS task of the database
    through the status index (seconds on a million tasks): each read must use the finished-at range."""
    from datetime import datetime

    from sqlalchemy.dialects import sqlite

    store = open_store(sqlite_url, create=True)
    try:
        with store.engine.connect() as conn:
            for q in alerts.degradation_queries(datetime(2026, 4, 1, 12)):
                sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
                plan = " / ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                assert "ix_ai_task_finished" in plan and "ix_ai_task_status" not in plan, plan
    finally:
        store.engine.dispose()


def test_the_docs_name_the_action_each_stuck_alert_prepares(tmp_path):
    """The alert strip's sentence in docs/support.md ("stuck generating tasks: …; stuck waiting ones: …")
    says what the Overview's links really prepare: both kinds of stuck task are re-checked first."""
    import re
    from datetime import timedelta
    from pathlib import Path

    from rivya_core.policy import DEFAULT_POLICY
    from rivya_core.stores.db import make_engine
    from tests.dashboard.seed import T0, seed

    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    seed(url)  # task 3 GENERATING for hours (vid-pro on motion), task 4 WAITING (img-fast on pixa)
    engine = make_engine(url)
    found = alerts.alerts(engine, DEFAULT_POLICY, T0 + timedelta(hours=3))
    engine.dispose()
    by_state = {("generating" if a.generating else "waiting"): a.action for a in found.stuck}
    assert by_state == {"generating": "recheck", "waiting": "recheck"}
    words = {"recheck": "re-check", "refund": "refund if due", "mark-failed": "mark failed"}
    doc = " ".join((Path(__file__).resolve().parents[2] / "docs" / "support.md").read_text(encoding="utf-8").split())
    said = dict(re.findall(r"stuck (generating|waiting) (?:tasks|ones): ([a-z -]+?)[;)]", doc))
    assert said == {state: words[action] for state, action in by_state.items()}
