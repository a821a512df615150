"""The state machine of the guide: four states, four moves, terminal states absorb."""

from __future__ import annotations

import itertools

import pytest

from rivya_core.domain import (
    ACTIVE,
    ALLOWED_MOVES,
    TERMINAL,
    InsufficientCredits,
    TaskStatus,
    balance_after,
    sources_of,
)

S = TaskStatus


def test_exactly_the_four_moves_of_the_guide():
    allowed = {(a, b) for a, b in itertools.product(S, S) if b in ALLOWED_MOVES[a]}
    assert allowed == {
        (S.WAITING, S.GENERATING),
        (S.WAITING, S.FAILED),
        (S.GENERATING, S.SUCCESS),
        (S.GENERATING, S.FAILED),
    }


def test_terminal_states_absorb_everything():
    for terminal, target in itertools.product(TERMINAL, S):
        assert target not in ALLOWED_MOVES[terminal]


def test_sources_are_what_the_lifecycle_compare_and_sets_on():
    assert sources_of(S.GENERATING) == {S.WAITING}
    assert sources_of(S.SUCCESS) == {S.GENERATING}
    assert sources_of(S.FAILED) == ACTIVE
    assert sources_of(S.WAITING) == frozenset()


def test_a_ledger_row_may_empty_an_account_but_never_overdraw_it():
    assert balance_after(55, -55) == 0
    assert balance_after(0, 30) == 30
    with pytest.raises(InsufficientCredits) as err:
        balance_after(55, -56)
    assert "short by 1" in err.value.message and err.value.code == "insufficient_credits"


def test_support_actions_are_one_enum_and_refuse_an_unknown_name():
    from rivya_core.domain import SupportAction, ValidationError

    assert [a.value for a in SupportAction] == ["recheck", "refund", "mark-failed"]
    assert SupportAction.parse("mark-failed") is SupportAction.MARK_FAILED
    assert SupportAction.MARK_FAILED.event_name == "mark_failed" and SupportAction.MARK_FAILED.words == "mark failed"
    with pytest.raises(ValidationError) as err:
        SupportAction.parse("delete")
    assert err.value.code == "support_action_unknown"
