"""A task's whole record as one JSON document (rivya_core.read.export, `export-task`), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from rivya_core.domain import NotFound
from rivya_core.read.export import FORMAT, task_record, task_record_json
from rivya_core.stores.sql import open_store
from rivya_core.support import rerun
from tests.cli import run_main
from tests.fakes import IMAGE, callback, make_service

HOSTILE = "**bold** <img src=x onerror=alert(1)> [link](http://evil.example) \u202e"


@pytest.fixture
def env(db_url):
    store = open_store(db_url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("x@example.com", "X", grant=100)
    t = svc.submit(user.id, {**IMAGE, "prompt": HOSTILE})
    svc.handle_callback(
        "lumen",
        *callback(
            clock, t.upstream_task_id, state="failed", msg_id="f", error_code="model_error", failure_class="provider"
        ),
    )
    again = rerun.support_rerun(svc, t.id, "Dana", "asked again")
    yield svc, store, t, again
    store.engine.dispose()


def test_the_record_holds_every_part_of_the_task_as_stored(env):
    svc, store, t, again = env
    rec = task_record(store.engine, t.id)
    assert rec["format"] == FORMAT and rec["task"]["id"] == t.id and rec["task"]["prompt"] == HOSTILE
    assert [e["kind"] for e in rec["timeline"]][:3] == ["created", "charged", "submitted"]
    assert {e["entry_type"] for e in rec["ledger"]} == {"consume", "refund"}
    assert [c["outcome"] for c in rec["callbacks"]] == ["applied"] and '"state": "failed"' in rec["callbacks"][0][
        "body"
    ]
    assert [n["kind"] for n in rec["notifications"]] == ["generation_failed"]
    assert rec["reruns"] == [again.id] and rec["rerun_of"] is None
    assert task_record(store.engine, again.id)["rerun_of"] == t.id
    assert "x@example.com" not in task_record_json(store.engine, t.id)  # the account by id only
    json.loads(task_record_json(store.engine, t.id))
    with pytest.raises(NotFound):
        task_record(store.engine, 10**9)


def _cli(*args):
    return run_main("rivya_core", "export-task", *args)


def test_cli_export_task_to_stdout_and_to_a_file_that_it_never_overwrites_without_force(env, db_url, tmp_path):
    svc, store, t, again = env
    out = _cli(str(t.id), "--db", db_url)
    assert out.returncode == 0 and json.loads(out.stdout)["task"]["id"] == t.id
    target = tmp_path / "record.json"
    assert _cli(str(t.id), "--db", db_url, "-o", str(target)).returncode == 0
    assert json.loads(target.read_text())["reruns"] == [again.id]
    target.write_text("notes I keep")
    refused = _cli(str(again.id), "--db", db_url, "-o", str(target))
    assert refused.returncode == 2 and "--force" in refused.stderr and target.read_text() == "notes I keep"
    assert _cli(str(again.id), "--db", db_url, "-o", str(target), "--force").returncode == 0
    assert json.loads(target.read_text())["task"]["id"] == again.id
    missing = _cli("999999", "--db", db_url, "-o", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "not found" in missing.stderr and not (tmp_path / "none.json").exists()
    assert _cli(str(t.id), "--db", db_url, "-o", str(tmp_path)).returncode == 2  # a directory
