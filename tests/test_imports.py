"""No import cycles inside ``robustzoo/`` or ``training/``, lazy (function-level) imports included.

The graph is read from the source with :mod:`ast`, so nothing is imported to build it. Every
``import``/``from ... import`` counts, at module level or inside a function (a lazy import still makes
one module depend on the other), except those under ``if TYPE_CHECKING:`` (annotations only).
``from . import __version__`` depends on the package's ``__init__``, whose public names are resolved
lazily by name and import nothing at import time, so ``__init__`` has only its own static imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("robustzoo", "training")
def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(module: str, path: Path) -> set[str]:
    """Dotted names this module imports (absolute, relative ones resolved), TYPE_CHECKING blocks skipped."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the two packages it imports."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges = set()
        for name in _imported(module, path):
            while name and name not in mods:  # `pkg.mod.attr` -> `pkg.mod`
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert cycles(graph) == [], "import cycles (module groups that import each other)"


def test_the_cycle_finder_sees_lazy_imports(tmp_path):
    """A cycle closed only by a function-level import is still a cycle; TYPE_CHECKING imports are not."""
    pkg = tmp_path / "robustzoo"
    pkg.mkdir()
    (tmp_path / "training").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    assert cycles(import_graph(tmp_path)) == []
    (pkg / "c.py").write_text("def g():\n    from robustzoo.a import y\n")
    assert cycles(import_graph(tmp_path)) == [["robustzoo.a", "robustzoo.b", "robustzoo.c"]]
