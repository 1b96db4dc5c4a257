"""95% intervals on every sigmoid-minus-softmax delta: a paired bootstrap over images combined with the spread
over fine-tuning seeds, streamed one evaluation result at a time.

What is resampled, and why
--------------------------
* Images. Replicate r draws n test images with replacement, the same ids for both branches (paired: the
  image-level difficulty that both branches share cancels in the delta), and, where MaxBoxAcc's thresholds are
  chosen on val (`threshold_split="val"`), n_val val images with replacement; the thresholds are re-chosen on
  the replicate's val counts (argmax over the grid, first on ties, per IoU; the largest-contour threshold at IoU
  50 for MaxBoxAcc v1) and applied to the replicate's test counts, so the interval includes the threshold
  choice's own noise. With `threshold_split="test"` (the official oracle) the maximum is taken on the
  replicate's test counts. Every resample is a row of a multinomial count matrix W (R x n, the number of times
  each image was drawn): the replicate's summed outcomes are W @ outcomes, one float32 matrix product per
  result (exact: every partial sum is an integer below 2**24). Row R+1 of W is all ones: the point estimate
  goes through the same code path as the replicates and equals the evaluator's own number.
* Fine-tuning seeds. The S seeds are a sample of the fine-tuning randomness: replicate r also draws S seeds
  with replacement (J[r], the same draw for every metric) and its delta is the mean over the drawn seeds of
  that seed's delta on replicate r's images. This is the two-level (hierarchical) bootstrap: the images are
  the same images for every seed, so one image draw per replicate serves every seed (an image hard for one
  model is hard for the others), and the seed draw adds the between-seed spread. With one seed the interval
  is the image bootstrap alone; with few seeds (3) the seed level is coarse and, like any bootstrap of S
  values, somewhat too narrow (by about sqrt((S-1)/S) on the seed part): the report says how many seeds went in.
The point estimate is the mean over seeds of the full-data delta. The interval is the percentile interval
(2.5th and 97.5th percentiles of the R replicate deltas). Its half-width is the smallest effect the run can
detect at 95%. Verdict: the interval lies above 0 -> "sigmoid better" (below 0 for `avg_drop`, where lower is
better), on the other side -> "sigmoid worse", containing 0 -> "no detectable difference".

Inputs (the evaluator's per-image outcome contract, duck-typed)
---------------------------------------------------------------
For one key (protocol, variant, branch, split) and one fine-tuning seed:
* box result: `per_image_multi` (n, n_iou, n_thr) bool (multi-contour box correct at IoU k, threshold j),
  `per_image_single` (n, n_iou, n_thr) bool (largest contour), `per_image_gt_known` (n,) bool,
  `per_image_top1_loc` (n,) bool;
* mask result (or None): `per_image_fg_hist`, `per_image_bg_hist` (n, n_bins) int64, PxAP as METHOD.md 4.5
  from the (resampled) summed histograms;
* fidelity result (or None): `avg_drop_terms` (n,) float64, the per-image 100 max(0, Y-O)/Y (Average Drop = their
  mean), and `inc_conf_flags` (n,) bool (Increase in Confidence = 100 x their mean).
Only test results give metrics; val results give the threshold choice. Results may come in any order; the
val and test results of a (protocol, variant, branch, seed) are reduced to per-replicate numbers as soon as
both are in, so memory holds R numbers per metric, not the outcome arrays.

Written by hand: no library (scipy.stats.bootstrap, arch) resamples a threshold choice on a second split, pairs
two statistics on one draw, or nests a seed level; the vectorised count-matrix form is what keeps it fast.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

METRICS = ("maxboxacc_v2", "maxboxacc", "maxboxacc_iou30", "maxboxacc_iou50", "maxboxacc_iou70", "gt_known_loc",
           "top1_loc", "pxap", "avg_drop", "inc_conf")
LOWER_IS_BETTER = frozenset({"avg_drop"})
BRANCHES = ("softmax", "sigmoid")
VERDICTS = ("sigmoid better", "sigmoid worse", "no detectable difference")
# RNG streams: default_rng([seed, stream]); the same seed gives the same draws whatever else changes.
STREAM_TEST, STREAM_VAL, STREAM_SEEDS = 0, 1, 2


def resample_indices(seed: int, stream: int, n: int, resamples: int) -> np.ndarray:
    """(R, n) int64 image indices drawn with replacement: `np.random.default_rng([seed, stream])`, one
    `integers(0, n, size=(R, n))` call (the same stream as R successive `choice(n, n)` calls)."""
    if n < 1:
        raise ValueError(f"resampling needs at least one image, got n={n}")
    return np.random.default_rng([seed, stream]).integers(0, n, size=(resamples, n))


def count_matrix(indices: np.ndarray) -> np.ndarray:
    """(R, n) indices -> (R + 1, n) float32 multinomial counts (times image i was drawn in replicate r), with
    a last row of ones (the full data)."""
    resamples, n = indices.shape
    flat = (np.arange(resamples, dtype=np.int64)[:, None] * n + indices).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    return np.vstack([counts, np.ones((1, n), dtype=counts.dtype)]).astype(np.float32)


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


@dataclass
class _Pending:
    """The per-replicate summed counts of one (protocol, variant, branch, seed) waiting for its other split."""

    test: dict | None = None
    val: dict | None = None


@dataclass
class IntervalAccumulator:
    """Collects evaluation results one at a time and produces the interval table.

    `callback(seed)` gives the evaluator's `on_result(key, box_result, mask_result, fidelity_result)` for one
    fine-tuning seed, key = (protocol, variant, branch, split); `add(seed, key, ...)` is the same call.
    `table()` returns one row per (protocol, variant, metric) with both branches for every seed.
    """

    resamples: int = 1000
    seed: int = 0
    threshold_split: str = "val"
    iou_thresholds: tuple[int, ...] = (30, 50, 70)
    confidence: float = 0.95
    _weights: dict = field(default_factory=dict, repr=False)
    _pending: dict = field(default_factory=dict, repr=False)
    _values: dict = field(default_factory=dict, repr=False)  # (protocol, variant, branch, seed) -> {metric: (R+1,)}
    _sums: dict = field(default_factory=dict, repr=False)    # result objects seen -> their resampled sums
    _reduced: dict = field(default_factory=dict, repr=False) # (id test sums, id val sums) -> their values

    def __post_init__(self) -> None:
        if not isinstance(self.resamples, int) or self.resamples < 1:
            raise ValueError(f"resamples: must be a positive integer, got {self.resamples!r}")
        if self.threshold_split not in ("val", "test"):
            raise ValueError(f"threshold_split: '{self.threshold_split}' is not valid; choose val or test")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")
        self.iou_thresholds = tuple(self.iou_thresholds)

    # -------------------------------------------------------------------------------------------- input
    def callback(self, seed: int) -> Callable:
        def on_result(key, box_result, mask_result=None, fidelity_result=None) -> None:
            self.add(seed, key, box_result, mask_result, fidelity_result)
        return on_result

    def weights(self, split: str, n: int) -> np.ndarray:
        """The (R + 1, n) count matrix of a split (drawn once; every result of the split must have n images)."""
        if split in self._weights:
            w = self._weights[split]
            if w.shape[1] != n:
                raise ValueError(f"split '{split}': a result has {n} images but an earlier one had {w.shape[1]}; "
                                 f"every result of a split must cover the same images in the same order")
            return w
        stream = {"test": STREAM_TEST, "val": STREAM_VAL}[split]
        w = self._weights[split] = count_matrix(resample_indices(self.seed, stream, n, self.resamples))
        return w

    def add(self, seed: int, key: tuple, box_result, mask_result=None, fidelity_result=None) -> None:
        protocol, variant, branch, split = key
        if branch not in BRANCHES:
            raise ValueError(f"key {key}: branch '{branch}' is not valid; choose one of: {', '.join(BRANCHES)}")
        if split not in ("test", "val"):
            raise ValueError(f"key {key}: split '{split}' is not valid; choose test or val")
        if split == "val" and self.threshold_split != "val":
            return  # thresholds are chosen on test: val results are not needed
        ident = (protocol, variant, branch, int(seed))
        if ident in self._values:
            raise ValueError(f"key {key}, seed {seed}: already complete; a result came twice")
        multi = np.asarray(box_result.per_image_multi, dtype=bool)
        single = np.asarray(box_result.per_image_single, dtype=bool)
        n, n_iou, n_thr = multi.shape
        if n_iou != len(self.iou_thresholds) or single.shape != multi.shape:
            raise ValueError(f"key {key}: per_image_multi {multi.shape} and per_image_single {single.shape} must "
                             f"both be (n, {len(self.iou_thresholds)} IoUs, n_thr)")
        if ident in self._pending and getattr(self._pending[ident], split) is not None:
            raise ValueError(f"key {key}, seed {seed}: this result came twice")
        # one result object given under several keys (a map set scored once for several variants, or for
        # every seed): its sums are computed once; the objects are kept, so their ids stay theirs
        cache_key = (split, id(box_result), id(mask_result), id(fidelity_result))
        if cache_key not in self._sums:
            self._sums[cache_key] = ((box_result, mask_result, fidelity_result),
                                     self._resampled(split, box_result, mask_result, fidelity_result))
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
        multi = np.asarray(box_result.per_image_multi, dtype=bool)
        single = np.asarray(box_result.per_image_single, dtype=bool)
        n, n_iou, n_thr = multi.shape
        w = self.weights(split, n)
        sums = {"multi": (w @ multi.reshape(n, -1).astype(np.float32)).reshape(-1, n_iou, n_thr)}
        if 50 in self.iou_thresholds:
            sums["single50"] = w @ single[:, self.iou_thresholds.index(50)].astype(np.float32)
        if split == "test":
            sums["n"] = n
            sums["gt_known_loc"] = w @ np.asarray(box_result.per_image_gt_known, dtype=np.float32)
            sums["top1_loc"] = w @ np.asarray(box_result.per_image_top1_loc, dtype=np.float32)
            w64 = w.astype(np.float64)
            if mask_result is not None:
                sums["fg"] = _count_product(w, w64, np.asarray(mask_result.per_image_fg_hist))
                sums["bg"] = _count_product(w, w64, np.asarray(mask_result.per_image_bg_hist))
            if fidelity_result is not None:
                sums["avg_drop"] = w64 @ np.asarray(_field(fidelity_result, "avg_drop_terms"), dtype=np.float64)
                sums["inc_conf"] = w64 @ np.asarray(_field(fidelity_result, "inc_conf_flags"), dtype=np.float64)
        return sums

    def _reduce(self, test: dict, val: dict | None) -> dict[str, np.ndarray]:
        """Per-replicate metric values (R + 1,) of one branch from its summed counts."""
        n = test["n"]

        def chosen(name: str) -> np.ndarray:  # accuracy (%) at the threshold chosen per row (and IoU)
            t = test[name].astype(np.float64)
            if val is None:
                return 100.0 * t.max(axis=-1) / n
            index = np.argmax(val[name], axis=-1)  # first maximum on ties
            return 100.0 * np.take_along_axis(t, index[..., None], axis=-1)[..., 0] / n

        out: dict[str, np.ndarray] = {}
        per_iou = chosen("multi")
        for k, delta in enumerate(self.iou_thresholds):
            out[f"maxboxacc_iou{delta}"] = per_iou[:, k]
        out["maxboxacc_v2"] = per_iou.mean(axis=1)
        if "single50" in test:
            out["maxboxacc"] = chosen("single50")
        out["gt_known_loc"] = 100.0 * test["gt_known_loc"].astype(np.float64) / n
        out["top1_loc"] = 100.0 * test["top1_loc"].astype(np.float64) / n
        if "fg" in test:
            out["pxap"] = pxap_rows(test["fg"], test["bg"])
        if "avg_drop" in test:  # the terms are already percentages: 100 max(0, Y - O) / Y
            out["avg_drop"] = test["avg_drop"] / n
        if "inc_conf" in test:
            out["inc_conf"] = 100.0 * test["inc_conf"] / n
        return out

    # ------------------------------------------------------------------------------------------- output
    def table(self) -> list[dict]:
        """One row per (protocol, variant, metric), sorted by protocol and variant (first-seen order of
        variants), metrics in METRICS order: softmax, sigmoid (means over seeds), delta, low, high,
        half_width, verdict, seeds, per-seed deltas. Raises when a seed lacks a branch or a split."""
        if self._pending:
            missing = sorted(f"{p}/{v}/{b} seed {s}: {'val' if t.test is not None else 'test'}"
                             for (p, v, b, s), t in self._pending.items())
            raise ValueError("results missing for: " + "; ".join(missing))
        groups: dict[tuple, set] = {}
        for protocol, variant, branch, seed in self._values:
            groups.setdefault((protocol, variant), set()).add(seed)
        rows = []
        lo_q, hi_q = 50 * (1 - self.confidence), 50 * (1 + self.confidence)
        for protocol, variant in sorted(groups, key=lambda pv: (str(pv[0]), _first_seen(self._values, pv))):
            seeds = sorted(groups[(protocol, variant)])
            for seed in seeds:
                for branch in BRANCHES:
                    if (protocol, variant, branch, seed) not in self._values:
                        raise ValueError(f"{protocol}/{variant} seed {seed}: no {branch} result")
            draw = np.random.default_rng([self.seed, STREAM_SEEDS]).integers(0, len(seeds),
                                                                              size=(self.resamples, len(seeds)))
            for metric in METRICS:
                per = [(self._values[(protocol, variant, "softmax", s)],
                        self._values[(protocol, variant, "sigmoid", s)]) for s in seeds]
                if not all(metric in soft and metric in sig for soft, sig in per):
                    continue
                deltas = np.stack([sig[metric] - soft[metric] for soft, sig in per])  # (S, R + 1)
                replicate = deltas[draw, np.arange(self.resamples)[:, None]].mean(axis=1)  # (R,)
                low, high = np.percentile(replicate, [lo_q, hi_q])
                delta = float(deltas[:, -1].mean())
                rows.append({
                    "protocol": protocol, "variant": variant, "metric": metric,
                    "softmax": _r(np.mean([soft[metric][-1] for soft, _ in per])),
                    "sigmoid": _r(np.mean([sig[metric][-1] for _, sig in per])),
                    "delta": _r(delta), "low": _r(low), "high": _r(high), "half_width": _r((high - low) / 2),
                    "verdict": verdict(float(low), float(high), metric), "seeds": seeds,
                    "seed_deltas": [_r(d) for d in deltas[:, -1]], "resamples": self.resamples,
                    "confidence": self.confidence})
        return rows


def _count_product(w: np.ndarray, w64: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """w @ counts as float64, for a count matrix `w` (R + 1, n) whose rows sum to n and nonnegative integer
    `counts` (n, k). In float32 (twice as fast) when that is exact: every partial sum of the product is an
    integer at most n * max(counts), so below 2**24 float32 rounds nothing; otherwise in float64."""
    if counts.size == 0 or w.shape[1] * int(counts.max()) < 2 ** 24:
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
            k: row[k] for k in ("delta", "low", "high", "half_width", "verdict")}
    return out
