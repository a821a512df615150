"""Shared fixtures: database URLs for SQLite and PostgreSQL.

PostgreSQL tests use a fresh database per test session (one per xdist worker)
on 127.0.0.1:5432 and skip, saying so, when no server answers there; with CI set
(as `.ci/run` does) a missing server fails them instead.
Set RIVYA_TEST_PG to point at another server (its maintenance database).
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("RIVYA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reason() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("select 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any failure means: no usable server here
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"


# The fast loop (`pytest -m "not slow"`) leaves out every test that needs a browser or PostgreSQL;
# these are marked here, from what the test uses, rather than one by one. Subprocess-heavy and
# long tests carry `@pytest.mark.slow` (or a module's `pytestmark`) themselves.
PG_FIXTURES = frozenset({"pg_server_url", "pg_url", "pg_seeded"})
PG_PARAMS = frozenset({"postgresql", "postgres"})


def needs_postgres(item: pytest.Item) -> bool:
    """A test that uses a PostgreSQL fixture, or the PostgreSQL case of a store-parametrized fixture
    (`db_url[postgresql]`, the contract suite's `postgresql`, ...)."""
    if PG_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v in PG_PARAMS for v in callspec.params.values())


BROWSER_FIXTURES = frozenset({"browser", "seeded_server"})  # tests/dashboard/conftest.py: Chromium, a served app


def needs_browser(item: pytest.Item) -> bool:
    return item.get_closest_marker("browser") is not None or bool(
        BROWSER_FIXTURES & set(getattr(item, "fixturenames", ()))
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if needs_browser(item) or needs_postgres(item):
            item.add_marker(pytest.mark.slow)


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip a test whose service is missing on a developer machine; fail it in CI, where nothing may skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a missing service fails the run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server_url():
    """URL of a database created for this test session, dropped afterwards."""
    reason = _pg_reason()
    if reason:
        skip_or_fail_in_ci(reason)
    name = f"rivya_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url):
    """A PostgreSQL URL whose database holds no tables when the test starts."""
    eng = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()
    return pg_server_url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'rivya.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rivya.db'}"
    return request.getfixturevalue("pg_url")
