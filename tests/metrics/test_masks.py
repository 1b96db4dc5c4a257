import numpy as np
import pytest

from pipeline.data.prepare import unpack_masks
from pipeline.metrics.boxes import threshold_grid
from pipeline.metrics.masks import MaskEvaluator


def reference_pxap(scores: np.ndarray, fg: np.ndarray, ignore: np.ndarray, thresholds: np.ndarray) -> float:
    """PxAP by direct counting, independent of the histogram code.

    The official curve has one point per lower bin edge, from the top: c = [2.0, 1.0, (1.0,) t_max, ..., 0.0]
    for edges T + [1.0, 2.0, 3.0] (the duplicate 1.0 of the `official` grid gives a repeated point). Every
    np.histogram bin but the last is [lo, hi), and the last one [2.0, 3.0] holds no score in [0, 1], so the
    cumulated count from the top at edge c is exactly #{score >= c}: counted here by comparison, with the
    same float64 threshold values (the two grids differ in the last bit at 144 of them, which matters for
    scores that sit on the grid). AP = sum over points j >= 1 with TP_j + FP_j > 0 of
    precision_j * (recall_j - recall_{j-1}).
    """
    counted = ~ignore
    pos = scores[fg & counted].astype(np.float64)
    neg = scores[~fg & counted].astype(np.float64)
    cuts = [2.0, *sorted([*thresholds.tolist(), 1.0], reverse=True)]
    ap, prev_recall = 0.0, 0.0
    for j, c in enumerate(cuts):
        tp, fp = int((pos >= c).sum()), int((neg >= c).sum())
        recall = tp / len(pos)
        if j >= 1 and tp + fp > 0:
            ap += tp / (tp + fp) * (recall - prev_recall)
        prev_recall = recall
    return 100.0 * ap


def hand_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.array([[[0.9, 0.6], [0.3, 0.1]], [[0.8, 0.5], [0.0, 1.0]]])
    fg = np.array([[[True, False], [True, False]], [[False, True], [False, True]]])
    ignore = np.zeros_like(fg)
    ignore[0, 0, 1] = True  # the 0.6 background pixel of image 0 is ignored
    return scores, fg, ignore


@pytest.mark.parametrize("grid", ["official", "wsol"])
def test_hand_computed_example(grid):
    # Counted foreground scores: 0.9, 0.3, 0.5, 1.0 (P = 4); background: 0.1, 0.8, 0.0 (0.6 is ignored).
    # Going down the thresholds, the PR points where something changes:
    #   tau = 1.0: TP 1 FP 0 -> precision 1,   recall 1/4
    #   tau = 0.9: TP 2 FP 0 -> precision 1,   recall 2/4
    #   tau = 0.8: TP 2 FP 1 -> precision 2/3, recall 2/4 (no recall step)
    #   tau = 0.5: TP 3 FP 1 -> precision 3/4, recall 3/4
    #   tau = 0.3: TP 4 FP 1 -> precision 4/5, recall 1
    #   tau = 0.1, 0.0: only FP grows, recall stays 1
    # AP = 1/4 * (1 + 1 + 3/4 + 4/5) = 0.8875 -> PxAP 88.75.
    # Counting the ignored 0.6 as background would give 1/4 * (1 + 1 + 3/5 + 4/6) = 81.67 instead.
    ev = MaskEvaluator(grid=grid)
    ev.accumulate(*hand_example())
    result = ev.compute()
    assert result.pxap == pytest.approx(88.75, abs=1e-12)
    assert result.fg_hist.sum() == 4 and result.bg_hist.sum() == 3
    assert result.fg_hist.dtype == np.int64 and result.bg_hist.dtype == np.int64
    # the last PR point (tau = 0) counts every non-ignored pixel
    assert (result.tp[-1], result.fp[-1]) == (4, 3)
    assert result.recall[-1] == 1.0 and result.precision[-1] == pytest.approx(4 / 7)
    # tau = 0.8 point of the curve
    k = int(np.flatnonzero(result.cuts == 0.8)[0])
    assert (result.tp[k], result.fp[k]) == (2, 1)


