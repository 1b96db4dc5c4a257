"""Evaluate stored CAMs: post-process each (protocol, variant, branch), then box, mask and fidelity metrics.

Plain functions over the CAM shards (`pipeline.cams.store`) and the prepared ground truth
(`pipeline.data.prepare.GroundTruth`); the evaluate stage wires params to them.

Protocols (`PROTOCOLS`, a registry of named post-processing rules): `clean` (one rule for every map),
`official` (METHOD.md 3, per variant: the clamp for the sigmoid branch only) and `official_symmetric`
(official, with the sigmoid branch's rule, clamp included, for both branches: the official difference minus
its post-processing asymmetry). The headline protocol (`EvalOptions.postprocess`, with the single-knob
overrides `weight_clamp`, `relu`, `upsample` on top) fills metrics[variant][branch]; every further named
protocol of `EvalOptions.protocols` fills metrics["protocols"][name][variant][branch].

Bounded memory, and work that divides over the ranks of a distributed run (`evaluate_models`). Every split's
images are cut into blocks of whole fidelity batches (`image_blocks`, about BLOCK images, the same whatever
the ranks); a rank takes a contiguous run of them (`rank_blocks`) and reads only those images' maps, one
block at a time, from the memory-mapped shards. No duplicate work: every key (model, protocol, variant,
branch) is first digested block by block from its raw maps and its post-processing; keys whose maps agree
(CAM = Grad-CAM = XGrad-CAM with GAP-linear heads, a protocol that changes nothing for a variant, a baseline's
frozen softmax branch in every fine-tuning replicate) form one unit, post-processed and scored once.
Fidelity runs per baseline model, each rank decoding its own images. Box scoring runs a group of units at a
time, so their bootstrap sums stay within SUMS_BUDGET. Each unit's partial sums from every rank go to one
rank, which reduces them to the intervals' per-replicate values; only those and the integer counters reach
rank 0. Counters are integers, and the one float sum (Average Drop) is made per batch and per block and added
in image order, so P ranks give the bits of one process.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cams import variants as registry
from pipeline.cams.postprocess import PostProcess, clean_options, official_options, postprocess
from pipeline.cams.store import CamSet, select
from pipeline.concepts import BRANCHES, DEFAULT_THRESHOLD_GRID, IOUS
from pipeline.data.prepare import GroundTruth
from pipeline.metrics import curves as curve_files
from pipeline.metrics.boxes import BoxEvaluator, BoxResult, select_thresholds, threshold_grid
from pipeline.metrics.fidelity import FidelityAccumulator, fidelity_scores_many, from_batches
from pipeline.metrics.intervals import add_sums, box_sums, fidelity_sums, finish_sums, mask_sums
from pipeline.metrics.masks import MaskEvaluator, MaskResult
from pipeline.metrics.registry import mean_over_ious
from pipeline.train.loops import to_device

BLOCK = 128  # images read, digested and summed at once (rounded up to whole fidelity batches); small enough
# that a 1,000-image split feeds several ranks
SCORE_CHUNK = 64  # images post-processed and scored at once: 64 x 224 x 224 float32 maps are 12.8 MB
# The bootstrap sums of the map sets scored together (`unit_bytes` each; 48 MB at 1,000 resamples with masks
# and val thresholds): more sets per pass read the raw maps fewer times, fewer bound the memory.
SUMS_BUDGET = 2**30


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


# ----------------------------------------------------------------------------------------------------
# Image blocks and their ranks


def image_blocks(n: int, batch_size: int = 1, block: int | None = None) -> list[tuple[int, int]]:
    """The images 0..n-1 cut into blocks of whole batches of `batch_size` (about `block` images each): the unit
    of reading, digesting and bootstrap sums. The blocks depend on n and the batch size only, never on the
    number of ranks, so every float sum made block by block is the same in one process and in P."""
    block = BLOCK if block is None else block
    size = batch_size * max(1, -(-block // batch_size))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def rank_blocks(blocks: list[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """Rank `rank`'s share of `blocks`: a contiguous run of about len(blocks) / world of them, in order (the
    ranks' runs, in rank order, are the blocks in order)."""
    k = len(blocks)
    return blocks[rank * k // world : (rank + 1) * k // world]


def _span(blocks: list[tuple[int, int]]) -> tuple[int, int]:
    return (blocks[0][0], blocks[-1][1]) if blocks else (0, 0)


# ----------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class ModelMaps:
    """One model's CAM sets: `model` = (baseline j, fine-tuning replicate k); `cams` maps a split to its CAM
    set (`pipeline.cams.store.CamStore`, streamed, or an in-memory `CamSet`)."""

    model: tuple[int, int]
    cams: dict


@dataclass(frozen=True)
class Fidelity:
    """What Average Drop / Increase in Confidence need: `model(j)` the softmax-scoring network of baseline j
    (loaded when asked, one at a time); `batches(lo, hi)` the normalised test images lo..hi-1 with their labels
    in CAM order, in batches of `batch_size` counted from lo (lo is a multiple of it); `target` 'gt' or 'pred'
    (which maps, which class); `size` the images' side (the maps are post-processed to it)."""

    model: Callable[[int], torch.nn.Module]
    batches: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    batch_size: int
    size: int
    target: str = "pred"


class WorkLog:
    """Counters and CPU seconds per phase of one rank's evaluation (the scale benchmark reads them:
    benchmarks/bench_evaluate_scale.py). Written as JSON where the stage is asked to (EVALUATE_WORK_LOG)."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, int]] = {}
        self.cpu_s: dict[str, float] = {}
        self._phase, self._since = None, 0.0

    def count(self, phase: str, **counters: int) -> None:
        box = self.phases.setdefault(phase, {})
        for name, value in counters.items():
            box[name] = box.get(name, 0) + int(value)

    def enter(self, phase: str | None) -> None:
        """CPU time from now on counts for `phase` (None: for nothing)."""
        now = time.process_time()
        if self._phase is not None:
            self.cpu_s[self._phase] = self.cpu_s.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now

    def as_dict(self) -> dict:
        self.enter(self._phase)
        return {"phases": self.phases, "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()}}


# ----------------------------------------------------------------------------------------------------
# Digests: which keys hold the same maps


def _canonical(pp: PostProcess, neg_is_zero: bool) -> PostProcess:
    """The post-processing that gives the same maps on this block: with an all-zero `neg` the clamp changes
    nothing (pos + 0 = pos), so both spellings share a digest (Grad-CAM++ and LayerCAM have no negative
    weights: the official and official_symmetric softmax maps are one set)."""
    return replace(pp, weight_clamp=True) if neg_is_zero and not pp.weight_clamp else pp


class _Block:
    """One block of images of one split: every model's maps of those images, read from its CAM set when first
    asked for (whole image records, one read per shard), and each raw map slice digested once."""

    def __init__(self, models: list[ModelMaps], split: str, start: int, stop: int, log: WorkLog) -> None:
        self.models, self.split, self.start, self.stop, self.log = models, split, start, stop, log
        self._blocks: dict = {}
        self._hash: dict = {}

    def maps(self, m: int, target: str, part: str, branch: str, variant: str) -> np.ndarray:
        store = self.models[m].cams[self.split]
        if m not in self._blocks:
            self._blocks[m] = store.block(self.start, self.stop)
            self.log.count("read", bytes=self._blocks[m].nbytes)
        return select(self._blocks[m], store.manifest, target=target, part=part, branch=branch, variant=variant)

    def _raw_digest(self, m: int, target: str, part: str, branch: str, variant: str) -> tuple[bytes, bool]:
        key = (m, target, part, branch, variant)
        if key not in self._hash:
            arr = np.ascontiguousarray(self.maps(m, target, part, branch, variant))
            self._hash[key] = (hashlib.sha256(arr).digest(), not arr.any())
        return self._hash[key]

    def digest(self, m: int, target: str, spec: _Spec, context: bytes) -> bytes:
        """Digest of the score maps of `spec` for model m on this block, with `context` (what the result
        depends on besides the maps: the images' predictions, the fidelity model): of the raw maps it reads
        and the canonical post-processing."""
        pos, _ = self._raw_digest(m, target, "pos", spec.branch, spec.source)
        neg, neg_zero = self._raw_digest(m, target, "neg", spec.branch, spec.source)
        pp = _canonical(spec.pp, neg_zero)
        h = hashlib.sha256(repr((pp, target)).encode())
        h.update(context)
        h.update(pos)
        if not pp.weight_clamp:
            h.update(neg)
        return h.digest()


# ----------------------------------------------------------------------------------------------------
# Accumulators of a map set


class _BoxAcc:
    """A map set's box counters (and PxAP histograms on test) over the images so far, and its bootstrap sums."""

    def __init__(self) -> None:
        self.box: dict | None = None
        self.fg = self.bg = None
        self.sums: dict = {}

    def add(self, box: BoxResult, mask: MaskResult | None, sums: dict | None) -> None:
        counts = {
            "n": box.n_images,
            "multi": box.multi_counts,
            "single": box.single_counts,
            "gt_known": box.gt_known_count,
            "top1_loc": box.top1_loc_count,
        }
        self.merge_counts(counts, None if mask is None else mask.fg_hist, None if mask is None else mask.bg_hist)
        if sums:
            add_sums(self.sums, sums)

    def merge_counts(self, box: dict | None, fg, bg) -> None:
        if box is not None:
            self.box = box if self.box is None else {k: self.box[k] + v for k, v in box.items()}
        if fg is not None:
            self.fg = fg if self.fg is None else self.fg + fg
            self.bg = bg if self.bg is None else self.bg + bg

    def merge(self, other: _BoxAcc) -> _BoxAcc:
        """This accumulator (earlier images) and `other` (the next images) together; `other` is not changed
        (nothing here is summed in place, so accumulators may share arrays)."""
        self.merge_counts(other.box, other.fg, other.bg)
        add_sums(self.sums, other.sums)
        return self


class _FidAcc:
    """A map set's fidelity sums over the images so far: per batch (sum of drops, sum of flags, images), and
    the bootstrap sums."""

    def __init__(self) -> None:
        self.batches: list = []
        self.sums: dict = {}

    def add(self, batches: list, sums: dict | None) -> None:
        self.batches.extend(batches)
        if sums:
            add_sums(self.sums, sums)

    def merge(self, other: _FidAcc) -> _FidAcc:
        self.add(other.batches, other.sums)
        return self


def unit_bytes(resamples: int, n_iou: int, n_thr: int, masks: bool, val: bool) -> int:
    """The bootstrap sums one distinct map set keeps while it is scored (test, and val where thresholds are
    chosen there): float32 box sums (R + 1) x (n_iou x n_thr + n_thr + 2), float64 PxAP sums 2 x (R + 1) x
    (n_thr + 3) bins."""
    box = 4 * (resamples + 1) * (n_iou * n_thr + n_thr + 2)
    return box * (2 if val else 1) + (16 * (resamples + 1) * (n_thr + 3) if masks else 0)


# ----------------------------------------------------------------------------------------------------
# The evaluation


@dataclass(frozen=True)
class _Spec:
    source: str  # the variant whose raw maps are read (`variants.map_source`)
    branch: str
    pp: PostProcess


def _specs(models: list[ModelMaps], split_cams: list, opts: EvalOptions, size: int) -> tuple[list, dict]:
    """Every key (m, protocol, variant, branch) with the maps it scores; the headline first."""
    headline = opts.postprocess
    protocols = [headline] + [p for p in opts.protocols if p != headline]
    keys, specs = [], {}
    for m, mm in enumerate(models):
        test = mm.cams["test"]
        variants = test.manifest["variants"]
        gap_heads = all(bool(mm.cams[s].manifest.get("gap_linear_heads")) for s in split_cams)
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
                    key = (m, protocol, variant, branch)
                    keys.append(key)
                    specs[key] = _Spec(source, branch, pp)
    return keys, specs


def _index_arrays(models: list[ModelMaps], split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per model, the split's softmax predictions and whether each is right (Top-1 Loc, fidelity targets)."""
    preds, correct = [], []
    for mm in models:
        rows = mm.cams[split].index
        p = np.array([int(r["pred"]) for r in rows], dtype=np.int64)
        preds.append(p)
        correct.append(p == np.array([int(r["label"]) for r in rows], dtype=np.int64))
    return preds, correct


def _score_block(
    block: _Block,
    key: tuple,
    spec: _Spec,
    gt: GroundTruth,
    correct: np.ndarray,
    opts: EvalOptions,
    with_masks: bool,
    w: np.ndarray | None,
    acc: _BoxAcc,
    observe: Callable | None,
) -> list:
    """Box (and mask) counters and bootstrap sums of one map set on one block into `acc`, SCORE_CHUNK images
    at a time (bounded work arrays); the chunks' results where `observe` wants them."""
    log, start, stop, split = block.log, block.start, block.stop, block.split
    pos = block.maps(key[0], "gt", "pos", spec.branch, spec.source)
    neg = None if spec.pp.weight_clamp else block.maps(key[0], "gt", "neg", spec.branch, spec.source)
    per_image = w is not None or observe is not None
    chunks, scored = [], []
    for a in range(0, stop - start, SCORE_CHUNK):
        b = min(a + SCORE_CHUNK, stop - start)
        log.enter("postprocess")
        maps = postprocess(pos[a:b], None if neg is None else neg[a:b], spec.pp)
        log.count("postprocess", maps=b - a)
        log.enter("score")
        boxes = BoxEvaluator(
            grid=opts.threshold_grid,
            iou_thresholds=opts.iou_thresholds,
            loc_threshold=opts.loc_threshold,
            gt_box_match=opts.gt_box_match,
            per_image=per_image,
        )
        sl = slice(start + a, start + b)
        boxes.accumulate(maps, gt.boxes[sl], correct[sl])
        box = boxes.compute()
        mask = None
        if with_masks:
            masks = MaskEvaluator(grid=opts.threshold_grid, per_image=per_image)
            masks.accumulate(maps, gt.fg[sl], gt.ignore[sl])
            mask = masks.compute()
        log.count("score", maps=b - a)
        if observe is not None:
            chunks.append((start + a, box, mask))
        acc.add(box, mask, None)
        if w is not None:
            scored.append((box, mask))
    if w is not None and scored:  # one product per block: fewer, larger BLAS calls than per chunk
        log.enter("bootstrap")
        joined = SimpleNamespace(
            **{
                f"per_image_{f}": np.concatenate([getattr(box, f"per_image_{f}") for box, _ in scored])
                for f in ("multi", "single", "gt_known", "top1_loc")
            }
        )
        sums = box_sums(w, split, opts.iou_thresholds, joined)
        if with_masks:
            hists = SimpleNamespace(
                per_image_fg_hist=np.concatenate([mask.per_image_fg_hist for _, mask in scored]),
                per_image_bg_hist=np.concatenate([mask.per_image_bg_hist for _, mask in scored]),
            )
            sums.update(mask_sums(w, hists))
        add_sums(acc.sums, sums)
        log.count("bootstrap", products=stop - start)
    log.enter(None)
    return chunks


def _fidelity_pass(models, fidelity, j, blocks, units, specs, preds, w_test, lo, log, bar, observe=None) -> dict:
    """Baseline j's fidelity units on this rank's test blocks: per batch one forward of the images (Y) and one
    forward of the masked images of each unit (O). `units`: {unit: (its keys, its first fidelity key (m,
    variant, branch))}; `observe` gets each block's per-image terms for every key of a unit."""
    accs = {u: _FidAcc() for u in units}
    if not units or not blocks:
        return accs
    log.enter("fidelity")
    net = fidelity.model(j)
    device = next(net.parameters()).device
    batches = iter(fidelity.batches(*_span(blocks)))
    for start, stop in blocks:
        block = _Block(models, "test", start, stop, log)
        parts = {u: FidelityAccumulator() for u in units}
        at = start
        while at < stop:
            images, labels = next(batches)
            n = len(labels)
            log.count("fidelity", images_decoded=n)
            images = to_device(images, device)
            y = None
            for u, (_, (m, variant, branch)) in units.items():
                spec = specs[(m, variant, branch)]
                classes = torch.from_numpy(preds[m][at : at + n]) if fidelity.target == "pred" else labels
                a = at - start
                pos = block.maps(m, fidelity.target, "pos", spec.branch, spec.source)[a : a + n]
                neg = block.maps(m, fidelity.target, "neg", spec.branch, spec.source)[a : a + n]
                cam = torch.from_numpy(postprocess(pos, None if spec.pp.weight_clamp else neg, spec.pp)).to(device)
                y, outs = fidelity_scores_many(net, images, [cam], classes.to(device), y=y)
                parts[u].accumulate(y, outs[0])
                log.count("fidelity", forwards=n)
            at += n
        if at != stop:
            raise ValueError(f"fidelity: the image loader's batches end at image {at}, the block at {stop}")
        for u, part in parts.items():
            drops, flags = part.take_terms()
            sums = None
            if w_test is not None:
                cols = w_test[:, start - lo : stop - lo]
                sums = fidelity_sums(cols, {"avg_drop_terms": drops, "inc_conf_flags": flags})
            accs[u].add(part.batches, sums)
            if observe is not None:
                for key in units[u][0]:
                    observe(key, "test", start, None, None, {"avg_drop_terms": drops, "inc_conf_flags": flags})
        bar.update(stop - start)
    if next(batches, None) is not None:
        raise ValueError("fidelity: the image loader gave more images than this rank's CAM blocks hold")
    log.enter(None)
    return accs


def evaluate_models(
    models: list[ModelMaps],
    gts: dict[str, GroundTruth],
    opts: EvalOptions,
    *,
    fidelity: Fidelity | None = None,
    intervals=None,
    progress: Callable[[str], None] | None = None,
    show_progress: bool = False,
    log: WorkLog | None = None,
    observe: Callable | None = None,
    block: int = BLOCK,
    sums_budget: int = SUMS_BUDGET,
) -> dict | None:
    """Metrics of every model's (protocol, variant, branch) map sets; returns {model: (metrics, curves)} on
    rank 0 (None on the other ranks of a distributed run), and gives every model's per-replicate values to
    `intervals` (an IntervalAccumulator) there.

    metrics (per model) as `evaluate_all` describes. The work: each split's images are cut into `image_blocks`
    and a rank takes a contiguous run of them (`rank_blocks`).
    1. Digests: every key (model, protocol, variant, branch) is digested block by block from its raw maps,
       its post-processing and the model's predictions (cheap: feature-resolution maps); keys whose digests
       agree on every block of every rank form one unit, one distinct map set.
    2. Fidelity, per baseline model: each rank decodes its own images once per baseline; per batch one
       forward of the images and one of the masked images of each unit.
    3. Boxes, a group of units at a time (their bootstrap sums within `sums_budget` bytes): each rank
       post-processes and scores its blocks of each unit once (box counters, PxAP histograms, and the sums of
       its images' bootstrap columns); each unit's partial sums from every rank go to one rank, which reduces
       them to per-replicate values.
    Only those and the counters reach rank 0. Every sum is exact (integers) or made per batch and per block and
    added in image order, so the numbers are the same bits whatever the ranks.
    `observe(key, split, start, box, mask, fidelity)`: the per-image outcomes of each scored chunk of images
    start.. for every key = (model index, protocol, variant, branch) (keys of one unit get the same objects),
    for tools that keep them: box and mask results (fidelity None), or, per test block of a headline key,
    fidelity = {"avg_drop_terms", "inc_conf_flags"} (box and mask None). `block`: images per block (tests use
    small ones).
    """
    from pipeline import dist

    log = log or WorkLog()
    splits = ["test"] + (["val"] if opts.threshold_split == "val" else [])
    for name in opts.protocols:
        _check_protocol(name, "protocols")
    for mm in models:
        for split in splits:
            if split not in mm.cams:
                raise ValueError(f"model {mm.model}: no {split} CAM set (threshold_split {opts.threshold_split})")
            check_alignment(mm.cams[split], gts[split], split)
    size = gts["test"].size
    keys, specs = _specs(models, splits, opts, size)
    headline = opts.postprocess
    world, me = dist.world_size(), dist.rank()
    bs = fidelity.batch_size if fidelity is not None else 1
    blocks = {s: image_blocks(len(gts[s].image_ids), bs if s == "test" else 1, block) for s in splits}
    mine = {s: rank_blocks(blocks[s], me, world) for s in splits}
    index = {s: _index_arrays(models, s) for s in splits}
    fid_specs = {}
    if fidelity is not None:
        for key in keys:
            m, protocol, variant, branch = key
            if protocol == headline:
                s = specs[key]
                fid_specs[(m, variant, branch)] = _Spec(s.source, s.branch, replace(s.pp, size=fidelity.size))

    # 1. digests -> units
    log.enter("digest")
    running = {key: b"" for key in keys}
    for split in splits:
        preds, correct = index[split]
        for start, stop in mine[split]:
            blk = _Block(models, split, start, stop, log)
            log.count("digest", images=(stop - start) * len(models))
            context = [np.ascontiguousarray(c[start:stop]).tobytes() for c in correct]
            for key in keys:
                d = blk.digest(key[0], "gt", specs[key], context[key[0]])
                running[key] = hashlib.sha256(running[key] + d).digest()
    running.update(dict.fromkeys(fid_specs, b""))
    if fidelity is not None:
        preds, _ = index["test"]
        for start, stop in mine["test"]:
            blk = _Block(models, "test", start, stop, log)
            for fk, spec in fid_specs.items():
                m = fk[0]
                context = f"fidelity model {models[m].model[0]}".encode()
                if fidelity.target == "pred":
                    context += np.ascontiguousarray(preds[m][start:stop]).tobytes()
                d = blk.digest(m, fidelity.target, spec, context)
                running[fk] = hashlib.sha256(running[fk] + d).digest()

    def signature(key) -> bytes:
        m, protocol, variant, branch = key
        return running[key] + (running[(m, variant, branch)] if protocol == headline and fid_specs else b"")

    signatures = dist.all_gather([signature(k) for k in keys])
    log.enter(None)
    grouped: dict = {}
    for i, key in enumerate(keys):
        grouped.setdefault(tuple(sig[i] for sig in signatures), []).append(key)
    unit_keys = list(grouped.values())
    if progress and dist.is_main():
        progress(
            f"{len(keys)} (model, protocol, variant, branch) map sets of {len(models)} model(s), "
            f"{len(unit_keys)} distinct, scored once each"
        )
    span = {s: _span(mine[s]) for s in splits}
    total = sum((span[s][1] - span[s][0]) * len(unit_keys) for s in splits)
    fid_units: dict[int, dict] = {}  # baseline -> {unit: its first fidelity key}
    if fid_specs:
        for u, members in enumerate(unit_keys):
            m, protocol, variant, branch = members[0]
            if protocol == headline:
                fid_units.setdefault(models[m].model[0], {})[u] = (members, (m, variant, branch))
        total += (span["test"][1] - span["test"][0]) * len(fid_units)
    bar = progress_bar(total, show_progress)
    w = {}
    if intervals is not None:
        for s in splits:
            w[s] = intervals.columns(s, len(gts[s].image_ids), *span[s])

    # 2. fidelity, one baseline model at a time
    fid_accs: dict = {}
    for j, units in fid_units.items():
        fid_accs.update(
            _fidelity_pass(
                models,
                fidelity,
                j,
                mine["test"],
                units,
                fid_specs,
                index["test"][0],
                w.get("test"),
                span["test"][0],
                log,
                bar,
                observe,
            )
        )

    # 3. boxes, a group of units at a time
    per_unit = unit_bytes(
        intervals.resamples if intervals is not None else 0,
        len(opts.iou_thresholds),
        len(threshold_grid(opts.threshold_grid)),
        gts["test"].fg is not None,
        "val" in splits,
    )
    group = max(1, sums_budget // per_unit) if intervals is not None else len(unit_keys)
    results = []
    for first in range(0, len(unit_keys), group):
        batch = range(first, min(first + group, len(unit_keys)))
        accs = {u: {s: _BoxAcc() for s in splits} for u in batch}
        for split in splits:
            _, correct = index[split]
            with_masks = split == "test" and gts["test"].fg is not None
            for start, stop in mine[split]:
                blk = _Block(models, split, start, stop, log)
                cols = None if split not in w else w[split][:, start - span[split][0] : stop - span[split][0]]
                for u in batch:
                    key = unit_keys[u][0]
                    chunks = _score_block(
                        blk,
                        key,
                        specs[key],
                        gts[split],
                        correct[key[0]],
                        opts,
                        with_masks,
                        cols,
                        accs[u][split],
                        observe,
                    )
                    if observe is not None:
                        for member in unit_keys[u]:
                            for at, box, mask in chunks:
                                observe(member, split, at, box, mask, None)
                    bar.update(stop - start)
        log.enter("combine")
        for u in batch:
            mine_u = (accs[u]["test"], accs[u].get("val"), fid_accs.get(u))
            parts = dist.gather_to(mine_u, u % world)
            if parts is not None:
                results.append((u, _unit_result(parts, opts, intervals)))
                log.count("combine", units=1)
        del accs
        log.enter(None)
    bar.close()
    log.enter("combine")
    gathered = dist.gather(results)
    log.enter(None)
    if gathered is None:
        return None
    by_unit = dict(r for part in gathered for r in part)
    unit_of = {key: u for u, members in enumerate(unit_keys) for key in members}
    out = {}
    for m, mm in enumerate(models):
        metrics, curves = _assemble(mm, [k for k in keys if k[0] == m], unit_of, by_unit, opts)
        out[mm.model] = (metrics, curves)
        if intervals is not None:
            for key in keys:
                if key[0] == m:
                    intervals.set_values(mm.model, key[1:], by_unit[unit_of[key]]["values"])
    return out


def _unit_result(parts: list, opts: EvalOptions, intervals) -> dict:
    """One unit's counters and per-replicate values from every rank's part (rank order = image order)."""
    test, val, fid = _BoxAcc(), None if parts[0][1] is None else _BoxAcc(), None if parts[0][2] is None else _FidAcc()
    for t, v, f in parts:
        test.merge(t)
        if val is not None:
            val.merge(v)
        if fid is not None:
            fid.merge(f)
    thresholds = threshold_grid(opts.threshold_grid)

    def box_result(acc: _BoxAcc) -> BoxResult:
        b = acc.box
        return BoxResult(
            b["n"],
            thresholds.copy(),
            tuple(opts.iou_thresholds),
            opts.loc_threshold,
            b["multi"],
            b["single"],
            b["gt_known"],
            b["top1_loc"],
        )

    result = {"test": box_result(test), "val": None if val is None else box_result(val), "mask": None, "fidelity": None}
    if test.fg is not None:
        masks = MaskEvaluator(grid=opts.threshold_grid)
        masks.fg_hist, masks.bg_hist = test.fg.copy(), test.bg.copy()
        result["mask"] = masks.compute()
    if fid is not None:
        result["fidelity"] = from_batches(fid.batches)
    if intervals is not None:
        sums = dict(test.sums)
        if fid is not None:
            sums.update(fid.sums)
        result["values"] = intervals.reduce(finish_sums(sums), None if val is None else finish_sums(val.sums))
    return result


def _assemble(mm: ModelMaps, keys: list, unit_of: dict, by_unit: dict, opts: EvalOptions) -> tuple[dict, dict]:
    """One model's metrics and curves from its keys' unit results."""
    test = mm.cams["test"]
    headline = opts.postprocess
    metrics: dict = {"top1_cls": 100.0 * float(np.mean([int(r["pred"]) == int(r["label"]) for r in test.index]))}
    curves: dict = {}
    for key in keys:
        _, protocol, variant, branch = key
        r = by_unit[unit_of[key]]
        box, mask = r["test"], r["mask"]
        chosen = None
        if opts.threshold_split == "val":
            chosen = {mode: select_thresholds(r["val"], mode) for mode in ("multi", "single")}
        m = box_summary(box, chosen, opts.iou_thresholds)
        if mask is not None:
            m["pxap"] = mask.pxap
        fid = r["fidelity"] if protocol == headline else None
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
    return metrics, curves


def evaluate_all(
    cams: dict,
    gts: dict[str, GroundTruth],
    opts: EvalOptions,
    *,
    model=None,
    batches=None,
    fidelity_target: str = "pred",
    fidelity_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    show_progress: bool = False,
    intervals=None,
    model_id: tuple[int, int] = (0, 0),
    observe: Callable | None = None,
) -> tuple[dict, dict]:
    """Metrics of every (protocol, variant, branch) of one model's CAM sets on the test split; returns
    (metrics, curves) (`evaluate_models` of one model).

    metrics[variant][branch] (the headline protocol, `opts.postprocess` with its overrides) holds
    maxboxacc_v2, maxboxacc_iou{30,50,70}, maxboxacc (v1: largest contour, IoU 50), gt_known_loc, top1_loc,
    best thresholds, and pxap / avg_drop / inc_conf where computed; metrics["protocols"][name] holds the same
    for every further protocol of `opts.protocols` (fidelity: headline only). With `threshold_split: val` the
    MaxBoxAcc thresholds are chosen on val and the numbers are test accuracies at those thresholds.
    metrics['top1_cls'] is the softmax branch's test accuracy. curves[(variant, branch)] (headline) =
    {"thresholds", "box": {column: per-threshold accuracy (%)}, "pr": (precision, recall) or None}.

    Fidelity (Average Drop, Increase in Confidence) where `model` and `batches()` (the test images' batches in
    CAM order) are given. A key is scored from the maps of `variants.map_source` (CAM's for Grad-CAM and
    XGrad-CAM when the heads are GAP-linear, manifest `gap_linear_heads`), and keys whose maps agree share one
    result.
    """
    fid = None
    if model is not None and batches is not None:
        first = next(iter(batches()), None)
        if first is None:
            raise ValueError("fidelity: the image loader gave no batch")
        size = fidelity_size or gts["test"].size

        def ranged(lo: int, hi: int):
            at = 0
            for images, labels in batches():
                if lo <= at < hi:
                    yield images, labels
                at += len(labels)

        fid = Fidelity(
            model=lambda j: model, batches=ranged, batch_size=len(first[1]), size=size, target=fidelity_target
        )
    out = evaluate_models(
        [ModelMaps(model_id, cams)],
        gts,
        opts,
        fidelity=fid,
        intervals=intervals,
        progress=progress,
        show_progress=show_progress,
        observe=observe,
    )
    return out[model_id]


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
