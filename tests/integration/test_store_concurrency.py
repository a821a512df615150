"""Many threads posting for one user at once, on SQLite (file) and PostgreSQL:
no overdraft, no lost row, balance_after is the running sum, keys post once."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from rivya_core.domain import InsufficientCredits
from rivya_core.ports import RetryableConflict
from rivya_core.stores.sql import open_store

T0 = datetime(2025, 3, 1, 9, 0, 0)
THREADS, POSTS, PRICE = 8, 50, 7
GRANT = THREADS * POSTS * PRICE // 2 + 3  # covers about half of the attempts


@pytest.fixture
def store(db_url):
    st = open_store(db_url, create=True)
    yield st
    st.engine.dispose()


def _run(store, uid, key_of) -> tuple[list[bool], list[BaseException]]:
    created, errors = [], []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(POSTS):
            while True:
                try:
                    with store.begin() as tx:
                        res = tx.post(uid, "consume", -PRICE, key_of(n, i), T0)
                    with lock:
                        created.append(res.created)
                    break
                except RetryableConflict:
                    continue
                except InsufficientCredits:
                    break
                except BaseException as exc:  # anything else is a failure of the test
                    with lock:
                        errors.append(exc)
                    return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return created, errors


def _grant(store, amount: int) -> int:
    with store.begin() as tx:
        uid = tx.add_account("many@example.com", "Many", T0).id
        tx.post(uid, "grant", amount, "grant", T0)
    return uid


def _assert_running_sum(ledger) -> None:
    running = 0
    for e in sorted(ledger, key=lambda e: e.id):
        running += e.amount
        assert e.balance_after == running >= 0


def test_concurrent_posts_never_overdraw(store):
    uid = _grant(store, GRANT)
    created, errors = _run(store, uid, lambda n, i: f"c-{n}-{i}")
    assert errors == []
    snap = store.snapshot()
    consumed = [e for e in snap.ledger if e.entry_type == "consume"]
    assert len(created) == len(consumed) == GRANT // PRICE and all(created)
    assert len({e.idempotency_key for e in consumed}) == len(consumed)
    _assert_running_sum(snap.ledger)
    assert snap.accounts[0].balance == GRANT % PRICE == sum(e.amount for e in snap.ledger)


def test_reused_keys_post_exactly_once(store):
    uid = _grant(store, THREADS * POSTS * PRICE)
    created, errors = _run(store, uid, lambda n, i: f"shared-{i}")
    assert errors == []
    snap = store.snapshot()
    consumed = [e for e in snap.ledger if e.entry_type == "consume"]
    assert sorted(e.idempotency_key for e in consumed) == sorted(f"shared-{i}" for i in range(POSTS))
    assert created.count(True) == POSTS and created.count(False) == (THREADS - 1) * POSTS
    _assert_running_sum(snap.ledger)
    assert snap.accounts[0].balance == THREADS * POSTS * PRICE - POSTS * PRICE
