"""The forest figure: every sigmoid-minus-softmax delta with its 95% interval, the figure a reader looks at first.

Rows are (variant, protocol) pairs, one panel per metric; each row is a point (the delta: the mean over
fine-tuning seeds) with a horizontal bar (the interval from pipeline/metrics/intervals.py) coloured by its
verdict; a vertical line marks zero. Written through figures.save (byte-stable PNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from pipeline.concepts import PALETTE
from pipeline.metrics import registry as metrics_registry
from pipeline.report.figures import save
from pipeline.report.tables import VARIANT_LABELS

MAIN_METRICS = ("maxboxacc_v2", "gt_known_loc", "top1_loc", "pxap", "avg_drop", "inc_conf")
# A panel's title: the registry's label, with "(lower better)" where lower is better.
METRIC_LABELS = {m.key: m.label + ("" if m.higher_is_better else " (lower better)") for m in metrics_registry.METRICS}
# Okabe-Ito: blue = sigmoid better, vermillion = sigmoid worse, grey = no detectable difference
VERDICT_COLORS = {
    "sigmoid better": PALETTE["sigmoid"],
    "sigmoid worse": "#D55E00",
    "no detectable difference": "#808080",
}


def forest(rows: Sequence[Mapping], path: Path, *, dpi: int, title: str, metrics: Sequence[str] = MAIN_METRICS) -> None:
    """Draw `rows` (IntervalAccumulator.table(): protocol, variant, metric, delta, low, high, verdict) as a
    forest plot: rows = variant x protocol (in first-seen order), one panel per metric of `metrics` that
    occurs in `rows`, x = delta in points with its interval, colour = verdict."""
    shown = [m for m in metrics if any(r["metric"] == m for r in rows)]
    if not shown:
        raise ValueError(f"forest: none of the metrics {list(metrics)} is in the rows")
    pairs = list(dict.fromkeys((r["variant"], r["protocol"]) for r in rows))
    labels = [f"{VARIANT_LABELS.get(v, v)} · {p}" for v, p in pairs]
    models = sorted({len(r["models"]) for r in rows})
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            1, len(shown), figsize=(2.6 * len(shown) + 1.2, 0.32 * len(pairs) + 1.3), sharey=True, squeeze=False
        )
    for ax, metric in zip(axes[0], shown):
        by_pair = {(r["variant"], r["protocol"]): r for r in rows if r["metric"] == metric}
        for y, pair in enumerate(pairs):
            r = by_pair.get(pair)
            if r is None:
                continue
            color = VERDICT_COLORS[r["verdict"]]
            ax.errorbar(
                r["delta"],
                y,
                xerr=[[r["delta"] - r["low"]], [r["high"] - r["delta"]]],
                fmt="o",
                color=color,
                ecolor=color,
                markersize=4,
                elinewidth=1.6,
                capsize=2,
            )
        ax.axvline(0.0, color="black", linewidth=0.9)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
        ax.set_xlabel("sigmoid − softmax (points)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(len(pairs) - 0.5, -0.5)
    axes[0][0].set_yticks(range(len(pairs)), labels)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="-", markersize=4) for c in VERDICT_COLORS.values()]
    fig.legend(
        handles,
        list(VERDICT_COLORS),
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, -0.02 - 0.3 / max(len(pairs), 1)),
    )
    level = f"{100 * rows[0]['confidence']:.0f}%"
    fig.suptitle(
        f"{title}: delta and {level} interval ({'/'.join(map(str, models))} model(s), "
        f"{rows[0]['resamples']} resamples)",
        fontsize=10,
    )
    fig.tight_layout()
    save(fig, path, dpi)
