"""Two processes act on the same reserved chat turns at once on PostgreSQL:
settle/settle (with different usage), settle/fail, fail/fail and settle/recover.
Every turn ends settled or failed exactly once, its ledger rows add up to what
the message says it charged, and a loser gets a typed answer, never a stale
success."""

from __future__ import annotations

import multiprocessing as mp
from collections import defaultdict

import pytest

from rivya_core.audit import conservation
from rivya_core.domain import ChatStatus
from rivya_core.stores.db import init_db, make_engine
from rivya_core.stores.sql import SqlStore

from .workload import services

TURNS = 16  # per pair of actions
PAIRS = {  # what process 0 and process 1 do to the same turn
    "settle/settle": ("settle_small", "settle_large"),
    "settle/fail": ("settle_large", "fail"),
    "fail/fail": ("fail", "fail"),
}
USAGE = {"settle_small": (2000, 500), "settle_large": (2000, 3000)}  # 2 and 6 credits on parley-chat


def _reserve(url: str, n: int, tag: str) -> list[int]:
    store, finisher, _, _ = services(url)
    user = finisher.create_account(f"chat-{tag}@example.com", "Chat", grant=1000).id
    session = finisher.open_chat(user, "parley-chat")
    ids = [finisher.chat_turn_reserve(session.id, f"turn {i}", 2000, 4000).id for i in range(n)]
    store.dispose()
    return ids


def _act(svc, action: str, msg_id: int):
    from rivya_core.domain import RivyaError

    try:
        if action == "recover":
            report = svc.recover(grace_s=0.0, limit=1)
            return ("recovered", len(report.actions))
        if action == "fail":
            msg = svc.chat_turn_fail(msg_id, "tool crashed")
        else:
            msg = svc.chat_turn_settle(msg_id, *USAGE[action])
        return ("ok", str(msg.status), msg.charged_credits)
    except RivyaError as exc:
        return ("typed", exc.code)
    except Exception as exc:  # anything untyped fails the test
        return ("untyped", f"{type(exc).__name__}: {exc}")


def race_worker(url: str, who: int, plan: list[tuple[int, str]], barrier, out) -> None:
    store, finisher, _, _ = services(url)
    answers = []
    try:
        for msg_id, action in plan:
            barrier.wait(timeout=60)
            answers.append((msg_id, action, _act(finisher, action, msg_id)))
    finally:
        store.dispose()
        out.put((who, answers))


def _race(url: str, plans: list[list[tuple[int, str]]]) -> list:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(plans)), ctx.Queue()
    procs = [ctx.Process(target=race_worker, args=(url, who, plan, barrier, out)) for who, plan in enumerate(plans)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return [a for _, per in sorted(answers) for a in per]


@pytest.mark.slow
def test_racing_settle_and_fail_settle_each_turn_exactly_once(pg_url):
    engine = make_engine(pg_url)
    init_db(engine)
    engine.dispose()
    turns = {pair: _reserve(pg_url, TURNS, str(n)) for n, pair in enumerate(PAIRS)}
    plans: list[list[tuple[int, str]]] = [[], []]
    for pair, ids in turns.items():
        for msg_id in ids:
            for who in (0, 1):
                plans[who].append((msg_id, PAIRS[pair][who]))
    answers = _race(pg_url, plans)
    # settle racing the recovery sweep: the sweep releases the oldest reserved turn
    recover_ids = _reserve(pg_url, TURNS, "recover")
    answers += _race(pg_url, [[(i, "settle_large") for i in recover_ids], [(i, "recover") for i in recover_ids]])

    untyped = [a for a in answers if a[2][0] == "untyped"]
    assert untyped == []
    typed = {a[2][1] for a in answers if a[2][0] == "typed"}
    assert typed <= {"chat_already_settled", "chat_already_failed"}, typed

    engine = make_engine(pg_url)
    snap = SqlStore(engine).snapshot()
    cons = conservation(engine)
    engine.dispose()
    messages = {m.id: m for m in snap.messages}
    rows: dict[int, list] = defaultdict(list)
    for e in snap.ledger:
        if e.chat_message_id is not None:
            rows[e.chat_message_id].append(e)
    bad = []
    for msg_id in [i for ids in turns.values() for i in ids] + recover_ids:
        msg, entries = messages[msg_id], rows[msg_id]
        kinds = [e.entry_type for e in entries]
        net = sum(e.amount for e in entries)
        if msg.status not in (ChatStatus.SETTLED, ChatStatus.FAILED):
            bad.append(f"message {msg_id} is {msg.status}")
        if len(kinds) != len(set(kinds)):
            bad.append(f"message {msg_id}: ledger rows {kinds}")
        if net != -(msg.charged_credits or 0):
            bad.append(f"message {msg_id} {msg.status}: charged {msg.charged_credits}, ledger net {net}")
        if msg.status == ChatStatus.FAILED and msg.charged_credits != 0:
            bad.append(f"message {msg_id} failed but charged {msg.charged_credits}")
    for msg_id, action, answer in answers:  # a success answer is the turn's final state, never a stale one
        if answer[0] == "ok":
            msg = messages[msg_id]
            if (answer[1], answer[2]) != (str(msg.status), msg.charged_credits):
                bad.append(
                    f"message {msg_id}: {action} answered {answer[1:]} but the turn is "
                    f"{msg.status}/{msg.charged_credits}"
                )
    assert bad == []
    assert cons["ok"], cons
    # the races really happened: some loser was told the turn was already closed
    assert "chat_already_settled" in typed and "chat_already_failed" in typed, typed
