"""A database for the re-run and delivery-log pages, written through the lifecycle itself: a failed
task to re-run, a parked callback whose task now holds its upstream id (as an import or an older
version leaves one), one still waiting for its task, and the farm's `upstream_job` table, so the
recorded providers answer support actions as on a simulation database."""

from __future__ import annotations

from rivya_core.stores.sql import open_store
from tests.fakes import IMAGE, callback, make_service

HOSTILE_ERROR = "**boom** <b>x</b> [click](http://evil.example)"


def support_seed(url: str) -> dict[str, int]:
    from simulations.writer import sim_metadata

    store = open_store(url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("vera@example.com", "Vera Ortiz", grant=100)
    failed = svc.submit(user.id, {**IMAGE, "prompt": "a lighthouse in a storm"})
    clock.advance(30)
    svc.handle_callback(
        "lumen",
        *callback(
            clock,
            failed.upstream_task_id,
            state="failed",
            msg_id="fail-1",
            error_code="model_error",
            failure_class="provider",
        ),
    )
    clock.advance(30)
    parked = svc.handle_callback("lumen", *callback(clock, "lumen-job-99", msg_id="early-99"))
    lonely = svc.handle_callback("lumen", *callback(clock, "lumen-job-404", msg_id="early-404"))
    clock.advance(30)
    holder = svc.submit(user.id, {**IMAGE, "prompt": "a quiet harbour"})
    svc._tx(lambda tx: tx.update_task(holder.id, None, upstream_task_id="lumen-job-99"))
    svc.handle_callback("lumen", {}, HOSTILE_ERROR.encode())  # malformed: its body is shown as text
    sim_metadata.create_all(store.engine)
    store.engine.dispose()
    return {"failed": failed.id, "holder": holder.id, "parked": parked.callback_id, "lonely": lonely.callback_id}
