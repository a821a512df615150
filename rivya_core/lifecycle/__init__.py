"""The lifecycle service: the guide's steps, in the guide's order.

submit:   validate -> ai_task WAITING -> spend credits -> provider submit -> GENERATING
learn:    signed callback (verify, record, apply | defer | ignore) or polling
finish:   SUCCESS with URLs, or FAILED with its class and a refund when the
          policy reverses that class; an outcome notification either way
chat:     reserve an estimate, settle on real usage, refund the difference

Each step is one unit of work on the Store; a step that loses a race
(RetryableConflict) is re-run from a fresh read. Ledger writes carry
idempotency keys derived from the task and the step, and task moves are
compare-and-set, so a replayed step never charges, refunds or notifies twice.

One module per job, over the shared base (`base`: the unit-of-work loop, events,
idempotency keys): `reads`, `finishing` (settle, fail, refund, notify), `callbacks`
(and parking), `outputs` (a success's outputs copied into our result store), `submit`, `polling`, `accounts`, `chat`, `recovery`, `support`.
Each job is a class over the jobs it calls; `LifecycleService` joins them.
"""

from __future__ import annotations

from .accounts import Accounts
from .base import MAX_CALLBACK_BODY, STORED_BODY_LIMIT, consume_key, notify_key, refund_key
from .callbacks import CallbackResult
from .polling import PollReport
from .recovery import RecoveryReport
from .support import Support

__all__ = [
    "MAX_CALLBACK_BODY",
    "STORED_BODY_LIMIT",
    "CallbackResult",
    "LifecycleService",
    "PollReport",
    "RecoveryReport",
    "consume_key",
    "notify_key",
    "refund_key",
]


class LifecycleService(Accounts, Support):
    """The whole lifecycle over a Store, a Clock and the providers (see the module doc)."""
