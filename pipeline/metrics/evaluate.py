"""Evaluate stored CAMs: post-process each (variant, branch), then box, mask and fidelity metrics.

Plain functions over the CAM shards (`pipeline.cams.store`) and the prepared ground truth
(`pipeline.data.prepare.GroundTruth`); the evaluate stage wires params to them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.cams.engine import BRANCHES, VARIANTS
from pipeline.cams.postprocess import PostProcess, clean_options, official_options, postprocess
from pipeline.cams.store import CamSet
from pipeline.data.prepare import GroundTruth
from pipeline.metrics.boxes import BoxEvaluator, BoxResult, select_thresholds
from pipeline.metrics.fidelity import FidelityAccumulator, fidelity_scores
from pipeline.metrics.masks import MaskEvaluator, MaskResult

CHUNK = 512  # images post-processed at once: bounds memory on large test sets


@dataclass(frozen=True)
class EvalOptions:
    postprocess: str = "clean"            # clean | official
    weight_clamp: str | None = None       # override: none | sigmoid | both
    relu: bool | None = None              # override
    upsample: str | None = None           # override: bilinear | bicubic
    threshold_grid: str = "wsol"
    threshold_split: str = "val"          # val | test
    gt_box_match: str = "max"
    loc_threshold: float = 0.2
    iou_thresholds: tuple[int, ...] = (30, 50, 70)
    workers: int = 1


def postprocess_options(variant: str, branch: str, size: int, opts: EvalOptions) -> PostProcess:
    """The preset's post-processing for (variant, branch), with the overrides of `opts` applied."""
    if opts.postprocess == "official":
        base = official_options(variant, branch, size)
    elif opts.postprocess == "clean":
        base = clean_options(size)
    else:
        raise ValueError(f"postprocess: '{opts.postprocess}' is not valid; choose one of: clean, official")
    changes: dict = {}
    if opts.weight_clamp is not None:
        changes["weight_clamp"] = opts.weight_clamp == "both" or (opts.weight_clamp == "sigmoid" and branch == "sigmoid")
    if opts.relu is not None:
        changes["relu"] = opts.relu
    if opts.upsample is not None:
        changes["upsample"] = opts.upsample
    return replace(base, **changes)


def check_alignment(cams: CamSet, gt: GroundTruth, split: str) -> None:
    """The CAM index must list exactly the prepared images of the split, in the same order."""
    ids = [row["image_id"] for row in cams.index]
    if ids != gt.image_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, gt.image_ids)) if a != b), min(len(ids), len(gt.image_ids)))
        raise ValueError(f"{split}: the CAM shards ({len(ids)} images) and the prepared GT table ({len(gt.image_ids)} "
                         f"images) disagree from position {first}; they come from different datasets or runs -- "
                         f"rerun `dvc repro` so cams and preprocess match")


def score_maps(cams: CamSet, variant: str, branch: str, pp: PostProcess, target: str = "gt",
               chunk: int = CHUNK) -> Iterable[tuple[slice, np.ndarray]]:
    """Yield (image slice, (n, S, S) score maps in [0, 1]) chunk by chunk."""
    pos = cams.select(target=target, part="pos", branch=branch, variant=variant)
    neg = cams.select(target=target, part="neg", branch=branch, variant=variant)
    for start in range(0, len(pos), chunk):
        sl = slice(start, start + chunk)
        yield sl, postprocess(pos[sl], neg[sl], pp)


def box_and_mask(cams: CamSet, gt: GroundTruth, variant: str, branch: str, opts: EvalOptions
                 ) -> tuple[BoxResult, MaskResult | None]:
    """Box metrics (and PxAP where the split has masks) of one (variant, branch) on one split."""
    pp = postprocess_options(variant, branch, gt.size, opts)
    correct = np.array([int(r["pred"]) == int(r["label"]) for r in cams.index], dtype=bool)
    masks = MaskEvaluator(grid=opts.threshold_grid) if gt.fg is not None else None
    with BoxEvaluator(grid=opts.threshold_grid, iou_thresholds=opts.iou_thresholds,
                      loc_threshold=opts.loc_threshold, gt_box_match=opts.gt_box_match,
                      workers=opts.workers) as boxes:
        for sl, maps in score_maps(cams, variant, branch, pp):
            boxes.accumulate(maps, gt.boxes[sl], correct[sl])
            if masks is not None:
                masks.accumulate(maps, gt.fg[sl], gt.ignore[sl])
        result = boxes.compute()
    return result, (masks.compute() if masks is not None else None)


