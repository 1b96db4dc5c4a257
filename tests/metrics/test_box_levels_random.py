"""Parity with the official evaluator on maps it has never seen: fresh random and adversarial maps from many
seeds (shapes, plateaus, holes, rings, thin lines, ties, maps whose max is below 1), the fast path's integer
counters and per-level boxes against tests/metrics/reference_boxes.py (the official two sweeps)."""

import cv2
import numpy as np
import pytest

from pipeline.metrics.box_levels import level_boxes
from pipeline.metrics.boxes import BoxEvaluator, quantize_scoremaps
from tests.metrics.reference_boxes import reference_counts, reference_level_boxes

SEEDS = range(30)


def fresh_map(rng: np.random.Generator) -> np.ndarray:
    """One float32 map in [0, 1] of a randomly chosen kind and shape."""
    h, w = (int(v) for v in rng.integers(2, 33, 2))
    kind = int(rng.integers(0, 7))
    if kind == 0:  # CAM-like: a smoothed coarse field, upsampled
        feat = int(rng.integers(2, 7))
        field = cv2.GaussianBlur(rng.standard_normal((feat, feat)).astype(np.float32), (0, 0), 1.0)
        m = cv2.resize(field, (w, h), interpolation=int(rng.choice([cv2.INTER_CUBIC, cv2.INTER_LINEAR])))
    elif kind == 1:  # few levels: large plateaus and ties
        m = rng.integers(0, int(rng.integers(2, 6)), (h, w)).astype(np.float32)
    elif kind == 2:  # overlapping rectangles and rectangular rings of random values (holes, nesting)
        m = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 7))):
            x0, x1 = np.sort(rng.integers(0, w + 1, 2))
            y0, y1 = np.sort(rng.integers(0, h + 1, 2))
            m[y0:y1, x0:x1] = rng.random()
            if rng.random() < 0.5 and x1 - x0 > 2 and y1 - y0 > 2:
                m[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = rng.random() * 0.5
    elif kind == 3:  # thin lines and isolated pixels (zero-area contours)
        m = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 8))):
            if rng.random() < 0.5:
                m[int(rng.integers(0, h)), :] = rng.random()
            else:
                m[:, int(rng.integers(0, w))] = rng.random()
        m[rng.random((h, w)) < 0.05] = 1.0
    elif kind == 4:  # binary noise (8-connected pinches, many holes)
        m = (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.float32)
    elif kind == 5:  # white noise
        m = rng.random((h, w)).astype(np.float32)
    else:  # a checkerboard or diagonal stripes scaled below 1 (the cut follows max(U))
        yy, xx = np.indices((h, w))
        m = ((xx + yy * int(rng.integers(1, 3))) % int(rng.integers(2, 4))).astype(np.float32)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    if rng.random() < 0.2:
        m = m * rng.uniform(0.05, 0.99)
    return m.astype(np.float32)


def fresh_gt(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    out = []
    for _ in range(int(rng.integers(1, 4))):
        xs, ys = np.sort(rng.integers(0, w, 2)), np.sort(rng.integers(0, h, 2))
        out.append([xs[0], ys[0], xs[1], ys[1]])
    return np.array(out)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_maps_give_the_official_counters(seed):
    rng = np.random.default_rng(1000 + seed)
    maps = [fresh_map(rng) for _ in range(4)]
    gts = [fresh_gt(m.shape, rng) for m in maps]
    correct = rng.random(len(maps)) < 0.5
    match = "first" if seed % 2 else "max"
    expected = reference_counts(maps, gts, correct, gt_box_match=match)
    evaluator = BoxEvaluator(grid="official", gt_box_match=match, per_image=True)  # the reference's grid
    for m, g, ok in zip(maps, gts, correct):  # one map per batch: shapes differ
        evaluator.accumulate(m[None], [g], np.array([ok]))
    result = evaluator.compute()
    assert result.n_images == expected["n_images"]
    assert (result.multi_counts == expected["multi_counts"]).all()
    assert (result.single_counts == expected["single_counts"]).all()
    assert (result.gt_known_count, result.top1_loc_count) == (expected["gt_known"], expected["top1_loc"])
    assert (result.per_image_multi.sum(0) == result.multi_counts).all()


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_random_batches_give_the_official_boxes_at_every_level(seed):
    rng = np.random.default_rng(5000 + seed)
    h, w = (int(v) for v in rng.integers(2, 25, 2))
    batch = []
    for _ in range(3):  # several maps of one shape: one batch, as the evaluator runs it
        m = fresh_map(rng)
        batch.append(cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST))
    u = quantize_scoremaps(np.stack(batch))
    found = level_boxes(u)
    for i in range(len(u)):
        for level in range(int(u[i].max()) + 1):
            multi, single = reference_level_boxes(u[i], level)
            ours = found.multi_boxes[(found.multi_image == i) & (found.multi_level == level)]
            assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, multi.tolist())), (i, level)
            assert found.single_boxes[i, level].tolist() == single.tolist(), (i, level)
