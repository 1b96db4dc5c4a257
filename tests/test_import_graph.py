"""No import circle among the modules of `pipeline/`: read from the source with ast, nothing is imported.

Every import counts, also one inside a function (a lazy import that closes a circle only hides it), except
those under `if TYPE_CHECKING:`, which never run. An edge goes to the module an import names: `from a.b import
c` to `a.b.c` when that is a module, else to `a.b`; a package's `__init__` run by importing one of its
submodules is not an edge of its own (a package may import its own submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its `__init__.py`)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _import_nodes(body: list[ast.stmt]):
    """Every import statement in `body` and the statements nested in it (functions, classes, if / try / with
    / loops), skipping the body of `if TYPE_CHECKING:`; expressions are not visited (imports are statements)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name != "TYPE_CHECKING":
                yield from _import_nodes(node.body)
            yield from _import_nodes(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _import_nodes(getattr(node, field, None) or [])
        for handler in getattr(node, "handlers", None) or []:  # the except clauses of a try
            yield from _import_nodes(handler.body)
        for case in getattr(node, "cases", None) or []:
            yield from _import_nodes(case.body)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` (at `path`) imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _import_nodes(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        out |= {t for t in targets if t in known and t != name}
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_lazy_circle_and_skips_type_checking(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.sub.b import B\n"
    )
    (pkg / "sub" / "a.py").write_text("from pipeline.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "def f():\n    try:\n        from .a import x\n    except ImportError:\n        pass\n"
    )
    (pkg / "c.py").write_text("import pipeline.sub.b\n")
    edges = graph(tmp_path)
    assert edges["pipeline.sub.a"] == {"pipeline.sub.b"} and edges["pipeline.sub.b"] == {"pipeline.sub.a"}
    assert edges["pipeline.sub"] == set() and edges["pipeline.c"] == {"pipeline.sub.b"}
    assert cycles(edges) == [["pipeline.sub.a", "pipeline.sub.b"]]


def test_no_import_circle_in_pipeline():
    edges = graph()
    assert "pipeline.models.archs.base" in edges and edges["pipeline.models.dual"]  # the graph was read
    found = cycles(edges)
    assert not found, "import circles (each a set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )
