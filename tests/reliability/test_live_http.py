"""End to end over real HTTP on 127.0.0.1: PostgreSQL + the webhook receiver + the fake
provider of each flavor, 500 tasks with the chaos fault mix, through the real clients;
then a support re-check from the dashboard on that live database."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from rivya_core.catalog import default_catalog
from rivya_core.clock import WallClock
from rivya_core.domain import SupportAction, TaskStatus
from rivya_core.lifecycle import LifecycleService
from rivya_core.providers.config import build_clients, load_providers
from rivya_core.stores import schema
from rivya_core.stores.sql import open_store
from simulations.httpfarm import FakeProvider, providers_toml
from simulations.live import ServerThread, run_live, scaled_policy
from simulations.scenarios import ProviderConfig, load_scenario

APP = str(Path(__file__).resolve().parents[2] / "app.py")
SPEED = 600.0


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["replicate", "fal"])
def test_chaos_over_real_http_every_task_terminal_audit_clean(flavor, pg_url, monkeypatch, tmp_path):
    summary, farm = run_live(load_scenario("chaos"), flavor, 500, pg_url, speed=SPEED)
    assert summary.ok, summary.render_text()  # every task terminal, no audit finding
    assert summary.tasks == 500 and set(summary.counts_by_state) <= {"SUCCESS", "FAILED"}
    sent, outcomes = farm["sent"], summary.counts_by_outcome
    assert sent.get("forged") and sent.get("stale") and sent.get("malformed"), sent
    # every hostile delivery is recorded as such, exactly once
    assert outcomes.get("rejected_signature", 0) == sent["forged"]
    assert outcomes.get("rejected_stale", 0) == sent["stale"]
    assert outcomes.get("malformed", 0) == sent["malformed"]
    store = open_store(pg_url)
    try:
        with store.engine.connect() as conn:
            urls = [u for (row,) in conn.execute(select(schema.ai_task.c.result_urls)) for u in (row or [])]
        assert urls and not any("evil.example" in u for u in urls)  # and none of them changed anything
        if flavor == "replicate":
            _support_recheck_from_the_dashboard(store, pg_url, monkeypatch, tmp_path)
    finally:
        store.engine.dispose()


def _support_recheck_from_the_dashboard(store, url, monkeypatch, tmp_path):
    """A task the provider finished but never called back about: an operator re-checks it
    from the task inspector, through the configured real client."""
    scenario = dataclasses.replace(load_scenario("baseline"), farm=ProviderConfig(), providers={}, outages=())
    fake = FakeProvider("replicate", scenario, speed=SPEED)
    with ServerThread(fake.app) as server:
        text = providers_toml("replicate", server.url, "http://127.0.0.1:9", fake.keys, fake.provider_names)
        monkeypatch.setenv("RIVYA_PROVIDERS", text)
        clients = build_clients(load_providers())
        for c in clients.values():
            c.webhook_url = None  # no callback: only a re-check can tell
        svc = LifecycleService(store, WallClock(), clients, default_catalog(), scaled_policy(scenario.policy, SPEED))
        user = svc.create_account("support-case@qa.example", "Support Case", grant=1000)
        task = svc.submit(
            user.id, {"model": "lumen-flash", "prompt": "a lighthouse at dusk, for support", "params": {}}
        )
        assert task.status == TaskStatus.GENERATING
        deadline = time.monotonic() + 30
        while fake.jobs[task.upstream_task_id].state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.05)

        monkeypatch.setenv("RIVYA_DEMO", "0")
        # a live service copies outputs into its result store before SUCCESS: here from the fake on
        # loopback (the QA-only allowance), into this test's folder
        monkeypatch.setenv("RIVYA_RESULTS_DIR", str(tmp_path / "results"))
        monkeypatch.setenv("RIVYA_RESULTS_TEST_ALLOW_HOSTS", "127.0.0.1")
        monkeypatch.setenv("RIVYA_DB_URL", url)
        monkeypatch.delenv("RIVYA_OPERATORS", raising=False)
        monkeypatch.delenv("RIVYA_VIEWERS", raising=False)
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params["task"] = str(task.id)
        at.run()
        at.switch_page("pages/task_inspector.py").run()
        assert not at.exception
        [radio] = [r for r in at.radio if r.label == "Action"]
        radio.set_value(SupportAction.RECHECK)  # offered as "Re-check upstream"
        at.text_input[1].input("sam")
        at.text_input[2].input("user says the image never arrived")
        at.button[0].click().run()
        assert not at.exception
        shown = " ".join(str(s.value) for s in at.success)
        assert f"Re-check upstream on task #{task.id}: done. The task is now SUCCESS" in shown, shown
    after = svc.task(task.id)
    assert after.status == TaskStatus.SUCCESS and after.result_urls
    assert all(u.startswith((tmp_path / "results").resolve().as_uri()) for u in after.result_urls)
    with store.begin() as tx:
        actions = [e.detail for e in tx.task_events(task.id) if e.kind == "support_action"]
    assert actions and actions[-1]["operator"] == "sam" and actions[-1]["action"] == "recheck"
