"""Weakly-supervised-localisation box metrics (MaxBoxAcc, MaxBoxAccV2, GT-known Loc, Top-1 Loc), exact and fast.

The rules are those of METHOD.md section 4 (wsolevaluation / the official code), to the letter:

- Thresholds: the "official" grid `[round(i * 0.001, 3) for i in 0..1000]` (1001 values, 1.0 included) or the
  "wsol" grid `np.arange(0, 1, 0.001)` (1000 values).
- Score map S in [0, 1] (H x W) -> U = uint8(S * 255) (truncation, computed in S's own float type).
- Threshold tau -> cut level c = int(tau * max(U)) (float64 product, truncated); binary = U > c (strict).
- Contours: `cv2.findContours(binary, RETR_TREE, CHAIN_APPROX_SIMPLE)[0]`, hole contours included.
  No contour -> the single box [0, 0, 0, 0].
- Single-contour mode keeps the contour with the largest `cv2.contourArea`, the first in OpenCV's order on ties.
- Box of a contour: boundingRect (x, y, w, h) -> (x, y, x + w, y + h), then x1 = min(x1, W - 1) and
  y1 = min(y1, H - 1).
- IoU with inclusive (+1) pixel areas; a denominator <= 0 gives IoU 0; boxes with a negative coordinate or
  x1 < x0 (y1 < y0) are errors.
- MaxBoxAcc(delta) counts, per tau, the images whose max IoU over every multi-contour box and every GT box is
  >= delta / 100; MaxBoxAccV2 is the mean over deltas of the max over tau of 100 * count / N; MaxBoxAcc v1
  uses the largest-contour box (max over GT boxes) at IoU 50. GT-known Loc: largest-contour box at
  `loc_threshold`, IoU >= 0.5 with the first GT box ("first", the official `iou_val[0]`) or with any GT box
  ("max", the default). Top-1 Loc: GT-known and the softmax branch's top-1 prediction is right.

All counters are integers, so results do not depend on batch order or batch size. One process: evaluation is
parallelised one level up, by the ranks of `pipeline.dist` dealing whole map sets (pipeline/metrics/evaluate.py).

The boxes of every contour at every cut level come from `pipeline.metrics.box_levels.level_boxes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.concepts import DEFAULT_THRESHOLD_GRID, IOUS, THRESHOLD_GRIDS
from pipeline.metrics.box_levels import LevelBoxes, _largest_contour_box, level_boxes  # noqa: F401
from pipeline.metrics.registry import mean_over_ious, percent

GRIDS = THRESHOLD_GRIDS
GT_BOX_MATCHES = ("first", "max")
CONTOUR_MODES = ("multi", "single")


def threshold_grid(kind: str) -> np.ndarray:
    """The CAM threshold grid: "official" = [round(i * 0.001, 3) for i in 0..1000], "wsol" = np.arange(0, 1, 0.001)."""
    if kind == "official":
        return np.array([round(i * 0.001, 3) for i in range(1001)], dtype=np.float64)
    if kind == "wsol":
        return np.arange(0, 1, 0.001)
    raise ValueError(f"grid: '{kind}' is not valid; choose one of: {', '.join(GRIDS)}")


def check_boxes(boxes: np.ndarray | Sequence[Sequence[int]], name: str = "boxes") -> np.ndarray:
    """`boxes` as an (n, 4) int64 array x0, y0, x1, y1; ValueError on a negative coordinate or x1 < x0, y1 < y0."""
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected an (n, 4) array of x0, y0, x1, y1, got shape {arr.shape}")
    if arr.size and not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name}: box coordinates must be integers")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"{name}: box coordinates must be non-negative")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"{name}: boxes must have x1 >= x0 and y1 >= y0")
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of x0y0x1y1 boxes with inclusive pixel areas: inter = max(0, min x1 - max x0 + 1) *
    max(0, min y1 - max y0 + 1), area = (x1 - x0 + 1)(y1 - y0 + 1), IoU = inter / (area_a + area_b - inter),
    0 where that denominator is <= 0 (wsolevaluation's `calculate_multiple_iou`). Boxes are checked first."""
    return _iou(check_boxes(a, "box_iou a")[:, None], check_boxes(b, "box_iou b")[None])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`box_iou` of already checked boxes, broadcast over the leading axes (the last axis holds x0, y0, x1, y1)."""
    inter = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1) * np.maximum(
        0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    )
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denominator = area_a + area_b - inter
    degenerate = denominator <= 0
    ious = inter / np.where(degenerate, 1, denominator)
    ious[degenerate] = 0.0
    return ious


def quantize_scoremaps(scoremaps: np.ndarray) -> np.ndarray:
    """U = uint8(S * 255), the official truncation, in the maps' own float type; S must be finite and in [0, 1]."""
    maps = np.asarray(scoremaps)
    if not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(f"scoremaps: expected a float array in [0, 1], got dtype {maps.dtype}")
    if maps.size and (not np.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1):
        raise ValueError("scoremaps: values must be finite and in [0, 1] (normalise the maps first)")
    return (maps * 255).astype(np.uint8)


