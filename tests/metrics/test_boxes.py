"""Box metrics (pipeline.metrics.boxes, pipeline.metrics.box_levels): parity of the fast path with the official
two sweeps, hand-computed boxes and IoUs, threshold selection, invariance to batching / order, per-image
outcomes, and error messages."""

import cv2
import numpy as np
import pytest

import pipeline.metrics.box_levels as box_levels_module
from pipeline.metrics.boxes import (
    BoxEvaluator,
    BoxResult,
    box_iou,
    level_boxes,
    quantize_scoremaps,
    select_thresholds,
    threshold_grid,
)
from tests.metrics.reference_boxes import reference_grid, reference_image, reference_level_boxes

DELTAS = (30, 50, 70)


def cam_like(n: int, size: int, feat: int, seed: int) -> np.ndarray:
    """Smoothed random feat x feat fields, bicubic to size x size, min-max normalised (float32)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = cv2.GaussianBlur(rng.standard_normal((feat, feat)).astype(np.float32), (0, 0), 1.0)
        up = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
        out.append((up - up.min()) / (up.max() - up.min()))
    return np.stack(out).astype(np.float32)


def adversarial_maps() -> list[np.ndarray]:
    """Hand-built maps (float32 in [0, 1]) aimed at the corner cases of contours, holes, ties and borders."""
    maps = []
    m = np.zeros((24, 24), np.float32)  # nested blobs
    m[2:22, 2:22], m[6:18, 6:18], m[9:15, 9:15] = 0.3, 0.6, 1.0
    maps.append(m)
    m = np.zeros((24, 24), np.float32)  # ring with a hole, and an island inside the hole
    m[3:21, 3:21], m[7:17, 7:17], m[10:14, 10:14] = 0.8, 0.0, 1.0
    maps.append(m)
    m = np.zeros((20, 30), np.float32)  # two identical squares (contour-area tie) and a smaller one
    m[3:8, 3:8] = m[3:8, 20:25] = 1.0
    m[12:15, 12:15] = 1.0
    maps.append(m)
    m = np.zeros((16, 16), np.float32)  # 1-pixel lines, isolated pixels (area 0 ties), a diagonal
    m[2, 1:14] = m[5:15, 3] = 0.9
    m[9, 9] = m[12, 13] = m[14, 6] = 0.7
    for i in range(6):
        m[8 + i, i + 7] = 0.5
    maps.append(m)
    m = np.zeros((17, 17), np.float32)  # thin rings: 4-pixel diamond, 3x3 ring, 1-pixel-wide square ring
    m[1, 2] = m[2, 1] = m[2, 3] = m[3, 2] = 1.0
    m[6:9, 1:4], m[7, 2] = 0.8, 0.0
    m[10:16, 9:15], m[11:15, 10:14] = 0.6, 0.1
    maps.append(m)
    m = np.zeros((12, 12), np.float32)  # squares touching at a corner (8-connected pinch)
    m[1:5, 1:5] = m[5:9, 5:9] = 1.0
    m[8:11, 0:3] = 0.4
    maps.append(m)
    maps.append(np.indices((14, 14)).sum(0).astype(np.float32) % 2)  # checkerboard
    m = np.zeros((18, 18), np.float32)  # objects touching every border, one spanning a full row
    m[0, :], m[:, 17], m[10:18, 0:4], m[7:12, 7:12] = 0.5, 0.9, 1.0, 0.3
    maps.append(m)
    maps.append(np.zeros((10, 10), np.float32))  # all zero
    maps.append(np.full((9, 11), 0.5, np.float32))  # constant
    m = np.full((12, 12), 0.5, np.float32)  # almost constant
    m[4, 7] = 0.5 + 1 / 255
    maps.append(m)
    m = np.zeros((15, 15), np.float32)  # max < 1: int(tau * max(U)) != int(tau * 255)
    m[2:13, 2:13], m[5:10, 4:11] = 0.15, 0.45
    maps.append(m)
    m = np.zeros((20, 20), np.float32)  # concentric rings of increasing value (many holes)
    for k, v in enumerate((0.2, 0.0, 0.5, 0.1, 0.9, 0.3, 1.0)):
        m[k + 1 : 19 - k, k + 1 : 19 - k] = v
    maps.append(m)
    maps += [
        np.ones((1, 1), np.float32),
        np.linspace(0, 1, 7, dtype=np.float32)[None],
        np.linspace(1, 0, 5, dtype=np.float32)[:, None],
        np.eye(2, dtype=np.float32),
    ]
    return maps


def random_maps(seed: int) -> list[np.ndarray]:
    """Noise, few-level and binary maps of random small shapes (plateaus, ties, many basins)."""
    rng = np.random.default_rng(seed)
    maps = []
    for k in range(18):
        h, w = (int(v) for v in rng.integers(3, 26, 2))
        kind = k % 3
        if kind == 0:
            maps.append(rng.random((h, w)).astype(np.float32))
        elif kind == 1:
            maps.append((rng.integers(0, 4, (h, w)) / 3).astype(np.float32))
        else:
            maps.append((rng.random((h, w)) < 0.45).astype(np.float32) * rng.choice([1.0, 0.7]))
    return maps


def gt_for(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One to three GT boxes, including degenerate 1-pixel boxes and the origin pixel."""
    h, w = shape
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 4)
        if kind == 0:
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            boxes.append([x, y, x, y])
        elif kind == 1:
            boxes.append([0, 0, 0, 0])
        else:
            xs, ys = np.sort(rng.integers(0, w, 2)), np.sort(rng.integers(0, h, 2))
            boxes.append([xs[0], ys[0], xs[1], ys[1]])
    return np.array(boxes)


