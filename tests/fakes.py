"""Fakes of the ports for unit tests: a scriptable provider and a service builder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rivya_core import webhooks
from rivya_core.catalog import default_catalog
from rivya_core.clock import ManualClock
from rivya_core.lifecycle import LifecycleService
from rivya_core.policy import DEFAULT_POLICY, BillingPolicy
from rivya_core.ports import ProviderError, UpstreamStatus
from rivya_core.stores.memory import MemoryStore

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1"  # base64 of a test key
OLD_SECRET = "whsec_" + "b2xkLXNlY3JldC1rZXktMDEyMzQ1Njc4OQ=="


@dataclass
class FakeProvider:
    name: str
    submit_faults: list[str] = field(default_factory=list)  # kinds to raise, in order
    jobs: dict[str, UpstreamStatus] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    submits: int = 0
    status_calls: int = 0
    on_status: Any = None  # called inside status(): lets a test race a callback against a poll
    status_faults: list[str] = field(default_factory=list)  # kinds status() raises, in order

    def submit(self, task_ref: str, model: str, prompt: str, params: dict[str, Any]) -> str:
        self.submits += 1
        if self.submit_faults:
            kind = self.submit_faults.pop(0)
            raise ProviderError(kind, f"upstream said {kind}")
        if task_ref not in self.refs:
            upstream = f"{self.name}-job-{len(self.refs) + 1}"
            self.refs[task_ref] = upstream
            self.jobs[upstream] = UpstreamStatus("running")
        return self.refs[task_ref]

    def status(self, upstream_task_id: str) -> UpstreamStatus:
        self.status_calls += 1
        if self.on_status:
            hook, self.on_status = self.on_status, None
            hook()
        if self.status_faults:
            kind = self.status_faults.pop(0)
            raise ProviderError(kind, f"status read: upstream said {kind}")
        return self.jobs.get(upstream_task_id, UpstreamStatus("unknown"))

    def find(self, task_ref: str) -> str | None:
        return self.refs.get(task_ref)

    def succeed(self, upstream_id: str, urls=("https://cdn.example/out.png",)) -> None:
        self.jobs[upstream_id] = UpstreamStatus("succeeded", tuple(urls))

    def fail(self, upstream_id: str, code="model_error", klass="provider") -> None:
        self.jobs[upstream_id] = UpstreamStatus("failed", (), code, f"{code} upstream", klass)


def callback(
    clock,
    upstream_id: str,
    state="succeeded",
    urls=("https://cdn.example/out.png",),
    *,
    msg_id="msg_1",
    secret=SECRET,
    ts=None,
    error_code=None,
    failure_class=None,
    body=None,
):
    """A signed callback as the provider would send it: (headers, raw body)."""
    if body is None:
        body = json.dumps(
            {
                "type": f"task.{state}",
                "data": {
                    "upstream_task_id": upstream_id,
                    "state": state,
                    "result_urls": list(urls) if state == "succeeded" else [],
                    "error_code": error_code,
                    "error_message": error_code and f"{error_code} happened",
                    "failure_class": failure_class,
                },
            }
        ).encode()
    ts = int((clock.now() - __import__("datetime").datetime(1970, 1, 1)).total_seconds()) if ts is None else ts
    return webhooks.signed_headers(secret, msg_id, ts, body), body


def make_service(policy: BillingPolicy = DEFAULT_POLICY, callbacks_enabled=True, store=None, secrets=None):
    clock = ManualClock()
    catalog = default_catalog()
    providers = {name: FakeProvider(name) for name in catalog.providers()}
    svc = LifecycleService(
        store or MemoryStore(),
        clock,
        providers,
        catalog,
        policy,
        secrets=secrets or {name: [SECRET] for name in providers},
        callbacks_enabled=callbacks_enabled,
    )
    return svc, clock, providers


IMAGE = {"model": "lumen-flash", "prompt": "a lighthouse at dusk", "params": {}}