def test_ignore_pixels_count_nowhere():
    scores, fg, ignore = hand_example()
    without = MaskEvaluator()
    without.accumulate(scores, fg, np.zeros_like(ignore))
    assert without.compute().pxap == pytest.approx(100 * (1 + 1 + 3 / 5 + 4 / 6) / 4, abs=1e-12)
    # any score at an ignored pixel leaves everything unchanged
    base = MaskEvaluator()
    base.accumulate(scores, fg, ignore)
    for value in (0.0, 0.45, 1.0):
        changed = scores.copy()
        changed[ignore] = value
        ev = MaskEvaluator()
        ev.accumulate(changed, fg, ignore)
        assert np.array_equal(ev.fg_hist, base.fg_hist) and np.array_equal(ev.bg_hist, base.bg_hist)
    # ignoring every background pixel: only foreground remains, precision is 1 everywhere
    ev = MaskEvaluator()
    ev.accumulate(scores, fg, ~fg)
    assert ev.compute().pxap == pytest.approx(100.0)


@pytest.mark.parametrize(
    "fg_score,bg_score,pxap",
    [
        (1.0, 0.0, 100.0),
        (0.7, 0.2, 100.0),
        (0.002, 0.0019, 100.0),
        (0.0011, 0.001, 25.0),  # same bin [0.001, 0.002): a tie, precision = P / (P + N) = 27 / 108
    ],
)
def test_perfect_map_gives_100(fg_score, bg_score, pxap):
    fg = np.zeros((3, 6, 6), dtype=bool)
    fg[:, 1:4, 2:5] = True
    scores = np.where(fg, fg_score, bg_score)
    ev = MaskEvaluator()
    ev.accumulate(scores, fg, np.zeros_like(fg))
    assert ev.compute().pxap == pytest.approx(pxap, abs=1e-12)


def random_batch(rng: np.random.Generator, n: int = 12, size: int = 10):
    grid_values = np.concatenate([threshold_grid("official"), threshold_grid("wsol")])
    on_grid = rng.choice(grid_values, size=(n, size, size))  # scores exactly on an edge of either grid
    off_grid = rng.random((n, size, size))
    scores = np.where(rng.random((n, size, size)) < 0.5, on_grid, off_grid)
    scores[0, 0, :3] = [0.0, 1.0, 0.5]
    fg = rng.random((n, size, size)) < scores * 0.8  # informative but imperfect maps
    ignore = (rng.random((n, size, size)) < 0.15) & ~fg
    return scores, fg, ignore


