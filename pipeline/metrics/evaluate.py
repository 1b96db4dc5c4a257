"""Evaluate stored CAMs: post-process each (protocol, variant, branch), then box, mask and fidelity metrics.

Plain functions over the CAM shards (`pipeline.cams.store`) and the prepared ground truth
(`pipeline.data.prepare.GroundTruth`); the evaluate stage wires params to them.

Protocols (`PROTOCOLS`, a registry of named post-processing rules): `clean` (one rule for every map),
`official` (METHOD.md 3, per variant: the clamp for the sigmoid branch only) and `official_symmetric`
(official, with the sigmoid branch's rule, clamp included, for both branches: the official difference minus
its post-processing asymmetry). The headline protocol (`EvalOptions.postprocess`, with the single-knob
overrides `weight_clamp`, `relu`, `upsample` on top) fills metrics[variant][branch]; every further named
protocol of `EvalOptions.protocols` fills metrics["protocols"][name][variant][branch].

No duplicate work: every (protocol, variant, branch) is post-processed once to get a content digest of the
maps it would score (test and val score maps, and the fidelity maps); (protocol, variant, branch) triples with
the same digest share one work unit, scored once and reported under each of them, from the maps of the digest
pass where they fit in `MAP_CACHE_BYTES` (else post-processed again, chunk by chunk). Units are dealt to the
ranks of a distributed run (`pipeline.dist.map_shares`), the only parallelism here; each rank batches the
fidelity forwards of its units: per image batch, one forward of the plain images and one forward of the
masked images of several units concatenated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cams import variants as registry
from pipeline.cams.postprocess import PostProcess, clean_options, official_options, postprocess
from pipeline.cams.store import CamSet
from pipeline.concepts import BRANCHES, DEFAULT_THRESHOLD_GRID, IOUS
from pipeline.data.prepare import GroundTruth
from pipeline.metrics import curves as curve_files
from pipeline.metrics.boxes import BoxEvaluator, BoxResult, select_thresholds
from pipeline.metrics.fidelity import FidelityAccumulator, fidelity_scores_many
from pipeline.metrics.masks import MaskEvaluator, MaskResult
from pipeline.metrics.registry import mean_over_ious
from pipeline.train.loops import to_device

CHUNK = 512  # images post-processed at once: bounds memory on large test sets
MAP_CACHE_BYTES = 2 * 2**30  # score maps kept from the digest pass for scoring (whole map sets, up to this)
# Map sets whose masked images share one forward. 1: each set's masked batch is a forward of its own, so its
# composition (and, CPU convolutions depending on the batch size, the scores' last bits) is the same whichever
# rank scores it; a larger group made 2 processes differ from 1 in the 7th digit of an Average Drop.
FIDELITY_GROUP = 1


def _official_symmetric(variant: str, branch: str, size: int) -> PostProcess:
    if branch not in BRANCHES:
        raise ValueError(f"branch: '{branch}' is not valid; choose one of: {', '.join(BRANCHES)}")
    return official_options(variant, "sigmoid", size)


# The rule of each protocol of concepts.PROTOCOLS, in its order (tests/metrics/test_evaluate.py checks it).
PROTOCOLS: dict[str, Callable[[str, str, int], PostProcess]] = {
    "clean": lambda variant, branch, size: clean_options(size),
    "official": official_options,
    "official_symmetric": _official_symmetric,
}


def progress_bar(total: int, show: bool) -> tqdm:
    """evaluate's bar: off when `show` is false; otherwise tqdm's own defaults, so TQDM_DISABLE=1 (and the other
    TQDM_* variables) turn it off as they do every other bar of the pipeline."""
    return tqdm(total=total, desc="evaluate", unit="img", smoothing=0, **({} if show else {"disable": True}))


@dataclass(frozen=True)
class EvalOptions:
    postprocess: str = "clean"  # the headline protocol: a PROTOCOLS name
    weight_clamp: str | None = None  # override of the headline: none | sigmoid | both
    relu: bool | None = None  # override of the headline
    upsample: str | None = None  # override of the headline: bilinear | bicubic
    threshold_grid: str = DEFAULT_THRESHOLD_GRID
    threshold_split: str = "val"  # val | test
    gt_box_match: str = "max"
    loc_threshold: float = 0.2
    iou_thresholds: tuple[int, ...] = IOUS
    protocols: tuple[str, ...] = ()  # further named protocols, scored on the same maps (no overrides)


def _check_protocol(name: str, what: str) -> None:
    if name not in PROTOCOLS:
        raise ValueError(f"{what}: '{name}' is not valid; choose one of: {', '.join(PROTOCOLS)}")


def protocol_options(protocol: str, variant: str, branch: str, size: int) -> PostProcess:
    """The post-processing of a named protocol for (variant, branch)."""
    _check_protocol(protocol, "protocol")
    return PROTOCOLS[protocol](variant, branch, size)


def postprocess_options(variant: str, branch: str, size: int, opts: EvalOptions) -> PostProcess:
    """The headline protocol's post-processing for (variant, branch), with the overrides of `opts` applied."""
    _check_protocol(opts.postprocess, "postprocess")
    base = PROTOCOLS[opts.postprocess](variant, branch, size)
    changes: dict = {}
    if opts.weight_clamp is not None:
        changes["weight_clamp"] = opts.weight_clamp == "both" or (
            opts.weight_clamp == "sigmoid" and branch == "sigmoid"
        )
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
        raise ValueError(
            f"{split}: the CAM shards ({len(ids)} images) and the prepared GT table ({len(gt.image_ids)} "
            f"images) disagree from position {first}; they come from different datasets or runs -- "
            f"rerun `dvc repro` so cams and preprocess match"
        )


