"""Row builders for read-side tests: Core inserts straight into the contract tables.

`Rows` keeps ledger running sums and account balances consistent unless told
otherwise, so a test crafts exactly the one defect it is about.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import CheckConstraint, MetaData, create_engine, event, insert, update

from rivya_core.stores import schema as s

T0 = datetime(2026, 4, 1, 12, 0, 0)


def make_engine(url: str, *, checks: bool = True):
    """An engine over a fresh contract schema. checks=False drops CHECK constraints,
    as in a database imported from elsewhere that may hold negative balances."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":  # test data need not survive a power cut: skip the fsyncs
        event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA synchronous=OFF"))
    md = s.metadata
    if not checks:
        md = MetaData()
        for table in s.metadata.sorted_tables:
            copy = table.to_metadata(md)
            for c in [c for c in copy.constraints if isinstance(c, CheckConstraint)]:
                copy.constraints.discard(c)
    md.create_all(engine)
    return engine


class Rows:
    def __init__(self, engine):
        self.engine = engine
        self.balances: dict[int, int] = {}
        self._n = 0

    def _insert(self, table, **values) -> int:
        with self.engine.begin() as conn:
            return conn.execute(insert(table).values(**values)).inserted_primary_key[0]

    def account(self, email="ann@example.com", name="Ann", at=T0) -> int:
        uid = self._insert(s.account, email=email, name=name, created_at=at, balance=0)
        self.balances[uid] = 0
        return uid

    def ledger(
        self,
        user_id,
        entry_type,
        amount,
        *,
        task_id=None,
        msg_id=None,
        key=None,
        at=T0,
        note=None,
        balance_after=None,
        touch_account=True,
        support=False,
    ) -> int:
        self._n += 1
        new = self.balances.get(user_id, 0) + amount
        self.balances[user_id] = new
        lid = self._insert(
            s.credit_ledger,
            user_id=user_id,
            entry_type=entry_type,
            amount=amount,
            balance_after=new if balance_after is None else balance_after,
            task_id=task_id,
            chat_message_id=msg_id,
            idempotency_key=key or f"k{self._n}:{entry_type}",
            created_at=at,
            note=note,
            support=support,
        )
        if touch_account:
            with self.engine.begin() as conn:
                conn.execute(update(s.account).where(s.account.c.id == user_id).values(balance=new))
        return lid

    def grant(self, user_id, amount=1000, at=T0) -> int:
        return self.ledger(user_id, "grant", amount, at=at, note="top-up")

    def task(
        self,
        user_id,
        *,
        status="SUCCESS",
        model="img-basic",
        category="image",
        prompt="a red fox",
        credits=10,
        provider="alpha",
        upstream=None,
        urls=None,
        error_code=None,
        failure_class=None,
        chat_message_id=None,
        at=T0,
        submitted_at=None,
        finished_at=None,
    ) -> int:
        return self._insert(
            s.ai_task,
            user_id=user_id,
            model=model,
            category=category,
            prompt=prompt,
            params={},
            status=status,
            billing_type="per_task",
            reserved_credits=credits,
            provider=provider,
            upstream_task_id=upstream,
            result_urls=urls,
            error_code=error_code,
            error_message=error_code and f"failed: {error_code}",
            failure_class=failure_class,
            chat_message_id=chat_message_id,
            created_at=at,
            submitted_at=submitted_at,
            finished_at=finished_at,
            check_attempts=0,
        )

    def event(self, task_id, kind, at=T0, **detail) -> int:
        return self._insert(s.task_event, task_id=task_id, at=at, kind=kind, detail=detail)

    def notify(self, user_id, task_id, kind, at=T0, read_at=None) -> int:
        return self._insert(
            s.notification,
            user_id=user_id,
            task_id=task_id,
            kind=kind,
            title=kind,
            body=f"{kind} for task {task_id}",
            created_at=at,
            read_at=read_at,
        )

    def callback(
        self, task_id, upstream, outcome="applied", provider="alpha", at=T0, webhook_id=None, valid=True, body="{}"
    ) -> int:
        self._n += 1
        return self._insert(
            s.provider_callback,
            provider=provider,
            webhook_id=webhook_id or f"msg_{self._n}",
            upstream_task_id=upstream,
            task_id=task_id,
            received_at=at,
            signature_valid=valid,
            outcome=outcome,
            body=body,
        )

    def session(self, user_id, model="chat-small", at=T0) -> int:
        return self._insert(s.chat_session, user_id=user_id, model=model, title="chat", created_at=at)

    def message(self, session_id, *, reserved=12, charged=None, status="reserved", at=T0, settled_at=None) -> int:
        return self._insert(
            s.chat_message,
            session_id=session_id,
            role="user",
            content="hello",
            prompt_tokens=10,
            completion_tokens=None if charged is None else 5,
            reserved_credits=reserved,
            charged_credits=charged,
            status=status,
            created_at=at,
            settled_at=settled_at,
        )

    # --- whole stories, consistent unless a test breaks them -----------------------------

    def success(self, user_id, *, credits=10, at=T0, notify=True, **kw) -> int:
        tid = self.task(
            user_id,
            status="SUCCESS",
            credits=credits,
            at=at,
            submitted_at=at + timedelta(seconds=1),
            finished_at=at + timedelta(seconds=60),
            urls=kw.pop("urls", None) or ["https://cdn.example/r.png"],
            upstream=kw.pop("upstream", None) or f"up-{self._n + 1}-{at.timestamp():.0f}",
            **kw,
        )
        self.ledger(user_id, "consume", -credits, task_id=tid, key=f"consume:task:{tid}", at=at)
        if notify:
            self.notify(user_id, tid, "generation_success", at=at + timedelta(seconds=60))
        return tid

    def failed(
        self,
        user_id,
        *,
        failure_class="provider",
        error_code="provider_error",
        credits=10,
        at=T0,
        refund=True,
        notify=True,
        **kw,
    ) -> int:
        tid = self.task(
            user_id,
            status="FAILED",
            credits=credits,
            at=at,
            submitted_at=at + timedelta(seconds=1),
            finished_at=at + timedelta(seconds=60),
            error_code=error_code,
            failure_class=failure_class,
            upstream=kw.pop("upstream", None) or f"upf-{self._n + 1}",
            **kw,
        )
        self.ledger(user_id, "consume", -credits, task_id=tid, key=f"consume:task:{tid}", at=at)
        if refund:
            self.ledger(
                user_id, "refund", credits, task_id=tid, key=f"refund:task:{tid}", at=at + timedelta(seconds=60)
            )
        if notify:
            self.notify(user_id, tid, "generation_failed", at=at + timedelta(seconds=60))
        return tid

    def broke(self, user_id, *, at=T0, notify=True, **kw) -> int:
        tid = self.task(
            user_id,
            status="FAILED",
            error_code="insufficient_credits",
            failure_class="billing",
            at=at,
            finished_at=at,
            **kw,
        )
        if notify:
            self.notify(user_id, tid, "insufficient_credits", at=at)
        return tid

    def chat_settled(self, user_id, *, reserved=12, charged=8, at=T0) -> int:
        sid = self.session(user_id, at=at)
        mid = self.message(
            sid, reserved=reserved, charged=charged, status="settled", at=at, settled_at=at + timedelta(seconds=5)
        )
        self.ledger(user_id, "chat_reserve", -reserved, msg_id=mid, key=f"chat_reserve:msg:{mid}", at=at)
        if reserved > charged:
            self.ledger(
                user_id,
                "chat_refund",
                reserved - charged,
                msg_id=mid,
                key=f"chat_refund:msg:{mid}",
                at=at + timedelta(seconds=5),
            )
        return mid
