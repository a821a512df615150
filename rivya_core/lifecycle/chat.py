"""Step 8: chat turns: reserve an estimate, settle on real usage, refund the difference."""

from __future__ import annotations

from typing import Any

from ..domain import (
    ChatMessage,
    ChatSession,
    ChatStatus,
    EntryType,
    InsufficientCredits,
    NotFound,
    TurnClosed,
    ValidationError,
)
from ..ports import RetryableConflict, Tx
from ..validation import validate_chat_model
from .reads import Reads


class Chat(Reads):
    def open_chat(self, user_id: int, model: str, title: str = "New chat") -> ChatSession:
        validate_chat_model(self.catalog, model)

        def step(tx: Tx) -> ChatSession:
            if tx.get_account(user_id) is None:
                raise NotFound(f"no account {user_id}")
            return tx.add_session(user_id, model, str(title)[:300] or "New chat", self._now())

        return self._tx(step)

    def chat_turn_reserve(
        self, session_id: int, content: str, prompt_tokens: int, max_output_tokens: int
    ) -> ChatMessage:
        for name, value in (("prompt_tokens", prompt_tokens), ("max_output_tokens", max_output_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"{name} must be a non-negative whole number", code="param_invalid")

        def session_of(tx: Tx) -> ChatSession:
            session = tx.get_session(session_id)
            if session is None:
                raise NotFound(f"no chat session {session_id}")
            return session

        session = self._tx(session_of)
        spec = validate_chat_model(self.catalog, session.model)
        estimate = self.policy.chat_reservation(spec.chat_credits(prompt_tokens, max_output_tokens))

        def step(tx: Tx) -> ChatMessage:
            msg = tx.add_message(
                ChatMessage(
                    id=0,
                    session_id=session_id,
                    role="user",
                    content=str(content)[:20000],
                    created_at=self._now(),
                    prompt_tokens=prompt_tokens,
                    reserved_credits=estimate,
                    status=ChatStatus.RESERVED,
                )
            )
            tx.post(
                session.user_id,
                EntryType.CHAT_RESERVE,
                -estimate,
                f"chat_reserve:msg:{msg.id}",
                self._now(),
                chat_message_id=msg.id,
                note=f"reserve for {session.model}",
            )
            return self._message_in(tx, msg.id)

        try:
            return self._tx(step)
        except InsufficientCredits as exc:
            self._tx(
                lambda tx: tx.add_message(
                    ChatMessage(
                        id=0,
                        session_id=session_id,
                        role="user",
                        content=str(content)[:20000],
                        created_at=self._now(),
                        prompt_tokens=prompt_tokens,
                        reserved_credits=0,
                        charged_credits=0,
                        status=ChatStatus.REFUSED,
                    )
                )
            )
            raise InsufficientCredits(f"this turn needs up to {estimate} credits: {exc.message}") from None

    def chat_turn_settle(self, message_id: int, prompt_tokens: int, completion_tokens: int) -> ChatMessage:
        """Settle a reserved turn on its real usage, exactly once: the row is locked and
        moved compare-and-set. A replay with the same usage returns the settled turn; any
        other action on a closed turn is refused (TurnClosed) and changes nothing."""

        def step(tx: Tx) -> ChatMessage:
            msg, session = self._reserved_message(tx, message_id)
            if msg.status != ChatStatus.RESERVED:
                if msg.status == ChatStatus.SETTLED and (msg.prompt_tokens, msg.completion_tokens) == (
                    prompt_tokens,
                    completion_tokens,
                ):
                    return msg
                raise TurnClosed(msg.id, msg.status)
            spec = validate_chat_model(self.catalog, session.model)
            actual = spec.chat_credits(prompt_tokens, completion_tokens)
            charged, overrun = self.policy.chat_settlement(actual, msg.reserved_credits)
            if overrun:
                try:
                    tx.post(
                        session.user_id,
                        EntryType.CHAT_CHARGE,
                        -overrun,
                        f"chat_charge:msg:{msg.id}",
                        self._now(),
                        chat_message_id=msg.id,
                        note="usage over reservation",
                    )
                    charged += overrun
                except InsufficientCredits:
                    pass  # the overrun cannot be covered: the charge stays at the reservation
            self._chat_refund(tx, session.user_id, msg, msg.reserved_credits - charged, "unused reservation")
            self._close_turn(
                tx,
                msg.id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                charged_credits=charged,
                status=ChatStatus.SETTLED,
            )
            return self._message_in(tx, msg.id)

        return self._tx(step)

    def chat_turn_fail(self, message_id: int, reason: str = "chat turn failed") -> ChatMessage:
        """Fail a reserved turn and release its whole reservation, exactly once. A replay
        returns the failed turn; a settled turn is refused (TurnClosed)."""

        def step(tx: Tx) -> ChatMessage:
            msg, session = self._reserved_message(tx, message_id)
            if msg.status != ChatStatus.RESERVED:
                if msg.status == ChatStatus.FAILED:
                    return msg
                raise TurnClosed(msg.id, msg.status)
            self._chat_refund(tx, session.user_id, msg, msg.reserved_credits, str(reason)[:200])
            self._close_turn(tx, msg.id, charged_credits=0, status=ChatStatus.FAILED)
            return self._message_in(tx, msg.id)

        return self._tx(step)

    def _reserved_message(self, tx: Tx, message_id: int) -> tuple[ChatMessage, ChatSession]:
        msg = self._message_in(tx, message_id, for_update=True)
        return msg, self._session_in(tx, msg.session_id)

    def _close_turn(self, tx: Tx, message_id: int, **fields: Any) -> None:
        if not tx.update_message(message_id, [ChatStatus.RESERVED], settled_at=self._now(), **fields):
            raise RetryableConflict(f"chat message {message_id} moved under a locked read")  # re-run: rolls back

    def _chat_refund(self, tx: Tx, user_id: int, msg: ChatMessage, amount: int, note: str) -> None:
        if amount > 0:
            tx.post(
                user_id,
                EntryType.CHAT_REFUND,
                amount,
                f"chat_refund:msg:{msg.id}",
                self._now(),
                chat_message_id=msg.id,
                note=note,
            )
