"""No command writes over a file or database that already holds data unless
given --force: the refusal is one line, exit 2, and the target is unchanged."""

from __future__ import annotations

import sqlite3

import pytest

from rivya_core.__main__ import main as core_main
from rivya_core.targets import occupied
from simulations.__main__ import main as sim_main

TEXT = b"root:x:0:0:root:/root:/bin/bash\n"


def _foreign_db(path) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()
    return path.read_bytes()


def _refused(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--make-db", "{path}", "--tasks", "20"],
        ["run", "chaos", "--db", "sqlite:///{path}", "--tasks", "5"],
    ],
)
@pytest.mark.parametrize("kind", ["text", "sqlite"])
def test_simulation_writers_refuse_a_target_that_holds_data(argv, kind, tmp_path, capsys):
    path = tmp_path / "target"
    if kind == "text":
        path.write_bytes(TEXT)
        before = TEXT
    else:
        before = _foreign_db(path)
    err = _refused(capsys, sim_main([a.replace("{path}", str(path)) for a in argv]))
    assert "--force" in err and str(path) in err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_force_replaces_a_sqlite_file(tmp_path, capsys):
    path = tmp_path / "old.db"
    path.write_bytes(TEXT)
    assert sim_main(["bench", "--make-db", str(path), "--tasks", "20", "--force"]) == 0
    assert path.read_bytes().startswith(b"SQLite format 3\x00")
    capsys.readouterr()
    _foreign_db(tmp_path / "other.db")
    assert sim_main(["run", "chaos", "--db", f"sqlite:///{tmp_path / 'other.db'}", "--tasks", "5", "--force"]) == 0
    conn = sqlite3.connect(tmp_path / "other.db")
    assert "notes" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_fresh_targets_are_accepted(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.touch()
    assert occupied(f"sqlite:///{empty}") is None and occupied(f"sqlite:///{tmp_path / 'missing.db'}") is None
    assert core_main(["init-db", "--db", f"sqlite:///{empty}"]) == 0
    assert occupied(f"sqlite:///{empty}") is None  # only the schema version row
    assert sim_main(["run", "chaos", "--db", f"sqlite:///{empty}", "--tasks", "5"]) == 0
    assert occupied(f"sqlite:///{empty}") is not None
    assert core_main(["init-db", "--db", f"sqlite:///{empty}"]) == 0  # an upgrade of our own database


def test_init_db_refuses_a_database_of_something_else(tmp_path, capsys):
    path = tmp_path / "foreign.db"
    before = _foreign_db(path)
    err = _refused(capsys, core_main(["init-db", "--db", f"sqlite:///{path}"]))
    assert "--force" in err and path.read_bytes() == before
    text_file = tmp_path / "passwd"
    text_file.write_bytes(TEXT)
    _refused(capsys, core_main(["init-db", "--db", f"sqlite:///{text_file}", "--force"]))
    assert text_file.read_bytes() == TEXT
    assert core_main(["init-db", "--db", f"sqlite:///{path}", "--force"]) == 0  # adds its tables, drops nothing
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
    conn.close()


def test_run_on_postgresql_with_data_is_refused_even_with_force(pg_url, capsys):
    from sqlalchemy import create_engine, text

    eng = create_engine(pg_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE notes (id serial primary key, body text)"))
        conn.execute(text("INSERT INTO notes (body) VALUES ('keep me')"))
    for extra in ([], ["--force"]):
        err = _refused(capsys, sim_main(["run", "chaos", "--db", pg_url, "--tasks", "5", *extra]))
        assert "notes" in err
    with eng.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")).scalar()
            == 1
        )
    eng.dispose()
