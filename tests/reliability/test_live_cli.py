"""The live commands given bad input: one clear line, exit 2, nothing written, no secret shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import run_main
from tests.reliability.test_cli import _one_clear_line

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, argv: list[str], cwd: Path, **env: str):
    """The command in process (tests/cli.py), from cwd, with env added."""
    return run_main(module, *argv, cwd=cwd, env=env)


@pytest.mark.parametrize(
    "module,argv",
    [
        ("rivya_core", "serve --port abc"),
        ("rivya_core", "serve --port 0"),
        ("rivya_core", "poll --every 0"),
        ("rivya_core", "poll --every x"),
        ("simulations", "serve-provider --flavor openai --port 9"),
        ("simulations", "serve-provider --flavor fal"),
        ("simulations", "live --flavor fal --tasks 5"),
        ("simulations", "live --flavor fal --tasks 0 --db x.db"),
        ("simulations", "receiver-load --db x.db --tasks 0"),
    ],
)
def test_wrong_arguments(module, argv, tmp_path):
    proc = _run(module, argv.split(), tmp_path)
    _one_clear_line(proc)
    assert proc.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_a_bad_provider_configuration_is_one_line_without_the_secret(tmp_path):
    db = tmp_path / "live.db"
    assert _run("rivya_core", ["init-db", "--db", str(db)], tmp_path).returncode == 0
    config = '[providers.lumen]\napi = "replicate"\ntoken = "r8_do_not_print"\nwebhook_secret = "whsec_x"\n'
    for command in (["serve", "--port", "9"], ["recheck", "1"], ["poll"]):
        proc = _run("rivya_core", [*command, "--db", str(db)], tmp_path, RIVYA_PROVIDERS=config)
        _one_clear_line(proc)
        assert "unknown key(s): webhook_secret" in proc.stderr
        assert "r8_do_not_print" not in proc.stderr + proc.stdout and "whsec_x" not in proc.stderr


def test_serve_provider_never_overwrites_a_config_file(tmp_path):
    out = tmp_path / "providers.toml"
    out.write_text("keep me")
    proc = _run("simulations", ["serve-provider", "--flavor", "fal", "--port", "9", "--config-out", str(out)], tmp_path)
    _one_clear_line(proc)
    assert out.read_text() == "keep me"


def test_live_refuses_a_database_that_holds_tasks(tmp_path):
    from rivya_core.stores.sql import open_store
    from tests.fakes import IMAGE, make_service

    db = tmp_path / "busy.db"
    store = open_store(f"sqlite:///{db}", create=True)
    svc, _clock, _providers = make_service(store=store)
    svc.submit(svc.create_account("a@example.com", "A", grant=100).id, IMAGE)
    store.engine.dispose()
    before = db.read_bytes()
    proc = _run("simulations", ["live", "--flavor", "replicate", "--tasks", "1", "--db", f"sqlite:///{db}"], tmp_path)
    _one_clear_line(proc)
    assert "--force" in proc.stderr and db.read_bytes() == before