def evaluate(maps: list[np.ndarray], gts: list[np.ndarray], correct: np.ndarray, **options) -> BoxResult:
    """Accumulate maps of mixed shapes (one batch per run of equal shapes), on the official grid unless told."""
    evaluator = BoxEvaluator(**{"grid": "official", **options})
    start = 0
    for end in range(1, len(maps) + 1):
        if end == len(maps) or maps[end].shape != maps[start].shape:
            evaluator.accumulate(np.stack(maps[start:end]), gts[start:end], correct[start:end])
            start = end
    return evaluator.compute()


def counters(result: BoxResult) -> tuple:
    return (
        result.n_images,
        result.multi_counts.tolist(),
        result.single_counts.tolist(),
        result.gt_known_count,
        result.top1_loc_count,
    )


# ---------------------------------------------------------------------------------------------- parity


def test_level_boxes_match_find_contours_at_every_level(monkeypatch):
    calls = []
    fallback = box_levels_module._largest_contour_box

    def counted(u: np.ndarray, level: int) -> np.ndarray:
        calls.append(level)
        return fallback(u, level)

    monkeypatch.setattr(box_levels_module, "_largest_contour_box", counted)
    maps = adversarial_maps() + random_maps(1) + list(cam_like(3, 48, 6, 2)) + list(cam_like(2, 224, 14, 3))
    for shape in {m.shape for m in maps}:
        batch = quantize_scoremaps(np.stack([m for m in maps if m.shape == shape]))
        found = level_boxes(batch)
        for i, u in enumerate(batch):
            top = int(u.max())
            assert found.tops[i] == top
            assert (found.single_boxes[i, top:] == 0).all()
            for level in range(top + 1):
                multi, single = reference_level_boxes(u, level)
                ours = found.multi_boxes[(found.multi_image == i) & (found.multi_level == level)]
                assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, multi.tolist())), (shape, i, level)
                assert found.single_boxes[i, level].tolist() == single.tolist(), (shape, i, level)
    assert calls  # the corpus reaches the findContours fallback for uncertain largest contours


def test_counters_match_the_official_two_sweeps():
    rng = np.random.default_rng(7)
    maps = adversarial_maps() + random_maps(2)[:6] + list(cam_like(3, 40, 5, 4)) + list(cam_like(1, 224, 14, 5))
    gts = [gt_for(m.shape, rng) for m in maps]
    correct = rng.random(len(maps)) < 0.6
    for grid, subset in (("official", slice(None)), ("wsol", slice(0, None, 3))):  # the wsol grid on a third
        maps, gts, correct = maps[subset], gts[subset], correct[subset]
        thresholds = reference_grid(grid)
        per_image = [reference_image(m, g, thresholds, DELTAS, 0.2) for m, g in zip(maps, gts)]
        multi = sum(r[0].astype(np.int64) for r in per_image)
        single = sum(r[1].astype(np.int64) for r in per_image)
        for match in ("first", "max"):
            known = np.array([(r[2][0] if match == "first" else r[2].max()) >= 0.5 for r in per_image])
            expected = (len(maps), multi.tolist(), single.tolist(), int(known.sum()), int((known & correct).sum()))
            assert counters(evaluate(maps, gts, correct, grid=grid, gt_box_match=match)) == expected, (grid, match)


