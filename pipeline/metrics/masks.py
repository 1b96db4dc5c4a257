"""Pixel average precision (PxAP) with ignore regions, as wsolevaluation's `MaskEvaluator` (METHOD.md 4.5).

The rule, transcribed from the official code:

1. Thresholds T: `official` = [round(i * 0.001, 3) for i in 0..1000] (1001 values, 1.0 included, the
   official repo's grid) or `wsol` = np.arange(0, 1, 0.001) (1000 values, wsolevaluation's grid).
   Bin edges E = T followed by [1.0, 2.0, 3.0]: np.histogram bins [E_k, E_k+1), the last one [2.0, 3.0]
   closed. With `official` the edge 1.0 appears twice, which gives an always-empty bin [1.0, 1.0).
2. The score values of foreground pixels and of background pixels are histogrammed separately over E and
   summed over images (int64 counters); ignored pixels (the ignore mask minus the foreground) count nowhere.
3. Reversing the bins and cumulating gives, for the lower edges c_0 > c_1 >= ... >= c_n taken from the top
   (c = E[:-1][::-1] = [2.0, 1.0, ...]), TP_j = #{foreground scores >= c_j} and FP_j = #{background scores
   >= c_j} (exact for scores in [0, 1]).
4. precision_j = TP_j / (TP_j + FP_j) (NaN where TP_j + FP_j = 0), recall_j = TP_j / P with P the number of
   foreground pixels.
5. PxAP = 100 * sum over j >= 1 with TP_j + FP_j > 0 of precision_j * (recall_j - recall_{j-1}).

The official code also raises "no positive prediction" when TP + FP = 0 at every threshold. For scores in
[0, 1] the lowest threshold counts every pixel, so that case implies P = 0 and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.concepts import DEFAULT_THRESHOLD_GRID
from pipeline.metrics.boxes import threshold_grid

_BIN_STEPS = 4  # moves of MaskEvaluator._bins's guess before it falls back to a binary search


@dataclass(frozen=True)
class MaskResult:
    """PxAP and the pixel precision-recall curve behind it.

    `fg_hist`/`bg_hist` are per bin [edges[k], edges[k+1]) in ascending order. `cuts` are the lower bin
    edges from the top (edges[:-1][::-1]); `tp`, `fp`, `precision`, `recall` are aligned with `cuts`, i.e.
    entry j counts scores >= cuts[j].
    """

    thresholds: np.ndarray
    edges: np.ndarray
    fg_hist: np.ndarray
    bg_hist: np.ndarray
    cuts: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pxap: float
    per_image_fg_hist: np.ndarray | None = None  # (n, n_bins) int64, accumulation order (MaskEvaluator(per_image=True))
    per_image_bg_hist: np.ndarray | None = None  # summed over images: fg_hist / bg_hist


class MaskEvaluator:
    """Accumulates foreground/background score histograms over batches and computes PxAP.

    Counters are int64, so the result does not depend on how the images are split into batches or in
    which order they come. `per_image`: also keep each image's two histograms (MaskResult.per_image_*, for
    the bootstrap; the same bins, by a searchsorted + bincount that the tests check against np.histogram,
    and the totals as their sums).
    """

    def __init__(self, *, grid: str = DEFAULT_THRESHOLD_GRID, per_image: bool = False):
        self.thresholds = threshold_grid(grid)
        self.edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self._per_step = (len(self.thresholds) - 1) / (self.thresholds[-1] - self.thresholds[0])  # 1 / grid step
        self._upper = np.append(self.edges[1:-1], np.inf)  # bin k's upper edge; the last bin has none
        self.fg_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.bg_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.per_image = bool(per_image)
        self._per_image: list[tuple[np.ndarray, np.ndarray]] = []

    def _bins(self, scoremaps: np.ndarray) -> np.ndarray:
        """Each value's bin: np.histogram's bins [E_k, E_k+1) with the last one closed, i.e. bin
        searchsorted(E, x, "right") - 1, clipped to the last bin for x = E[-1].

        Found without a binary search (3-4x faster, benchmarks/bench_metrics.py): k = floor(x / grid step),
        then moved up while E[k+1] <= x and down while E[k] > x, until E[k] <= x < E[k+1] (or k is the last
        bin). That k is the unique answer, so the result is the binary search's exactly (the tests check it on
        both grids); after `_BIN_STEPS` moves (a grid far from uniform) the binary search finishes the job."""
        edges, last = self.edges, len(self.edges) - 2
        x = scoremaps.reshape(-1)
        k = np.minimum((x * np.float32(self._per_step)).astype(np.intp), last)  # x >= 0: truncation is floor
        idx = None  # every value at first, then only the values that moved
        for _ in range(_BIN_STEPS):
            kk, xx = (k, x) if idx is None else (k[idx], x[idx])
            up = self._upper[kk] <= xx  # E[k+1], and never above the last bin
            down = edges[kk] > xx  # float64 comparisons, as the binary search's
            moved = np.flatnonzero(up | down)
            if not moved.size:
                return k.reshape(scoremaps.shape)
            idx = moved if idx is None else idx[moved]
            k[idx] += up[moved].astype(np.intp) - down[moved]
        return np.minimum(np.searchsorted(edges, scoremaps, side="right") - 1, last)

    def _image_hists(self, bins: np.ndarray, fg: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_bins) int64 histograms of each map's foreground pixels and of its background pixels (neither
        foreground nor ignored), from their `bins`: one bincount over image, part and bin."""
        n, n_bins = len(bins), len(self.edges) - 1
        code = bins + (np.arange(n, dtype=np.intp) * (2 * n_bins))[:, None, None]
        code += n_bins * ~fg  # background: the second half of the image's 2 * n_bins counters
        both = np.bincount(code[~ignore] if ignore.any() else code.ravel(), minlength=2 * n * n_bins)
        both = both.reshape(n, 2, n_bins).astype(np.int64)
        return both[:, 0], both[:, 1]

    def accumulate(self, scoremaps: np.ndarray, fg: np.ndarray, ignore: np.ndarray) -> None:
        """Add a batch: `scoremaps` (B, H, W) floats in [0, 1]; `fg` and `ignore` (B, H, W) bool masks,
        disjoint (the ignore mask already excludes the foreground). Ignored pixels count nowhere."""
        scoremaps, fg, ignore = np.asarray(scoremaps), np.asarray(fg), np.asarray(ignore)
        if scoremaps.ndim != 3:
            raise ValueError(f"scoremaps must be (B, H, W); got shape {scoremaps.shape}")
        if not np.issubdtype(scoremaps.dtype, np.floating):
            raise TypeError(f"scoremaps must be floating point; got {scoremaps.dtype}")
        for name, mask in (("fg", fg), ("ignore", ignore)):
            if mask.shape != scoremaps.shape:
                raise ValueError(f"{name} mask shape {mask.shape} differs from scoremaps shape {scoremaps.shape}")
            if mask.dtype != np.bool_:
                raise TypeError(f"{name} mask must be bool; got {mask.dtype}")
        if np.isnan(scoremaps).any():
            raise ValueError("scoremaps must not contain NaN")
        if scoremaps.size and (scoremaps.min() < 0 or scoremaps.max() > 1):
            raise ValueError(f"scoremaps must be in [0, 1]; got min {scoremaps.min()}, max {scoremaps.max()}")
        if (fg & ignore).any():
            raise ValueError("ignore mask overlaps the foreground; it must already exclude foreground pixels")
        if self.per_image:  # one bin search per pixel; the totals are the per-image histograms summed
            fg_hists, bg_hists = self._image_hists(self._bins(scoremaps), fg, ignore)
            self.fg_hist += fg_hists.sum(0)
            self.bg_hist += bg_hists.sum(0)
            self._per_image.append((fg_hists, bg_hists))
            return
        background = ~(fg | ignore)
        self.fg_hist += np.histogram(scoremaps[fg], bins=self.edges)[0].astype(np.int64)
        self.bg_hist += np.histogram(scoremaps[background], bins=self.edges)[0].astype(np.int64)

    def compute(self) -> MaskResult:
        """PxAP (in %) and the PR curve from the accumulated histograms (rule in the module docstring).

        Raises ValueError when no foreground pixel was accumulated (which, for scores in [0, 1], includes
        the official "no positive prediction" case).
        """
        num_fg = int(self.fg_hist.sum())
        if num_fg <= 0:
            raise ValueError(
                "PxAP: no positive ground-truth pixel in the evaluated set (so no positive "
                "prediction either); every pixel was background or ignored, or nothing was "
                "accumulated"
            )
        tp = self.fg_hist[::-1].cumsum()
        fp = self.bg_hist[::-1].cumsum()
        predicted = tp + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / predicted
        recall = tp / num_fg
        nonzero = predicted != 0
        pxap = 100.0 * float((precision[1:] * np.diff(recall))[nonzero[1:]].sum())
        per_image = {}
        if self.per_image:
            n_bins = len(self.edges) - 1
            parts = [(np.zeros((0, n_bins), np.int64),) * 2, *self._per_image]
            per_image = {
                "per_image_fg_hist": np.concatenate([f for f, _ in parts]),
                "per_image_bg_hist": np.concatenate([b for _, b in parts]),
            }
        return MaskResult(
            **per_image,
            thresholds=self.thresholds.copy(),
            edges=self.edges.copy(),
            fg_hist=self.fg_hist.copy(),
            bg_hist=self.bg_hist.copy(),
            cuts=self.edges[:-1][::-1].copy(),
            tp=tp,
            fp=fp,
            precision=precision,
            recall=recall,
            pxap=pxap,
        )
