"""One home per concept: the literals registered in pipeline/concepts.py are written nowhere else in pipeline/.

Like the variant-name scanner (tests/cams/test_variants.py) and the backbone-switch scanner
(tests/models/test_registry.py): a second copy of a registered tuple or colour is a second place to edit
when the concept changes, so the module must import the name from pipeline.concepts instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline import concepts

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "pipeline" / "concepts.py"
# Modules allowed to spell a registered literal out, with the reason. Empty: every module imports the names.
ALLOWED: dict[str, str] = {}


def registered() -> dict[str, frozenset]:
    """Name -> the set of values of every registered tuple of two or more members (order-free: a reordered copy
    is still a copy)."""
    tuples = {
        "BRANCHES": concepts.BRANCHES,
        "FAMILIES": concepts.FAMILIES,
        "PROTOCOLS": concepts.PROTOCOLS,
        "IOUS": concepts.IOUS,
        "THRESHOLD_GRIDS": concepts.THRESHOLD_GRIDS,
    }
    return {name: frozenset(values) for name, values in tuples.items() if len(values) >= 2}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def concept_literals(source: str) -> list[tuple[int, str]]:
    """(line, what) of every registered literal in `source`: a tuple, list or set of constants whose values are
    exactly a registered tuple's (in any order), and any string that is one of PALETTE's colours (any case)
    outside a docstring."""
    tree = ast.parse(source)
    tuples = registered()
    colours = {c.lower(): branch for branch, c in concepts.PALETTE.items()}
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
            if all(isinstance(x, ast.Constant) and not isinstance(x.value, bool) for x in node.elts):
                values = [x.value for x in node.elts]
                for name, members in tuples.items():
                    if len(values) == len(members) and set(values) == members:
                        found.append((node.lineno, f"concepts.{name} {tuple(values)!r}"))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and node.value.lower() in colours
        ):
            found.append((node.lineno, f"concepts.PALETTE[{colours[node.value.lower()]!r}] {node.value!r}"))
    return sorted(found)


def test_the_scanner_catches_every_kind_of_copy():
    source = (
        '"""doc: #E69F00, ("softmax", "sigmoid")"""\n'
        'A = ("softmax", "sigmoid")\n'
        'if b not in ["sigmoid", "softmax"]: pass\n'
        "C = {30, 50, 70}\n"
        'D = {"softmax": "#e69f00", "sigmoid": "#0072B2"}\n'
        'E = ("clean", "official", "official_symmetric")\n'
        'F = ("cam", "grad")\n'
        'ok = (("softmax",), (30, 50), "cam", ("official", "wsol", "x"), 50)\n'
    )
    lines = [line for line, _ in concept_literals(source)]
    assert lines == [2, 3, 4, 5, 5, 6, 7]


def test_no_module_of_the_pipeline_writes_a_registered_literal():
    """A copy of BRANCHES, FAMILIES, PROTOCOLS, IOUS, THRESHOLD_GRIDS or a PALETTE colour outside
    pipeline/concepts.py: import it from pipeline.concepts instead."""
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path == HOME or rel in ALLOWED:
            continue
        offenders += [f"{rel}:{line}: {what}" for line, what in concept_literals(path.read_text())]
    assert not offenders, "registered literals outside pipeline/concepts.py:\n" + "\n".join(offenders)
