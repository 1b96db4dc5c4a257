"""The backbone registry (pipeline/models/archs/): one module per architecture, a timm fallback, and no
architecture-name switch anywhere else."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.models import archs
from pipeline.models.archs.base import Backbone
from pipeline.models.dual import DualBranchNet
from pipeline.models.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_DIR = ROOT / "pipeline" / "models" / "archs"


def registering_modules() -> set[str]:
    """The modules of the registry package that call `register(...)` (the package also holds helpers: base,
    the backbone params)."""
    out = set()
    for m in pkgutil.iter_modules([str(REGISTRY_DIR)]):
        tree = ast.parse((REGISTRY_DIR / f"{m.name}.py").read_text())
        if any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "register" for n in ast.walk(tree)
        ):
            out.add(m.name)
    return out


def test_each_module_registers_exactly_the_names_the_table_says():
    assert registering_modules() == {info.module for info in archs.ARCHS.values()}
    for name, info in archs.ARCHS.items():
        backbone = archs.get(name)
        assert isinstance(backbone, Backbone) and backbone.name == name
        assert importlib.import_module(f"pipeline.models.archs.{info.module}")  # imported by get()
        assert info.fixed_stride == backbone.supports_large_feature_map  # the torch-free table agrees
    for alias, target in archs.ALIASES.items():
        assert archs.get(alias) is archs.get(target)


def test_any_timm_name_works_without_a_module_of_its_own():
    assert not archs.is_registered("resnet14t")
    backbone = archs.get("resnet14t")
    assert backbone.name == "resnet14t" and backbone.pretrained_layout == "timm"
    model = DualBranchNet(ModelSpec("resnet14t", 3, 32)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.logits.shape == (1, 3) and out.features.shape[1] == model.trunk.channels


def test_names_table_is_torch_free():
    """params validation knows every name without importing torch or timm."""
    code = (
        "import sys, pipeline.params, pipeline.models.archs as a; a.registered_names(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------
# No architecture-name switch outside the registry


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _literals(elt)]
    return []


def switches_on_backbone_names(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every comparison (==, !=, in, not in, match case) against a registered backbone name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, s) for s in _literals(operand) if s in names]
        elif isinstance(node, ast.match_case):
            found += [
                (node.pattern.lineno, s)
                for sub in ast.walk(node.pattern)
                if isinstance(sub, ast.MatchValue)
                for s in _literals(sub.value)
                if s in names
            ]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("startswith", "endswith"):
            found += [(node.lineno, s) for arg in node.args for s in _literals(arg) if s in names]
    return found


def test_the_scanner_catches_the_switches_it_is_meant_to():
    names = set(archs.registered_names())
    code = (
        "if arch == 'vgg16': pass\nif name in ('resnet50', 'x'): pass\nif 'inception_v3' != b: pass\n"
        "match a:\n    case 'inception': pass\nok = {'vgg16': 1}['vgg16']\n"
    )
    assert switches_on_backbone_names(code, names) == [
        (1, "vgg16"),
        (2, "resnet50"),
        (3, "inception_v3"),
        (5, "inception"),
    ]


def test_no_module_outside_the_registry_switches_on_a_backbone_name():
    names = set(archs.registered_names())
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if REGISTRY_DIR in path.parents:
            continue
        for line, name in switches_on_backbone_names(path.read_text(), names):
            offenders.append(f"{path.relative_to(ROOT)}:{line} compares with '{name}'")
    assert not offenders, "ask pipeline.models.archs instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", sorted(archs.ARCHS))
def test_registered_archs_describe_both_families(name):
    backbone = archs.get(name)
    for family in archs.FAMILIES:
        spec = ModelSpec(name, 2, 224, family=family)
        assert backbone.describe(spec).startswith(f"{name}/{family}")
        assert backbone.official_rules(spec), (name, family)  # an official layout for both families
