"""Assemble the report: results table, sign diagnostics, figures and reports/README.md.

Plain functions over the evaluate stage's outputs (metrics, curves), the stored CAMs and the prepared
ground truth; the `report` stage script only reads params and calls `build_report`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cams import variants as registry
from pipeline.cams.postprocess import postprocess
from pipeline.cams.store import CamSet, CamStore, select
from pipeline.concepts import BRANCHES
from pipeline.data.prepare import GroundTruth
from pipeline.io import write_json, write_text
from pipeline.metrics.boxes import box_iou, largest_contour_box
from pipeline.metrics.evaluate import EvalOptions, check_alignment, postprocess_options
from pipeline.metrics.intervals import VERDICTS
from pipeline.report import figures, tables
from pipeline.report.forest import forest
from pipeline.report.sign import SignAccumulator, box_union, box_unions, signed_maps

FIGURES = {
    "threshold_curves": "threshold_curves.png",
    "pr_curves": "pr_curves.png",
    "sign": "sign_diagnostics.png",
}


def figure_names(variants: Sequence[str]) -> dict[str, str]:
    """Figure key -> file name under figures/: the fixed figures plus one gallery per variant of the run."""
    return {**FIGURES, **{f"gallery_{v}": f"gallery_{v}.png" for v in variants}}


Cams = CamStore | CamSet  # a CAM folder opened for streaming, or a set in memory: both give `block` and `index`

SIGN_BLOCK = 512  # images read from the CAM shards at a time (feature resolution)
SIGN_CHUNK = 64  # images upsampled to the evaluation grid and reduced at a time (13 MB at 224 px)


def run_variants(cams: Cams) -> list[str]:
    """The variants of the run, as its CAM manifest lists them (registry order)."""
    return [registry.get(v).name for v in cams.manifest["variants"]]


def run_family(cams: Cams) -> str:
    """The model family of the run (the CAM manifest's `family`; CAM sets written before it existed: cam)."""
    return registry.check_family(cams.manifest.get("family", registry.DEFAULT_FAMILY))


def gallery_indices(n_images: int, k: int) -> list[int]:
    """`k` test-image positions evenly spaced over 0..n_images-1 (so they span the classes when the test
    split is sorted by class), without repeats."""
    if n_images <= 0:
        raise ValueError("gallery: the test split has no images")
    k = min(k, n_images)
    return sorted({int(round(i)) for i in np.linspace(0, n_images - 1, k)})


def load_grid_images(image_root: Path, image_ids: Sequence[str], size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: each image resized to the evaluation grid, as the GT boxes were."""
    out = np.empty((len(image_ids), size, size, 3), dtype=np.uint8)
    for i, image_id in enumerate(image_ids):
        path = Path(image_root) / image_id
        try:
            with Image.open(path) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        except OSError as exc:
            raise FileNotFoundError(f"{path}: cannot read gallery image ({exc}); rerun `dvc repro download`") from exc
    return out


def sign_table(cams: Cams, gt: GroundTruth, block: int = SIGN_BLOCK, chunk: int = SIGN_CHUNK) -> dict:
    """Sign diagnostics of every variant x branch (ground-truth-class maps of the split).

    Streamed: `block` images' maps at a time out of the CAM shards, `chunk` of them at a time on the evaluation
    grid, the GT-box masks of a chunk built once for all its map sets; memory holds one block and the
    accumulators' per-image shares, whatever the number of images."""
    check_alignment(cams, gt, "test")
    variants = run_variants(cams)
    accs = {v: {b: SignAccumulator() for b in BRANCHES} for v in variants}
    for start in range(0, len(cams), block):
        maps = cams.block(start, start + block)
        parts = {
            (v, b, part): select(maps, cams.manifest, part=part, branch=b, variant=v)
            for v in variants
            for b in BRANCHES
            for part in ("pos", "neg")
        }
        for at in range(0, len(maps), chunk):
            sl = slice(at, min(at + chunk, len(maps)))
            inside = box_unions(gt.boxes[start + sl.start : start + sl.stop], gt.size)
            for v in variants:
                for b in BRANCHES:
                    signed = signed_maps(parts[v, b, "pos"][sl], parts[v, b, "neg"][sl], gt.size)
                    accs[v][b].accumulate(signed, inside=inside)
    return {v: {b: accs[v][b].compute() for b in BRANCHES} for v in variants}


def read_images(cams: Cams, indices: Sequence[int]) -> np.ndarray:
    """The maps of the images at `indices`, (n, T, 2, 2, V, h, w), read one image at a time."""
    if not len(indices):
        return cams.block(0, 0)
    return np.concatenate([cams.block(int(i), int(i) + 1) for i in indices])


@dataclass
class GalleryPanel:
    signed: dict[str, np.ndarray]  # branch -> (n, S, S) raw signed maps
    pred_boxes: dict[str, np.ndarray]  # branch -> (n, 4)
    captions: dict[str, list[str]]  # branch -> per image text


def gallery_panel(
    cams: Cams, gt: GroundTruth, variant: str, indices: Sequence[int], metrics: Mapping, opts: EvalOptions
) -> GalleryPanel:
    """Both branches' signed maps of `variant` at `indices`, the box the metric draws (largest contour of the
    evaluation score map at the IoU-50 threshold the evaluate stage chose) and its IoU with the GT boxes.

    Reads the maps of those images only (`cams.block`), not the whole set."""
    idx = np.asarray(indices)
    maps = read_images(cams, idx)
    panel = GalleryPanel({}, {}, {})
    for branch in BRANCHES:
        pos = np.ascontiguousarray(select(maps, cams.manifest, part="pos", branch=branch, variant=variant))
        neg = np.ascontiguousarray(select(maps, cams.manifest, part="neg", branch=branch, variant=variant))
        signed = signed_maps(pos, neg, gt.size)
        scores = postprocess(pos, neg, postprocess_options(variant, branch, gt.size, opts))
        threshold = float(metrics[variant][branch]["best_threshold_iou50"])
        boxes = np.stack([largest_contour_box(s, threshold) for s in scores])
        captions = []
        for i, (m, box) in enumerate(zip(signed, boxes)):
            gt_boxes = gt.boxes[idx[i]]
            iou = float(box_iou(box[None], gt_boxes).max())
            inside = box_union(gt_boxes, gt.size)
            total = np.abs(m[inside]).sum()
            values = m[inside].astype(np.float64)
            neg_share = 100.0 * float(-values[values < 0].sum() / total) if total > 0 else 0.0
            captions.append(f"IoU {iou:.2f} | neg in box {abs(neg_share):.0f}%")
        panel.signed[branch], panel.pred_boxes[branch], panel.captions[branch] = signed, boxes, captions
    return panel


GAP_IDENTITY = (
    "With a global-average-pooled linear head, Grad-CAM and XGrad-CAM are CAM up to a positive factor "
    "(METHOD.md 3), so those three rows agree everywhere."
)
GRAD_FAMILY_NOTE = (
    "This is a gradient-family model: CAM is not computed (n/a above). Where its head is an MLP the "
    "gradient varies over the map, so Grad-CAM and XGrad-CAM differ; with a global-average-pooled "
    "linear head they agree (METHOD.md 3.3)."
)


# ----------------------------------------------------------------------------------------------------
# One row per distinct map set, and the verdict paragraph

HEADLINE_METRICS = ("maxboxacc_v2", "pxap")  # the paper's Table 2 localization metrics: boxes and masks
BETTER, WORSE, NO_DIFFERENCE = VERDICTS


def _label(variants: Sequence[str]) -> str:
    return " = ".join(tables.VARIANT_LABELS.get(v, v) for v in variants)


def map_set_groups(rows: Sequence[Mapping], protocols: Sequence[str]) -> list[list[str]]:
    """The run's variants grouped by identical numbers: variants whose every interval row under `protocols`
    (all fields but the variant's name) is the same share a group, in registry order. With a GAP-linear head
    Grad-CAM and XGrad-CAM are CAM's maps up to a positive factor (METHOD.md 3.3), so they fall in CAM's group."""
    chosen = [r for r in rows if r["protocol"] in protocols]
    groups: dict[str, list[str]] = {}
    for variant in dict.fromkeys(r["variant"] for r in chosen):
        key = json.dumps(
            [{k: v for k, v in r.items() if k != "variant"} for r in chosen if r["variant"] == variant], sort_keys=True
        )
        groups.setdefault(key, []).append(variant)
    return list(groups.values())


def merge_map_sets(rows: Sequence[Mapping], protocols: Sequence[str]) -> list[dict]:
    """`rows` (of `protocols`) with one row per distinct map set: each group's first variant's rows, named by
    every variant of the group ("CAM = Grad-CAM = XGrad-CAM"), so the tables of pipeline.report.tables show
    each distinct set of numbers once."""
    out = []
    for group in map_set_groups(rows, protocols):
        out += [
            {**r, "variant": _label(group)} for r in rows if r["variant"] == group[0] and r["protocol"] in protocols
        ]
    return out


def _models_text(rows: Sequence[Mapping]) -> str:
    models = rows[0]["models"]
    return (
        f"{len(models)} model(s): {len({j for j, _ in models})} baseline(s) x "
        f"{len({k for _, k in models})} fine-tuning replicate(s)"
    )


def headline_markdown(rows: Sequence[Mapping], protocol: str) -> str:
    """One row per (distinct map set, metric) of `protocol`: both branches' values as the MEAN over the run's
    models (labelled so, unlike the per-model tables further down), the delta with its interval, the half-width
    and the verdict."""
    chosen = merge_map_sets(rows, [protocol])
    if not chosen:
        raise ValueError(f"intervals: no rows for protocol '{protocol}'")
    n = len(chosen[0]["models"])
    level = f"{100 * chosen[0]['confidence']:.0f}%"
    lines = [
        f"| map set | metric | softmax, mean of {n} models | sigmoid, mean of {n} models | "
        f"\u0394 [{level} interval] | half-width | verdict |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in chosen:
        lines.append(
            f"| {r['variant']} | {tables._metric_label(r['metric'])} | {tables._fmt(r['softmax'])} | "
            f"{tables._fmt(r['sigmoid'])} | {tables._interval(r)} | {tables._fmt(r['half_width'])} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _count(n: int, of: int) -> str:
    return "none" if n == 0 else ("all" if n == of and of > 1 else f"{n} of {of}")


def _sets(groups: Sequence[Sequence[str]], present: Sequence[Sequence[str]]) -> str:
    """'2 of the 3 distinct map sets (4 of the 5 variants)', or 'all 3 distinct map sets (5 variants)'."""
    k, n = sum(len(g) for g in groups), sum(len(g) for g in present)
    if len(groups) == len(present):
        return f"all {len(present)} distinct map sets ({n} variants)"
    return f"{len(groups)} of the {len(present)} distinct map sets ({k} of the {n} variants)"


def verdict_paragraph(rows: Sequence[Mapping], protocol: str, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """What the run shows, in one paragraph generated from the interval rows: for each headline metric, on how
    many variants (and distinct map sets) each branch is ahead, every map set's delta with its interval, and
    for which the interval excludes 0."""
    chosen = [r for r in rows if r["protocol"] == protocol]
    if not chosen:
        raise ValueError(f"intervals: no rows for protocol '{protocol}'")
    shown = [m for m in metrics if any(r["metric"] == m for r in chosen)] or [chosen[0]["metric"]]
    groups = map_set_groups(rows, [protocol])
    by_key = {(r["variant"], r["metric"]): r for r in chosen}
    level = f"{100 * chosen[0]['confidence']:.0f}%"
    parts = [
        f"**Verdict** (generated from `reports/intervals.json`): sigmoid \u2212 softmax under the headline "
        f"protocol `{protocol}`, the mean over {_models_text(chosen)}, with {level} intervals over images, "
        f"fine-tuning and baseline."
    ]
    better = worse = pairs = 0
    for metric in shown:
        higher = tables.BY_KEY[metric].higher_is_better if metric in tables.BY_KEY else True
        present = [g for g in groups if (g[0], metric) in by_key]
        ahead = [
            g
            for g in present
            if by_key[(g[0], metric)]["delta"] != 0 and (by_key[(g[0], metric)]["delta"] > 0) == higher
        ]
        behind = [g for g in present if by_key[(g[0], metric)]["delta"] != 0 and g not in ahead]
        excl = [g for g in present if by_key[(g[0], metric)]["verdict"] != NO_DIFFERENCE]
        direction = "" if higher else " (lower is better)"
        cells = "; ".join(f"{_label(g)} {tables._interval(by_key[(g[0], metric)])}" for g in present)
        sides = [f"{word} on {_sets(gs, present)}" for word, gs in (("ahead", ahead), ("behind", behind)) if gs]
        level_sets = [g for g in present if g not in ahead and g not in behind]
        if level_sets:
            sides.append(f"level on {_sets(level_sets, present)}")
        text = f"**{tables._metric_label(metric)}**{direction}: the sigmoid branch is {' and '.join(sides)}: {cells}. "
        if excl:
            text += (
                "The interval excludes 0 for "
                + ", ".join(f"{_label(g)} ({by_key[(g[0], metric)]['verdict']})" for g in excl)
                + f"; it contains 0 for the other {len(present) - len(excl)} map set(s)."
            )
        else:
            text += "Every interval contains 0: no detectable difference."
        parts.append(text)
        pairs += len(present)
        better += sum(by_key[(g[0], metric)]["verdict"] == BETTER for g in present)
        worse += sum(by_key[(g[0], metric)]["verdict"] == WORSE for g in present)
    parts.append(
        f"Over these {pairs} (map set, metric) pairs the sigmoid branch is detectably better in "
        f"{better} and detectably worse in {worse}."
    )
    return " ".join(parts) + "\n"


def intervals_section(rows: Sequence[Mapping], evaluation: Mapping, figure_files: Mapping[str, str]) -> list[str]:
    """The deltas with their intervals: the forest figure, the headline protocol's table, the protocol
    ablation, the power and each level's share, every table with one row per distinct map set."""
    headline = evaluation["postprocess"]
    models = rows[0]["models"]
    baselines = sorted({j for j, _ in models})
    finetunes = sorted({k for _, k in models})
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    return [
        "## Is the sigmoid branch better? Deltas with 95% intervals",
        "",
        f"Sigmoid \u2212 softmax for every metric, averaged over the run's {len(models)} model(s) "
        f"({len(baselines)} baseline(s) x {len(finetunes)} fine-tuning replicate(s)), with a 95% interval that "
        "holds three levels of randomness (pipeline/metrics/intervals.py): the test and val images (a paired "
        f"bootstrap within classes, {rows[0]['resamples']} resamples; MaxBoxAcc at the thresholds chosen on "
        f"{evaluation['threshold_split']}, plus half the variance of re-choosing them on resampled "
        f"{evaluation['threshold_split']} images), the fine-tuning seed and the baseline's own "
        "training (the spread of the models' deltas, with Student's t for their few degrees of freedom). "
        f"Baseline level: {evaluation.get('baseline_level', 'not recorded')}. Verdict: the interval lies above "
        "zero (sigmoid better; below zero for Avg Drop), below it (sigmoid worse), or contains it (no "
        "detectable difference at 95%). Variants whose numbers are all identical share a row (`A = B`): one "
        "row per distinct map set.",
        "",
        f"![deltas with their intervals](figures/{figure_files['forest']})",
        "",
        f"**Headline protocol `{headline}`** (the softmax and sigmoid columns are means over the {len(models)} models)",
        "",
        headline_markdown(rows, headline),
        "**Protocol ablation** (the same maps under each post-processing protocol): `official` is the official "
        "code's rule (clamp, ReLU and upsampling differ between the branches); `official_symmetric` applies the "
        "sigmoid branch's official rule to both branches, so `official` minus `official_symmetric` is the "
        "post-processing asymmetry and `official_symmetric` the branch itself under the official rule. Variants "
        "share a row when they agree under every protocol.",
        "",
        tables.ablation_markdown(merge_map_sets(rows, protocols)),
        "**Power**: the half-width of the interval is the smallest effect this run can tell from noise "
        "(median and largest over the distinct map sets).",
        "",
        tables.power_markdown(merge_map_sets(rows, [headline]), headline),
        "**Where the width comes from** (headline protocol): each level's share of the delta's variance; "
        "`n/s` where one fine-tuning replicate per baseline leaves that level inside the baseline level, `-` "
        "where the run has no such level. More baselines (`baseline.replicates`) shrink the baseline share, "
        "more test and val images the image share.",
        "",
        tables.levels_markdown(merge_map_sets(rows, [headline]), headline),
    ]


SIGN_KEYS = ("neg_share_inside", "neg_share_outside", "net_negative_inside")


def sign_merged_markdown(sign: Mapping) -> str:
    """The sign diagnostics with one row per distinct row as shown: variants whose cells read the same share one
    (Grad-CAM's maps are CAM's times a positive factor for a GAP-linear head, equal up to the last float bits)."""
    groups: dict[tuple, list[str]] = {}
    for variant in sign:
        cells = tuple(tables._fmt(sign[variant][b][k]) for b in BRANCHES for k in SIGN_KEYS)
        groups.setdefault(cells, []).append(variant)
    head = ["Map set"]
    for branch in BRANCHES:
        head += [f"{branch}: negative inside box", "negative outside box", "box net negative"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join([_label(group), *cells]) + " |" for cells, group in groups.items()]
    return "\n".join(lines) + "\n"


def first_model_text(intervals: Sequence[Mapping] | None) -> str:
    """Which model the per-model tables show: the run's first (first baseline, first fine-tuning replicate)."""
    if not intervals:
        return "the run's model"
    j, k = intervals[0]["models"][0]
    return f"one model only: baseline {j}, fine-tuning replicate {k}"


def report_markdown(
    frame,
    sign: Mapping,
    evaluation: Mapping,
    classification: Mapping,
    figure_files: Mapping[str, str],
    variants: Sequence[str] | None = None,
    family: str = registry.DEFAULT_FAMILY,
    intervals: Sequence[Mapping] | None = None,
) -> str:
    """reports/README.md: the verdict, the deltas with their intervals (one row per distinct map set), the
    options, the per-model tables folded away, the sign diagnostics and the figures with how to read them.

    `variants`: the run's variants (one gallery each; default: the family's)."""
    e = evaluation
    if variants is None:
        variants = [v.name for v in registry.for_family(family)]
    one = first_model_text(intervals)
    n = len(intervals[0]["models"]) if intervals else 1
    parts = [
        f"# Results: `{e['backbone']}` on `{e['dataset']}`",
        "",
        *([verdict_paragraph(intervals, e["postprocess"])] if intervals else []),
        "Written by the `report` stage (`dvc repro`) from `reports/metrics.json` and `reports/intervals.json`; do "
        "not edit by hand. Values are % on the test split; the delta is sigmoid \u2212 softmax."
        + (
            f" The deltas with their intervals are over all {n} models of the run, and their softmax and sigmoid "
            f"columns are means over those models; the per-branch tables further down ({one}) are folded away "
            "and labelled so, and their numbers are not those means."
            if intervals
            else ""
        ),
        "",
        *(intervals_section(intervals, evaluation, figure_files) if intervals else []),
        "## Options used",
        "",
        tables.options_markdown(evaluation, classification),
        f"## Per-branch numbers ({one})" if intervals else "## Per-branch numbers",
        "",
        "Each metric shows the softmax-branch value, the sigmoid-branch value and the delta; the better branch is "
        "in bold. Layout as in the paper's Table 2; `results.csv` holds the same numbers."
        + (f" These are {one}, not the means over the {n} models above." if intervals else ""),
        "",
        *(
            ["<details>", f"<summary>Per-branch tables, {one} (softmax | sigmoid | \u0394 per metric)</summary>", ""]
            if intervals
            else []
        ),
        tables.results_markdown(frame, family),
        *(["</details>", ""] if intervals else []),
        f"## Sign diagnostics ({one})" if intervals else "## Sign diagnostics",
        "",
        "Raw signed maps of the ground-truth class (before ReLU, clamp or normalisation): the share of the map's "
        "absolute mass that is negative inside and outside the GT box, averaged over images, and the share of "
        "images whose box region sums to a negative value. A softmax map whose object region is negative is "
        "the paper's sign collapse; a ReLU then discards that evidence. Grad-CAM++ (channel weights are sums of "
        "ReLU'd gradients) and LayerCAM (ReLU'd gradients times non-negative activations) have no negative part "
        "by construction, so their rows are zero. Variants with identical rows share one. "
        + (GAP_IDENTITY if family == registry.DEFAULT_FAMILY else GRAD_FAMILY_NOTE),
        "",
        sign_merged_markdown(sign),
        f"![sign diagnostics](figures/{figure_files['sign']})",
        "",
        "## Figures",
        "",
        "**Box accuracy against CAM threshold** (rows: variants; columns: IoU 30 / 50 / 70). The y value is the "
        "share of test images whose best contour box reaches the IoU at that threshold; MaxBoxAccV2 averages "
        "the three panels' chosen values. Dotted lines: the thresholds the evaluate stage chose "
        f"(on `{e['threshold_split']}`). A curve that stays high over a wide range of thresholds is a map that "
        "needs no tuning.",
        "",
        f"![box accuracy against CAM threshold](figures/{figure_files['threshold_curves']})",
        "",
    ]
    if "pr_curves" in figure_files:
        parts += [
            "**Pixel precision-recall** (foreground masks; PxAP is the area under each curve).",
            "",
            f"![pixel precision-recall curves](figures/{figure_files['pr_curves']})",
            "",
        ]
    parts += [
        "**Map galleries** (the same evenly spaced test images in each): left, the image with its GT box; "
        "then each branch's signed map, red positive, blue negative, each scaled by its own max |M|. "
        "Black: GT box. Green dashed: the box the metric draws (largest contour at the branch's chosen "
        "IoU-50 threshold). Under each map: that box's IoU with the GT and the negative share inside "
        "the box.",
        "",
    ]
    parts += [
        f"- {tables.VARIANT_LABELS[v]}: [figures/{figure_files[f'gallery_{v}']}]"
        f"(figures/{figure_files[f'gallery_{v}']})"
        for v in variants
    ]
    first = variants[0]
    parts += ["", f"![{tables.VARIANT_LABELS[first]} gallery](figures/{figure_files[f'gallery_{first}']})", ""]
    return "\n".join(parts)


def build_report(
    *,
    out_dir: Path,
    metrics: Mapping,
    evaluation: Mapping,
    classification: Mapping,
    plots_dir: Path,
    cams: Cams,
    gt: GroundTruth,
    image_root: Path,
    class_names: Sequence[str],
    opts: EvalOptions,
    gallery_images: int,
    dpi: int,
    intervals: Sequence[Mapping] | None = None,
) -> dict:
    """Write README.md, results.csv, sign.json and figures/ under `out_dir`; return the sign diagnostics."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    variants, family = run_variants(cams), run_family(cams)
    frame = tables.results_frame(metrics, evaluation["backbone"], family)
    sign = sign_table(cams, gt)
    name = f"{evaluation['backbone']} on {evaluation['dataset']}"
    files = figure_names(variants)
    figures.threshold_curves(
        figures.read_box_curves(plots_dir / "box_accuracy", variants),
        metrics,
        fig_dir / files["threshold_curves"],
        dpi=dpi,
        title=f"Box accuracy against CAM threshold: {name}",
    )
    pr = figures.read_pr_curves(plots_dir / "pixel_pr", variants)
    if pr is not None:
        figures.pr_curves(pr, metrics, fig_dir / files["pr_curves"], dpi=dpi, title=f"Pixel precision-recall: {name}")
    else:
        files.pop("pr_curves")
    if intervals:
        files["forest"] = "forest.png"
        forest(intervals, fig_dir / files["forest"], dpi=dpi, title=f"Sigmoid \u2212 softmax: {name}")
    figures.sign_bars(sign, fig_dir / files["sign"], dpi=dpi, title=f"Sign of the raw maps: {name}")
    indices = gallery_indices(len(gt.image_ids), gallery_images)
    images = load_grid_images(image_root, [gt.image_ids[i] for i in indices], gt.size)
    rows = cams.index
    labels = [
        f"{class_names[int(rows[i]['label'])][:24]}\npred: "
        f"{'correct' if rows[i]['pred'] == rows[i]['label'] else class_names[int(rows[i]['pred'])][:18]}"
        for i in indices
    ]
    for v in variants:
        panel = gallery_panel(cams, gt, v, indices, metrics, opts)
        figures.gallery(
            images,
            panel.signed,
            [gt.boxes[i] for i in indices],
            panel.pred_boxes,
            panel.captions,
            labels,
            fig_dir / files[f"gallery_{v}"],
            dpi=dpi,
            title=f"{tables.VARIANT_LABELS[v]}, ground-truth class: {name}",
        )
    write_text(out_dir / "results.csv", tables.write_csv_text(frame))
    if intervals:
        write_text(
            out_dir / "summary.md",
            verdict_paragraph(intervals, evaluation["postprocess"])
            + "\n"
            + tables.summary_markdown(intervals, evaluation["postprocess"]),
        )
    write_json(out_dir / "sign.json", sign)
    write_text(
        out_dir / "README.md",
        report_markdown(frame, sign, evaluation, classification, files, variants, family, intervals),
    )
    return sign