@pytest.mark.parametrize("grid", ["official", "wsol"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_direct_per_threshold_count(grid, dtype):
    scores, fg, ignore = random_batch(np.random.default_rng(1))
    scores = scores.astype(dtype)
    ev = MaskEvaluator(grid=grid)
    ev.accumulate(scores, fg, ignore)
    result = ev.compute()
    assert result.pxap == pytest.approx(reference_pxap(scores, fg, ignore, ev.thresholds), rel=1e-12, abs=1e-12)
    # the curve counts themselves agree with the direct comparison at every cut
    pos, neg = scores[fg].astype(np.float64), scores[~fg & ~ignore].astype(np.float64)
    assert np.array_equal(result.tp, [(pos >= c).sum() for c in result.cuts])
    assert np.array_equal(result.fp, [(neg >= c).sum() for c in result.cuts])


def test_grids():
    official, wsol = threshold_grid("official"), threshold_grid("wsol")
    assert len(official) == 1001 and official[0] == 0.0 and official[-1] == 1.0 and official[200] == 0.2
    assert len(wsol) == 1000 and wsol[-1] < 1.0
    assert len(MaskEvaluator(grid="official").fg_hist) == 1003  # incl. the empty [1.0, 1.0) bin
    assert len(MaskEvaluator(grid="wsol").fg_hist) == 1002
    # the grids disagree on scores sitting exactly on an official edge that arange puts a hair higher
    k = int(np.flatnonzero(official[:1000] < wsol)[0])
    scores = np.array([[[official[k], 0.0]]])
    fg, bg_ignored = np.array([[[True, False]]]), np.zeros((1, 1, 2), dtype=bool)
    hists = {}
    for grid in ("official", "wsol"):
        ev = MaskEvaluator(grid=grid)
        ev.accumulate(scores, fg, bg_ignored)
        hists[grid] = int(np.flatnonzero(ev.fg_hist)[0])
    assert hists == {"official": k, "wsol": k - 1}
    with pytest.raises(ValueError, match="official, wsol"):
        MaskEvaluator(grid="coarse")


def test_duplicate_edge_bin_is_empty_and_one_lands_in_top_bin():
    ev = MaskEvaluator(grid="official")  # the grid with the duplicate edge 1.0
    ev.accumulate(np.array([[[1.0, 0.999]]]), np.array([[[True, True]]]), np.zeros((1, 1, 2), dtype=bool))
    assert ev.fg_hist[1000] == 0  # [1.0, 1.0)
    assert ev.fg_hist[1001] == 1 and ev.fg_hist[999] == 1  # [1.0, 2.0) and [0.999, 1.0)


def test_batch_split_and_order_invariance():
    scores, fg, ignore = random_batch(np.random.default_rng(2), n=20)
    whole = MaskEvaluator()
    whole.accumulate(scores, fg, ignore)
    parts = MaskEvaluator()
    order = np.random.default_rng(3).permutation(20)
    for chunk in np.split(order, [1, 8, 9, 15]):
        parts.accumulate(scores[chunk], fg[chunk], ignore[chunk])
    a, b = whole.compute(), parts.compute()
    assert np.array_equal(a.fg_hist, b.fg_hist) and np.array_equal(a.bg_hist, b.bg_hist)
    assert a.pxap == b.pxap


def test_errors():
    ev = MaskEvaluator()
    with pytest.raises(ValueError, match="no positive ground-truth pixel"):
        ev.compute()  # nothing accumulated: no positive GT, no positive prediction
    scores = np.full((1, 2, 2), 0.5)
    no_fg = np.zeros((1, 2, 2), dtype=bool)
    ev.accumulate(scores, no_fg, no_fg)
    with pytest.raises(ValueError, match="no positive ground-truth pixel"):
        ev.compute()
    # The official "no positive prediction" error (TP + FP = 0 at every threshold) cannot arise once a
    # foreground pixel is counted: the lowest threshold 0.0 predicts every pixel positive. An all-zero map
    # is therefore valid and scores the foreground fraction, P / (P + N).
    fg = np.eye(2, dtype=bool)[None]
    zero = MaskEvaluator()
    zero.accumulate(np.zeros((1, 2, 2)), fg, no_fg)
    assert zero.compute().pxap == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ev.accumulate(scores + 0.6, fg, no_fg)
    with pytest.raises(ValueError, match="NaN"):
        ev.accumulate(np.full((1, 2, 2), np.nan), fg, no_fg)
    with pytest.raises(ValueError, match="overlaps"):
        ev.accumulate(scores, fg, fg)
    with pytest.raises(ValueError, match="shape"):
        ev.accumulate(scores, fg[:, :1], no_fg)
    with pytest.raises(TypeError, match="bool"):
        ev.accumulate(scores, fg.astype(np.uint8), no_fg)


@pytest.mark.parametrize("size", [10, 7, 8])
def test_unpack_masks_round_trip(size):
    masks = np.random.default_rng(size).random((5, size, size)) < 0.4
    packed = np.packbits(masks.reshape(5, size * size).astype(bool), axis=1)  # pipeline.data.prepare format
    out = unpack_masks(packed, size)
    assert out.dtype == np.bool_ and out.shape == (5, size, size)
    assert np.array_equal(out, masks)
    with pytest.raises(ValueError, match="shape"):
        unpack_masks(packed, size + 1)


@pytest.mark.parametrize("grid", ["official", "wsol"])
def test_per_image_histograms_sum_to_the_aggregate_and_match_np_histogram(grid):
    rng = np.random.default_rng(3)
    maps = rng.random((5, 12, 12)).astype(np.float32)
    maps[0, :2] = 1.0  # the top edge, the duplicate 1.0 edge of the official grid
    maps[1] = np.round(maps[1] * 1000) / 1000  # values on the bin edges
    maps[2] = 0.0
    fg = rng.random(maps.shape) < 0.4
    ignore = ~fg & (rng.random(maps.shape) < 0.2)
    evaluator = MaskEvaluator(grid=grid, per_image=True)
    evaluator.accumulate(maps[:2], fg[:2], ignore[:2])
    evaluator.accumulate(maps[2:], fg[2:], ignore[2:])
    result = evaluator.compute()
    assert result.per_image_fg_hist.shape == result.per_image_bg_hist.shape == (5, len(result.edges) - 1)
    assert result.per_image_fg_hist.dtype == np.int64
    assert (result.per_image_fg_hist.sum(0) == result.fg_hist).all()
    assert (result.per_image_bg_hist.sum(0) == result.bg_hist).all()
    for i in range(5):
        background = ~(fg[i] | ignore[i])
        assert (result.per_image_fg_hist[i] == np.histogram(maps[i][fg[i]], bins=result.edges)[0]).all()
        assert (result.per_image_bg_hist[i] == np.histogram(maps[i][background], bins=result.edges)[0]).all()
    assert MaskEvaluator(grid=grid).compute.__self__.per_image is False


@pytest.mark.parametrize("grid", ["official", "wsol"])
def test_bin_search_is_the_binary_search_exactly(grid):
    """MaskEvaluator._bins (a guess from the grid step, then moves) against np.searchsorted on every float32
    value at, just below and just above every edge, on 0 and 1, and on random values."""
    evaluator = MaskEvaluator(grid=grid)
    edges = evaluator.edges[evaluator.edges <= 1.0].astype(np.float32)
    near = np.concatenate(
        [
            edges,
            np.nextafter(edges, np.float32(0)),
            np.nextafter(edges, np.float32(1)),
            np.float32([0.0, 1.0]),
            np.random.default_rng(0).random(5000, dtype=np.float32),
        ]
    )
    maps = np.clip(near, 0, 1).astype(np.float32).reshape(1, 1, -1)
    expected = np.minimum(np.searchsorted(evaluator.edges, maps, side="right") - 1, len(evaluator.edges) - 2)
    assert np.array_equal(evaluator._bins(maps), expected)


def test_bin_search_falls_back_on_a_grid_far_from_uniform(monkeypatch):
    import pipeline.metrics.masks as masks

    grid = np.concatenate([[0.0], np.linspace(0.9, 0.999, 100)])  # guesses tens of bins off below 0.9
    monkeypatch.setattr(masks, "threshold_grid", lambda kind: grid)
    evaluator = MaskEvaluator(grid="wsol")
    maps = np.random.default_rng(1).random((2, 8, 8)).astype(np.float32)
    maps[0, 0, :3] = [0.0, 0.95, 1.0]
    expected = np.minimum(np.searchsorted(evaluator.edges, maps, side="right") - 1, len(evaluator.edges) - 2)
    assert np.array_equal(evaluator._bins(maps), expected)
    monkeypatch.setattr(masks, "_BIN_STEPS", 0)  # straight to the binary search
    assert np.array_equal(evaluator._bins(maps), expected)


def test_per_image_histograms_without_ignored_pixels():
    rng = np.random.default_rng(4)
    maps = rng.random((3, 10, 10)).astype(np.float32)
    fg = rng.random(maps.shape) < 0.5
    evaluator = MaskEvaluator(grid="wsol", per_image=True)
    evaluator.accumulate(maps, fg, np.zeros_like(fg))
    result = evaluator.compute()
    for i in range(3):
        assert (result.per_image_fg_hist[i] == np.histogram(maps[i][fg[i]], bins=result.edges)[0]).all()
        assert (result.per_image_bg_hist[i] == np.histogram(maps[i][~fg[i]], bins=result.edges)[0]).all()
