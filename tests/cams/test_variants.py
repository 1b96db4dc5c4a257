"""The CAM variant registry: its entries, one home for variant names, and adding a variant as one entry."""

import ast
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cams import variants
from pipeline.cams.engine import BRANCHES, compute_cams
from pipeline.cams.postprocess import official_options
from pipeline.cams.store import read_cams, write_cams
from tests.cams.standins import vgg_grad_model

ROOT = Path(__file__).resolve().parents[2]


def test_registry_entries_and_families():
    names = variants.names()
    assert names == ("cam", "gradcam", "gradcampp", "xgradcam", "layercam")  # the CAM family's shard order
    assert len({variants.label(n) for n in names}) == len(names)
    assert [v.name for v in variants.for_family("cam")] == list(names)
    assert [v.name for v in variants.for_family("grad")] == ["gradcam", "gradcampp", "xgradcam", "layercam"]
    for v in variants.REGISTRY.values():
        assert v.kind in ("channel", "pixel") and v.official.upsample in ("bilinear", "bicubic")
        assert set(v.families) <= set(variants.FAMILIES)
        assert v.not_applicable or set(v.families) == set(variants.FAMILIES), v.name  # every n/a is explained
        assert variants.by_label(v.label) == v.name
    with pytest.raises(ValueError, match="family: 'vgg' is not valid; choose one of: cam, grad"):
        variants.for_family("vgg")
    with pytest.raises(ValueError, match="variant: 'scorecam' is not valid; choose one of: cam, gradcam"):
        variants.get("scorecam")


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def _identifier(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def variant_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every place that names a registered variant outside a docstring: a string equal to a
    variant name, except one that is also a family name ("cam"), which is flagged only where it is compared
    with something called *variant* or listed with other variant names."""
    names, families = set(variants.names()), set(variants.FAMILIES)
    hits = {(n.lineno, n.value) for n in _string_constants(tree) if n.value in names - families}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any("variant" in _identifier(x) for x in sides):
                for x in ast.walk(node):
                    if isinstance(x, ast.Constant) and x.value in names:
                        hits.add((x.lineno, x.value))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            listed = [x for x in items if isinstance(x, ast.Constant) and x.value in names]
            if len(listed) >= 2:
                hits |= {(x.lineno, x.value) for x in listed}
    return sorted(hits)


def test_no_module_outside_the_registry_names_a_variant():
    """A variant name as a literal outside pipeline/cams/variants.py (`if variant == "cam"`, `sign["gradcam"]`,
    a hard-coded list of names) is a second home for variant knowledge: read the registry instead."""
    found = []
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        if path == ROOT / "pipeline/cams/variants.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(ROOT)}:{line}: {name!r}" for line, name in variant_literals(tree)]
    assert not found, "variant names outside the registry:\n" + "\n".join(found)


def test_the_scan_catches_a_switch():
    source = (
        '"""doc: cam, gradcam"""\ndef f(variant, family):\n    """layercam"""\n'
        '    a = 1 if variant == "cam" else 0\n    b = family == "cam"\n    c = ("cam", "gradcam")\n'
        '    return sign["xgradcam"]\n'
    )
    assert variant_literals(ast.parse(source)) == [(4, "cam"), (6, "cam"), (6, "gradcam"), (7, "xgradcam")]


def test_dvc_plots_name_every_registered_variant():
    """dvc.yaml cannot import the registry: its plot definitions list each variant's curve files, so this
    test makes a new registry entry without its dvc.yaml lines fail."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    expected = {f"{v}_{b}.csv" for v in variants.names() for b in BRANCHES}
    curves = [p for p in plots if isinstance(p, dict)]
    assert curves
    for plot in curves:
        (definition,) = plot.values()
        assert {Path(f).name for f in definition["y"]} == expected, next(iter(plot))


def test_adding_a_variant_is_one_entry(monkeypatch, tmp_path):
    """A new entry (here: channel weights mean_xy |g|, through `CamInputs.mean_xy` as every spatial reduction
    must be, since the gradient may come per pixel, per cell or as a constant) is computed by the engine,
    stored by name, read back and post-processed, with nothing else changed."""
    new = variants.CamVariant(
        "absgrad", "Abs-Grad-CAM", "channel", lambda x: x.mean_xy(x.grads.abs()), True, variants.GRAD_RULE
    )
    monkeypatch.setitem(variants.REGISTRY, new.name, new)
    model = vgg_grad_model(seed=1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3])
    cams = compute_cams(model, x, targets)
    assert cams.variants[-1] == "absgrad" and cams.pos.shape[2] == 5
    with torch.no_grad():
        features = model.trunk(x)
    with torch.enable_grad():
        a = features.detach().requires_grad_(True)
        g = torch.autograd.grad(model.head(a).gather(1, targets[:, None]).sum(), a)[0]
    expected = torch.einsum("bc,bchw->bhw", g.abs().mean(dim=(2, 3)), features)
    torch.testing.assert_close(cams.pos[:, 0, -1], expected, rtol=1e-5, atol=1e-6)
    assert (cams.neg[:, :, -1] == 0).all()
    from pipeline.cams.store import CamRecord

    maps = torch.stack([cams.pos, cams.neg], dim=1)[:, None].numpy()
    records = [CamRecord(f"{i}.png", 0, 0, 0.0, 0.0, maps[i]) for i in range(2)]
    write_cams(
        tmp_path / "c",
        iter(records),
        targets=("gt",),
        feature_size=model.feature_size,
        dtype="float32",
        shard_size=2,
        info={},
        variants=cams.variants,
    )
    back = read_cams(tmp_path / "c")
    assert back.manifest["variants"] == list(cams.variants)
    torch.testing.assert_close(
        torch.from_numpy(back.select(part="pos", branch="softmax", variant="absgrad")), cams.pos[:, 0, -1]
    )
    assert official_options("absgrad", "sigmoid", 32).official_grad_scaling


def test_map_source_gradcam_and_xgradcam_are_cam_for_gap_linear_heads():
    """`map_source` aliases Grad-CAM and XGrad-CAM to CAM only for GAP-linear heads, and there their maps are
    positive multiples of CAM's (so every scale-invariant post-processing gives CAM's score maps)."""
    from pipeline.cams.engine import gap_linear_heads
    from pipeline.models.dual import DualBranchNet, ModelSpec

    assert [variants.map_source(v, True) for v in variants.names()] == ["cam", "cam", "gradcampp", "cam", "layercam"]
    assert [variants.map_source(v, False) for v in variants.names()] == list(variants.names())
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 4, 32, output_stride=16))
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    model.eval()
    assert gap_linear_heads(model) and not gap_linear_heads(vgg_grad_model().eval())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cams = compute_cams(model, x, torch.tensor([0, 1, 3]))
    names = list(cams.variants)
    signed = (cams.pos + cams.neg).double()  # (B, H, V, h, w)
    cam = signed[:, :, names.index("cam")]
    for alias in ("gradcam", "xgradcam"):
        other = signed[:, :, names.index(alias)]
        scale = other.flatten(2).norm(dim=-1) / cam.flatten(2).norm(dim=-1)  # (B, H), > 0
        assert (scale > 0).all()
        torch.testing.assert_close(other, cam * scale[..., None, None], rtol=1e-5, atol=1e-6)
