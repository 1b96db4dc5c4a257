"""Box-metric throughput: the official two sweeps (the test oracle) against `pipeline.metrics.boxes`.

On CAM-like maps (a `--feat` x `--feat` Gaussian-smoothed random field, upsampled bicubically to `--size` and
min-max normalised, one to three random GT boxes per image) it measures, in one process and on the same maps:

  (a) the reference: tests/metrics/reference_boxes.py, a transcription of the official code's two sweeps
      (every contour, then the largest contour) with one `cv2.findContours` per threshold of the 1001-point grid,
  (b) the fast path single-process: `BoxEvaluator(workers=1).accumulate` one image at a time, interleaved with
      (a) image by image, and on the whole set in one call (mosaics of several maps),
  (c) the fast path with a pool: `BoxEvaluator(workers=--workers)` on the whole set (pool already started),

checks that (a) and (b) give identical integer counters, and prints ms/image and the speed-ups (target for (b)
single process: >= 20x). Each `--size`/`--feat` pair is one case (default: 224 from 14 and 96 from 6).

    python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --n 100 --size 224 --feat 14 --workers 2
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

from pipeline.metrics.boxes import BoxEvaluator, BoxResult  # noqa: E402
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
    return (result.n_images, result.multi_counts.tolist(), result.single_counts.tolist(), result.gt_known_count,
            result.top1_loc_count)


def reference_key(refs: list[dict]) -> tuple:
    """Summed reference counters, in the order of `counters`."""
    return (sum(r["n_images"] for r in refs), sum(r["multi_counts"] for r in refs).tolist(),
            sum(r["single_counts"] for r in refs).tolist(), sum(r["gt_known"] for r in refs),
            sum(r["top1_loc"] for r in refs))


def run_case(n: int, size: int, feat: int, workers: int, seed: int) -> None:
    """Time (a), (b) and (c) of the module docstring on one set of maps and print the comparison."""
    maps = cam_like_maps(n, size, feat, seed)
    boxes = random_boxes(n, size, seed + 1)
    correct = np.random.default_rng(seed + 2).random(n) < 0.7
    single_image = BoxEvaluator()
    ref_times, fast_times, refs = [], [], []
    for i in range(n):  # interleaved, image by image
        start = time.perf_counter()
        refs.append(reference_counts(maps[i:i + 1], boxes[i:i + 1], correct[i:i + 1]))
        ref_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        single_image.accumulate(maps[i:i + 1], boxes[i:i + 1], correct[i:i + 1])
        fast_times.append(time.perf_counter() - start)
    batched = BoxEvaluator()
    start = time.perf_counter()
    batched.accumulate(maps, boxes, correct)
    batch_time = time.perf_counter() - start
    with BoxEvaluator(workers=workers) as pooled:
        warm = min(workers, n)
        pooled.accumulate(maps[:warm], boxes[:warm], correct[:warm])  # starts the pool, untimed
        start = time.perf_counter()
        pooled.accumulate(maps, boxes, correct)
        pool_time = time.perf_counter() - start
        pooled_result = pooled.compute()
    identical = (counters(single_image.compute()) == reference_key(refs) == counters(batched.compute())
                 and counters(pooled_result) == reference_key(refs + refs[:warm]))
    ref_ms, fast_ms = 1e3 * sum(ref_times) / n, 1e3 * sum(fast_times) / n
    batch_ms, pool_ms = 1e3 * batch_time / n, 1e3 * pool_time / n
    print(f"\n{n} maps {size}x{size} from {feat}x{feat} (official grid, 1001 thresholds)")
    ref_median, fast_median = 1e3 * statistics.median(ref_times), 1e3 * statistics.median(fast_times)
    print(f"  reference, two sweeps          {ref_ms:8.2f} ms/image  (median {ref_median:.2f})")
    print(f"  fast, 1 process, per image     {fast_ms:8.2f} ms/image  (median {fast_median:.2f})"
          f"  speed-up {ref_ms / fast_ms:5.1f}x")
    print(f"  fast, 1 process, whole set     {batch_ms:8.2f} ms/image  speed-up {ref_ms / batch_ms:5.1f}x")
    print(f"  fast, pool of {workers}, whole set    {pool_ms:8.2f} ms/image  speed-up {ref_ms / pool_ms:5.1f}x")
    print(f"  integer counters identical (reference, per image, whole set, pool): {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="maps per case")
    parser.add_argument("--size", type=int, nargs="+", default=[224, 96], help="map side, one per case")
    parser.add_argument("--feat", type=int, nargs="+", default=[14, 6], help="field side, one per case")
    parser.add_argument("--workers", type=int, default=2, help="processes for the pooled run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.size) != len(args.feat):
        parser.error("--size and --feat need the same number of values (one pair per case)")
    for size, feat in zip(args.size, args.feat):
        run_case(args.n, size, feat, args.workers, args.seed)


if __name__ == "__main__":
    main()
