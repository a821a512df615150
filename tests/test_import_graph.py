"""No import circles among the project's own modules.

The graph is built from the source (the AST), not by importing: every `import` and `from ...
import` of a project module counts, also the ones inside a function (a function-local import
hides a circle from the interpreter at start-up, not from a reader). A `from package import
name` that names a submodule is an edge to that submodule; one that names an attribute is an
edge to the package. An edge from a module to its own package's `__init__` is kept too (it is
a real import). Each package is checked on its own, so a failure names the package and prints
one cycle of it, module by module.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rivya_core", "simulations", "pages")
TOP_LEVEL = ("app",)


@functools.cache
def project_modules() -> dict[str, Path]:
    """Every module of the project, by dotted name."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    for name in TOP_LEVEL:
        mods[name] = ROOT / f"{name}.py"
    return mods


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names one import statement may refer to (module, or module.attribute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        if path.name != "__init__.py":
            base = base[:-1]  # a module's relative imports start from its package
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names]


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its source."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(name, path, node):
                while target and target not in mods:  # `pkg.mod.attr` -> `pkg.mod`
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    """One cycle among `nodes` (following only edges inside them), as [a, b, ..., a]; None if none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node] & nodes):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(nodes):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    """The checker itself: a circle closed only by an import inside a function, written as a
    relative import, is found; an acyclic pair is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from pkg.a import thing\n")
    mods = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py", "pkg.c": pkg / "c.py"}
    graph = import_graph(mods)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph, set(mods)) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("def thing():\n    return 1\n")
    assert find_cycle(import_graph(mods), set(mods)) is None


@functools.cache
def project_graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


@pytest.mark.parametrize("package", [*PACKAGES, *TOP_LEVEL])
def test_no_import_circle(package):
    mods, graph = project_modules(), project_graph()
    inside = {m for m in mods if m == package or m.startswith(package + ".")}
    assert inside, f"no modules found for {package}"
    cycle = find_cycle(graph, inside)
    assert cycle is None, f"import circle in {package}: " + " -> ".join(cycle or [])


def test_no_import_circle_across_packages():
    """Every package may be acyclic on its own and still close a circle through another (a page
    importing simulations importing pages)."""
    mods, graph = project_modules(), project_graph()
    cycle = find_cycle(graph, set(mods))
    assert cycle is None, "import circle across packages: " + " -> ".join(cycle or [])
