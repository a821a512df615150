"""pyproject.toml names the same requirements that requirements*.txt install.

The README's commands and .ci/run install from requirements*.txt; pyproject.toml's [project] lists
them again for tools that read it. The two must not drift apart.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements(name: str) -> list[str]:
    lines = []
    for raw in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            lines.append(line.replace(" ", "").lower())
    return lines


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_dependencies_are_requirements_txt():
    assert [d.replace(" ", "").lower() for d in _project()["dependencies"]] == _requirements("requirements.txt")


def test_dev_extra_is_requirements_dev_txt():
    dev = _project()["optional-dependencies"]["dev"]
    assert [d.replace(" ", "").lower() for d in dev] == _requirements("requirements-dev.txt")


def test_requirements_dev_installs_the_runtime_too():
    first = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first.strip() == "-r requirements.txt"


def test_python_version_is_the_one_the_code_needs():
    assert _project()["requires-python"] == ">=3.11"  # tomllib, dataclass slots/kw_only, zip(strict=)
