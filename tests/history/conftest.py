"""A small hand-made history: one account, four tasks and a chat turn through the real service."""

from __future__ import annotations

import pytest

from rivya_core.stores.sql import open_store
from rivya_core.validation import GenerationRequest
from tests.fakes import SECRET, make_service


def write_small_history(url: str) -> dict[str, int]:
    """grant 10; lumen-flash (2) succeeds; lumen-pro (6) fails content policy (user: kept under the
    default policy); lumen-flash (2) fails model_error (provider: refunded); lumen-pro (6) is refused
    for credits (balance 2); a parley-mini chat turn reserves 2 and settles at 1."""
    store = open_store(url, create=True)
    svc, clock, providers = make_service(store=store, secrets={"lumen": [SECRET], "parley": [SECRET]})
    lumen = providers["lumen"]
    user = svc.create_account("ada@example.com", "Ada", grant=10).id
    ids = {}
    for name, model, outcome in (
        ("ok", "lumen-flash", "succeed"),
        ("content", "lumen-pro", "content"),
        ("model_error", "lumen-flash", "provider"),
        ("refused", "lumen-pro", None),
    ):
        clock.advance(60)
        task = svc.submit(user, GenerationRequest(model, f"prompt {name}", {}))
        ids[name] = task.id
        clock.advance(30)
        if outcome == "succeed":
            lumen.succeed(task.upstream_task_id)
        elif outcome == "content":
            lumen.fail(task.upstream_task_id, "content_policy_violation", "user")
        elif outcome == "provider":
            lumen.fail(task.upstream_task_id, "model_error", "provider")
        if outcome:
            svc.recheck(task.id)
    clock.advance(60)
    session = svc.open_chat(user, "parley-mini")
    msg = svc.chat_turn_reserve(session.id, "hello", 1000, 1000)
    clock.advance(5)
    svc.chat_turn_settle(msg.id, 1000, 500)
    ids["chat"] = msg.id
    ids["user"] = user
    store.engine.dispose()
    return ids


@pytest.fixture
def small_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'small.db'}"
    return url, write_small_history(url)
