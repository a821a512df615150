"""Chat credit figures: the one definition of what users were charged for chat.

A chat turn reserves an estimate before it runs (`chat_reserve`), then settles on
real usage: the unused part comes back (`chat_refund`), or, where the policy allows
an overrun, the excess is charged (`chat_charge`). What users were finally charged
for chat is therefore reservations + overrun charges − refunds, which equals the sum
of the messages' `charged_credits` once every turn has settled (a turn still
holding its reservation counts at what it holds). Reservations are a separate
figure: money held for a moment, not money spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .domain import EntryType


@dataclass(frozen=True)
class ChatFigures:
    reserved: int  # held before the turns ran (gross reservations)
    overrun: int  # charged beyond a reservation (policies allowing overrun)
    refunded: int  # unused reservations returned at settlement

    @property
    def charged(self) -> int:
        """What users were finally charged for chat."""
        return self.reserved + self.overrun - self.refunded


def chat_figures(by_type: Mapping[str, int]) -> ChatFigures:
    """ChatFigures from signed ledger sums per entry type (audit.ledger_sums, or a run's counters)."""
    of = lambda t: int(by_type.get(t.value, 0) or 0)  # noqa: E731
    return ChatFigures(
        reserved=-of(EntryType.CHAT_RESERVE), overrun=-of(EntryType.CHAT_CHARGE), refunded=of(EntryType.CHAT_REFUND)
    )
