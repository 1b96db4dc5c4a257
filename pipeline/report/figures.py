"""The report's figures (seaborn / matplotlib, Agg backend), written as byte-stable PNGs.

- `threshold_curves`: box accuracy against the CAM threshold, one row per variant, one column per IoU,
  softmax and sigmoid branch as two colours, the threshold the evaluate stage chose as a dotted line.
- `pr_curves`: pixel precision-recall curves, one panel per variant, PxAP in each panel.
- `gallery`: fixed test images with both branches' *signed* maps in a diverging colormap (red positive,
  blue negative, each map scaled by its own max |M|), the GT box and the box the metric draws.
- `sign_bars`: the sign diagnostics as grouped bars.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.cams import variants as registry  # noqa: E402
from pipeline.concepts import BRANCHES, PALETTE  # noqa: E402
from pipeline.io import write_bytes  # noqa: E402
from pipeline.metrics import curves as curve_files  # noqa: E402
from pipeline.metrics import registry as metric_registry  # noqa: E402
from pipeline.report.tables import VARIANT_LABELS  # noqa: E402

GT_COLOR = "black"
PRED_COLOR = "#00A651"


GALLERY_CMAP = "RdBu_r"
CMAP_COLOURS = 64  # palette entries reserved for the gallery colormap; the other 192 adapt to the rest
CMAP_NEAR = 8  # a pixel within this many levels (per channel) of a reserved entry is left to the ramp


def palette_png(rgb: Image.Image, cmap: str) -> Image.Image:
    """`rgb` with a 256-colour palette that keeps `cmap`'s scale: `CMAP_COLOURS` evenly spaced colours of the
    colormap, and a median cut of the pixels those do not already cover (the photos, text, lines) for the
    rest; every pixel takes its nearest entry. (An adaptive palette alone merged the colormap's blue half
    into a few colours, one of them a photo's teal.)"""
    pixels = np.asarray(rgb).reshape(-1, 3)
    ramp = np.round(255 * plt.get_cmap(cmap)(np.linspace(0, 1, CMAP_COLOURS))[:, :3]).astype(np.uint8)
    packed = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
    codes, inverse = np.unique(packed, return_inverse=True)
    colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1).astype(np.int16)
    far = np.abs(colours[:, None, :] - ramp[None].astype(np.int16)).max(axis=2).min(axis=1)
    rest = pixels[(far > CMAP_NEAR)[inverse]]
    adaptive = (
        []
        if not len(rest)
        else Image.fromarray(rest[None])
        .quantize(colors=256 - CMAP_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        .getpalette()
    )
    entries = Image.new("P", (1, 1))
    entries.putpalette(ramp.reshape(-1).tolist() + adaptive[: 3 * (256 - CMAP_COLOURS)])
    return rgb.quantize(palette=entries, dither=Image.Dither.NONE)


def save(fig: plt.Figure, path: Path, dpi: int, *, palette_cmap: str | None = None) -> None:
    """Write `fig` as a PNG without the matplotlib version stamp (same figure, same bytes), atomically.

    `palette_cmap` stores it with a 256-colour palette that keeps that colormap's scale (`palette_png`;
    about 3x smaller for the image galleries, which would otherwise dominate the size of the committed
    reports/)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    if palette_cmap is not None:
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            small = palette_png(im.convert("RGB"), palette_cmap)
        buf = io.BytesIO()
        small.save(buf, format="png", optimize=True)
    write_bytes(Path(path), buf.getvalue())


def read_box_curves(directory: Path, variants: Sequence[str] | None = None) -> pd.DataFrame:
    """The evaluate stage's box_accuracy CSVs of `variants` (default: every registered one) as a long frame:
    variant (its label), branch, threshold, iou, accuracy."""
    frames = []
    for variant in variants if variants is not None else registry.names():
        for branch in BRANCHES:
            path = Path(directory) / f"{curve_files.curve_name(variant, branch)}.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: box-accuracy curve missing; rerun the evaluate stage")
            long = curve_files.read_box(path.read_text(encoding="utf8"), str(path))
            long["iou"] = [f"IoU {d}" for d in long["iou"]]
            frames.append(long.assign(variant=VARIANT_LABELS[variant], branch=branch))
    return pd.concat(frames, ignore_index=True)


def read_pr_curves(directory: Path, variants: Sequence[str] | None = None) -> pd.DataFrame | None:
    """The pixel precision-recall CSVs of `variants` (default: every registered one) as a long frame
    (variant, branch, recall, precision), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    frames = []
    for variant in variants if variants is not None else registry.names():
        for branch in BRANCHES:
            path = directory / f"{curve_files.curve_name(variant, branch)}.csv"
            if path.is_file():
                frames.append(curve_files.read_pr(path).assign(variant=VARIANT_LABELS[variant], branch=branch))
    return pd.concat(frames, ignore_index=True) if frames else None


def threshold_curves(curves: pd.DataFrame, metrics: Mapping, path: Path, *, dpi: int, title: str) -> None:
    """Box accuracy (%) against CAM threshold: rows = variants, columns = IoU, hue = branch."""
    with sns.axes_style("whitegrid"):
        grid = sns.relplot(
            data=curves,
            x="threshold",
            y="accuracy",
            hue="branch",
            row="variant",
            col="iou",
            kind="line",
            palette=PALETTE,
            hue_order=list(BRANCHES),
            height=2.0,
            aspect=1.5,
            linewidth=1.4,
            facet_kws={"margin_titles": True, "sharey": True},
            errorbar=None,
            estimator=None,
        )
    for (variant_label, iou), ax in grid.axes_dict.items():
        variant = registry.by_label(variant_label)
        key = f"best_threshold_iou{iou.split()[-1]}"
        for branch in BRANCHES:
            t = metrics.get(variant, {}).get(branch, {}).get(key)
            if t is not None:
                ax.axvline(t, color=PALETTE[branch], linestyle=":", linewidth=1.2)
    grid.set_axis_labels("CAM threshold", "box accuracy (%)")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set(xlim=(0, 1), ylim=(0, 100))
    grid.set(xticks=[0, 0.2, 0.4, 0.6, 0.8])
    grid.legend.set_title("CAM branch")
    grid.figure.suptitle(title, y=1.01)
    save(grid.figure, path, dpi)


def pr_curves(curves: pd.DataFrame, metrics: Mapping, path: Path, *, dpi: int, title: str) -> None:
    """Pixel precision against recall, one panel per variant, hue = branch, PxAP printed in each panel."""
    with sns.axes_style("whitegrid"):
        grid = sns.relplot(
            data=curves,
            x="recall",
            y="precision",
            hue="branch",
            col="variant",
            kind="line",
            palette=PALETTE,
            hue_order=list(BRANCHES),
            height=2.8,
            aspect=1.0,
            sort=False,
            estimator=None,
            errorbar=None,
            linewidth=1.4,
        )
    for variant_label, ax in grid.axes_dict.items():
        variant = registry.by_label(variant_label)
        text = "\n".join(
            f"{metric_registry.label('pxap')} {b}: {metrics[variant][b]['pxap']:.1f}"
            for b in BRANCHES
            if "pxap" in metrics.get(variant, {}).get(b, {})
        )
        ax.text(
            0.97,
            0.97,
            text,
            ha="right",
            va="top",
            transform=ax.transAxes,
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
    grid.set_axis_labels("recall", "precision")
    grid.set_titles(col_template="{col_name}")
    grid.set(xlim=(0, 1), ylim=(0, 1))
    grid.set(xticks=[0, 0.2, 0.4, 0.6, 0.8])
    grid.legend.set_title("CAM branch")
    grid.figure.suptitle(title, y=1.04)
    save(grid.figure, path, dpi)


def _box(ax: plt.Axes, box: Sequence[int], color: str, style: str) -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    ax.add_patch(
        Rectangle(
            (x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=color, linestyle=style, linewidth=1.8
        )
    )


def gallery(
    images: np.ndarray,
    signed: Mapping[str, np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    pred_boxes: Mapping[str, np.ndarray],
    captions: Mapping[str, Sequence[str]],
    row_labels: Sequence[str],
    path: Path,
    *,
    dpi: int,
    title: str,
) -> None:
    """Rows = images; columns = the image with its GT box, then each branch's signed map.

    `images` (n, S, S, 3) uint8; `signed[branch]` (n, S, S) raw signed maps (pos + neg) on the same grid;
    `pred_boxes[branch]` (n, 4) the box the metric draws; `captions[branch][i]` a short text per map.
    """
    n = len(images)
    fig, axes = plt.subplots(
        n, 1 + len(signed), figsize=(2.3 * (1 + len(signed)) + 0.6, 2.3 * n + 0.4), squeeze=False, layout="constrained"
    )
    mappable = None
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i], interpolation="nearest")
        for b in gt_boxes[i]:
            _box(ax, b, "white", "-")
            _box(ax, b, GT_COLOR, "--")
        ax.set_ylabel(row_labels[i], fontsize=8)
        for j, (branch, maps) in enumerate(signed.items(), start=1):
            ax = axes[i, j]
            m = maps[i].astype(np.float64)
            scale = np.abs(m).max()
            mappable = ax.imshow(
                m / scale if scale > 0 else m, cmap=GALLERY_CMAP, vmin=-1, vmax=1, interpolation="nearest"
            )
            for b in gt_boxes[i]:
                _box(ax, b, GT_COLOR, "-")
            _box(ax, pred_boxes[branch][i], PRED_COLOR, "--")
            ax.set_xlabel(captions[branch][i], fontsize=8)
            if i == 0:
                ax.set_title(f"{branch} branch", fontsize=10, color=PALETTE[branch], fontweight="bold")
    axes[0, 0].set_title("image, GT box", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=axes[:, 1:], shrink=0.5, location="right")
        bar.set_label("signed CAM / max |CAM|  (red +, blue \u2212)")
    fig.suptitle(
        f"{title}\nblack: GT box; green dashed: box of the largest contour at the chosen IoU-50 threshold", fontsize=10
    )
    save(fig, path, dpi, palette_cmap=GALLERY_CMAP)


def sign_bars(sign: Mapping, path: Path, *, dpi: int, title: str) -> None:
    """Grouped bars of the sign diagnostics: one panel per statistic, variants on x, hue = branch."""
    labels = {
        "neg_share_inside": "negative mass inside GT box",
        "neg_share_outside": "negative mass outside GT box",
        "net_negative_inside": "images whose box is net negative",
    }
    rows = [
        {"variant": VARIANT_LABELS[v], "branch": b, "statistic": labels[k], "percent": sign[v][b][k]}
        for v in registry.names()
        if v in sign
        for b in BRANCHES
        for k in labels
    ]
    with sns.axes_style("whitegrid"):
        grid = sns.catplot(
            data=pd.DataFrame(rows),
            x="variant",
            y="percent",
            hue="branch",
            col="statistic",
            kind="bar",
            palette=PALETTE,
            hue_order=list(BRANCHES),
            height=3.0,
            aspect=1.3,
            col_order=list(labels.values()),
        )
    grid.set_axis_labels("", "% (mean over test images)")
    grid.set_titles(col_template="{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.0f", fontsize=7, padding=1)
    grid.legend.set_title("CAM branch")
    grid.figure.suptitle(title, y=1.04)
    save(grid.figure, path, dpi)
