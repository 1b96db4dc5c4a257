"""95% intervals on every sigmoid-minus-softmax delta, holding the three levels of randomness of a run: the test
and val images, the fine-tuning seed and the baseline's own training; streamed one evaluation result at a time.

The estimate
------------
A run has models m = (baseline j, fine-tuning replicate k) for j in baseline.replicates and k in
finetune.replicates (a balanced design). The delta of a metric is the mean over models of each model's full-data
sigmoid - softmax delta on the same test (and val) images.

The levels
----------
* Images. A paired bootstrap: replicate r draws the test images with replacement *within each class* (the test
  and val sets are class-balanced by design, so every resample keeps the per-class counts: `strata`), the same
  ids for both branches and for every model (an image hard for one model is hard for the others), and, where
  MaxBoxAcc's thresholds are chosen on val (`threshold_split="val"`), the val images likewise; the thresholds are
  re-chosen on the replicate's val counts (argmax over the grid, first on ties, per IoU; the largest-contour
  threshold at IoU 50 for MaxBoxAcc v1), so the interval holds the threshold choice's own noise (how that
  choice enters the replicate's accuracy: `thresholds`, below). With `threshold_split="test"` (the official oracle)
  the maximum is taken on the replicate's test counts. Every resample is a row of a multinomial count matrix
  W (R x n): the replicate's
  summed outcomes are W @ outcomes, one float32 matrix product per result (exact: every partial sum is an integer
  below 2**24). Row R+1 of W is all ones: the point estimate goes through the same code path as the replicates
  and equals the evaluator's own number. The image level's variance is the variance over r of the mean over
  models of the replicate-r deltas (models fixed).
* Fine-tuning seed and baseline training. A run has few models (3 baselines by default), and a bootstrap over
  3 values is no interval: it has 10 distinct means, its variance is (B - 1) / B of the right one, and the
  percentile interval of 3 values covers the mean about 75% of the time. So these levels are estimated the
  classical way (`combine`): the variance of the baseline means, / B (it holds the fine-tuning spread too); with
  several fine-tuning replicates per baseline, the pooled within-baseline variance / (B F) is the fine-tuning
  level and the rest the baseline level. The model level is known from B - 1 degrees of freedom (F - 1 with one
  baseline), so the interval uses Student's t with Satterthwaite's degrees of freedom for the sum of the image
  and model variances.

The construction, and why
-------------------------
interval = estimate +- t(df) x sqrt(var_images + var_models) (`method="normal"`), with the image level's
MaxBoxAcc resamples built as `thresholds="split"`: the replicate's test counts at the full-data val choice, plus
SELECTION_WEIGHT^(1/2) x how far the replicate's own val choice moves the accuracy on the full test counts.
Chosen on the calibration benchmark (benchmarks/bench_calibration.py: one fixed model, a pool of 14,000
generated val and test images as the known answer, 200 default-size draws through this code; the table with
every construction is benchmarks/results/calibration.md, rendered into the README):
* re-choosing the thresholds on each resample's val and scoring them on its test (`resampled`, what this
  module did before) made every MaxBoxAcc interval 1.1 to 1.4 times too wide (coverage 96.5-100%), so real
  effects went undetected: the bootstrap's val curve carries the sample's own noise plus the resample's, and
  the accuracy it moves is read off test counts that carry their own noise between the two thresholds;
* holding the thresholds at the full-data choice (`fixed`) leaves the choice's noise out: 0.6 to 0.8 times too
  narrow (coverage 77-90%);
* `split` separates the two parts, which come from independent draws and add; its val-choice part alone, as
  measured, was 2 to 3 times the real one, and SELECTION_WEIGHT = 1/2 (the first-order correction for the
  doubled noise) brings the MaxBoxAcc rows to width ratios near 1 (pooled over two sets of 200 draws, all but
  LayerCAM's MaxBoxAccV2 at or below the 1.15 target; the coverages that miss 93-97% miss on both sides, within
  the noise of 200 draws);
* the percentile interval of a maximum over 1,000 thresholds is lopsided around its estimate (it can even
  exclude it); the symmetric interval from the bootstrap's standard error is not, covers as well where the
  percentile one is right (GT-known and Top-1 Loc, PxAP, Average Drop), and extends to the model level through
  Student's t.

Verdict: the interval lies above 0 -> "sigmoid better" (below 0 for `avg_drop`, where lower is better), on the
other side -> "sigmoid worse", containing 0 -> "no detectable difference". Its half-width is the smallest effect
the run can detect at 95%. Each row also gives the standard error, the degrees of freedom and each level's share
of the variance (`levels`: images, finetune, baseline; None where the run has no such level, or, for finetune,
where one replicate per baseline leaves it inside the baseline level).

Inputs (the evaluator's per-image outcome contract, duck-typed)
---------------------------------------------------------------
For one key (protocol, variant, branch, split) and one model:
* box result: `per_image_multi` (n, n_iou, n_thr) bool (multi-contour box correct at IoU k, threshold j),
  `per_image_single` (n, n_iou, n_thr) bool (largest contour), `per_image_gt_known` (n,) bool,
  `per_image_top1_loc` (n,) bool;
* mask result (or None): `per_image_fg_hist`, `per_image_bg_hist` (n, n_bins) int64, PxAP as METHOD.md 4.5
  from the (resampled) summed histograms;
* fidelity result (or None): `avg_drop_terms` (n,) float64, the per-image 100 max(0, Y-O)/Y (Average Drop = their
  mean), and `inc_conf_flags` (n,) bool (Increase in Confidence = 100 x their mean).
Only test results give metrics; val results give the threshold choice. Results may come in any order; the
val and test results of a (protocol, variant, branch, model) are reduced to per-replicate numbers as soon as
both are in, so memory holds R numbers per metric, not the outcome arrays.

Written by hand: no library (scipy.stats.bootstrap, arch) resamples a threshold choice on a second split, pairs
two statistics on one draw, stratifies by class, or combines a bootstrap level with a t-based one; the
vectorised count-matrix form is what keeps it fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.concepts import BRANCHES, IOUS
from pipeline.metrics import registry
from pipeline.metrics.registry import LOWER_IS_BETTER, percent, pxap_rows  # noqa: F401 (re-exported)

METRICS = registry.KEYS  # the rows of every (protocol, variant), in this order
VERDICTS = ("sigmoid better", "sigmoid worse", "no detectable difference")
# RNG streams: default_rng([seed, stream]); the same seed gives the same draws whatever else changes.
STREAM_TEST, STREAM_VAL = 0, 1
# The fewest bootstrap resamples `evaluate.bootstrap_resamples` may ask for: the image level's standard error
# from R resamples is off by about 1 / sqrt(2 (R - 1)) of itself (5% at 200), which moves a 95% interval's
# coverage by under a point; below that the interval says more than the resamples know.
MIN_RESAMPLES = 200
THRESHOLD_CHOICES = ("split", "resampled", "fixed")
# `split`: the weight of the val choice's variance. The bootstrap measures how far a resample's own val choice
# moves the accuracy on test counts that carry their own sampling noise between the two thresholds, so what it
# measures is the choice's variance plus that noise; on the calibration benchmark the measured part was 2 to 3
# times what the real draws showed (benchmarks/results/calibration.md); half of it is the first-order
# correction for that doubled noise.
SELECTION_WEIGHT = 0.5
METHODS = ("normal", "percentile")

Model = tuple[int, int]  # (baseline replicate j, fine-tuning replicate k)


def as_model(model) -> Model:
    """A model id: (baseline j, fine-tuning replicate k); a bare int k means baseline 0."""
    if isinstance(model, (int, np.integer)):
        return 0, int(model)
    j, k = model
    return int(j), int(k)


def resample_indices(seed: int, stream: int, n: int, resamples: int, strata=None) -> np.ndarray:
    """(R, n) int64 image indices drawn with replacement from `np.random.default_rng([seed, stream])`.

    Without `strata`: one `integers(0, n, size=(R, n))` call (the same stream as R successive `choice(n, n)`
    calls). With `strata` (n labels, e.g. the images' classes): each stratum's positions are filled with draws
    from that stratum only, strata in sorted label order, one `integers(0, n_c, size=(R, n_c))` call each, so
    every resample keeps the design's images per class."""
    if n < 1:
        raise ValueError(f"resampling needs at least one image, got n={n}")
    rng = np.random.default_rng([seed, stream])
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata: {strata.shape[0] if strata.ndim else 0} labels for {n} images")
    out = np.empty((resamples, n), dtype=np.int64)
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        out[:, members] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
    return out


def count_matrix(indices: np.ndarray) -> np.ndarray:
    """(R, n) indices -> (R + 1, n) float32 multinomial counts (times image i was drawn in replicate r), with
    a last row of ones (the full data)."""
    resamples, n = indices.shape
    flat = (np.arange(resamples, dtype=np.int64)[:, None] * n + indices).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    return np.vstack([counts, np.ones((1, n), dtype=counts.dtype)]).astype(np.float32)


def count_columns(
    seed: int, stream: int, n: int, resamples: int, strata=None, lo: int = 0, hi: int | None = None
) -> np.ndarray:
    """Columns lo..hi-1 of `count_matrix(resample_indices(seed, stream, n, resamples, strata))`, (R + 1, hi - lo)
    float32, from the same RNG calls; with `strata` it holds only those columns and one stratum's draws at a
    time, so a rank of a distributed evaluation keeps the counts of its own images only."""
    hi = n if hi is None else hi
    if not 0 <= lo <= hi <= n:
        raise ValueError(f"columns {lo}..{hi} are not within the {n} images")
    if strata is None:
        return np.ascontiguousarray(count_matrix(resample_indices(seed, stream, n, resamples))[:, lo:hi])
    if n < 1:
        raise ValueError(f"resampling needs at least one image, got n={n}")
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata: {strata.shape[0] if strata.ndim else 0} labels for {n} images")
    rng = np.random.default_rng([seed, stream])
    out = np.zeros((resamples + 1, hi - lo), dtype=np.float32)
    out[-1] = 1
    rows = np.arange(resamples, dtype=np.int64)[:, None]
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        draws = rng.integers(0, len(members), size=(resamples, len(members)))  # drawn whether needed or not
        mine = (members >= lo) & (members < hi)
        if mine.any():
            flat = (rows * len(members) + draws).ravel()
            counts = np.bincount(flat, minlength=resamples * len(members)).reshape(resamples, len(members))
            out[:-1, members[mine] - lo] = counts[:, mine]
    return out


def box_sums(w: np.ndarray, split: str, iou_thresholds, box) -> dict:
    """The bootstrap-weighted sums (R + 1, ...) of a box result's per-image outcomes (`per_image_multi`,
    `per_image_single`, and on test `per_image_gt_known`, `per_image_top1_loc`) over the images of `w`'s
    columns. Float32 products of counts and 0/1 outcomes: exact, so partial sums over image blocks add up to
    the sum over all images whatever the blocks."""
    multi = np.asarray(box.per_image_multi, dtype=bool)
    n, n_iou, n_thr = multi.shape
    if w.shape[1] != n:
        raise ValueError(f"{w.shape[1]} count columns for {n} images")
    sums = {"n": n, "multi": (w @ multi.reshape(n, -1).astype(np.float32)).reshape(-1, n_iou, n_thr)}
    iou_thresholds = tuple(iou_thresholds)
    if 50 in iou_thresholds:
        single = np.asarray(box.per_image_single, dtype=bool)
        sums["single50"] = w @ single[:, iou_thresholds.index(50)].astype(np.float32)
    if split == "test":
        sums["gt_known_loc"] = w @ np.asarray(box.per_image_gt_known, dtype=np.float32)
        sums["top1_loc"] = w @ np.asarray(box.per_image_top1_loc, dtype=np.float32)
    return sums


def mask_sums(w: np.ndarray, mask) -> dict:
    """The weighted sums (R + 1, n_bins) float64 of a mask result's per-image PxAP histograms (exact)."""
    w64 = w.astype(np.float64)
    return {
        "fg": _count_product(w, w64, np.asarray(mask.per_image_fg_hist)),
        "bg": _count_product(w, w64, np.asarray(mask.per_image_bg_hist)),
    }


def fidelity_sums(w: np.ndarray, fidelity) -> dict:
    """The weighted sums (R + 1,) float64 of the per-image Average Drop terms and Increase in Confidence flags.
    Average Drop's terms are not integers: its sum is kept as a list of block sums (`avg_drop_blocks`), added
    in block order by `finish_sums`, so the result depends on the image blocks, never on the ranks."""
    w64 = w.astype(np.float64)
    return {
        "avg_drop_blocks": [w64 @ np.asarray(_field(fidelity, "avg_drop_terms"), dtype=np.float64)],
        "inc_conf": w64 @ np.asarray(_field(fidelity, "inc_conf_flags"), dtype=np.float64),
    }


def add_sums(total: dict, part: dict) -> dict:
    """`part` added into `total` (in place; returned): arrays and counts summed, block lists extended."""
    for key, value in part.items():
        if key not in total:
            total[key] = list(value) if isinstance(value, list) else (value.copy() if hasattr(value, "copy") else value)
        elif isinstance(value, list):
            total[key].extend(value)
        else:
            total[key] = total[key] + value
    return total


def finish_sums(sums: dict) -> dict:
    """Block lists summed in order (Average Drop's block sums -> `avg_drop`)."""
    out = {k: v for k, v in sums.items() if k != "avg_drop_blocks"}
    if "avg_drop_blocks" in sums:
        blocks = sums["avg_drop_blocks"]
        total = blocks[0].copy()
        for block in blocks[1:]:
            total += block
        out["avg_drop"] = total
    return out


@dataclass(frozen=True)
class Combined:
    """One delta's interval (`combine`): the estimate, the bounds, the standard error with its degrees of
    freedom, and each level's share of the variance as a variance."""

    delta: float
    low: float
    high: float
    se: float
    df: float
    variances: dict  # level -> its variance of the estimate (None: the level is absent or not separable)


def combine(
    model_deltas: dict[Model, float], image_replicates: np.ndarray, confidence: float = 0.95, method: str = "normal"
) -> Combined:
    """The interval of the mean delta over models from its three levels of randomness.

    `model_deltas`: (baseline j, fine-tuning k) -> that model's full-data delta; `image_replicates`: (R,) the
    mean over models of the delta on each image resample (the models fixed). The estimate is the mean of the
    model deltas (a balanced design: the mean over baselines of the mean over their fine-tuning replicates).

    Variance of the estimate, level by level:
    * images: the variance of `image_replicates` (the paired, stratified bootstrap);
    * models: with B >= 2 baselines, var(baseline means, ddof=1) / B, which holds the fine-tuning spread too
      (each baseline mean averages its F replicates); with F >= 2 replicates per baseline, the fine-tuning part
      is the pooled within-baseline variance / (B F) and the baseline part the rest (floored at 0); with one
      replicate per baseline the two are not separable (reported as baseline, fine-tuning None). With B = 1,
      var(replicate deltas, ddof=1) / F is the fine-tuning level and the baseline level is absent.
    The model level is estimated from B (or F) values, so the interval uses Student's t with Satterthwaite's
    degrees of freedom (B - 1, or F - 1, for the model part; the image part's are taken as infinite).
    `method`: "normal": estimate +- t se; "percentile": the image level's percentile tails (their distances
    from the estimate), each combined in quadrature with t times the model level's standard error.
    """
    from scipy.stats import t as student_t

    if method not in METHODS:
        raise ValueError(f"method: '{method}' is not valid; choose one of: {', '.join(METHODS)}")
    models = sorted(model_deltas)
    values = np.array([model_deltas[m] for m in models], dtype=np.float64)
    delta = float(values.mean())
    baselines: dict[int, list[float]] = {}
    for (j, _), v in zip(models, values):
        baselines.setdefault(j, []).append(float(v))
    b = len(baselines)
    f = min(len(v) for v in baselines.values())
    v_images = float(np.var(image_replicates, ddof=1)) if len(image_replicates) > 1 else 0.0
    v_finetune = v_baseline = None
    df_model = 0
    if b >= 2:
        means = np.array([np.mean(v) for v in baselines.values()])
        v_model = float(np.var(means, ddof=1)) / b
        df_model = b - 1
        if f >= 2:
            within = sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in baselines.values())
            v_finetune = min(v_model, within / sum(len(v) - 1 for v in baselines.values()) / len(values))
            v_baseline = v_model - v_finetune
        else:
            v_baseline = v_model  # one fine-tuning replicate per baseline: its spread is inside this level
    elif f >= 2:
        v_model = v_finetune = float(np.var(values, ddof=1)) / f
        df_model = f - 1
    else:
        v_model = 0.0
    variance = v_images + v_model
    df = float("inf") if v_model <= 0 or variance <= 0 else variance**2 * df_model / v_model**2
    q = float(student_t.ppf(0.5 + confidence / 2, df)) if np.isfinite(df) else _z(confidence)
    se = variance**0.5
    if method == "normal":
        low, high = delta - q * se, delta + q * se
    else:
        lo_q, hi_q = np.percentile(image_replicates, [50 * (1 - confidence), 50 * (1 + confidence)])
        m = q * v_model**0.5
        low = delta - float(np.hypot(max(delta - lo_q, 0.0), m))
        high = delta + float(np.hypot(max(hi_q - delta, 0.0), m))
    return Combined(
        delta, float(low), float(high), se, df, {"images": v_images, "finetune": v_finetune, "baseline": v_baseline}
    )


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


