"""A task's callbacks and notifications, and a chat turn's ledger rows, read through the Store
port's public read (`Store.snapshot`), in id order, for tests over any store."""

from __future__ import annotations

from rivya_core.domain import LedgerEntry, Notification, ProviderCallback
from rivya_core.ports import Store


def task_callbacks(store: Store, task_id: int) -> list[ProviderCallback]:
    return sorted((c for c in store.snapshot().callbacks if c.task_id == task_id), key=lambda c: c.id)


def task_notifications(store: Store, task_id: int) -> list[Notification]:
    return sorted((n for n in store.snapshot().notifications if n.task_id == task_id), key=lambda n: n.id)


def message_entries(store: Store, chat_message_id: int) -> list[LedgerEntry]:
    return sorted((e for e in store.snapshot().ledger if e.chat_message_id == chat_message_id), key=lambda e: e.id)
