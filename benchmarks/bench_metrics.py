"""Box-metric throughput: the official two sweeps (the test oracle) against the fast path and library routes.

On CAM-like maps (a `--feat` x `--feat` Gaussian-smoothed random field, upsampled bicubically to `--size` and
min-max normalised, one to three random GT boxes per image), in one process and on the same maps:

  (a) reference: tests/metrics/reference_boxes.py, a transcription of the official code's two sweeps (every
      contour, then the largest contour), one `cv2.findContours` per threshold of the 1001-point grid;
  (b) fast path: `BoxEvaluator().accumulate` on the whole set (pipeline/metrics/box_levels.py: all 256 cut
      levels at once, by two union-find sweeps per map compiled with numba, single-threaded), and one image
      per call; the numba compile (or cache load) happens before timing;
  (c) library route, OpenCV: `cv2.connectedComponentsWithStats` at every cut level of every map, which gives
      the outer-contour boxes only (hole contours and `contourArea` would still be missing): a lower bound on
      the cost of a complete route built on it;
  (d) library route, scikit-image: `skimage.morphology.max_tree` of U (8-connected, the outer contours) and of
      255 - U (4-connected, the holes), the component trees alone, before any box or area is derived from
      them: again a lower bound.

It checks that (a) and (b) give identical integer counters and prints, per case, the median time per image
over `--rounds` rounds of each route and its speed-up over (a) measured in the same run (targets for (b):
>= 50x at 224 from 14, >= 40x at 96 from 6). The CPU is shared: read the ratios, not the absolute times.

PxAP's per-image histograms (what the bootstrap needs), on the same maps with a random foreground: the
evaluator's `MaskEvaluator(per_image=True).accumulate` (a bin guess from the grid step, checked and moved,
and one bincount over image, part and bin) against the straightforward route (np.searchsorted per pixel,
one bincount for the foreground and one for the background), identical histograms checked.

    python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --n 40 --size 224 --feat 14 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.metrics.boxes import BoxEvaluator, BoxResult, quantize_scoremaps  # noqa: E402
from pipeline.metrics.masks import MaskEvaluator  # noqa: E402
from tests.metrics.reference_boxes import reference_counts  # noqa: E402


def cam_like_maps(n: int, size: int, feat: int, seed: int) -> np.ndarray:
    """(n, size, size) float32 maps: smoothed random feat x feat fields, bicubic upsampling, min-max to [0, 1]."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        field = cv2.GaussianBlur(rng.standard_normal((feat, feat)).astype(np.float32), (0, 0), 1.0)
        up = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
        maps.append((up - up.min()) / (up.max() - up.min()))
    return np.stack(maps).astype(np.float32)


