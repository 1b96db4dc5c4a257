"""Reference (oracle) box metrics: a direct transcription of METHOD.md section 4 / the official code.

Deliberately slow and independent of `pipeline.metrics.boxes` (its own grid, IoU and box extraction), so
the library's fast path can be checked against it. Per image it runs the official code's two sweeps over
every threshold of the grid: one `cv2.findContours` per threshold keeping every contour (MaxBoxAcc /
MaxBoxAccV2) and one per threshold keeping the largest contour (MaxBoxAcc v1, GT-known and Top-1 Loc).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def reference_grid(kind: str) -> list[float]:
    """The official grid `[round(i * 0.001, 3) for i in 0..1000]` or wsolevaluation's `np.arange(0, 1, 0.001)`."""
    if kind == "official":
        return [round(i * 0.001, 3) for i in range(1001)]
    return list(np.arange(0, 1, 0.001))


def reference_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """wsolevaluation's `calculate_multiple_iou` (inclusive +1 areas, denominator <= 0 -> 0)."""
    a = np.asarray(box_a)[:, None, :]
    b = np.asarray(box_b)[None, :, :]
    min_x = np.maximum(a[..., 0], b[..., 0])
    min_y = np.maximum(a[..., 1], b[..., 1])
    max_x = np.minimum(a[..., 2], b[..., 2])
    max_y = np.minimum(a[..., 3], b[..., 3])
    inter = np.maximum(0, max_x - min_x + 1) * np.maximum(0, max_y - min_y + 1)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denominator = area_a + area_b - inter
    degenerate = denominator <= 0
    denominator = np.where(degenerate, 1, denominator)
    ious = inter / denominator
    ious[degenerate] = 0
    return ious


def reference_boxes(
    scoremap: np.ndarray, thresholds: Sequence[float], multi_contour: bool
) -> tuple[list[np.ndarray], list[int]]:
    """wsolevaluation's `compute_bboxes_from_scoremaps`: (n, 4) boxes x0, y0, x1, y1 per threshold, and n."""
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)

    def scoremap2bbox(threshold: float) -> tuple[np.ndarray, int]:
        _, thr_gray_heatmap = cv2.threshold(
            src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)), maxval=255, type=cv2.THRESH_BINARY
        )
        contours = cv2.findContours(image=thr_gray_heatmap, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            return np.asarray([[0, 0, 0, 0]]), 1
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        estimated_boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            x0, y0, x1, y1 = x, y, x + w, y + h
            x1 = min(x1, width - 1)
            y1 = min(y1, height - 1)
            estimated_boxes.append([x0, y0, x1, y1])
        return np.asarray(estimated_boxes), len(contours)

    result = [scoremap2bbox(threshold) for threshold in thresholds]
    return [boxes for boxes, _ in result], [number for _, number in result]


def reference_sweep(
    scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: Sequence[float], multi_contour: bool
) -> list[np.ndarray]:
    """One sweep as wsolevaluation's `BoxEvaluator.accumulate` does it: the boxes of every threshold
    concatenated, one IoU matrix against the GT boxes, then sliced back per threshold."""
    boxes, number_of_boxes = reference_boxes(scoremap, thresholds, multi_contour)
    ious = reference_iou(np.concatenate(boxes, axis=0), np.asarray(gt_boxes))
    out, idx = [], 0
    for n in number_of_boxes:
        out.append(ious[idx : idx + n])
        idx += n
    return out


def reference_image(
    scoremap: np.ndarray,
    gt_boxes: np.ndarray,
    thresholds: Sequence[float],
    iou_thresholds: Sequence[int],
    loc_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image results of the official code's two sweeps (every contour; the largest contour): multi and
    single (n_iou, n_thr) indicators "max IoU >= delta / 100", and the IoU of the largest contour's box at
    `loc_threshold` with each GT box (GT-known uses [0] under "first", the max under "max")."""
    multi_max = np.array([ious.max() for ious in reference_sweep(scoremap, gt_boxes, thresholds, True)])
    single = reference_sweep(scoremap, gt_boxes, thresholds, False)
    single_max = np.array([ious.max() for ious in single])
    multi = np.stack([multi_max >= delta / 100 for delta in iou_thresholds])
    single_ok = np.stack([single_max >= delta / 100 for delta in iou_thresholds])
    return multi, single_ok, single[list(thresholds).index(loc_threshold)][0]


def reference_counts(
    scoremaps: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    correct: Sequence[bool],
    *,
    grid: str = "official",
    iou_thresholds: Sequence[int] = (30, 50, 70),
    loc_threshold: float = 0.2,
    gt_box_match: str = "max",
) -> dict[str, object]:
    """Integer counters over a data set, as `BoxResult` holds them."""
    thresholds = reference_grid(grid)
    multi = np.zeros((len(iou_thresholds), len(thresholds)), np.int64)
    single = np.zeros_like(multi)
    gt_known = top1_loc = 0
    for scoremap, gt, ok in zip(scoremaps, gt_boxes, correct, strict=True):
        m, s, loc_ious = reference_image(scoremap, gt, thresholds, iou_thresholds, loc_threshold)
        known = bool((loc_ious[0] if gt_box_match == "first" else loc_ious.max()) >= 0.5)
        multi += m
        single += s
        gt_known += known
        top1_loc += known and bool(ok)
    return {
        "n_images": len(scoremaps),
        "multi_counts": multi,
        "single_counts": single,
        "gt_known": gt_known,
        "top1_loc": top1_loc,
    }


def reference_level_boxes(u: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Every contour's box and the largest contour's box of `u > level` for a uint8 map (the official rules)."""
    height, width = u.shape
    binary = np.where(u > level, 255, 0).astype(np.uint8)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros((1, 4), np.int64), np.zeros(4, np.int64)
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    largest = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))
    return np.asarray(boxes), np.asarray(boxes[largest])