@dataclass
class _Pending:
    """The per-replicate summed counts of one (protocol, variant, branch, model) waiting for its other split."""

    test: dict | None = None
    val: dict | None = None


@dataclass
class IntervalAccumulator:
    """Collects evaluation results one at a time and produces the interval table.

    Two ways in. Whole per-image results: `add(model, key, box_result, mask_result, fidelity_result)`, model =
    (baseline j, fine-tuning replicate k) (a bare int k: baseline 0), key = (protocol, variant, branch, split);
    `callback(model)` gives the same call as `on_result(key, ...)`. Streamed (pipeline/metrics/evaluate.py):
    `columns` gives a rank its images' columns of a split's count matrix, the caller sums `box_sums`,
    `mask_sums` and `fidelity_sums` block by block (`add_sums`), `reduce` turns a map set's finished sums into
    per-replicate values and `set_values` records them for a key (protocol, variant, branch) and model; both ways
    give the same values. `table()` returns one row per (protocol, variant, metric) with both branches of every
    model. `strata` maps a split to its images' class labels (resampling
    within classes); `thresholds` and `method` choose the construction (module docstring).
    """

    resamples: int = 1000
    seed: int = 0
    threshold_split: str = "val"
    iou_thresholds: tuple[int, ...] = IOUS
    confidence: float = 0.95
    strata: dict | None = None
    thresholds: str = "split"
    method: str = "normal"
    _weights: dict = field(default_factory=dict, repr=False)
    _pending: dict = field(default_factory=dict, repr=False)
    _values: dict = field(default_factory=dict, repr=False)  # (protocol, variant, branch, model) -> {metric: (R+1,)}
    _sums: dict = field(default_factory=dict, repr=False)  # result objects seen -> their resampled sums
    _reduced: dict = field(default_factory=dict, repr=False)  # (id test sums, id val sums) -> their values

    def __post_init__(self) -> None:
        if not isinstance(self.resamples, int) or self.resamples < 2:
            raise ValueError(f"resamples: must be an integer >= 2, got {self.resamples!r}")
        if self.threshold_split not in ("val", "test"):
            raise ValueError(f"threshold_split: '{self.threshold_split}' is not valid; choose val or test")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")
        if self.thresholds not in THRESHOLD_CHOICES:
            raise ValueError(
                f"thresholds: '{self.thresholds}' is not valid; choose one of: {', '.join(THRESHOLD_CHOICES)}"
            )
        if self.method not in METHODS:
            raise ValueError(f"method: '{self.method}' is not valid; choose one of: {', '.join(METHODS)}")
        self.iou_thresholds = tuple(self.iou_thresholds)

    def sibling(self, **changes) -> IntervalAccumulator:
        """An accumulator with other `thresholds` / `method` on the same draws, sharing the resampled sums
        already computed (the costly part): feed it the same result objects."""
        twin = replace(self, _pending={}, _values={}, _reduced={}, **changes)
        twin._weights, twin._sums = self._weights, self._sums
        return twin

    # -------------------------------------------------------------------------------------------- input
    def callback(self, model) -> Callable:
        def on_result(key, box_result, mask_result=None, fidelity_result=None) -> None:
            self.add(model, key, box_result, mask_result, fidelity_result)

        return on_result

    def weights(self, split: str, n: int) -> np.ndarray:
        """The (R + 1, n) count matrix of a split (drawn once; every result of the split must have n images)."""
        if split in self._weights:
            w = self._weights[split]
            if w.shape[1] != n:
                raise ValueError(
                    f"split '{split}': a result has {n} images but an earlier one had {w.shape[1]}; "
                    f"every result of a split must cover the same images in the same order"
                )
            return w
        stream = {"test": STREAM_TEST, "val": STREAM_VAL}[split]
        strata = None if self.strata is None else self.strata.get(split)
        w = self._weights[split] = count_matrix(resample_indices(self.seed, stream, n, self.resamples, strata))
        return w

    def add(self, model, key: tuple, box_result, mask_result=None, fidelity_result=None) -> None:
        protocol, variant, branch, split = key
        model = as_model(model)
        if branch not in BRANCHES:
            raise ValueError(f"key {key}: branch '{branch}' is not valid; choose one of: {', '.join(BRANCHES)}")
        if split not in ("test", "val"):
            raise ValueError(f"key {key}: split '{split}' is not valid; choose test or val")
        if split == "val" and self.threshold_split != "val":
            return  # thresholds are chosen on test: val results are not needed
        ident = (protocol, variant, branch, model)
        if ident in self._values:
            raise ValueError(f"key {key}, model {model}: already complete; a result came twice")
        multi = np.asarray(box_result.per_image_multi, dtype=bool)
        single = np.asarray(box_result.per_image_single, dtype=bool)
        n, n_iou, n_thr = multi.shape
        if n_iou != len(self.iou_thresholds) or single.shape != multi.shape:
            raise ValueError(
                f"key {key}: per_image_multi {multi.shape} and per_image_single {single.shape} must "
                f"both be (n, {len(self.iou_thresholds)} IoUs, n_thr)"
            )
        if ident in self._pending and getattr(self._pending[ident], split) is not None:
            raise ValueError(f"key {key}, model {model}: this result came twice")
        # one result object given under several keys (a map set scored once for several variants, or for
        # every model of a baseline): its sums are computed once; the objects are kept, so their ids stay theirs
        cache_key = (split, id(box_result), id(mask_result), id(fidelity_result))
        if cache_key not in self._sums:
            self._sums[cache_key] = (
                (box_result, mask_result, fidelity_result),
                self._resampled(split, box_result, mask_result, fidelity_result),
            )
        pending = self._pending.setdefault(ident, _Pending())
        setattr(pending, split, self._sums[cache_key][1])
        if pending.test is not None and (pending.val is not None or self.threshold_split == "test"):
            # keys whose test and val results are the same objects have the same values: reduced once
            pair = (id(pending.test), id(pending.val))
            if pair not in self._reduced:
                self._reduced[pair] = self._reduce(pending.test, pending.val)
            self._values[ident] = self._reduced[pair]
            del self._pending[ident]

    def _resampled(self, split: str, box_result, mask_result, fidelity_result) -> dict:
        """The bootstrap-weighted sums (R + 1, ...) of one result's per-image outcomes."""
        n = np.asarray(box_result.per_image_multi).shape[0]
        w = self.weights(split, n)
        sums = box_sums(w, split, self.iou_thresholds, box_result)
        if split == "test":
            if mask_result is not None:
                sums.update(mask_sums(w, mask_result))
            if fidelity_result is not None:
                sums.update(fidelity_sums(w, fidelity_result))
        return finish_sums(sums)

    def columns(self, split: str, n: int, lo: int, hi: int) -> np.ndarray:
        """Columns lo..hi-1 of a split's count matrix (`count_columns`), for the images of one rank."""
        stream = {"test": STREAM_TEST, "val": STREAM_VAL}[split]
        strata = None if self.strata is None else self.strata.get(split)
        return count_columns(self.seed, stream, n, self.resamples, strata, lo, hi)

    def reduce(self, test: dict, val: dict | None) -> dict[str, np.ndarray]:
        """Per-replicate metric values (R + 1,) from a map set's summed test counts (and val counts, where
        thresholds are chosen on val): what `add` computes from per-image outcomes, from sums made elsewhere
        (`box_sums`, `mask_sums`, `fidelity_sums`, `add_sums`, `finish_sums`), e.g. by the ranks of a
        distributed evaluation."""
        return self._reduce(test, val if self.threshold_split == "val" else None)

    def set_values(self, model, key: tuple, values: dict[str, np.ndarray]) -> None:
        """Record the per-replicate values (`reduce`) of key = (protocol, variant, branch) for `model`."""
        protocol, variant, branch = key
        if branch not in BRANCHES:
            raise ValueError(f"key {key}: branch '{branch}' is not valid; choose one of: {', '.join(BRANCHES)}")
        ident = (protocol, variant, branch, as_model(model))
        if ident in self._values:
            raise ValueError(f"key {key}, model {model}: already complete; a result came twice")
        self._values[ident] = values

    def _reduce(self, test: dict, val: dict | None) -> dict[str, np.ndarray]:
        """Per-replicate metric values (R + 1,) of one branch from its summed counts."""
        n = test["n"]

        def chosen(name: str) -> np.ndarray:  # accuracy (%) at the threshold chosen per row (and IoU)
            t = test[name].astype(np.float64)
            if val is None:
                return percent(t.max(axis=-1), n)
            index = np.argmax(val[name], axis=-1)  # first maximum on ties
            if self.thresholds == "resampled":  # the replicate's val choice on the replicate's test counts
                return percent(np.take_along_axis(t, index[..., None], axis=-1)[..., 0], n)
            fixed = np.broadcast_to(index[-1:], index.shape)  # the full-data val choice (last row)
            at_fixed = np.take_along_axis(t, fixed[..., None], axis=-1)[..., 0]
            if self.thresholds == "fixed":
                return percent(at_fixed, n)
            # split: the test level at the full-data choice, plus what the replicate's val choice changes on the
            # full test counts (0 in the full-data row), its variance weighted by SELECTION_WEIGHT; the two parts
            # come from independent draws, so their variances add
            full = np.broadcast_to(t[-1:], t.shape)
            moved = (
                np.take_along_axis(full, index[..., None], axis=-1)[..., 0]
                - np.take_along_axis(full, fixed[..., None], axis=-1)[..., 0]
            )
            return percent(at_fixed + SELECTION_WEIGHT**0.5 * moved, n)

        formula = {m.key: m.formula for m in registry.METRICS}
        out: dict[str, np.ndarray] = {}
        per_iou = chosen("multi")  # BoxAcc (%) at the chosen threshold: (R + 1, n_iou)
        for k, delta in enumerate(self.iou_thresholds):
            out[f"maxboxacc_iou{delta}"] = per_iou[:, k]
        out["maxboxacc_v2"] = formula["maxboxacc_v2"](per_iou)
        if "single50" in test:
            out["maxboxacc"] = chosen("single50")
        if "fg" in test:
            out["pxap"] = formula["pxap"](test["fg"], test["bg"])
        # summed per-image outcomes, one per metric (avg_drop's terms are already percentages: 100 max(0, Y-O)/Y)
        for key in ("gt_known_loc", "top1_loc", "avg_drop", "inc_conf"):
            if key in test:
                out[key] = formula[key](test[key].astype(np.float64), n)
        return out

    # ------------------------------------------------------------------------------------------- output
    def table(self) -> list[dict]:
        """One row per (protocol, variant, metric), sorted by protocol and variant (first-seen order of
        variants), metrics in METRICS order: softmax, sigmoid (means over models), delta, low, high,
        half_width, verdict, the standard error and degrees of freedom, each level's share of the variance
        (`levels`), the models and their full-data deltas. Raises when a model lacks a branch or a split."""
        if self._pending:
            missing = sorted(
                f"{p}/{v}/{b} model {m}: {'val' if t.test is not None else 'test'}"
                for (p, v, b, m), t in self._pending.items()
            )
            raise ValueError("results missing for: " + "; ".join(missing))
        groups: dict[tuple, set] = {}
        for protocol, variant, _branch, model in self._values:
            groups.setdefault((protocol, variant), set()).add(model)
        rows = []
        for protocol, variant in sorted(groups, key=lambda pv: (str(pv[0]), _first_seen(self._values, pv))):
            models = sorted(groups[(protocol, variant)])
            for model in models:
                for branch in BRANCHES:
                    if (protocol, variant, branch, model) not in self._values:
                        raise ValueError(f"{protocol}/{variant} model {model}: no {branch} result")
            for metric in METRICS:
                per = [
                    (self._values[(protocol, variant, "softmax", m)], self._values[(protocol, variant, "sigmoid", m)])
                    for m in models
                ]
                if not all(metric in soft and metric in sig for soft, sig in per):
                    continue
                deltas = np.stack([sig[metric] - soft[metric] for soft, sig in per])  # (models, R + 1)
                c = combine(
                    {m: float(d[-1]) for m, d in zip(models, deltas)},
                    deltas[:, :-1].mean(axis=0),
                    self.confidence,
                    self.method,
                )
                variance = c.se**2
                rows.append(
                    {
                        "protocol": protocol,
                        "variant": variant,
                        "metric": metric,
                        "softmax": _r(np.mean([soft[metric][-1] for soft, _ in per])),
                        "sigmoid": _r(np.mean([sig[metric][-1] for _, sig in per])),
                        "delta": _r(c.delta),
                        "low": _r(c.low),
                        "high": _r(c.high),
                        "half_width": _r((c.high - c.low) / 2),
                        "verdict": verdict(c.low, c.high, metric),
                        "se": _r(c.se),
                        "df": None if not np.isfinite(c.df) else _r(c.df),
                        "levels": {
                            k: None if v is None else (_r(v / variance) if variance > 0 else 0.0)
                            for k, v in c.variances.items()
                        },
                        "models": [list(m) for m in models],
                        "model_deltas": [_r(d) for d in deltas[:, -1]],
                        "resamples": self.resamples,
                        "confidence": self.confidence,
                    }
                )
        return rows