def random_boxes(n: int, size: int, seed: int) -> list[np.ndarray]:
    """One to three random boxes per image on the size x size grid."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        corners = np.sort(rng.integers(0, size, (int(rng.integers(1, 4)), 2, 2)), axis=1)
        out.append(np.concatenate([corners[:, 0], corners[:, 1]], axis=1))  # x0, y0, x1, y1
    return out


def counters(result: BoxResult) -> tuple:
    """The integer counters of a BoxResult, in the order of `reference_key`."""
    return (
        result.n_images,
        result.multi_counts.tolist(),
        result.single_counts.tolist(),
        result.gt_known_count,
        result.top1_loc_count,
    )


def reference_key(refs: list[dict]) -> tuple:
    """Summed reference counters, in the order of `counters`."""
    return (
        sum(r["n_images"] for r in refs),
        sum(r["multi_counts"] for r in refs).tolist(),
        sum(r["single_counts"] for r in refs).tolist(),
        sum(r["gt_known"] for r in refs),
        sum(r["top1_loc"] for r in refs),
    )


def opencv_levels(u: np.ndarray) -> int:
    """Route (c): connected components with stats at every cut level of every map; returns a box count."""
    total = 0
    for m in u:
        for level in range(int(m.max())):
            count, _, stats, _ = cv2.connectedComponentsWithStats((m > level).view(np.uint8), connectivity=8)
            total += int((stats[1:, cv2.CC_STAT_WIDTH] > 0).sum())
    return total


def skimage_trees(u: np.ndarray) -> int:
    """Route (d): the two component trees of every map (max-tree of U, 8-connected; of 255 - U, 4-connected)."""
    from skimage.morphology import max_tree

    total = 0
    for m in u:
        parent, _ = max_tree(m, connectivity=2)
        holes, _ = max_tree(np.pad(255 - m, 1, constant_values=255), connectivity=1)
        total += len(parent) + len(holes)
    return total


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(n: int, size: int, feat: int, rounds: int, seed: int, targets: dict[int, float]) -> bool:
    """Time routes (a)-(d) of the module docstring on one set of maps and print the comparison."""
    maps = cam_like_maps(n, size, feat, seed)
    boxes = random_boxes(n, size, seed + 1)
    correct = np.random.default_rng(seed + 2).random(n) < 0.7
    u = quantize_scoremaps(maps)

    def fast_whole() -> BoxEvaluator:
        evaluator = BoxEvaluator(grid="official")  # the reference's grid
        evaluator.accumulate(maps, boxes, correct)
        return evaluator

    def fast_per_image() -> None:
        evaluator = BoxEvaluator(grid="official")  # the reference's grid
        for i in range(n):
            evaluator.accumulate(maps[i : i + 1], boxes[i : i + 1], correct[i : i + 1])

    refs: list[dict] = []

    def reference() -> None:
        refs.clear()
        refs.extend(reference_counts(maps[i : i + 1], boxes[i : i + 1], correct[i : i + 1]) for i in range(n))

    fast_whole()  # compile / load the numba code before timing
    timings = {}
    for _ in range(rounds):  # the routes interleaved round by round, so load changes hit them alike
        for name, fn in (
            ("reference", reference),
            ("fast", fast_whole),
            ("fast_per_image", fast_per_image),
            ("opencv", lambda: opencv_levels(u)),
            ("skimage", lambda: skimage_trees(u)),
        ):
            timings.setdefault(name, []).append(median_time(fn, 1) / n)
    t = {name: statistics.median(v) for name, v in timings.items()}
    identical = counters(fast_whole().compute()) == reference_key(refs)
    ratio = {name: t["reference"] / v for name, v in t.items()}
    print(f"\n{n} maps {size}x{size} from {feat}x{feat} (official grid, 1001 thresholds), median of {rounds} rounds")
    rows = (
        ("reference", "(a) reference, two sweeps"),
        ("fast", "(b) fast path, whole set"),
        ("fast_per_image", "(b) fast path, one image per call"),
        ("opencv", "(c) OpenCV CC+stats per level (lower bound)"),
        ("skimage", "(d) skimage max_tree x2 (lower bound)"),
    )
    for name, label in rows:
        print(f"  {label:45s} {1e3 * t[name]:8.3f} ms/image   {ratio[name]:6.1f}x the reference")
    target = targets.get(size)
    met = target is None or ratio["fast"] >= target
    print(
        f"  integer counters identical (reference, fast path): {identical}"
        + (f"; target >= {target:.0f}x: {'met' if met else 'NOT met'}" if target else "")
    )
    return identical


def run_pxap_case(n: int, size: int, feat: int, rounds: int, seed: int) -> bool:
    """Time PxAP's per-image histograms: the evaluator's route against np.searchsorted + two bincounts."""
    maps = cam_like_maps(n, size, feat, seed)
    fg = np.random.default_rng(seed + 3).random(maps.shape) < 0.3
    ignore = np.zeros_like(fg)

    def evaluator() -> MaskEvaluator:
        ev = MaskEvaluator(grid="official", per_image=True)
        ev.accumulate(maps, fg, ignore)
        return ev

    edges = evaluator().edges
    n_bins = len(edges) - 1

    def searchsorted() -> tuple[np.ndarray, np.ndarray]:
        bins = np.minimum(np.searchsorted(edges, maps, side="right") - 1, n_bins - 1)
        image = np.broadcast_to(np.arange(n)[:, None, None], maps.shape)
        return tuple(
            np.bincount(image[m] * n_bins + bins[m], minlength=n * n_bins).reshape(n, n_bins) for m in (fg, ~fg)
        )

    timings: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in (("searchsorted", searchsorted), ("evaluator", evaluator)):
            timings.setdefault(name, []).append(median_time(fn, 1) / n)
    t = {name: statistics.median(v) for name, v in timings.items()}
    result = evaluator().compute()
    ref_fg, ref_bg = searchsorted()
    identical = np.array_equal(result.per_image_fg_hist, ref_fg) and np.array_equal(result.per_image_bg_hist, ref_bg)
    print(f"\nPxAP per-image histograms, {n} maps {size}x{size} (official grid), median of {rounds} rounds")
    print(f"  {'np.searchsorted + two bincounts':45s} {1e3 * t['searchsorted']:8.3f} ms/image     1.0x")
    print(
        f"  {'MaskEvaluator(per_image=True).accumulate':45s} {1e3 * t['evaluator']:8.3f} ms/image   "
        f"{t['searchsorted'] / t['evaluator']:4.1f}x"
    )
    print(f"  histograms identical: {identical}")
    return identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="maps per case")
    parser.add_argument("--size", type=int, nargs="+", default=[224, 96], help="map side, one per case")
    parser.add_argument("--feat", type=int, nargs="+", default=[14, 6], help="field side, one per case")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per route (medians are printed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.size) != len(args.feat):
        parser.error("--size and --feat need the same number of values (one pair per case)")
    ok = all(
        [
            run_case(args.n, size, feat, args.rounds, args.seed, {224: 50.0, 96: 40.0})
            for size, feat in zip(args.size, args.feat)
        ]
        + [
            run_pxap_case(max(args.n, 100), size, feat, args.rounds, args.seed)
            for size, feat in zip(args.size, args.feat)
        ]
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
