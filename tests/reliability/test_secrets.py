"""Per-provider webhook secrets with rotation, and no secret anywhere it could
leak: logs (SQL parameters included), stored rows, error messages, repr."""

from __future__ import annotations

import logging
import random

from rivya_core import webhooks
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.sql import SqlStore
from tests.fakes import IMAGE, callback, make_service

rng = random.Random(11)
NEW = {p: webhooks.generate_secret(rng) for p in ("lumen", "sonora", "kinetica", "parley")}
OLD = {p: webhooks.generate_secret(rng) for p in NEW}
BROKEN = "whsec_not*base64!"


def _all_text(store) -> str:
    snap = store.snapshot()
    return "\n".join(repr(getattr(snap, name)) for name in vars(snap))


def test_rotation_secrets_and_no_leaks(db_url, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # SQL and its parameters into the log
    engine = make_engine(db_url)
    init_db(engine)
    secrets = {p: [NEW[p], OLD[p]] for p in NEW}
    secrets["parley"] = [BROKEN]
    svc, clock, providers = make_service(store=SqlStore(engine), secrets=secrets)
    user = svc.create_account("s@example.com", "S", grant=100)
    tasks = [svc.submit(user.id, {**IMAGE, "prompt": f"p{i}"}) for i in range(4)]
    outcomes = [
        svc.handle_callback("lumen", *callback(clock, tasks[0].upstream_task_id, msg_id="a", secret=NEW["lumen"])),
        svc.handle_callback("lumen", *callback(clock, tasks[1].upstream_task_id, msg_id="b", secret=OLD["lumen"])),
        svc.handle_callback("lumen", *callback(clock, tasks[2].upstream_task_id, msg_id="c", secret=NEW["sonora"])),
        svc.handle_callback(
            "lumen", *callback(clock, tasks[3].upstream_task_id, msg_id="d", secret=webhooks.generate_secret(rng))
        ),
        svc.handle_callback("parley", *callback(clock, "x", msg_id="e", secret=NEW["lumen"])),
        svc.handle_callback("nobody", *callback(clock, "x", msg_id="f", secret=NEW["lumen"])),
    ]
    assert [o.outcome for o in outcomes] == [
        "applied",
        "applied",
        "rejected_signature",
        "rejected_signature",
        "rejected_signature",
        "rejected_signature",
    ]
    # after the window closes the old secret is refused
    svc._secrets["lumen"] = [NEW["lumen"]]
    late = svc.handle_callback("lumen", *callback(clock, tasks[2].upstream_task_id, msg_id="g", secret=OLD["lumen"]))
    assert late.outcome == "rejected_signature"
    haystack = "\n".join(
        [_all_text(svc.store), caplog.text, repr(svc), str(svc), *(o.reason or "" for o in [*outcomes, late])]
    )
    assert "INSERT INTO provider_callback" in caplog.text  # the SQL log was captured, so it is searched too
    for secret in [*NEW.values(), *OLD.values(), BROKEN]:
        for needle in (secret, secret.removeprefix("whsec_")):
            assert needle not in haystack
    engine.dispose()
