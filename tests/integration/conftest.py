"""A lifecycle service over a fresh SQL store (SQLite and PostgreSQL) with fake providers and one user."""

from __future__ import annotations

import pytest

from rivya_core.stores.sql import open_store
from tests.fakes import make_service


@pytest.fixture
def sql_user_env(db_url):
    """(service, clock, providers, store, user with 100 credits) on each database."""
    store = open_store(db_url, create=True)
    svc, clock, providers = make_service(store=store)
    user = svc.create_account("u@example.com", "U", grant=100)
    yield svc, clock, providers, store, user
    store.engine.dispose()