# ---------------------------------------------------------------------------------------------- by hand


def test_box_iou_inclusive_convention():
    a = np.array([[0, 0, 1, 1], [3, 3, 3, 3], [0, 0, 9, 9]])
    b = np.array([[0, 0, 1, 1], [1, 1, 2, 2], [2, 0, 3, 1], [3, 3, 3, 3], [4, 4, 6, 6]])
    expected = np.array([[1, 1 / 7, 0, 0, 0], [0, 0, 0, 1, 0], [4 / 100, 4 / 100, 4 / 100, 1 / 100, 9 / 100]])
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=0, atol=1e-15)
    assert box_iou(np.array([[5, 5, 7, 7]]), np.array([[6, 6, 6, 6]]))[0, 0] == 1 / 9
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)


def test_hand_made_map_boxes_at_tau_0_2():
    s = np.zeros((224, 224), np.float32)
    s[50:100, 30:130] = 1.0  # pixels x 30..129, y 50..99
    s[200:224, 180:224] = 0.6  # touches the right and bottom borders; U = 153 > int(0.2 * 255) = 51
    s[0:5, 0:3] = 0.2  # U = 51: not above the cut
    found = level_boxes(quantize_scoremaps(s[None]))
    level = int(0.2 * 255)
    assert level == 51
    ours = found.multi_boxes[found.multi_level == level]
    # boundingRect (x, y, w, h) -> (x, y, x + w, y + h): one past the last pixel, then clipped to 223
    assert sorted(map(tuple, ours.tolist())) == [(30, 50, 130, 100), (180, 200, 223, 223)]
    assert found.single_boxes[0, level].tolist() == [30, 50, 130, 100]  # 100 x 50 beats 44 x 24
    # against the tight GT box (30, 50, 129, 99) the "+1" box gives IoU 100 * 50 / (101 * 51)
    assert box_iou(found.single_boxes[0, level][None], np.array([[30, 50, 129, 99]]))[0, 0] == 5000 / 5151
    result = evaluate([s], [np.array([[30, 50, 130, 100]])], np.array([True]))
    assert (result.gt_known_count, result.top1_loc_count) == (1, 1)


def test_no_contour_gives_the_origin_box():
    zero = np.zeros((8, 8), np.float32)
    found = level_boxes(quantize_scoremaps(zero[None]))
    assert found.tops[0] == 0 and found.multi_boxes.tolist() == [[0, 0, 0, 0]]
    result = evaluate([zero], [np.array([[0, 0, 0, 0]])], np.array([True]))
    assert (result.multi_counts == 1).all() and (result.single_counts == 1).all()  # IoU 1 at every tau
    assert result.gt_known_count == 1
    result = evaluate([zero], [np.array([[0, 0, 1, 1]])], np.array([True]))  # IoU 1 / 4
    assert result.multi_counts.sum() == 0 and result.gt_known_count == 0
    # tau = 1.0 (official grid only) cuts at max(U): no contour either
    s = np.zeros((8, 8), np.float32)
    s[2:5, 2:5] = 1.0
    result = evaluate([s], [np.array([[0, 0, 0, 0]])], np.array([True]))
    assert result.multi_counts[:, -1].tolist() == [1, 1, 1] and result.multi_counts[:, :-1].sum() == 0


def test_threshold_grids():
    official, wsol = threshold_grid("official"), threshold_grid("wsol")
    assert len(official) == 1001 and official[-1] == 1.0 and official[200] == 0.2
    assert len(wsol) == 1000 and wsol[-1] < 1.0 and wsol[200] == 0.2
    assert official.tolist() == reference_grid("official") and wsol.tolist() == reference_grid("wsol")
    assert BoxEvaluator(grid="wsol").compute().multi_counts.shape == (3, 1000)


