"""Every CLI command given wrong arguments, a missing database or a database
without the schema prints one clear line (no traceback) and exits non-zero;
and `python -m rivya_core recover` repairs a crashed database idempotently.

The commands run in process (tests/cli.py); `python -m` itself is checked once per package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from rivya_core.audit import audit
from rivya_core.stores.db import make_engine
from rivya_core.stores.sql import open_store
from rivya_core.validation import validate
from tests.cli import run_main
from tests.fakes import IMAGE, make_service

CORE = [
    "init-db",
    "audit",
    "diagnose 1",
    "refund 1 --operator o --reason r",
    "recheck 1",
    "mark-failed 1 --operator o --reason r",
    "recover",
    "poll",
]
SIMS = ["run chaos --tasks 5", "replay", "compare chaos --policy a.toml --policy b.toml", "chaos --seeds 1"]


def _run(*args: str):
    assert args[0] == "-m"
    return run_main(*args[1:])


def _one_clear_line(proc) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("usage:")]
    assert len(lines) == 1 and "error" in lines[0], proc.stderr  # argparse may add its usage line


@pytest.mark.parametrize(
    "module,argv",
    [
        ("rivya_core", ""),
        ("rivya_core", "nonsense"),
        ("rivya_core", "diagnose notanumber"),
        ("rivya_core", "audit --db"),
        ("rivya_core", "refund 1"),
        ("rivya_core", "recover --grace x"),
        ("simulations", ""),
        ("simulations", "nonsense"),
        ("simulations", "chaos --seeds 0"),
        *[("simulations", argv) for argv in ("run", "chaos", "chaos --seeds x", "compare chaos")],
        ("simulations", "run no-such-scenario --db sqlite:///x.db"),
    ],
)
def test_wrong_arguments(module, argv, tmp_path):
    _one_clear_line(run_main(module, *argv.split(), cwd=tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("module,argv", [("rivya_core", "nonsense"), ("simulations", "chaos --seeds 0")])
def test_the_process_exits_non_zero_with_one_line(module, argv, tmp_path):
    """The same through `python -m` in a fresh interpreter, from another directory."""
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv.split()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert proc.returncode == 2
    _one_clear_line(proc)


@pytest.mark.parametrize("command", [c for c in CORE if c != "init-db"])
def test_core_missing_database_and_missing_schema(command, tmp_path, pg_server_url):
    empty = tmp_path / "empty.db"
    create_engine(f"sqlite:///{empty}").connect().close()
    for url in (
        str(tmp_path / "absent.db"),
        f"sqlite:///{empty}",
        "postgresql://nobody@127.0.0.1:1/none",
        "postgresql+psycopg://postgres@127.0.0.1:5432/rivya_no_such_db",
        "mysql+nodriver://x",
    ):
        _one_clear_line(_run("-m", "rivya_core", *command.split(), "--db", url))


def test_sims_replay_of_missing_or_empty_database(tmp_path):
    empty = tmp_path / "empty.db"
    create_engine(f"sqlite:///{empty}").connect().close()
    for target in (f"sqlite:///{empty}", f"sqlite:///{tmp_path / 'absent.db'}", "deadbeef"):
        _one_clear_line(_run("-m", "simulations", "replay", target))


def test_recover_command_repairs_a_crashed_database(db_url):
    svc, clock, providers = make_service(store=open_store(db_url, create=True))
    user = svc.create_account("c@example.com", "C", grant=50)
    done = svc.submit(user.id, IMAGE)
    # crashes: charged but never submitted; created but never charged
    with svc.store.begin() as tx:
        tx.update_task(done.id, None, status="WAITING", upstream_task_id=None, submitted_at=None)
    svc._tx(lambda tx: svc._create(tx, user.id, validate(svc.catalog, {**IMAGE, "prompt": "never charged"}), 2, None))
    svc.store.dispose()
    first = _run("-m", "rivya_core", "recover", "--db", db_url, "--grace", "0")
    assert first.returncode == 0, first.stderr
    assert "changed 2" in first.stdout
    second = _run("-m", "rivya_core", "recover", "--db", db_url, "--grace", "0")
    assert second.returncode == 0 and "changed 0" in second.stdout
    engine = make_engine(db_url)
    assert audit(engine).ok
    assert _run("-m", "rivya_core", "audit", "--db", db_url).returncode == 0
    engine.dispose()
