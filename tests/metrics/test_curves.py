"""pipeline.metrics.curves: the curve files' one writer and reader, and dvc.yaml's `plots:` from the registries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cams import variants
from pipeline.concepts import BRANCHES, IOUS
from pipeline.metrics import curves
from pipeline.report import plots_page

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_yaml_plots_are_the_generated_ones():
    """dvc.yaml cannot import the registries: its `plots:` must be what curves.dvc_plots() gives (a new variant,
    branch or IoU threshold changes it; paste `python -m pipeline.metrics.curves`'s output)."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert plots == curves.dvc_plots(), "dvc.yaml's plots: differ; paste `python -m pipeline.metrics.curves`"
    assert yaml.safe_load("plots:\n" + curves.dvc_plots_yaml()) == {"plots": curves.dvc_plots()}
    files = {Path(f).name for plot in plots if isinstance(plot, dict) for spec in plot.values() for f in spec["y"]}
    assert files == {f"{v}_{b}.csv" for v in variants.names() for b in BRANCHES}


def test_the_committed_curve_template_is_the_generated_one():
    """pipeline/report/templates/curves.json (dvc.yaml's curve plots' template) is what plots_page writes."""
    assert (ROOT / curves.TEMPLATE).read_text(encoding="utf8") == plots_page.curve_template_text()
    spec = plots_page.curve_template()
    colour, dash = spec["encoding"]["color"]["scale"], spec["encoding"]["strokeDash"]["scale"]
    names = [curves.curve_name(v, b) for v in variants.names() for b in BRANCHES]
    assert colour["domain"] == dash["domain"] == names
    assert len(set(colour["range"])) == len(names)  # every variant_branch its own colour
    assert set(plots_page.BRANCH_STYLE) == set(BRANCHES)
    dashes = {b: {tuple(d) for n, d in zip(names, dash["range"]) if n.endswith(f"_{b}")} for b in BRANCHES}
    assert all(len(d) == 1 for d in dashes.values()) and len({d.pop() for d in dashes.values()}) == len(BRANCHES)


def sample_curves() -> dict:
    thresholds = np.arange(0, 1, 0.25)
    box = {curves.iou_column(d): np.linspace(90, 10 + d / 10, 4) for d in IOUS}
    box[curves.LARGEST_CONTOUR] = np.linspace(80, 1.0 / 3, 4)
    return {
        ("cam", "softmax"): {
            "thresholds": thresholds,
            "box": box,
            "pr": (np.array([0.5, 2 / 3]), np.array([1.0, 0.125])),
        },
        ("cam", "sigmoid"): {"thresholds": thresholds, "box": box, "pr": None},
    }


def test_write_then_read_keeps_the_formats(tmp_path):
    root = tmp_path / "plots"
    (root / "stale").mkdir(parents=True)
    curves.write_curves(sample_curves(), root)
    assert not (root / "stale").exists()  # the folder is replaced
    text = curves.box_path("cam", "softmax", root).read_text()
    assert text.splitlines()[:2] == [
        "threshold,iou30,iou50,iou70,largest_contour_iou50",
        "0.000,90.0000,90.0000,90.0000,80.0000",
    ]
    pr_text = curves.pr_path("cam", "softmax", root).read_text()
    assert pr_text == "recall,precision\n1.000000,0.500000\n0.125000,0.666667\n"
    assert not curves.pr_path("cam", "sigmoid", root).exists()
    long = curves.read_box(text, "x")
    assert list(long.columns) == ["threshold", "iou", "accuracy"] and sorted(set(long.iou)) == list(IOUS)
    assert len(long) == 4 * len(IOUS)
    pr = curves.read_pr(curves.pr_path("cam", "softmax", root))
    assert list(pr.columns) == ["recall", "precision"]


def test_a_file_without_the_iou_columns_is_refused():
    with pytest.raises(curves.CurveError, match=r"x.csv: column\(s\) iou50, iou70 missing"):
        curves.read_box("threshold,iou30\n0.0,1.0\n", "x.csv")
    with pytest.raises(curves.CurveError, match="not a readable CSV"):
        curves.read_box("", "x.csv")


def test_the_committed_curves_read_back():
    """reports/plots/ as the last run wrote them is what the readers accept."""
    for v in variants.names():
        for b in BRANCHES:
            path = curves.box_path(v, b, ROOT / curves.PLOTS_DIR)
            assert len(curves.read_box(path.read_text(), str(path))) > 0