def test_max_below_one_cuts_relative_to_the_map_max():
    s = np.full((15, 15), 0.15, np.float32)  # U = 38 everywhere ...
    s[5:10, 4:11] = 0.5  # ... and 127 in a block: max(U) = 127, cut at tau 0.2 = 25, not 51
    found = level_boxes(quantize_scoremaps(s[None]))
    assert found.tops[0] == 127
    assert found.single_boxes[0, int(0.2 * 127)].tolist() == [0, 0, 14, 14]  # the whole map, clipped
    assert found.single_boxes[0, 51].tolist() == [4, 5, 11, 10]
    result = evaluate([s], [np.array([[0, 0, 14, 14]])], np.array([True]))
    assert result.gt_known_count == 1


def test_first_versus_max_gt_box_and_top1_loc():
    s = np.zeros((32, 32), np.float32)
    s[20:30, 20:30] = 1.0
    gts = [np.array([[0, 0, 5, 5], [20, 20, 30, 30]])]  # the blob matches the second GT box only
    first = evaluate([s], gts, np.array([True]), gt_box_match="first")
    best = evaluate([s], gts, np.array([True]), gt_box_match="max")
    assert (first.gt_known_count, first.top1_loc_count) == (0, 0)
    assert (best.gt_known_count, best.top1_loc_count) == (1, 1)
    assert (first.multi_counts == best.multi_counts).all()  # MaxBoxAcc always takes the max over GT boxes
    wrong = evaluate([s], gts, np.array([False]))
    assert (wrong.gt_known_count, wrong.top1_loc_count) == (1, 0)
    assert (wrong.gt_known_loc, wrong.top1_loc) == (100.0, 0.0)


def nested_map() -> np.ndarray:
    """64 x 64: big (4..59) at 0.3 (U 76), medium (16..47) at 0.6 (U 153), small (26..37) at 1.0."""
    s = np.zeros((64, 64), np.float32)
    s[4:60, 4:60], s[16:48, 16:48], s[26:38, 26:38] = 0.3, 0.6, 1.0
    return s


def test_best_thresholds_are_chosen_per_iou_and_applied_elsewhere():
    # GT = the medium square: big box IoU 1024 / 3249 (>= 0.3 only), medium 1024 / 1089, small 169 / 1024
    val = evaluate([nested_map()], [np.array([[16, 16, 47, 47]])], np.array([True]))
    assert val.best_index == {30: 0, 50: 299, 70: 299}  # int(0.299 * 255) = 76 is the first medium level
    assert val.best_threshold == {30: 0.0, 50: 0.299, 70: 0.299}
    assert select_thresholds(val) == val.best_index
    assert val.maxboxacc_iou == {30: 100.0, 50: 100.0, 70: 100.0}
    # test set: GT = the big square, whose own optimum is tau = 0 for every IoU
    test = evaluate([nested_map()], [np.array([[4, 4, 59, 59]])], np.array([True]))
    assert test.maxboxacc_v2 == 100.0
    assert test.at_thresholds(select_thresholds(val)) == {30: 100.0, 50: 0.0, 70: 0.0}
    assert test.at_thresholds(select_thresholds(val, "single"), "single") == {30: 100.0, 50: 0.0, 70: 0.0}


def test_maxboxacc_v2_is_the_mean_of_per_iou_maxima():
    multi = np.array([[1, 3, 2, 0], [0, 2, 2, 1], [1, 0, 0, 1]])
    single = np.array([[0, 0, 1, 0], [4, 1, 0, 3], [0, 0, 0, 0]])
    result = BoxResult(4, np.array([0.0, 0.25, 0.5, 0.75]), DELTAS, 0.25, multi, single, 2, 1)
    assert result.maxboxacc_iou == {30: 75.0, 50: 50.0, 70: 25.0}
    assert result.maxboxacc_v2 == 50.0
    assert result.best_index == {30: 1, 50: 1, 70: 0}  # first on ties, independently per IoU
    assert result.best_threshold == {30: 0.25, 50: 0.25, 70: 0.0}
    assert result.maxboxacc_v1 == 100.0  # single-contour, IoU 50
    assert (result.gt_known_loc, result.top1_loc) == (50.0, 25.0)
    assert result.at_thresholds({30: 3, 50: 3, 70: 3}) == {30: 0.0, 50: 25.0, 70: 25.0}
    np.testing.assert_array_equal(result.box_accuracy("single"), 25.0 * single)


# ---------------------------------------------------------------------------------------------- invariance


