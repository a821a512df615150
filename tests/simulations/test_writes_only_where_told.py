"""`run`, `chaos` and `compare` write only where they were told (or into temporary folders they
remove): nothing appears under the checkout's data/ nor in the runs folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from simulations import runner
from simulations.__main__ import main

DATA = Path(__file__).resolve().parents[2] / "data"


def test_run_chaos_and_compare_leave_no_files_behind(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("RIVYA_RUNS_DIR", str(runs))
    monkeypatch.setattr(runner, "_runs_dir", lambda: runs, raising=False)  # where fingerprints once went
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # temporary folders must be gone afterwards
    before = set(DATA.rglob("*"))
    db = tmp_path / "run.db"
    assert main(["run", "lost_callbacks", "--db", f"sqlite:///{db}", "--tasks", "30"]) == 0
    assert main(["chaos", "--seeds", "2", "--tasks", "20", "--workers", "0"]) == 0
    assert (
        main(
            [
                "compare",
                "baseline",
                "--policy",
                "data/policies/default.toml",
                "--policy",
                "data/policies/premium_prices.toml",
                "--replications",
                "2",
                "--tasks",
                "20",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert sorted(p.name for p in runs.iterdir()) == []
    assert sorted(p.name for p in scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db", "runs", "tmp"]
    assert sorted(map(str, set(DATA.rglob("*")) - before)) == []
