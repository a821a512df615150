"""The README and docs/ stay true to the repository.

Every relative link in README.md, BENCHMARKS.md and docs/*.md resolves to a file (and its
#anchor to a heading of that file), every repository path and `rivya_core.` / `simulations.` name
written in inline code exists, every page of docs/ is linked from the README, and the README stays
short: under 200 lines, with exactly two set-up commands (the dashboard's and the tests'), the
second being the command CI runs.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, ROOT / "BENCHMARKS.md", *DOCS]
# DESIGN names the shape it intends, not only what exists: its links are checked, its paths are not.
DESCRIBING = [p for p in MARKDOWN if p.name != "DESIGN.md"]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
REPO_DIRS = ("rivya_core/", "simulations/", "pages/", "tests/", "data/", "docs/", ".ci/", ".streamlit/")
# Files a deployment creates itself, named in the docs but never in the repository.
NOT_IN_REPO = {".streamlit/secrets.toml"}


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _fenced_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def _links(path: Path) -> list[str]:
    return [m.group(1) for line in _prose(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def _code_spans(path: Path) -> list[str]:
    return [m.group(1).strip() for line in _prose(path.read_text(encoding="utf-8")) for m in CODE.finditer(line)]


def _is_checkable_path(span: str) -> bool:
    if not span.startswith(REPO_DIRS) or " " in span:
        return False
    if any(c in span for c in "<>*{}"):  # placeholders and globs
        return False
    if span.endswith((".db", ".log")) or span.startswith(
        ("data/runs", "data/results")
    ):  # written at run time, not in git
        return False
    return span.rstrip("/") not in NOT_IN_REPO


@pytest.mark.parametrize("path", DESCRIBING, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_in_inline_code_exists(path):
    paths = [s.split("::")[0].rstrip("/") for s in _code_spans(path) if _is_checkable_path(s)]  # file::test
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"{path.relative_to(ROOT)} names paths that do not exist: {missing}"


def _resolves(name: str) -> bool:
    """`rivya_core.module.attribute...`: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("path", DESCRIBING, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dotted_name_in_inline_code_exists(path):
    names = [s for s in _code_spans(path) if re.fullmatch(r"(rivya_core|simulations)(\.[A-Za-z_]\w*)+", s)]
    missing = [n for n in names if not _resolves(n)]
    assert not missing, f"{path.relative_to(ROOT)} names what the code does not have: {missing}"


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    pages = [p for p in (ROOT / "docs").iterdir() if p.is_file()]
    assert pages
    unlinked = [p.name for p in pages if p.resolve() not in linked]
    assert not unlinked, f"docs/ pages the README does not link: {unlinked}"


def test_readme_stays_under_200_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < 200, f"README.md has {n} lines; move reference material to docs/"


def _setup_commands() -> list[str]:
    return [b.strip() for b in _fenced_blocks(README.read_text(encoding="utf-8")) if "pip install" in b]


def test_readme_shows_exactly_two_setup_commands():
    dashboard, tests = _setup_commands()  # exactly two
    for command in (dashboard, tests):
        assert "\n" not in command, "a set-up command is one line, to be copied whole"
        assert command.startswith("python3 -m venv .venv && ")
    assert "pip install -r requirements.txt" in dashboard and dashboard.endswith("streamlit run app.py")
    assert "pip install -r requirements-dev.txt" in tests and " -m pytest" in tests


def test_ci_runs_the_readmes_test_command():
    readme_pytest = _setup_commands()[1].split(" && ")[-1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert readme_pytest in ci_lines, f".ci/run does not run the README's test command {readme_pytest!r}"