def test_batching_and_order_do_not_change_the_counters():
    rng = np.random.default_rng(11)
    maps = cam_like(10, 32, 4, 12)
    maps[3] = 0.0
    maps[7] = np.round(maps[7] * 3) / 3
    gts = [gt_for((32, 32), rng) for _ in maps]
    correct = rng.random(len(maps)) < 0.5
    one_batch = BoxEvaluator(gt_box_match="first")
    one_batch.accumulate(maps, gts, correct)
    expected = counters(one_batch.compute())
    per_image = BoxEvaluator(gt_box_match="first")
    order = rng.permutation(len(maps))
    for i in order:
        per_image.accumulate(maps[i : i + 1], gts[i : i + 1], correct[i : i + 1])
    assert counters(per_image.compute()) == expected
    two = BoxEvaluator(gt_box_match="first")
    two.accumulate(maps[order[:6]], [gts[i] for i in order[:6]], correct[order[:6]])
    two.accumulate(maps[order[6:]], [gts[i] for i in order[6:]], correct[order[6:]])
    assert counters(two.compute()) == expected


def test_per_image_outcomes_sum_to_the_counters_and_match_the_reference():
    rng = np.random.default_rng(5)
    maps = list(cam_like(7, 40, 5, 6)) + [np.zeros((40, 40), np.float32)]
    gts = [gt_for((40, 40), rng) for _ in maps]
    correct = rng.random(len(maps)) < 0.5
    evaluator = BoxEvaluator(grid="official", gt_box_match="first", per_image=True)
    evaluator.accumulate(np.stack(maps[:3]), gts[:3], correct[:3])  # two batches: accumulation order is kept
    evaluator.accumulate(np.stack(maps[3:]), gts[3:], correct[3:])
    result = evaluator.compute()
    n = len(maps)
    assert result.per_image_multi.shape == result.per_image_single.shape == (n, 3, 1001)
    assert result.per_image_multi.dtype == result.per_image_gt_known.dtype == np.bool_
    assert (result.per_image_multi.sum(0) == result.multi_counts).all()
    assert (result.per_image_single.sum(0) == result.single_counts).all()
    assert result.per_image_gt_known.sum() == result.gt_known_count
    assert result.per_image_top1_loc.sum() == result.top1_loc_count
    assert not (result.per_image_top1_loc & ~correct).any()
    thresholds = reference_grid("official")
    for i, (m, g) in enumerate(zip(maps, gts)):
        multi, single, loc = reference_image(m, g, thresholds, DELTAS, 0.2)
        assert (result.per_image_multi[i] == multi).all() and (result.per_image_single[i] == single).all(), i
        assert result.per_image_gt_known[i] == (loc[0] >= 0.5), i
    plain = BoxEvaluator()
    plain.accumulate(np.stack(maps), gts, correct)
    assert plain.compute().per_image_multi is None  # off by default
    empty = BoxEvaluator(grid="official", per_image=True).compute()
    assert empty.per_image_multi.shape == (0, 3, 1001) and empty.per_image_gt_known.shape == (0,)


