"""The inspector's re-run and record download, and the webhook delivery log, as AppTests."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from rivya_core.stores import db, schema
from tests.dashboard.conftest import texts
from tests.dashboard.support_seed import HOSTILE_ERROR, support_seed


@pytest.fixture
def support_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'support.db'}"
    return url, support_seed(url)


def _task(url, task_id):
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(schema.ai_task).where(schema.ai_task.c.id == task_id)).first()
    finally:
        engine.dispose()


def _labelled(elements, label):
    return next(e for e in elements if e.label == label)


def test_rerun_from_the_inspector_links_the_new_task(open_page, support_url):
    url, ids = support_url
    at = open_page(url, "pages/task_inspector.py", task=str(ids["failed"]))
    _labelled(at.text_input, "Re-run by (your name)").input("Dana")
    _labelled(at.text_input, "Reason for the re-run (kept on the task's timeline, never shown to the user)").input(
        "Vera asked again"
    )
    _labelled(at.button, f"Re-run task #{ids['failed']} for the user").click().run()
    new_id = ids["holder"] + 1
    shown = texts(at)
    assert f"Re-run of task #{ids['failed']}: created task #{new_id}" in shown, shown
    assert any("failed at submission" in t.value or "submit_refused" in t.value for t in at.text)
    row = _task(url, new_id)
    assert row.rerun_of == ids["failed"] and row.status == "FAILED"  # the recorded providers take no new job
    assert any(b.label == f"Re-run as task #{new_id} (FAILED)" for b in at.button)
    at = open_page(url, "pages/task_inspector.py", task=str(new_id))
    assert any(b.label == f"Re-run of task #{ids['failed']}" for b in at.button)
    assert not at.exception


def test_a_refused_rerun_says_why(open_page, support_url):
    url, ids = support_url
    at = open_page(url, "pages/task_inspector.py", task=str(ids["holder"]))  # still GENERATING
    _labelled(at.text_input, "Re-run by (your name)").input("Dana")
    _labelled(at.text_input, "Reason for the re-run (kept on the task's timeline, never shown to the user)").input(
        "again"
    )
    _labelled(at.button, f"Re-run task #{ids['holder']} for the user").click().run()
    assert "refused (`original_running`)" in texts(at) and any("still GENERATING" in t.value for t in at.text)


def test_the_inspector_offers_the_record_download(open_page, support_url):
    url, ids = support_url
    at = open_page(url, "pages/task_inspector.py", task=str(ids["failed"]))
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download the task's record (JSON)" in labels, labels


def test_the_delivery_log_filters_and_reprocesses_a_parked_callback(open_page, support_url):
    url, ids = support_url
    at = open_page(url, "pages/deliveries.py")
    assert not at.exception
    assert "Deliveries 1–4 of 4" in texts(at)
    _labelled(at.multiselect, "Outcome").set_value(["unknown_task"]).run()
    assert "Deliveries 1–2 of 2" in texts(at)
    pick = _labelled(at.selectbox, "Delivery")
    pick.set_value(ids["parked"]).run()
    assert f"Task #{ids['holder']} now holds this upstream id" in texts(at)
    _labelled(at.text_input, "Operator name").input("Dana")
    _labelled(at.text_input, "Reason (kept on the task's timeline)").input("provider called back early")
    _labelled(at.button, f"Re-process callback #{ids['parked']}").click().run()
    assert f"Callback #{ids['parked']} re-processed for task #{ids['holder']}" in texts(at)
    assert _task(url, ids["holder"]).status == "SUCCESS"


def test_the_delivery_log_shows_bodies_as_text_and_refuses_a_callback_without_its_task(open_page, support_url):
    url, ids = support_url
    at = open_page(url, "pages/deliveries.py")
    assert any(HOSTILE_ERROR in c.value for c in at.code)  # the malformed body, newest first, as text
    _labelled(at.selectbox, "Delivery").set_value(ids["lonely"]).run()
    _labelled(at.text_input, "Operator name").input("Dana")
    _labelled(at.text_input, "Reason (kept on the task's timeline)").input("try")
    _labelled(at.button, f"Re-process callback #{ids['lonely']}").click().run()
    assert "refused (`no_task_yet`)" in texts(at)
    assert not at.exception
