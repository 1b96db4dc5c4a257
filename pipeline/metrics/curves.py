"""The curve files under reports/plots/, in one place: their paths, columns and number formats, the writer (the
evaluate stage), the readers (the report's figures, `make compare`) and dvc.yaml's `plots:` entries for them.

    reports/plots/box_accuracy/<variant>_<branch>.csv   threshold, iou30, iou50, iou70 (all contours), and
                                                        largest_contour_iou50 (MaxBoxAcc's largest contour); %
    reports/plots/pixel_pr/<variant>_<branch>.csv       recall, precision (datasets with masks)

The IoU columns follow concepts.IOUS, the files concepts.BRANCHES and the variants of the run's CAM set.
dvc.yaml cannot import anything, so its `plots:` section is what `dvc_plots()` returns (print it with
`python -m pipeline.metrics.curves`); tests/metrics/test_curves.py fails when the two disagree. Torch-free;
pandas only inside the readers.
"""

from __future__ import annotations

import argparse
import io
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.concepts import BRANCHES, IOUS

PLOTS_DIR = Path("reports/plots")
BOX_DIR = "box_accuracy"
PR_DIR = "pixel_pr"
THRESHOLD = "threshold"
LARGEST_CONTOUR = "largest_contour_iou50"  # MaxBoxAcc (v1): the largest contour at IoU 50
PR_COLUMNS = ("recall", "precision")
# The Vega-Lite template of every curve plot of `make plots` (pipeline.report.plots_page.curve_template).
TEMPLATE = "pipeline/report/templates/curves.json"


class CurveError(ValueError):
    """A curve file that is not what the evaluate stage writes."""


def iou_column(delta: int) -> str:
    return f"iou{delta}"


def curve_name(variant: str, branch: str) -> str:
    """A curve's file stem: <variant>_<branch>."""
    return f"{variant}_{branch}"


def box_path(variant: str, branch: str, root: Path | str = PLOTS_DIR) -> Path:
    return Path(root) / BOX_DIR / f"{curve_name(variant, branch)}.csv"


def pr_path(variant: str, branch: str, root: Path | str = PLOTS_DIR) -> Path:
    return Path(root) / PR_DIR / f"{curve_name(variant, branch)}.csv"


def box_text(box: Mapping, thresholds: Sequence[float]) -> str:
    """The box-accuracy CSV text: a `threshold` column (3 decimals) and one column (4 decimals) per entry of
    `box` ({column: per-threshold accuracy (%)}, in its order)."""
    header = ",".join([THRESHOLD, *box])
    rows = [f"{t:.3f}," + ",".join(f"{col[i]:.4f}" for col in box.values()) for i, t in enumerate(thresholds)]
    return "\n".join([header, *rows]) + "\n"


def pr_text(precision: Sequence[float], recall: Sequence[float]) -> str:
    """The pixel precision-recall CSV text: recall, precision (6 decimals)."""
    rows = [f"{r:.6f},{p:.6f}" for p, r in zip(precision, recall)]
    return "\n".join([",".join(PR_COLUMNS), *rows]) + "\n"


def write_curves(curves: Mapping, root: Path | str = PLOTS_DIR) -> None:
    """Replace `root` with the curves of `curves` (pipeline.metrics.evaluate.evaluate_all's: (variant, branch) ->
    {"thresholds", "box": {column: values}, "pr": (precision, recall) or None}), atomically per file."""
    from pipeline.io import write_text

    shutil.rmtree(root, ignore_errors=True)
    for (variant, branch), c in curves.items():
        write_text(box_path(variant, branch, root), box_text(c["box"], c["thresholds"]))
        if c["pr"] is not None:
            write_text(pr_path(variant, branch, root), pr_text(*c["pr"]))


def read_box(text: str, source: str = "box-accuracy curve", ious: Sequence[int] = IOUS):
    """A box-accuracy CSV's text as a long frame (threshold, iou (int), accuracy (%)): every column of `ious`
    must be there (CurveError otherwise, naming `source`)."""
    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CurveError(f"{source}: not a readable CSV ({exc})") from exc
    wanted = [iou_column(d) for d in ious]
    missing = [c for c in [THRESHOLD, *wanted] if c not in df.columns]
    if missing:
        raise CurveError(
            f"{source}: column(s) {', '.join(missing)} missing; expected "
            f"{','.join([THRESHOLD, *wanted])}[,...], found {','.join(df.columns)}"
        )
    long = df.melt(id_vars=THRESHOLD, value_vars=wanted, var_name="iou", value_name="accuracy")
    long["iou"] = long["iou"].str.removeprefix("iou").astype(int)
    return long


def read_pr(path: Path | str):
    """A pixel precision-recall CSV as a frame (recall, precision)."""
    import pandas as pd

    df = pd.read_csv(path)
    if list(df.columns) != list(PR_COLUMNS):
        raise CurveError(f"{path}: expected columns {','.join(PR_COLUMNS)}, found {','.join(df.columns)}")
    return df


# ----------------------------------------------------------------------------------------------------
# dvc.yaml's `plots:`

FIGURES = (
    "reports/figures/threshold_curves.png",
    "reports/figures/pr_curves.png",
    "reports/figures/sign_diagnostics.png",
    "reports/figures/gallery_cam.png",
)


def dvc_plots(variants: Sequence[str] | None = None) -> list:
    """dvc.yaml's `plots:` list: one plot per IoU of box accuracy against CAM threshold, the pixel
    precision-recall plot (one line per variant_branch file each, drawn by TEMPLATE), then the report's figures."""
    if variants is None:
        from pipeline.cams import variants as registry

        variants = registry.names()
    names = [curve_name(v, b) for v in variants for b in BRANCHES]
    plots: list = []
    for d in IOUS:
        plots.append(
            {
                f"box_accuracy_iou{d}": {
                    "title": f"Box accuracy at IoU {d} against CAM threshold (one line per variant_branch)",
                    "template": TEMPLATE,
                    "x": THRESHOLD,
                    "x_label": "CAM threshold",
                    "y_label": f"box accuracy at IoU {d} (%)",
                    "y": {f"{PLOTS_DIR.as_posix()}/{BOX_DIR}/{n}.csv": iou_column(d) for n in names},
                }
            }
        )
    plots.append(
        {
            "pixel_precision_recall": {
                "title": "Pixel precision-recall (one line per variant_branch)",
                "template": TEMPLATE,
                "x": "recall",
                "x_label": "recall",
                "y_label": "precision",
                "y": {f"{PLOTS_DIR.as_posix()}/{PR_DIR}/{n}.csv": "precision" for n in names},
            }
        }
    )
    return plots + list(FIGURES)


def dvc_plots_yaml(variants: Sequence[str] | None = None) -> str:
    """`dvc_plots()` as the YAML block to paste under dvc.yaml's `plots:` key (two-space indent, dvc.yaml's
    layout)."""
    lines = []
    for plot in dvc_plots(variants):
        if isinstance(plot, str):
            lines.append(f"  - {plot}")
            continue
        ((name, spec),) = plot.items()
        lines.append(f"  - {name}:")
        for key, value in spec.items():
            if key == "y":
                lines.append("      y:")
                lines += [f"        {path}: {field}" for path, field in value.items()]
            else:
                lines.append(f"      {key}: {value}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print dvc.yaml's `plots:` entries, generated from the registries")
    parser.parse_args(argv)
    print("plots:")
    print(dvc_plots_yaml(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