def test_errors_are_explicit():
    with pytest.raises(ValueError, match="loc_threshold: 0.2005 is not on the 'wsol' threshold grid"):
        BoxEvaluator(loc_threshold=0.2005)
    with pytest.raises(ValueError, match="grid: 'coarse' is not valid; choose one of: official, wsol"):
        BoxEvaluator(grid="coarse")
    with pytest.raises(ValueError, match="grid: 'coarse' is not valid"):
        threshold_grid("coarse")
    with pytest.raises(ValueError, match="gt_box_match: 'all' is not valid; choose one of: first, max"):
        BoxEvaluator(gt_box_match="all")
    with pytest.raises(ValueError, match="iou_thresholds"):
        BoxEvaluator(iou_thresholds=(30, 150))
    evaluator = BoxEvaluator()
    maps, gt = np.zeros((2, 8, 8), np.float32), np.array([[1, 1, 3, 3]])
    with pytest.raises(ValueError, match="batch lengths differ: 2 score maps, 1 GT box lists, 2 correct flags"):
        evaluator.accumulate(maps, [gt], np.ones(2, bool))
    with pytest.raises(ValueError, match="batch lengths differ"):
        evaluator.accumulate(maps, [gt, gt], np.ones(3, bool))
    with pytest.raises(ValueError, match=r"gt_boxes\[1\]: box coordinates must be non-negative"):
        evaluator.accumulate(maps, [gt, np.array([[-1, 0, 3, 3]])], np.ones(2, bool))
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]: boxes must have x1 >= x0 and y1 >= y0"):
        evaluator.accumulate(maps, [np.array([[4, 0, 3, 3]]), gt], np.ones(2, bool))
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]: expected an \(n, 4\) array"):
        evaluator.accumulate(maps, [np.array([1, 2, 3, 4]), gt], np.ones(2, bool))
    with pytest.raises(ValueError, match=r"gt_boxes\[1\]: every image needs at least one GT box"):
        evaluator.accumulate(maps, [gt, np.zeros((0, 4))], np.ones(2, bool))
    with pytest.raises(ValueError, match=r"scoremaps: values must be finite and in \[0, 1\]"):
        evaluator.accumulate(np.full((2, 8, 8), np.nan, np.float32), [gt, gt], np.ones(2, bool))
    with pytest.raises(ValueError, match=r"scoremaps: expected a \(B, H, W\) array"):
        evaluator.accumulate(np.zeros((8, 8), np.float32), [gt], np.ones(1, bool))
    with pytest.raises(ValueError, match="box_iou a: boxes must have x1 >= x0"):
        box_iou(np.array([[0, 5, 3, 4]]), gt)
    assert evaluator.compute().n_images == 0  # nothing was accumulated by the failed calls
    with pytest.raises(ValueError, match="no images were accumulated"):
        _ = evaluator.compute().maxboxacc_v2
    result = evaluate([np.zeros((4, 4), np.float32)], [gt], np.ones(1, bool))
    with pytest.raises(ValueError, match="mode: 'both' is not valid; choose one of: multi, single"):
        result.box_accuracy("both")
    with pytest.raises(ValueError, match=r"index_per_delta: expected one grid index for each"):
        result.at_thresholds({30: 1})
    with pytest.raises(ValueError, match=r"index_per_delta\[30\]: 1001 is not an index"):
        result.at_thresholds({30: 1001, 50: 0, 70: 0})
    with pytest.raises(ValueError, match=r"maps: expected a non-empty \(n, H, W\) uint8 array"):
        level_boxes(np.zeros((2, 4, 4), np.float32))


def test_largest_contour_box_matches_the_official_single_contour_box():
    from pipeline.metrics.boxes import largest_contour_box
    from tests.metrics.reference_boxes import reference_boxes

    rng = np.random.default_rng(7)
    maps = [cv2.resize(rng.random((5, 5)).astype(np.float32), (40, 40)) for _ in range(6)]
    maps = [(m - m.min()) / (m.max() - m.min()) for m in maps] + [np.zeros((40, 40), np.float32)]
    thresholds = [0.0, 0.2, 0.437, 0.8, 0.999]
    for m in maps:
        expected, _ = reference_boxes(m, thresholds, multi_contour=False)
        for t, box in zip(thresholds, expected):
            assert largest_contour_box(m, t).tolist() == box[0].tolist(), t
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        largest_contour_box(np.zeros((2, 4, 4), np.float32), 0.5)


def test_the_default_grid_has_one_home():
    """The evaluators, EvalOptions and params.yaml's evaluate.threshold_grid default to one grid:
    concepts.DEFAULT_THRESHOLD_GRID."""
    import inspect
    from pathlib import Path

    import yaml

    from pipeline import concepts
    from pipeline.metrics.evaluate import EvalOptions
    from pipeline.metrics.masks import MaskEvaluator

    assert concepts.DEFAULT_THRESHOLD_GRID in concepts.THRESHOLD_GRIDS
    assert BoxEvaluator().grid == concepts.DEFAULT_THRESHOLD_GRID == EvalOptions().threshold_grid
    assert inspect.signature(MaskEvaluator).parameters["grid"].default == concepts.DEFAULT_THRESHOLD_GRID
    assert len(MaskEvaluator().thresholds) == len(threshold_grid(concepts.DEFAULT_THRESHOLD_GRID))
    assert BoxEvaluator().iou_thresholds == concepts.IOUS
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    assert params["evaluate"]["threshold_grid"] == concepts.DEFAULT_THRESHOLD_GRID