def _count_product(w: np.ndarray, w64: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """w @ counts as float64, for a count matrix `w` (R + 1, n) whose rows sum to n and nonnegative integer
    `counts` (n, k). In float32 (twice as fast) when that is exact: every partial sum of the product is an
    integer at most n * max(counts), so below 2**24 float32 rounds nothing; otherwise in float64."""
    if counts.size == 0 or w.shape[1] * int(counts.max()) < 2**24:
        return (w @ counts.astype(np.float32)).astype(np.float64)
    return w64 @ counts.astype(np.float64)


def _field(result, name: str):
    """A per-image array of a result given as an object (attribute) or as a mapping (the evaluator's fidelity
    dict)."""
    return result[name] if isinstance(result, dict) else getattr(result, name)


def _first_seen(values: dict, pv: tuple) -> int:
    variants = list(dict.fromkeys(v for (p, v, _, _) in values if p == pv[0]))
    return variants.index(pv[1])


def _r(x) -> float:
    """Rounded to 6 decimals: float64 sums of non-integer terms (Average Drop) may differ in the last bits
    between BLAS builds; 1e-6 points is far below anything reported."""
    return round(float(x), 6) + 0.0  # + 0.0: no -0.0 in the JSON


def verdict(low: float, high: float, metric: str) -> str:
    """The reading of a [low, high] interval of sigmoid - softmax for `metric` (lower is better for avg_drop)."""
    if low > 0:
        return "sigmoid worse" if metric in LOWER_IS_BETTER else "sigmoid better"
    if high < 0:
        return "sigmoid better" if metric in LOWER_IS_BETTER else "sigmoid worse"
    return "no detectable difference"


def interval_metrics(rows: list[dict]) -> dict:
    """The table as nested metrics, metrics[protocol][variant][metric] = {delta, low, high, half_width, verdict}
    (for reports/metrics.json, so `dvc metrics show/diff` and `dvc exp show` carry every interval)."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["protocol"], {}).setdefault(row["variant"], {})[row["metric"]] = {
            k: row[k] for k in ("delta", "low", "high", "half_width", "verdict")
        }
    return out
