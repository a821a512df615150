"""Accounts: sign-up with its grant, and credit grants."""

from __future__ import annotations

import uuid

from .. import limits
from ..domain import EntryType, LedgerEntry, NotFound, ValidationError
from ..ports import Tx
from .reads import Reads


class Accounts(Reads):
    def create_account(self, email: str, name: str, grant: int = 0):
        if not isinstance(email, str) or not email.strip() or len(email) > 320:
            raise ValidationError(
                "an account needs a non-empty e-mail address of at most 320 characters", code="email_invalid"
            )
        if not isinstance(name, str) or len(name) > 200:
            raise ValidationError("an account name is text of at most 200 characters", code="name_invalid")
        if not isinstance(grant, int) or not limits.LIMITS["whole_credits"].ok(grant):
            raise ValidationError(
                f"a sign-up grant must be {limits.describe('whole_credits')} credits", code="grant_invalid"
            )

        def step(tx: Tx):
            if tx.account_by_email(email) is not None:
                raise ValidationError(f"an account with email {email!r} already exists", code="account_exists")
            acct = tx.add_account(email, name, self._now())
            if grant:
                tx.post(acct.id, EntryType.GRANT, grant, f"grant:signup:{acct.id}", self._now(), note="sign-up grant")
            return tx.get_account(acct.id)

        return self._tx(step)

    def grant(self, user_id: int, amount: int, note: str = "top-up", key: str | None = None) -> LedgerEntry:
        if not isinstance(amount, int) or amount == 0 or not limits.LIMITS["whole_credits"].ok(amount):
            raise ValidationError(
                f"a grant must be {limits.describe('whole_credits')} credits, not 0", code="grant_invalid"
            )

        def step(tx: Tx) -> LedgerEntry:
            if tx.get_account(user_id) is None:
                raise NotFound(f"no account {user_id}")
            k = key or f"grant:{user_id}:{uuid.uuid4().hex}"  # pass a key to make a grant replayable
            return tx.post(user_id, EntryType.GRANT, amount, k, self._now(), note=note).entry

        return self._tx(step)
