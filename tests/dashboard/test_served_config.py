"""The shipped Streamlit configuration serves the dashboard on this machine only (open mode answers
only local connections anyway); serving it to a team is a deliberate choice docs/access.md spells out, and the README points to."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_config_binds_localhost_only():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"


def test_the_docs_say_how_to_serve_a_team_behind_the_login():
    doc = (ROOT / "docs" / "access.md").read_text(encoding="utf-8")
    assert "--server.address 0.0.0.0" in doc
    team = doc[doc.index("--server.address 0.0.0.0") - 600 : doc.index("--server.address 0.0.0.0") + 600]
    assert "RIVYA_OPERATORS" in team and "TLS" in team
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "this machine only" in readme and "(docs/access.md)" in readme
