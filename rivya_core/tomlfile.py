"""Reading the project's TOML files (catalogue, policies, scenarios) with one typed error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .domain import RivyaError


def read_text(path: str | Path, error: type[RivyaError], what: str) -> str:
    """The file's text, or `error` naming the file: missing, unreadable, not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None


def parse(text: str, source: str, error: type[RivyaError]) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML ({exc})") from None


def load(path: str | Path, error: type[RivyaError], what: str) -> dict[str, Any]:
    """A TOML file as a dict, or `error` saying which file and why."""
    return parse(read_text(path, error, what), str(path), error)
