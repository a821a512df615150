"""init-db on a database an older version made: the columns added since appear, the rows
already there survive, and facts the older version kept another way are carried over."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import MetaData, Table, inspect, select, text

from rivya_core.audit import audit
from rivya_core.stores import db, schema
from rivya_core.stores.sql import open_store


def _version_1(engine) -> None:
    """The schema as version 1 shipped it: credit_ledger without `support`, support refunds
    marked by a note starting with "support:"."""
    old = MetaData()
    for table in schema.metadata.sorted_tables:
        cols = [c._copy() for c in table.columns if not (table.name == "credit_ledger" and c.name == "support")]
        Table(table.name, old, *cols)
    old.create_all(engine)


def test_init_db_adds_the_support_column_and_carries_over_support_refunds(db_url):
    engine = db.make_engine(db_url)
    try:
        _version_1(engine)
        at = datetime(2026, 4, 1, 12, 0, 0)
        with engine.begin() as conn:
            conn.execute(
                schema.account.insert().values(id=1, email="a@example.com", name="A", balance=20, created_at=at)
            )
            conn.execute(
                text(
                    "INSERT INTO credit_ledger (id, user_id, entry_type, amount, balance_after, "
                    "idempotency_key, created_at, note) VALUES "
                    "(1, 1, 'grant', 10, 10, 'g', :at, 'sign-up grant'), "
                    "(2, 1, 'refund', 10, 20, 'r', :at, 'support: kim: goodwill')"
                ),
                {"at": at},
            )
        assert "support" not in {c["name"] for c in inspect(engine).get_columns("credit_ledger")}
        db.init_db(engine)
        db.init_db(engine)  # idempotent
        with engine.connect() as conn:
            got = conn.execute(
                select(schema.credit_ledger.c.id, schema.credit_ledger.c.support).order_by(schema.credit_ledger.c.id)
            ).all()
        assert [(i, bool(s)) for i, s in got] == [(1, False), (2, True)]
        assert audit(engine, now=at).ok  # the migrated database reads like a current one
    finally:
        engine.dispose()


def test_reading_an_older_database_names_the_missing_columns_and_the_upgrade(db_url):
    engine = db.make_engine(db_url)
    try:
        _version_1(engine)
    finally:
        engine.dispose()
    try:
        db.open_reader(db_url)
    except db.SchemaMissing as exc:
        assert "credit_ledger.support" in str(exc) and "init-db" in str(exc)
    else:
        raise AssertionError("an older database was read as if it were current")
    upgraded = open_store(db_url, create=True)  # what init-db does
    upgraded.engine.dispose()
    db.open_reader(db_url).dispose()
