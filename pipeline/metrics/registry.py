"""Every metric of a (variant, branch), in one torch-free registry: its key, its labels, which way is better, and
the formula that turns summed per-image outcomes into the number.

The key is the name in reports/metrics.json (metrics[variant][branch][key]), reports/intervals.json and
`dvc exp show`; `label` is the wording everywhere a metric is named on its own (the report's interval tables,
the forest figure, the paper-style table, the exp table's headers), `short` the wording under a heading that
already names the metric's family (the results table's "MaxBoxAccV2 by IoU threshold": "IoU 30").

The formulas are used by both the evaluator (pipeline/metrics/boxes.py, fidelity.py, evaluate.py) and the
bootstrap (pipeline/metrics/intervals.py), on a scalar (the full data) or an array (one value per resample):
* `percent(count, n)` = 100 x count / n: a BoxAcc (count of correct images at a threshold), GT-known Loc,
  Top-1 Loc, Increase in Confidence (count of images with O > Y);
* `mean_over_ious(per_iou)`: MaxBoxAccV2, the mean of the per-IoU accuracies over the last axis;
* `pxap_rows(fg, bg)`: PxAP (METHOD.md 4.5) from summed foreground / background histograms, one row each. The
  evaluator's own one-row form (pipeline.metrics.masks.MaskEvaluator.compute, which also returns the curve) sums
  only the bins with a prediction: the same value up to the last bits, kept so that reports/ stay byte-identical;
* `mean(total, n)` = total / n: Average Drop from the summed per-image terms 100 max(0, Y - O) / Y (the
  bootstrap's form). The evaluator sums the fractions max(0, Y - O) / Y and takes `percent` of them
  (pipeline.metrics.fidelity.FidelityAccumulator): the same value up to the last bits, kept likewise.

Adding a metric is one entry here (with its formula and its `source`), its outcome in the evaluator's result, and
a test; the report's tables, the forest figure, the intervals and the exp table read it from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.concepts import IOUS


def percent(count, n):
    """100 x count / n: the percentage of n images with an outcome (count: a number or an array of them)."""
    return 100.0 * count / n


def mean(total, n):
    """total / n: the mean of n per-image terms already in % (Average Drop's)."""
    return total / n


def mean_over_ious(per_iou):
    """MaxBoxAccV2: the mean over the last axis (one accuracy per IoU threshold) of `per_iou`."""
    return np.mean(per_iou, axis=-1)


def pxap_rows(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """PxAP (%) of every row of summed (rows, n_bins) foreground/background histograms (ascending bins),
    METHOD.md 4.5 / pipeline.metrics.masks.MaskEvaluator.compute, vectorised over rows."""
    tp = np.cumsum(fg[:, ::-1], axis=1)
    fp = np.cumsum(bg[:, ::-1], axis=1)
    positives = tp[:, -1]
    if (positives <= 0).any():
        raise ValueError("PxAP: a resample has no foreground pixel (too few images with masks to bootstrap)")
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
    recall = tp / positives[:, None]
    return 100.0 * (precision[:, 1:] * np.diff(recall, axis=1)).sum(axis=1)


@dataclass(frozen=True)
class Metric:
    """One metric of a (variant, branch). `source`: the evaluator result it comes from (box, mask: the split
    has masks, fidelity: `evaluate.fidelity`); `formula`: from the summed outcomes (module docstring);
    `exp_table`: its columns in `make exp-table` ("every": every variant's, "first": the first variant's only,
    None: not shown)."""

    key: str
    label: str
    short: str
    higher_is_better: bool
    source: str
    formula: Callable
    exp_table: str | None = None

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


def _iou(delta: int) -> Metric:
    return Metric(f"maxboxacc_iou{delta}", f"MaxBoxAcc IoU {delta}", f"IoU {delta}", True, "box", percent)


# In this order in reports/intervals.json and metrics.json's `intervals`.
METRICS: tuple[Metric, ...] = (
    Metric("maxboxacc_v2", "MaxBoxAccV2", "MaxBoxAccV2", True, "box", mean_over_ious, exp_table="every"),
    Metric("maxboxacc", "MaxBoxAcc", "MaxBoxAcc", True, "box", percent),  # v1: largest contour, IoU 50
    *(_iou(d) for d in IOUS),
    Metric("gt_known_loc", "GT-known Loc", "GT-known Loc", True, "box", percent),
    Metric("top1_loc", "Top-1 Loc", "Top-1 Loc", True, "box", percent, exp_table="first"),
    Metric("pxap", "PxAP", "PxAP", True, "mask", pxap_rows, exp_table="first"),
    Metric("avg_drop", "Avg Drop", "Avg Drop", False, "fidelity", mean),
    Metric("inc_conf", "Inc Conf", "Inc Conf", True, "fidelity", percent),
)
BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
KEYS: tuple[str, ...] = tuple(BY_KEY)
LOWER_IS_BETTER = frozenset(m.key for m in METRICS if not m.higher_is_better)
IOU_KEYS: tuple[str, ...] = tuple(f"maxboxacc_iou{d}" for d in IOUS)

# Numbers of the whole run in reports/metrics.json (not per variant and branch): key -> label. Top-1 Cls is the
# softmax branch's test accuracy; `dataset.*` say what the numbers are of (pipeline/stages/evaluate.py).
RUN_METRICS: dict[str, str] = {
    "top1_cls": "Top-1 Cls",
    "dataset.num_classes": "classes",
    "dataset.test_images": "test images",
    "dataset.full": "full dataset",
}


def get(key: str) -> Metric:
    if key not in BY_KEY:
        raise ValueError(f"metric: '{key}' is not valid; choose one of: {', '.join(KEYS)}")
    return BY_KEY[key]


def label(key: str) -> str:
    """The metric's label (the key itself for one that is not registered)."""
    return BY_KEY[key].label if key in BY_KEY else key


def exp_table_columns(variants: tuple[str, ...] | list[str], branches: tuple[str, ...]) -> list[str]:
    """The reports/metrics.json columns of `make exp-table`, as `dvc exp show` names them without the file:
    the run's numbers, then per registered metric with `exp_table`, each variant's (or the first's) branches."""
    columns = list(RUN_METRICS)
    for m in METRICS:
        if m.exp_table is None:
            continue
        for variant in variants if m.exp_table == "every" else list(variants)[:1]:
            columns += [f"{variant}.{branch}.{m.key}" for branch in branches]
    return columns