def score_maps(
    cams: CamSet,
    variant: str,
    branch: str,
    pp: PostProcess,
    target: str = "gt",
    chunk: int = CHUNK,
    cache: MapCache | None = None,
) -> Iterable[tuple[slice, np.ndarray]]:
    """Yield (image slice, (n, S, S) score maps in [0, 1]) chunk by chunk; from `cache` where it holds the
    set (then taken out of it), else post-processed from the raw maps."""
    key = MapCache.key(cams, variant, branch, pp, target)
    if cache is not None and key in cache.sets:
        yield from cache.take(key)
        return
    pos = cams.select(target=target, part="pos", branch=branch, variant=variant)
    neg = cams.select(target=target, part="neg", branch=branch, variant=variant)
    for start in range(0, len(pos), chunk):
        sl = slice(start, start + chunk)
        yield sl, postprocess(pos[sl], neg[sl], pp)


class MapCache:
    """Post-processed map sets kept between the digest pass and the scoring that follows it, so each set is
    post-processed once: whole sets only, while their total stays within `budget` bytes (a larger test set
    is post-processed again, chunk by chunk, as without a cache). A set leaves the cache when it is used."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget, self.used, self.sets = MAP_CACHE_BYTES if budget is None else budget, 0, {}

    @staticmethod
    def key(cams: CamSet, variant: str, branch: str, pp: PostProcess, target: str) -> tuple:
        """A map set's key: the CAM set object (one evaluation's), its maps' (variant, branch, target) and
        the post-processing."""
        return id(cams), variant, branch, pp, target

    def keep(self, key: tuple, chunks: list[tuple[slice, np.ndarray]]) -> None:
        size = sum(maps.nbytes for _, maps in chunks)
        if key not in self.sets and self.used + size <= self.budget:
            self.sets[key], self.used = chunks, self.used + size

    def take(self, key: tuple) -> list[tuple[slice, np.ndarray]]:
        chunks = self.sets.pop(key)
        self.used -= sum(maps.nbytes for _, maps in chunks)
        return chunks

    def drop(self, key: tuple) -> None:
        if key in self.sets:
            self.take(key)


@dataclass(frozen=True)
class Unit:
    """One distinct map set: (variant, branch) raw maps under post-processing `pp` (`fidelity`: also scored
    for Average Drop / Increase in Confidence)."""

    variant: str
    branch: str
    pp: PostProcess
    fidelity: bool


def _context(
    cams: dict[str, CamSet], gts: dict[str, GroundTruth], opts: EvalOptions, per_image: bool, model=None
) -> bytes:
    """sha256 of everything a unit's result depends on besides its maps: the options, the fidelity model's
    weights, and per split the CAM index (ids, labels, predictions: Top-1 Loc, fidelity targets) and the
    ground truth (boxes, masks)."""
    h = hashlib.sha256(repr((opts, per_image)).encode())
    if model is not None:
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for split in sorted(cams):
        h.update(repr([(r["image_id"], r["label"], r["pred"]) for r in cams[split].index]).encode())
        gt = gts[split]
        for part in (*gt.boxes, gt.fg, gt.ignore):
            h.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
    return h.digest()


def _map_sets(
    cams: dict[str, CamSet], variant: str, branch: str, pp: PostProcess, fidelity: tuple | None
) -> list[tuple[tuple, CamSet, PostProcess, str]]:
    """The map sets a unit scores, as (cache key, CAM set, post-processing, target): the gt maps of each split
    (sorted), then the fidelity maps (`fidelity` = (target, size)) if any."""
    sets = [(cams[split], pp, "gt") for split in sorted(cams)]
    if fidelity is not None:
        target, size = fidelity
        sets.append((cams["test"], replace(pp, size=size), target))
    return [
        (MapCache.key(cam_set, variant, branch, set_pp, target), cam_set, set_pp, target)
        for cam_set, set_pp, target in sets
    ]


def _digest(
    cams: dict[str, CamSet],
    variant: str,
    branch: str,
    pp: PostProcess,
    fidelity: tuple | None,
    context: bytes = b"",
    cache: MapCache | None = None,
) -> str:
    """sha256 of `context` and every score map the unit would score: the gt maps of each split, the fidelity
    maps. The maps go into `cache` (if given and they fit) for the scoring that follows."""
    h = hashlib.sha256(context)
    for k, (key, cam_set, set_pp, target) in enumerate(_map_sets(cams, variant, branch, pp, fidelity)):
        if k == len(cams):
            h.update(f"fidelity:{target}:{set_pp.size}".encode())
        chunks = list(score_maps(cam_set, variant, branch, set_pp, target))
        for _, maps in chunks:
            h.update(np.ascontiguousarray(maps))
        if cache is not None:
            cache.keep(key, chunks)
    return h.hexdigest()


def box_and_mask(
    cams: CamSet,
    gt: GroundTruth,
    variant: str,
    branch: str,
    opts: EvalOptions,
    pp: PostProcess | None = None,
    per_image: bool = False,
    progress: Callable[[int], None] | None = None,
    with_masks: bool = True,
    cache: MapCache | None = None,
) -> tuple[BoxResult, MaskResult | None]:
    """Box metrics (and PxAP where the split has masks, unless `with_masks` is off) of one (variant, branch)
    on one split; `pp` defaults to the headline protocol's post-processing; maps from `cache` where it has
    them."""
    pp = pp or postprocess_options(variant, branch, gt.size, opts)
    correct = np.array([int(r["pred"]) == int(r["label"]) for r in cams.index], dtype=bool)
    masks = MaskEvaluator(grid=opts.threshold_grid, per_image=per_image) if gt.fg is not None and with_masks else None
    boxes = BoxEvaluator(
        grid=opts.threshold_grid,
        iou_thresholds=opts.iou_thresholds,
        loc_threshold=opts.loc_threshold,
        gt_box_match=opts.gt_box_match,
        per_image=per_image,
    )
    for sl, maps in score_maps(cams, variant, branch, pp, cache=cache):
        boxes.accumulate(maps, gt.boxes[sl], correct[sl])
        if masks is not None:
            masks.accumulate(maps, gt.fg[sl], gt.ignore[sl])
        if progress:
            progress(len(maps))
    return boxes.compute(), (masks.compute() if masks is not None else None)


def fidelity_many(
    model,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    cams: CamSet,
    units: list[Unit],
    target: str,
    progress: Callable[[int], None] | None = None,
    group: int = FIDELITY_GROUP,
    y_cache: dict | None = None,
    cache: MapCache | None = None,
) -> list[dict]:
    """Average Drop / Increase in Confidence of several map sets, scored by the softmax head, in one pass over
    the images: per batch one forward of the images (Y) and, per group of `group` units, one forward of their
    masked images concatenated (O). `batches()` yields the (normalised images, labels) of the split in CAM
    order; the maps are those of the `target` kind ('gt' or 'pred'), post-processed to the input size, and
    the target class is the label or the softmax prediction accordingly. `y_cache` (a dict the caller keeps for
    one model, image split and target) holds Y per batch, so later calls on the same images skip that forward.
    A unit's maps come from `cache` where it has them at the images' size."""
    if not units:
        return []
    preds = torch.tensor([int(r["pred"]) for r in cams.index])
    accs = [FidelityAccumulator() for _ in units]
    raw = [
        (
            cams.select(target=target, part="pos", branch=u.branch, variant=u.variant),
            cams.select(target=target, part="neg", branch=u.branch, variant=u.variant),
        )
        for u in units
    ]
    cached: dict[int, np.ndarray] = {}  # unit index -> its whole map set, from the cache

    def unit_maps(k: int, start: int, n: int, size: int) -> np.ndarray:
        u, (pos, neg) = units[k], raw[k]
        pp = replace(u.pp, size=size)
        key = MapCache.key(cams, u.variant, u.branch, pp, target)
        if k not in cached and cache is not None and key in cache.sets:
            chunks = cache.take(key)
            cached[k] = chunks[0][1] if len(chunks) == 1 else np.concatenate([maps for _, maps in chunks])
        if k in cached:
            return cached[k][start : start + n]
        return postprocess(pos[start : start + n], neg[start : start + n], pp)

    start = 0
    device = next(model.parameters()).device
    for images, labels in batches():
        n = len(labels)
        size = images.shape[-1]
        classes = (preds[start : start + n] if target == "pred" else labels).to(device)
        images = to_device(images, device)
        y = None if y_cache is None else y_cache.get((start, n))
        for g in range(0, len(units), group):
            cams_list = [
                torch.from_numpy(np.ascontiguousarray(unit_maps(k, start, n, size))).to(device)
                for k in range(g, min(g + group, len(units)))
            ]
            y_g, outs = fidelity_scores_many(model, images, cams_list, classes, y=y)
            y = y_g
            for acc, o in zip(accs[g : g + group], outs):
                acc.accumulate(y, o)
        if y_cache is not None:
            y_cache[(start, n)] = y
        start += n
        if progress:
            progress(n * len(units))
    if start != len(cams.index):
        raise ValueError(f"fidelity: the image loader gave {start} images, the CAM set holds {len(cams.index)}")
    return [acc.compute() for acc in accs]


def fidelity(
    model,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    cams: CamSet,
    variant: str,
    branch: str,
    pp: PostProcess,
    target: str,
) -> dict:
    """Average Drop / Increase in Confidence of one (variant, branch) (`fidelity_many` of one unit)."""
    return fidelity_many(model, batches, cams, [Unit(variant, branch, pp, True)], target)[0]


def evaluate_all(
    cams: dict[str, CamSet],
    gts: dict[str, GroundTruth],
    opts: EvalOptions,
    *,
    model=None,
    batches=None,
    fidelity_target: str = "pred",
    fidelity_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    map_units: Callable[[list, Callable, list], list] | None = None,
    on_result: Callable[..., None] | None = None,
    show_progress: bool = False,
    memo: dict | None = None,
) -> tuple[dict, dict]:
    """Metrics of every (protocol, variant, branch) on the test split; returns (metrics, curves).

    metrics[variant][branch] (the headline protocol, `opts.postprocess` with its overrides) holds
    maxboxacc_v2, maxboxacc_iou{30,50,70}, maxboxacc (v1: largest contour, IoU 50), gt_known_loc, top1_loc,
    best thresholds, and pxap / avg_drop / inc_conf where computed; metrics["protocols"][name] holds the same
    for every further protocol of `opts.protocols` (fidelity: headline only). With `threshold_split: val` the
    MaxBoxAcc thresholds are chosen on val and the numbers are test accuracies at those thresholds.
    metrics['top1_cls'] is the softmax branch's test accuracy. curves[(variant, branch)] (headline) =
    {"thresholds", "box": {column: per-threshold accuracy (%)}, "pr": (precision, recall) or None}.

    `map_units(units, fn, weights)` returns fn(units) (one result per unit, in order); pipeline.dist.map_shares
    deals the units to the ranks of a distributed run. `on_result(key, box_result, mask_result,
    fidelity_result)` is called for every key = (protocol, variant, branch, split) with the per-image arrays
    (BoxResult.per_image_*, MaskResult.per_image_*, fidelity's avg_drop_terms / inc_conf_flags; mask and
    fidelity None where not computed: masks on val, fidelity on val and outside the headline), so a bootstrap
    can stream over them; the headline protocol's key is its `opts.postprocess` name. Off (None) by default:
    the per-image arrays are then not kept.

    No duplicate work: a key is scored from the maps of `variants.map_source` (CAM's for Grad-CAM and XGrad-CAM
    when the CAM set's heads are GAP-linear, manifest `gap_linear_heads`), and keys whose score maps have one
    content digest share one unit. `memo` (a dict, kept by the caller across calls) maps digests to results:
    a unit found there is not scored again, so the softmax branch, frozen and the same in every fine-tuning
    replicate, is scored once for all replicates; the results are the same objects, the bytes the same.
    """
    for split, cam in cams.items():
        check_alignment(cam, gts[split], split)
    for name in opts.protocols:
        _check_protocol(name, "protocols")
    test = cams["test"]
    size = gts["test"].size
    with_fidelity = model is not None and batches is not None
    fidelity_key = (fidelity_target, fidelity_size or size) if with_fidelity else None
    splits = ["test"] + (["val"] if opts.threshold_split == "val" else [])
    scored = {s: cams[s] for s in splits}
    headline = opts.postprocess
    protocols = [headline] + [p for p in opts.protocols if p != headline]

    # 1. every (protocol, variant, branch) -> a unit, by content digest of the maps it scores
    variants = test.manifest["variants"]  # the CAM set's own variants (its family's)
    gap_heads = all(bool(cams[s].manifest.get("gap_linear_heads")) for s in splits)
    memo = {} if memo is None else memo
    per_image = on_result is not None
    context = _context(scored, gts, opts, per_image, model if with_fidelity else None)
    keys, digest_of, units, unit_digests, seen = [], {}, [], [], {}
    cache = MapCache()  # each unit's maps, post-processed once for its digest and again only if they do not fit
    for protocol in protocols:
        for variant in variants:
            source = registry.map_source(variant, gap_heads)
            source = source if source in variants else variant
            for branch in BRANCHES:
                pp = (
                    postprocess_options(variant, branch, size, opts)
                    if protocol == headline
                    else protocol_options(protocol, variant, branch, size)
                )
                wants_fidelity = with_fidelity and protocol == headline
                spec = (source, branch, pp, wants_fidelity)
                fid = fidelity_key if wants_fidelity else None
                if spec not in seen:
                    seen[spec] = _digest(scored, source, branch, pp, fid, context, cache)
                    if seen[spec] in memo or seen[spec] in unit_digests:  # scored already: its maps are not needed
                        for key, *_ in _map_sets(scored, source, branch, pp, fid):
                            cache.drop(key)
                d = seen[spec]
                if d not in memo and d not in unit_digests:
                    unit_digests.append(d)
                    units.append(Unit(source, branch, pp, wants_fidelity))
                keys.append((protocol, variant, branch))
                digest_of[(protocol, variant, branch)] = d
    if progress:
        progress(
            f"{len(keys)} (protocol, variant, branch) map sets, {len(set(digest_of.values()))} distinct, "
            f"{len(units)} to score ({len(set(digest_of.values())) - len(units)} scored before)"
        )
    n_box = sum(len(cams[s].index) for s in splits)
    n_fid = len(test.index)
    weights = [n_box + (4 * n_fid if u.fidelity else 0) for u in units]  # a forward costs ~4 box evaluations

    def work(mine: list[Unit]) -> list[dict]:
        total = sum(n_box + (n_fid if u.fidelity else 0) for u in mine)
        bar = progress_bar(total, show_progress)
        results = []
        for u in mine:
            out = {}
            for split in splits:
                out[split] = box_and_mask(
                    cams[split],
                    gts[split],
                    u.variant,
                    u.branch,
                    opts,
                    u.pp,
                    per_image=per_image,
                    progress=bar.update,
                    with_masks=split == "test",
                    cache=cache,
                )  # PxAP is a test number
            results.append(out)
        fid_units = [i for i, u in enumerate(mine) if u.fidelity]
        if fid_units:
            y_cache = memo.setdefault(("fidelity Y", context, fidelity_target), {})  # Y: once per image batch
            scores = fidelity_many(
                model,
                batches,
                test,
                [mine[i] for i in fid_units],
                fidelity_target,
                progress=bar.update,
                y_cache=y_cache,
                cache=cache,
            )
            for i, s in zip(fid_units, scores):
                results[i]["fidelity"] = s if per_image else {k: s[k] for k in ("avg_drop", "inc_conf", "n")}
        bar.close()
        return results

    fresh = (map_units(units, work, weights) if map_units is not None else work(units)) if units else []
    memo.update(zip(unit_digests, fresh))

    # 2. report every key from its unit
    metrics: dict = {"top1_cls": 100.0 * float(np.mean([int(r["pred"]) == int(r["label"]) for r in test.index]))}
    curves: dict = {}
    for protocol, variant, branch in keys:
        r = memo[digest_of[(protocol, variant, branch)]]
        box, mask = r["test"]
        chosen = None
        if opts.threshold_split == "val":
            val_box, _ = r["val"]
            chosen = {mode: select_thresholds(val_box, mode) for mode in ("multi", "single")}
        m = box_summary(box, chosen, opts.iou_thresholds)
        if mask is not None:
            m["pxap"] = mask.pxap
        fid = r.get("fidelity") if protocol == headline else None
        if fid is not None:
            m.update({k: fid[k] for k in ("avg_drop", "inc_conf")})
        if protocol == headline:
            metrics.setdefault(variant, {})[branch] = m
            accuracy = box.box_accuracy("multi")
            columns = {curve_files.iou_column(d): accuracy[i] for i, d in enumerate(opts.iou_thresholds)}
            if 50 in opts.iou_thresholds:  # MaxBoxAcc (v1): the largest contour at IoU 50
                columns[curve_files.LARGEST_CONTOUR] = box.box_accuracy("single")[opts.iou_thresholds.index(50)]
            curves[(variant, branch)] = {
                "thresholds": box.thresholds,
                "box": columns,
                "pr": (mask.precision, mask.recall) if mask is not None else None,
            }
        else:
            metrics.setdefault("protocols", {}).setdefault(protocol, {}).setdefault(variant, {})[branch] = m
        if on_result is not None:
            for split in splits:
                b, msk = r[split]
                on_result((protocol, variant, branch, split), b, msk, fid if split == "test" else None)
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
    out = {
        "maxboxacc_v2": float(mean_over_ious(np.array(list(per_iou.values())))),
        "maxboxacc": v1,
        "gt_known_loc": box.gt_known_loc,
        "top1_loc": box.top1_loc,
    }
    out.update({f"maxboxacc_iou{d}": per_iou[d] for d in iou_thresholds})
    out.update({f"best_threshold_iou{d}": thresholds[d] for d in iou_thresholds})
    return out
