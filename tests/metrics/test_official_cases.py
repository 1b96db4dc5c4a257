"""wsolevaluation's own test cases (clovaai/wsolevaluation @ 96f4b886, `evaluation_test.py`), restated in
this project's words against its API: IoU (`pipeline.metrics.boxes.box_iou`), GT box rescaling
(`pipeline.data.prepare.rescale_box`), boxes from score maps (`largest_contour_box`, the official
single-contour rule), and PxAP (`pipeline.metrics.masks.MaskEvaluator`) on the real OpenImages masks in
tests/fixtures/wsol_test_masks/ read by our loader (`pipeline.data.prepare.read_gt_mask`).

Where the official code raises RuntimeError (box convention, no positive ground truth), ours raises
ValueError; the official cases only ask that it raises. The official mask tests use a 0.01 threshold grid;
the expectations (100 exactly; the positive-pixel ratio within 0.1) hold on both of our grids, so both run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.prepare import read_gt_mask, rescale_box
from pipeline.metrics.boxes import box_iou, largest_contour_box
from pipeline.metrics.masks import MaskEvaluator

MASK_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "wsol_test_masks"
SIZE = 224  # wsolevaluation's _RESIZE_LENGTH

# The localization.txt rows of the five images (metadata/OpenImages/val): instance masks, ignore mask.
GT = {
    "val/0bt_c3/1cd9ac0169ec7df0.jpg": (
        ("val/0bt_c3/1cd9ac0169ec7df0_m0bt_c3_6932e993.png",),
        "val/0bt_c3/1cd9ac0169ec7df0_ignore.png",
    ),
    "val/0bt_c3/3a29f0b33894d4a6.jpg": (
        ("val/0bt_c3/3a29f0b33894d4a6_m0bt_c3_d2422806.png", "val/0bt_c3/3a29f0b33894d4a6_m0bt_c3_3581e3ae.png"),
        "val/0bt_c3/3a29f0b33894d4a6_ignore.png",
    ),
    "val/0bt_c3/3b3b9931325d65c9.jpg": (
        ("val/0bt_c3/3b3b9931325d65c9_m0bt_c3_d4e2e136.png",),
        "val/0bt_c3/3b3b9931325d65c9_ignore.png",
    ),
    "val/0by6g/490365f63135f3e0.jpg": (
        ("val/0by6g/490365f63135f3e0_m0by6g_4f9ded4f.png",),
        "val/0by6g/490365f63135f3e0_ignore.png",
    ),
    "val/0by6g/b4d953e7105da1d8.jpg": (
        ("val/0by6g/b4d953e7105da1d8_m0by6g_9f8621ff.png",),
        "val/0by6g/b4d953e7105da1d8_ignore.png",
    ),
}
# The official test builds its score maps from the *other* 0by6g image's masks (its `_MASK_PATHS` are
# crossed); only their 224 x 224 shape enters the constant maps, so the cases below use the image's own.
ZERO_GT, FULL_GT = "val/0by6g/490365f63135f3e0.jpg", "val/0by6g/b4d953e7105da1d8.jpg"
# (foreground, background) pixels at 224 x 224 from the official constant-map expectations
COUNTS = {
    "val/0bt_c3/1cd9ac0169ec7df0.jpg": (43031, 7145),
    "val/0bt_c3/3a29f0b33894d4a6.jpg": (833, 49342),
    "val/0bt_c3/3b3b9931325d65c9.jpg": (347, 13909),
}
GRIDS = ("official", "wsol")


def gt(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    instances, ignore = GT[image_id]
    return read_gt_mask(MASK_ROOT, instances, ignore, SIZE)


def official_mask(image_id: str) -> np.ndarray:
    """wsolevaluation's `get_mask` transcribed (the reference the loader is checked against): uint8 map,
    1 = foreground, 255 = ignore minus foreground, 0 = background. `load_mask_image` = cv2.imread grey as
    float32, cv2.resize INTER_NEAREST to 224 x 224; foreground = any instance > 0.5 on the raw values."""

    def load(rel: str) -> np.ndarray:
        grey = np.float32(cv2.imread(str(MASK_ROOT / rel), cv2.IMREAD_GRAYSCALE))
        return cv2.resize(grey, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)

    instances, ignore_path = GT[image_id]
    foreground = np.stack([load(rel) > 0.5 for rel in instances]).any(axis=0)
    ignore = np.logical_and(load(ignore_path) > 0.5, ~foreground)
    return foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8)


def pxap(scoremap: np.ndarray, image_id: str, grid: str) -> float:
    fg, ignore = gt(image_id)
    evaluator = MaskEvaluator(grid=grid)
    evaluator.accumulate(scoremap[None], fg[None], ignore[None])
    return evaluator.compute().pxap


# --- IoU (calculate_multiple_iou) -----------------------------------------------------------------


def test_iou_of_degenerate_zero_boxes_is_one_with_shape_n_by_m() -> None:
    ious = box_iou(np.zeros((3, 4), dtype=int), np.zeros((5, 4), dtype=int))
    assert isinstance(ious, np.ndarray) and ious.dtype == np.float64 and ious.shape == (3, 5)
    assert (ious == 1.0).all()  # a one-pixel box overlaps itself fully (inclusive areas)


def test_iou_rejects_a_box_with_x1_before_x0() -> None:
    with pytest.raises(ValueError, match="x1 >= x0"):
        box_iou(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 2, 2]]))


def test_iou_of_two_boxes_with_themselves_is_the_identity() -> None:
    boxes = np.array([[1, 1, 3, 3], [4, 4, 5, 5]])
    assert (box_iou(boxes, boxes) == np.eye(2)).all()


def test_iou_realistic_value() -> None:
    # inter 2 x 4 = 8; areas 5 x 5 = 25 and 2 x 5 = 10; 8 / (25 + 10 - 8)
    assert box_iou(np.array([[1, 2, 5, 6]]), np.array([[3, 1, 4, 5]]))[0, 0] == pytest.approx(8 / 27, abs=1e-6)


# --- GT box rescaling (resize_bbox) ---------------------------------------------------------------


def test_rescale_box_truncates_each_coordinate() -> None:
    # image 10 x 20 -> 35 x 10: x * 3.5 (3.5 -> 3, 14), y / 2 (1, 1.5 -> 1)
    assert rescale_box((1, 2, 4, 3), 10, 20, (35, 10)) == (3, 1, 14, 1)


def test_rescale_box_to_the_same_size_is_the_identity() -> None:
    assert rescale_box((1, 2, 1, 2), 3, 3, (3, 3)) == (1, 2, 1, 2)
    assert rescale_box((1, 2, 1, 2), 3, 3, 3) == (1, 2, 1, 2)


def test_rescale_box_equals_the_official_float_formula_on_random_boxes() -> None:
    def resize_bbox(box, image_size, resize_size):  # wsolevaluation's, transcribed
        (x0, y0, x1, y1), (w, h), (nw, nh) = map(float, box), map(float, image_size), map(float, resize_size)
        return int(x0 * nw / w), int(y0 * nh / h), int(x1 * nw / w), int(y1 * nh / h)

    rng = np.random.default_rng(0)
    for _ in range(2000):
        width, height = (int(v) for v in rng.integers(20, 2000, size=2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
        assert rescale_box((x0, y0, x1, y1), width, height, SIZE) == resize_bbox(
            (x0, y0, x1, y1), (width, height), (SIZE, SIZE)
        )


# --- boxes from score maps (compute_bboxes_from_scoremaps, single contour) ------------------------

THRESHOLDS = np.arange(0, 1, 0.2)  # the official cases' list, 0.6000000000000001 included


def boxes_at_thresholds(scoremap: np.ndarray) -> list[list[int]]:
    return [largest_contour_box(scoremap, t).tolist() for t in THRESHOLDS]


def test_all_zero_map_gives_the_empty_box_at_every_threshold() -> None:
    assert boxes_at_thresholds(np.zeros((3, 3))) == [[0, 0, 0, 0]] * 5


def test_unimodal_map_boxes_shrink_towards_the_peak() -> None:
    scoremap = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # indexed [y][x]
            [0.0, 0.4, 0.4, 0.4, 0.6],
            [0.0, 0.4, 1.0, 0.8, 0.6],
            [0.0, 0.4, 0.4, 0.4, 0.6],
        ]
    )
    assert boxes_at_thresholds(scoremap) == [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]


def test_multimodal_map_keeps_the_largest_contour() -> None:
    scoremap = np.array(
        [[0.4, 0.0, 0.2, 0.2, 0.2], [0.4, 0.4, 0.0, 0.4, 0.0], [0.0, 0.0, 0.0, 0.4, 0.0], [1.0, 0.6, 0.8, 0.2, 0.2]]
    )
    assert boxes_at_thresholds(scoremap) == [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]


def test_nan_map_is_rejected() -> None:
    with pytest.raises(ValueError):
        largest_contour_box(np.full((3, 3), np.nan), 0.2)


# --- masks as the official loader reads them, and PxAP (MaskEvaluator) ----------------------------


@pytest.mark.parametrize("image_id", sorted(GT))
def test_loader_reads_masks_exactly_as_the_official_get_mask(image_id: str) -> None:
    fg, ignore = gt(image_id)
    official = official_mask(image_id)
    assert np.array_equal(fg, official == 1) and np.array_equal(ignore, official == 255)


@pytest.mark.parametrize("image_id", sorted(COUNTS))
def test_loader_gives_the_official_foreground_and_background_pixel_counts(image_id: str) -> None:
    fg, ignore = gt(image_id)
    assert fg.shape == ignore.shape == (SIZE, SIZE) and not (fg & ignore).any()
    official_fg, official_bg = COUNTS[image_id]
    background = int((~fg & ~ignore).sum())
    assert int(fg.sum()) == official_fg
    # The official background counts are one short for two images: 3a29f0b33894d4a6 has an empty ignore
    # mask, so foreground + background must be all 50,176 pixels, yet 833 + 49,342 = 50,175.
    assert background - official_bg in (0, 1)
    assert int(fg.sum()) + background + int(ignore.sum()) == SIZE * SIZE


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ignore_score", [0.0, 1.0])
@pytest.mark.parametrize("image_id", sorted(COUNTS))
def test_perfect_scoremap_gives_pxap_100_exactly(image_id: str, ignore_score: float, grid: str) -> None:
    official = official_mask(image_id)  # the official test's perfect map, built from the official masks
    scoremap = official.astype(np.float64)
    scoremap[official == 255] = ignore_score  # ignored pixels count nowhere, whatever their score
    assert pxap(scoremap, image_id, grid) == 100.0


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("image_id", sorted(COUNTS))
def test_constant_scoremap_gives_the_positive_pixel_ratio(image_id: str, value: float, grid: str) -> None:
    fg, bg = COUNTS[image_id]
    assert pxap(np.full((SIZE, SIZE), value), image_id, grid) == pytest.approx(100 * fg / (fg + bg), abs=0.1)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_ground_truth_cases(value: float) -> None:
    fg, ignore = gt(ZERO_GT)
    assert not fg.any()
    with pytest.raises(ValueError, match="no positive"):
        pxap(np.full((SIZE, SIZE), value), ZERO_GT, "official")
    fg, ignore = gt(FULL_GT)
    assert fg.all() and not ignore.any()
    assert pxap(np.full((SIZE, SIZE), value), FULL_GT, "official") == pytest.approx(100.0, abs=0.1)


def test_nan_scoremap_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pxap(np.full((SIZE, SIZE), np.nan), FULL_GT, "official")
