"""The service's unit of work: a lost race is re-run after a jittered, growing pause, and counted."""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest

from rivya_core.lifecycle.base import MAX_RETRIES
from rivya_core.ports import RetryableConflict
from tests.fakes import make_service


class LosingStore:
    """A store whose first `losses` units of work lose a race."""

    def __init__(self, inner, losses: int):
        self.inner, self.losses = inner, losses

    @contextmanager
    def begin(self):
        if self.losses > 0:
            self.losses -= 1
            raise RetryableConflict("database is locked")
        with self.inner.begin() as tx:
            yield tx

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _service(losses: int, seed: int = 7):
    svc, *_ = make_service()
    svc.store = LosingStore(svc.store, losses)
    pauses: list[float] = []
    svc.retry_rng = random.Random(seed)
    svc.sleep = pauses.append
    return svc, pauses


def test_lost_races_back_off_with_growing_jittered_pauses_and_are_counted():
    svc, pauses = _service(losses=4)
    acct = svc.create_account("ada@example.com", "Ada", grant=10)
    assert svc.balance(acct.id) == 10
    assert len(pauses) == 4
    for attempt, pause in enumerate(pauses):
        assert 0 <= pause <= svc.retry_base * 2**attempt
    assert svc.retry_counts[4] == 1  # one unit needed 4 retries
    assert svc.retry_counts[0] >= 1  # later units needed none
    assert svc.retries_total == 4


def test_jitter_comes_from_the_services_own_random_and_is_reproducible():
    random.seed(1)
    a_svc, a = _service(losses=3, seed=11)
    a_svc.create_account("a@example.com", "A")
    random.seed(2)
    b_svc, b = _service(losses=3, seed=11)
    b_svc.create_account("a@example.com", "A")
    assert a == b and len(a) == 3
    c_svc, c = _service(losses=3, seed=12)
    c_svc.create_account("a@example.com", "A")
    assert c != a


def test_a_unit_that_never_wins_raises_after_the_limit_and_is_counted():
    svc, pauses = _service(losses=MAX_RETRIES + 5)
    with pytest.raises(RetryableConflict):
        svc.create_account("ada@example.com", "Ada")
    assert len(pauses) == MAX_RETRIES - 1
    assert max(pauses) <= svc.retry_cap
    assert svc.retries_total == MAX_RETRIES - 1
    assert svc.retry_counts[MAX_RETRIES - 1] == 1