def fidelity(model, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], cams: CamSet,
             variant: str, branch: str, pp: PostProcess, target: str) -> dict:
    """Average Drop / Increase in Confidence of one (variant, branch), scored by the softmax head.

    `batches()` yields the (normalised images, labels) of the split in CAM order; the maps are those of the
    `target` kind ('gt' or 'pred'), post-processed to the input size, and the target class is the label or
    the softmax prediction accordingly.
    """
    preds = torch.tensor([int(r["pred"]) for r in cams.index])
    acc = FidelityAccumulator()
    maps = cams.select(target=target, part="pos", branch=branch, variant=variant)
    neg = cams.select(target=target, part="neg", branch=branch, variant=variant)
    start = 0
    device = next(model.parameters()).device
    for images, labels in batches():
        n = len(labels)
        size = images.shape[-1]
        cam = torch.from_numpy(postprocess(maps[start:start + n], neg[start:start + n], replace(pp, size=size)))
        classes = preds[start:start + n] if target == "pred" else labels
        y, o = fidelity_scores(model, images.to(device), cam.to(device), classes.to(device))
        acc.accumulate(y, o)
        start += n
    if start != len(maps):
        raise ValueError(f"fidelity: the image loader gave {start} images, the CAM set holds {len(maps)}")
    return acc.compute()


def evaluate_all(cams: dict[str, CamSet], gts: dict[str, GroundTruth], opts: EvalOptions, *,
                 model=None, batches=None, fidelity_target: str = "pred",
                 progress: Callable[[str], None] | None = None,
                 map_pairs: Callable[[list, Callable], list] | None = None) -> tuple[dict, dict]:
    """Metrics of every (variant, branch) on the test split; returns (metrics, curves).

    metrics[variant][branch] holds maxboxacc_v2, maxboxacc_iou{30,50,70}, maxboxacc (v1: largest contour,
    IoU 50), gt_known_loc, top1_loc, best thresholds, and pxap / avg_drop / inc_conf where computed; with
    `threshold_split: val` the MaxBoxAcc thresholds are chosen on val and the numbers are test accuracies
    at those thresholds. metrics['top1_cls'] is the softmax branch's test accuracy (frozen, so it is the
    baseline's). curves[(variant, branch)] = {"thresholds", "box": {column: per-threshold accuracy (%)},
    "pr": (precision, recall) or None}.

    `map_pairs(pairs, fn)` returns [fn(pair) for pair in pairs]; pipeline.dist.map_items spreads the
    (variant, branch) pairs over the ranks of a distributed run (each pair computed as in one process).
    """
    for split, cam in cams.items():
        check_alignment(cam, gts[split], split)
    test = cams["test"]
    metrics: dict = {"top1_cls": 100.0 * float(np.mean([int(r["pred"]) == int(r["label"]) for r in test.index]))}
    curves: dict = {}

    def pair(variant_branch: tuple[str, str]) -> tuple[dict, dict]:
        variant, branch = variant_branch
        if progress:
            progress(f"{variant}/{branch}")
        box, mask = box_and_mask(test, gts["test"], variant, branch, opts)
        chosen = None
        if opts.threshold_split == "val":
            val_box, _ = box_and_mask(cams["val"], gts["val"], variant, branch, opts)
            chosen = {mode: select_thresholds(val_box, mode) for mode in ("multi", "single")}
        m = box_summary(box, chosen, opts.iou_thresholds)
        if mask is not None:
            m["pxap"] = mask.pxap
        if model is not None and batches is not None:
            pp = postprocess_options(variant, branch, gts["test"].size, opts)
            m.update({k: v for k, v in fidelity(model, batches, test, variant, branch, pp, fidelity_target).items()
                      if k in ("avg_drop", "inc_conf")})
        accuracy = box.box_accuracy("multi")
        columns = {f"iou{d}": accuracy[i] for i, d in enumerate(opts.iou_thresholds)}
        if 50 in opts.iou_thresholds:  # MaxBoxAcc (v1): the largest contour at IoU 50
            columns["largest_contour_iou50"] = box.box_accuracy("single")[opts.iou_thresholds.index(50)]
        return m, {"thresholds": box.thresholds, "box": columns,
                   "pr": (mask.precision, mask.recall) if mask is not None else None}

    pairs = [(variant, branch) for variant in test.manifest["variants"] for branch in BRANCHES]
    results = map_pairs(pairs, pair) if map_pairs is not None else [pair(vb) for vb in pairs]
    for (variant, branch), (m, curve) in zip(pairs, results):
        metrics.setdefault(variant, {})[branch] = m
        curves[(variant, branch)] = curve
    return metrics, curves


def box_summary(box: BoxResult, chosen: dict | None, iou_thresholds: tuple[int, ...]) -> dict:
    """Flat numbers of a BoxResult; with `chosen` ({"multi"|"single": grid index per IoU}, selected on another
    split) MaxBoxAcc is the accuracy at those thresholds instead of the oracle maximum."""
    if chosen is None:
        per_iou, thresholds, v1 = box.maxboxacc_iou, box.best_threshold, box.maxboxacc_v1
    else:
        per_iou = box.at_thresholds(chosen["multi"], "multi")
        thresholds = {d: float(box.thresholds[chosen["multi"][d]]) for d in iou_thresholds}
        v1 = box.at_thresholds(chosen["single"], "single")[50]
    out = {"maxboxacc_v2": float(np.mean(list(per_iou.values()))), "maxboxacc": v1,
           "gt_known_loc": box.gt_known_loc, "top1_loc": box.top1_loc}
    out.update({f"maxboxacc_iou{d}": per_iou[d] for d in iou_thresholds})
    out.update({f"best_threshold_iou{d}": thresholds[d] for d in iou_thresholds})
    return out
