"""Opening a page never writes: not the database it reads (bytes and mtime unchanged, no
`audit_run` row from an audit run on load), not an empty file named by ?db=, not a missing one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard.conftest import audit_runs

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py") if not p.name.startswith("_"))


def _state(path: Path) -> tuple[bytes, int, bytes]:
    """The file's bytes and mtime, and what its write-ahead log holds (a WAL database takes
    writes there first; a reader may leave an empty log behind, never a written one)."""
    wal = Path(f"{path}-wal")
    return path.read_bytes(), path.stat().st_mtime_ns, wal.read_bytes() if wal.exists() else b""


@pytest.mark.parametrize("page", PAGES)
def test_opening_a_page_leaves_the_database_as_it_was(open_page, seeded_url, page):
    path = Path(seeded_url.removeprefix("sqlite:///"))
    before = _state(path)
    at = open_page(seeded_url, page)
    assert not at.exception, page
    assert _state(path) == before, f"{page} changed the database it reads"
    assert audit_runs(seeded_url) == 0


def test_db_param_naming_an_empty_or_missing_file_writes_nothing(open_page, seeded_url, tmp_path):
    empty, missing = tmp_path / "empty.db", tmp_path / "missing.db"
    empty.touch()
    for target in (empty, missing):
        for page in PAGES:
            at = open_page(seeded_url, page, db=f"sqlite:///{target}")
            assert not at.exception, page
    assert empty.read_bytes() == b"" and not missing.exists()
