"""A small known database for the dashboard tests, written with Core inserts.

Two users; four tasks: one SUCCESS, one FAILED by the provider after its charge
(refund due, not yet given), one GENERATING for two hours (stuck), one WAITING.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert

from rivya_core.stores import db, schema

T0 = datetime(2026, 4, 1, 12, 0, 0)


def seed(url: str) -> dict[str, int]:
    engine = db.make_engine(url)
    db.init_db(engine)
    at = lambda minutes: T0 + timedelta(minutes=minutes)  # noqa: E731
    tasks = [
        dict(
            id=1,
            user_id=1,
            model="img-fast",
            category="image",
            prompt="a red fox in snow",
            status="SUCCESS",
            provider="pixa",
            upstream_task_id="up-1",
            result_urls=["https://cdn.example/1.png"],
            created_at=at(0),
            submitted_at=at(0),
            finished_at=at(2),
            settled_at=at(2),
        ),
        dict(
            id=2,
            user_id=1,
            model="img-fast",
            category="image",
            prompt="a blue whale",
            status="FAILED",
            provider="pixa",
            upstream_task_id="up-2",
            error_code="provider_error",
            error_message="upstream 500",
            failure_class="provider",
            created_at=at(5),
            submitted_at=at(5),
            finished_at=at(7),
        ),
        dict(
            id=3,
            user_id=2,
            model="vid-pro",
            category="video",
            prompt="waves at dusk",
            status="GENERATING",
            provider="motion",
            upstream_task_id="up-3",
            created_at=at(10),
            submitted_at=at(10),
        ),
        dict(
            id=4,
            user_id=2,
            model="img-fast",
            category="image",
            prompt="a green tree",
            status="WAITING",
            provider="pixa",
            created_at=at(128),
        ),
    ]
    for t in tasks:
        t.update(
            params={},
            billing_type="per_task",
            reserved_credits=10 if t["category"] == "image" else 50,
            check_attempts=0,
        )
    ledger = [
        dict(user_id=1, entry_type="grant", amount=100, balance_after=100, idempotency_key="g1", created_at=at(-1)),
        dict(user_id=2, entry_type="grant", amount=200, balance_after=200, idempotency_key="g2", created_at=at(-1)),
        dict(
            user_id=1,
            entry_type="consume",
            amount=-10,
            balance_after=90,
            task_id=1,
            idempotency_key="consume:task:1",
            created_at=at(0),
        ),
        dict(
            user_id=1,
            entry_type="consume",
            amount=-10,
            balance_after=80,
            task_id=2,
            idempotency_key="consume:task:2",
            created_at=at(5),
        ),
        dict(
            user_id=2,
            entry_type="consume",
            amount=-50,
            balance_after=150,
            task_id=3,
            idempotency_key="consume:task:3",
            created_at=at(10),
        ),
    ]
    events = []
    for t in tasks:
        events.append(dict(task_id=t["id"], at=t["created_at"], kind="created", detail={}))
        if t["status"] != "WAITING":
            events += [
                dict(task_id=t["id"], at=t["submitted_at"], kind="charged", detail={}),
                dict(task_id=t["id"], at=t["submitted_at"], kind="submitted", detail={}),
            ]
    events += [
        dict(task_id=1, at=at(2), kind="callback", detail={"outcome": "applied"}),
        dict(task_id=1, at=at(2), kind="succeeded", detail={}),
        dict(task_id=2, at=at(7), kind="failed", detail={"error_code": "provider_error"}),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(schema.account),
            [
                dict(id=1, email="ana@example.com", name="Ana Lima", created_at=at(-2), balance=80),
                dict(id=2, email="bo@example.com", name="Bo Chen", created_at=at(-2), balance=150),
            ],
        )
        for row in tasks:  # rows differ in which columns they set: one insert each
            conn.execute(insert(schema.ai_task).values(**row))
        for row in ledger:
            conn.execute(insert(schema.credit_ledger).values(**row))
        conn.execute(insert(schema.task_event), events)
        conn.execute(
            insert(schema.provider_callback),
            [
                dict(
                    provider="pixa",
                    webhook_id="wh-1",
                    upstream_task_id="up-1",
                    task_id=1,
                    received_at=at(2),
                    signature_valid=True,
                    outcome="applied",
                    body="{}",
                )
            ],
        )
        conn.execute(
            insert(schema.notification),
            [
                dict(
                    user_id=1,
                    task_id=1,
                    kind="generation_success",
                    title="Done",
                    body="Your image is ready",
                    created_at=at(2),
                ),
                dict(
                    user_id=1,
                    task_id=2,
                    kind="generation_failed",
                    title="Failed",
                    body="Generation failed",
                    created_at=at(7),
                ),
            ],
        )
    engine.dispose()
    return {"tasks": 4, "success": 1, "failed": 1, "generating": 1, "waiting": 1}