def largest_contour_box(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """The box (x0, y0, x1, y1) that MaxBoxAcc v1 / GT-known Loc draw for one score map S in [0, 1] at CAM
    threshold `threshold`: the largest contour of U > int(threshold * max U), U = uint8(S * 255); [0, 0, 0, 0]
    when nothing is above the cut (the official code's empty box)."""
    u = quantize_scoremaps(np.asarray(scoremap))
    if u.ndim != 2:
        raise ValueError(f"scoremap: expected one (H, W) map, got shape {u.shape}")
    level = int(float(threshold) * float(u.max()))
    if not (u > level).any():
        return np.zeros(4, dtype=np.int64)
    return _largest_contour_box(u, level).astype(np.int64)


@dataclass(frozen=True)
class _Outcomes:
    """Per-image outcomes of a batch, in image order: multi / single (n, n_iou, n_thr) "max IoU >= delta / 100"
    at each threshold (every contour; the largest contour), GT-known and Top-1 Loc (n,)."""

    multi: np.ndarray
    single: np.ndarray
    gt_known: np.ndarray
    top1_loc: np.ndarray


def _outcomes(
    maps: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    correct: np.ndarray,
    thresholds: np.ndarray,
    deltas: np.ndarray,
    loc_index: int,
    first_gt_only: bool,
) -> _Outcomes:
    """`_Outcomes` of quantised maps (n, H, W). Images go through `level_boxes` and the IoU arrays in parts of
    about 2**18 pixels (bounded work arrays; fewer numpy calls per image)."""
    n, height, width = maps.shape
    per_part = max(1, 2**18 // (height * width))
    parts = []
    deltas = deltas[:, None, None]
    for start in range(0, n, per_part):
        part = slice(start, min(start + per_part, n))
        boxes = level_boxes(maps[part])
        m = len(boxes.tops)
        n_gt = max(len(g) for g in gt_boxes[part])
        # pad each image's GT boxes with copies of its first one: the max over GT boxes is unchanged
        gt = np.stack([np.concatenate([g, np.repeat(g[:1], n_gt - len(g), 0)]) for g in gt_boxes[part]])
        level_max = np.zeros(m * 256)
        np.maximum.at(
            level_max,
            boxes.multi_image * 256 + boxes.multi_level,
            _iou(boxes.multi_boxes[:, None], gt[boxes.multi_image]).max(1),
        )
        single_ious = _iou(boxes.single_boxes[:, :, None], gt[:, None])  # (m, 256, n_gt)
        cuts = np.floor(thresholds[None, :] * boxes.tops[:, None].astype(np.float64)).astype(np.intp)
        rows = np.arange(m)[:, None]
        multi = level_max.reshape(m, 256)[rows, cuts][:, None] >= deltas.transpose(1, 0, 2)
        single = single_ious.max(2)[rows, cuts][:, None] >= deltas.transpose(1, 0, 2)
        loc = single_ious[np.arange(m), cuts[:, loc_index]]
        known = (loc[:, 0] if first_gt_only else loc.max(1)) >= 0.5
        parts.append((multi, single, known, known & correct[part]))
    return _Outcomes(*(np.concatenate(column) for column in zip(*parts)))


def _check_mode(mode: str) -> None:
    if mode not in CONTOUR_MODES:
        raise ValueError(f"mode: '{mode}' is not valid; choose one of: {', '.join(CONTOUR_MODES)}")


@dataclass(frozen=True, eq=False)
class BoxResult:
    """Integer counters of a box evaluation, and the metrics (percentages) derived from them.

    `multi_counts[k, j]`: images whose max IoU over every multi-contour box x every GT box at threshold j is
    >= iou_thresholds[k] / 100. `single_counts[k, j]`: the same with the largest-contour box (max over GT
    boxes). `gt_known_count` / `top1_loc_count`: images localised at `loc_threshold` (largest contour, IoU >= 0.5
    under the evaluator's `gt_box_match` rule), the latter also correctly classified.

    With `BoxEvaluator(per_image=True)` the per-image outcomes behind the counters, in accumulation order
    (None otherwise): `per_image_multi` / `per_image_single` (n, n_iou, n_thr) bool, `per_image_gt_known` /
    `per_image_top1_loc` (n,) bool; summed over images they are exactly the counters.
    """

    n_images: int
    thresholds: np.ndarray
    iou_thresholds: tuple[int, ...]
    loc_threshold: float
    multi_counts: np.ndarray
    single_counts: np.ndarray
    gt_known_count: int
    top1_loc_count: int
    per_image_multi: np.ndarray | None = None
    per_image_single: np.ndarray | None = None
    per_image_gt_known: np.ndarray | None = None
    per_image_top1_loc: np.ndarray | None = None

    def _percent(self, counts: np.ndarray | int) -> np.ndarray | float:
        if self.n_images == 0:
            raise ValueError("no images were accumulated")
        return percent(np.asarray(counts), self.n_images)

    def box_accuracy(self, mode: str = "multi") -> np.ndarray:
        """(n_iou, n_thr) BoxAcc(delta, tau) = 100 * count / N, multi-contour or single-contour ("single")."""
        _check_mode(mode)
        return self._percent(self.multi_counts if mode == "multi" else self.single_counts)

    @property
    def maxboxacc_iou(self) -> dict[int, float]:
        """MaxBoxAcc(delta) per IoU threshold: max over tau of the multi-contour BoxAcc (oracle tau on this set)."""
        return {delta: float(acc.max()) for delta, acc in zip(self.iou_thresholds, self.box_accuracy())}

    @property
    def maxboxacc_v2(self) -> float:
        """MaxBoxAccV2: the mean over IoU thresholds of MaxBoxAcc(delta), each with its own best tau."""
        return float(mean_over_ious(np.array(list(self.maxboxacc_iou.values()))))

    @property
    def maxboxacc_v1(self) -> float:
        """MaxBoxAcc (v1): max over tau of the largest-contour BoxAcc at IoU 50."""
        if 50 not in self.iou_thresholds:
            raise ValueError("maxboxacc_v1 needs 50 among the IoU thresholds")
        return float(self.box_accuracy("single")[self.iou_thresholds.index(50)].max())

    @property
    def best_index(self) -> dict[int, int]:
        """Per IoU threshold, the grid index of the best multi-contour threshold (first on ties)."""
        return select_thresholds(self)

    @property
    def best_threshold(self) -> dict[int, float]:
        """Per IoU threshold, the best multi-contour CAM threshold (first on ties)."""
        return {delta: float(self.thresholds[i]) for delta, i in self.best_index.items()}

    @property
    def gt_known_loc(self) -> float:
        """GT-known Loc (%) at `loc_threshold`."""
        return float(self._percent(self.gt_known_count))

    @property
    def top1_loc(self) -> float:
        """Top-1 Loc (%) at `loc_threshold`."""
        return float(self._percent(self.top1_loc_count))

    def at_thresholds(self, index_per_delta: Mapping[int, int], mode: str = "multi") -> dict[int, float]:
        """BoxAcc (%) per IoU threshold at grid indices chosen elsewhere (e.g. `select_thresholds` on a held-out
        split); the mean of the values is the MaxBoxAccV2 analogue at those thresholds."""
        if set(index_per_delta) != set(self.iou_thresholds):
            raise ValueError(
                f"index_per_delta: expected one grid index for each of the IoU thresholds "
                f"{list(self.iou_thresholds)}, got {sorted(index_per_delta)}"
            )
        acc = self.box_accuracy(mode)
        out = {}
        for k, delta in enumerate(self.iou_thresholds):
            index = int(index_per_delta[delta])
            if not 0 <= index < len(self.thresholds):
                raise ValueError(
                    f"index_per_delta[{delta}]: {index} is not an index of the "
                    f"{len(self.thresholds)}-point threshold grid"
                )
            out[delta] = float(acc[k, index])
        return out


def select_thresholds(result: BoxResult, mode: str = "multi") -> dict[int, int]:
    """Per IoU threshold, the grid index maximising BoxAcc on `result` (the first one on ties)."""
    _check_mode(mode)
    counts = result.multi_counts if mode == "multi" else result.single_counts
    return {delta: int(np.argmax(row)) for delta, row in zip(result.iou_thresholds, counts)}


class BoxEvaluator:
    """Accumulates box-localisation counters over batches (wsolevaluation's `accumulate` / `compute` shape).

    `grid`: "official" (1001 thresholds incl. 1.0) or "wsol" (1000; the default, concepts.DEFAULT_THRESHOLD_GRID,
    as params.yaml's). `iou_thresholds`: IoU percentages for MaxBoxAcc (default concepts.IOUS). `loc_threshold`:
    the CAM threshold of GT-known / Top-1 Loc, which must lie on the grid.
    `gt_box_match`: "max" (IoU with the best GT box, the default) or "first" (the official `iou_val[0]`).
    `per_image`: also keep every image's outcomes (`BoxResult.per_image_*`, for the bootstrap). The counters
    are integers, so the result does not depend on batch sizes or order.
    """

    def __init__(
        self,
        *,
        grid: str = DEFAULT_THRESHOLD_GRID,
        iou_thresholds: Sequence[int] = IOUS,
        loc_threshold: float = 0.2,
        gt_box_match: str = "max",
        per_image: bool = False,
    ) -> None:
        self.thresholds = threshold_grid(grid)
        if gt_box_match not in GT_BOX_MATCHES:
            raise ValueError(f"gt_box_match: '{gt_box_match}' is not valid; choose one of: {', '.join(GT_BOX_MATCHES)}")
        deltas = tuple(iou_thresholds)
        if (
            not deltas
            or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 < d <= 100 for d in deltas)
            or len(set(deltas)) != len(deltas)
        ):
            raise ValueError(f"iou_thresholds: expected distinct integers in 1..100, got {list(deltas)}")
        on_grid = np.flatnonzero(self.thresholds == loc_threshold)
        if len(on_grid) == 0:
            raise ValueError(f"loc_threshold: {loc_threshold!r} is not on the '{grid}' threshold grid (steps of 0.001)")
        self.grid = grid
        self.iou_thresholds = tuple(int(d) for d in deltas)
        self.loc_threshold = loc_threshold
        self.gt_box_match = gt_box_match
        self.per_image = bool(per_image)
        self._loc_index = int(on_grid[0])
        self._multi = np.zeros((len(deltas), len(self.thresholds)), np.int64)
        self._single = np.zeros_like(self._multi)
        self._n_images = self._gt_known = self._top1_loc = 0
        self._parts: list[_Outcomes] = []

    def accumulate(self, scoremaps: np.ndarray, gt_boxes: Sequence[np.ndarray], correct: np.ndarray) -> None:
        """Add a batch: `scoremaps` (B, H, W) floats in [0, 1] (already normalised; NaN or out-of-range values
        are a ValueError, an all-zero or constant map is fine); `gt_boxes[i]` (n_i >= 1, 4) integer boxes on
        the same grid; `correct[i]`: the softmax branch's top-1 prediction equals the label (Top-1 Loc)."""
        maps = np.asarray(scoremaps)
        if maps.ndim != 3:
            raise ValueError(f"scoremaps: expected a (B, H, W) array, got shape {maps.shape}")
        correct = np.asarray(correct)
        if len(gt_boxes) != len(maps) or correct.shape != (len(maps),):
            raise ValueError(
                f"batch lengths differ: {len(maps)} score maps, {len(gt_boxes)} GT box lists, "
                f"{correct.size} correct flags"
            )
        gts = tuple(check_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes))
        for i, g in enumerate(gts):
            if len(g) == 0:
                raise ValueError(f"gt_boxes[{i}]: every image needs at least one GT box")
        quantized = quantize_scoremaps(maps)
        if len(maps) == 0:
            return
        out = _outcomes(
            quantized,
            gts,
            correct.astype(bool),
            self.thresholds,
            np.asarray(self.iou_thresholds) / 100,
            self._loc_index,
            self.gt_box_match == "first",
        )
        self._multi += out.multi.sum(0)
        self._single += out.single.sum(0)
        self._gt_known += int(out.gt_known.sum())
        self._top1_loc += int(out.top1_loc.sum())
        self._n_images += len(maps)
        if self.per_image:
            self._parts.append(out)

    def compute(self) -> BoxResult:
        """The counters so far (the evaluator can keep accumulating)."""
        per_image: dict = {}
        if self.per_image:
            n_iou, n_thr = self._multi.shape
            empty = _Outcomes(
                np.zeros((0, n_iou, n_thr), bool),
                np.zeros((0, n_iou, n_thr), bool),
                np.zeros(0, bool),
                np.zeros(0, bool),
            )
            per_image = {
                f"per_image_{name}": np.concatenate([getattr(p, name) for p in [empty, *self._parts]])
                for name in ("multi", "single", "gt_known", "top1_loc")
            }
        return BoxResult(
            self._n_images,
            self.thresholds.copy(),
            self.iou_thresholds,
            self.loc_threshold,
            self._multi.copy(),
            self._single.copy(),
            self._gt_known,
            self._top1_loc,
            **per_image,
        )

    def close(self) -> None:
        """Nothing to release (kept so `with BoxEvaluator() as e:` reads as before)."""

    def __enter__(self) -> BoxEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
