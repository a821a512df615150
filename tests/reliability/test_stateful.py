"""Hypothesis stateful test of the lifecycle on the MemoryStore: any sequence of
submits, callbacks (good, forged, duplicate, early), polls, time, refund
attempts and chat turns keeps every DESIGN.md invariant; at teardown the
store, drained, also passes rivya_core.audit loaded into SQLite."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rivya_core.domain import ActionRefused, InsufficientCredits
from tests.fakes import callback, make_service

from .support import TERMINAL, audit_snapshot, corruptions, differential, invariant_violations

pytestmark = pytest.mark.slow  # long Hypothesis state machine runs

MODELS = [("lumen-flash", {}), ("lumen-pro", {}), ("sonora-tts", {})]
PROVIDER = {"lumen-flash": "lumen", "lumen-pro": "lumen", "sonora-tts": "sonora"}


class Lifecycle(RuleBasedStateMachine):
    @initialize(grants=st.lists(st.integers(0, 40), min_size=1, max_size=3))
    def setup(self, grants):
        self.svc, self.clock, self.providers = make_service()
        self.users = [self.svc.create_account(f"u{i}@example.com", f"U{i}", grant=g).id for i, g in enumerate(grants)]
        self.tasks: list[tuple[int, str, str]] = []  # (task id, provider, upstream id)
        self.final: dict[int, str] = {}
        self.msg = 0
        self.session = self.svc.open_chat(self.users[0], "parley-mini", "chat").id

    def _cb(self, upstream, provider, **kw):
        self.msg += 1
        kw.setdefault("msg_id", f"m{self.msg}")
        return self.svc.handle_callback(provider, *callback(self.clock, upstream, **kw))

    @rule(user=st.integers(0, 2), model=st.sampled_from(MODELS), n=st.integers(0, 9))
    def submit(self, user, model, n):
        task = self.svc.submit(
            self.users[user % len(self.users)], {"model": model[0], "prompt": f"p{n}", "params": model[1]}
        )
        if task.upstream_task_id:
            self.tasks.append((task.id, PROVIDER[model[0]], task.upstream_task_id))

    @precondition(lambda self: self.tasks)
    @rule(
        i=st.integers(0, 10**6),
        outcome=st.sampled_from(["succeeded", "failed", "early", "running"]),
        klass=st.sampled_from(["user", "provider", "infrastructure"]),
    )
    def good_callback(self, i, outcome, klass):
        _, provider, upstream = self.tasks[i % len(self.tasks)]
        if outcome == "early":
            self._cb(upstream, provider, urls=())
        elif outcome == "failed":
            self.providers[provider].fail(upstream, klass=klass)
            self._cb(upstream, provider, state="failed", error_code="boom", failure_class=klass)
        else:
            if outcome == "succeeded":
                self.providers[provider].succeed(upstream)
            self._cb(upstream, provider, state=outcome)

    @precondition(lambda self: self.tasks)
    @rule(i=st.integers(0, 10**6), how=st.sampled_from(["forged", "stale", "body", "wrong_provider"]))
    def bad_callback(self, i, how):
        _, provider, upstream = self.tasks[i % len(self.tasks)]
        before = self.svc.store.snapshot()
        if how == "forged":
            result = self._cb(upstream, provider, secret="whsec_Zm9yZ2VkLWtleS0xMjM0NTY=")
        elif how == "stale":
            result = self._cb(upstream, provider, ts=0)
        elif how == "body":
            result = self._cb(upstream, provider, body=b'{"data": 1}')
        else:
            result = self._cb(upstream, "kinetica" if provider != "kinetica" else "lumen")
        after = self.svc.store.snapshot()
        assert result.outcome in ("rejected_signature", "rejected_stale", "malformed", "unknown_task")
        assert (after.tasks, after.ledger, after.notifications, after.events) == (
            before.tasks,
            before.ledger,
            before.notifications,
            before.events,
        )

    @precondition(lambda self: self.msg)
    @rule(n=st.integers(1, 10**6))
    def duplicate_callback(self, n):
        if self.tasks:
            _, provider, upstream = self.tasks[n % len(self.tasks)]
            before = self.svc.store.snapshot()
            self._cb(upstream, provider, msg_id=f"m{n % self.msg + 1}")
            after = self.svc.store.snapshot()
            # a replayed id never changes money; it may only apply when that id was never applied
            assert after.ledger == before.ledger or f"m{n % self.msg + 1}" not in {
                c.webhook_id for c in before.callbacks if c.outcome in ("applied", "deferred")
            }

    @rule(seconds=st.sampled_from([1, 30, 300, 900, 3600]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def poll(self):
        self.svc.poll()

    @precondition(lambda self: self.tasks)
    @rule(i=st.integers(0, 10**6))
    def refund_attempt(self, i):
        try:
            self.svc.support_refund(self.tasks[i % len(self.tasks)][0], "ops", "user asked")
        except ActionRefused:
            pass

    @rule(prompt=st.integers(0, 3000), out=st.integers(0, 3000), actual=st.integers(0, 4000), fail=st.booleans())
    def chat_turn(self, prompt, out, actual, fail):
        try:
            msg = self.svc.chat_turn_reserve(self.session, "hi", prompt, out)
        except InsufficientCredits:
            return
        if fail:
            self.svc.chat_turn_fail(msg.id, "tool crashed")
        else:
            self.svc.chat_turn_settle(msg.id, prompt, actual)

    @invariant()
    def invariants_hold(self):
        snap = self.svc.store.snapshot()
        assert invariant_violations(snap, self.svc.policy) == []
        for t in snap.tasks:  # terminal states never change
            if t.id in self.final:
                assert t.status == self.final[t.id]
            elif t.status in TERMINAL:
                self.final[t.id] = t.status

    def teardown(self):
        if not hasattr(self, "svc"):
            return
        for _ in range(40):  # faults stop: everything finishes within the timeout (liveness)
            self.clock.advance(900)
            self.svc.poll()
        snap = self.svc.store.snapshot()
        assert all(t.status in TERMINAL for t in snap.tasks)
        assert invariant_violations(snap, self.svc.policy) == []
        report = audit_snapshot(snap, self.svc.policy, now=self.clock.now())
        assert report.ok, [f.to_dict() for f in report.findings]
        # the Python checker and the SQL audit agree, on this run and on each damaged copy of it
        assert differential(snap, report, self.svc.policy, self.clock.now()) == {}
        for damage, bad in corruptions(snap):
            found = audit_snapshot(bad, self.svc.policy, now=self.clock.now())
            assert not found.ok, damage
            assert differential(bad, found, self.svc.policy, self.clock.now()) == {}, damage


Lifecycle.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLifecycle = Lifecycle.TestCase
