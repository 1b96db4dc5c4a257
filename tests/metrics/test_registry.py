"""The metric registry (pipeline/metrics/registry.py): one entry per metric, used by the evaluator, the bootstrap
and the report, with one wording."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.concepts import BRANCHES, IOUS
from pipeline.metrics import intervals, registry

ROOT = Path(__file__).resolve().parents[2]


def test_registry_is_torch_free():
    code = (
        "import sys, pipeline.metrics.registry, pipeline.metrics.curves, pipeline.report.exp_table; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keys_are_the_ones_of_reports():
    """Every registered metric is in reports/metrics.json under every variant and branch (the committed run has
    masks and fidelity), and the intervals carry exactly the registry's metrics, in its order."""
    metrics = json.loads((ROOT / "reports/metrics.json").read_text())
    variants = metrics["intervals"][next(iter(metrics["intervals"]))]
    for variant, by_metric in variants.items():
        assert set(by_metric) == set(registry.KEYS)
        for branch in BRANCHES:
            assert set(registry.KEYS) <= set(metrics[variant][branch])
    rows = json.loads((ROOT / "reports/intervals.json").read_text())["rows"]
    first = (rows[0]["protocol"], rows[0]["variant"])
    assert [r["metric"] for r in rows if (r["protocol"], r["variant"]) == first] == list(registry.KEYS)
    assert intervals.METRICS == registry.KEYS
    assert [f"maxboxacc_iou{d}" for d in IOUS] == list(registry.IOU_KEYS)


def test_labels_and_directions():
    assert len({m.label for m in registry.METRICS}) == len(registry.METRICS)
    assert registry.LOWER_IS_BETTER == {"avg_drop"}
    iou50 = registry.get("maxboxacc_iou50")
    assert iou50.label == "MaxBoxAcc IoU 50" and iou50.short == "IoU 50"
    assert registry.label("unregistered") == "unregistered"
    assert all(m.source in ("box", "mask", "fidelity") for m in registry.METRICS)
    assert intervals.verdict(1.0, 2.0, "avg_drop") == "sigmoid worse"
    assert intervals.verdict(1.0, 2.0, "pxap") == "sigmoid better"


def test_formulas_give_the_same_bits_on_a_scalar_and_on_resample_rows():
    """The evaluator applies a formula to one number, the bootstrap to a row per resample (its last row the full
    data): the full-data row must be the evaluator's number exactly."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 500, size=(5, 3)).astype(np.float64)
    n = 997
    for r in range(5):
        assert registry.percent(counts[r], n).tolist() == [registry.percent(float(c), n) for c in counts[r]]
    per_iou = registry.percent(counts, n)
    rows = registry.mean_over_ious(per_iou)
    for r in range(5):
        assert rows[r] == float(np.mean(list(per_iou[r])))  # the evaluator's form before the registry
    fg, bg = rng.integers(0, 50, size=(2, 4, 30))
    assert registry.pxap_rows(fg, bg).shape == (4,)


def test_exp_table_columns():
    cols = registry.exp_table_columns(["a", "b"], BRANCHES)
    assert cols[: len(registry.RUN_METRICS)] == list(registry.RUN_METRICS)
    assert cols[len(registry.RUN_METRICS) :] == [
        "a.softmax.maxboxacc_v2",
        "a.sigmoid.maxboxacc_v2",
        "b.softmax.maxboxacc_v2",
        "b.sigmoid.maxboxacc_v2",
        "a.softmax.top1_loc",
        "a.sigmoid.top1_loc",
        "a.softmax.pxap",
        "a.sigmoid.pxap",
    ]
