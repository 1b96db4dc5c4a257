"""Bootstrap cost per (protocol, variant) pair: `IntervalAccumulator` (count-matrix products) against a loop over
replicates that indexes the resampled images (the brute-force form of tests/metrics/test_intervals.py), on the
same random outcomes (n_test, n_val images x 3 IoUs x n_thr thresholds, both branches, val-chosen thresholds).
Both are timed per replicate over several rounds (medians); prints s per pair at R and the speed-up.

    python benchmarks/bench_intervals.py                       # n_test 1000, n_val 300, 1000 thresholds, R 1000
    python benchmarks/bench_intervals.py --loop-resamples 20   # replicates of the (slow) loop, scaled to R
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.metrics.intervals import IntervalAccumulator  # noqa: E402


def outcomes(rng, n, n_thr):
    multi = rng.random((n, 3, n_thr)) < 0.5
    return NS(
        per_image_multi=multi,
        per_image_single=multi & (rng.random((n, 3, n_thr)) < 0.8),
        per_image_gt_known=multi[:, 1, 200],
        per_image_top1_loc=multi[:, 1, 201],
    )


def vectorised(data, resamples, seed):
    acc = IntervalAccumulator(resamples=resamples, seed=seed)
    for branch, (test, val) in data.items():
        acc.add(0, ("clean", "cam", branch, "val"), val)
        acc.add(0, ("clean", "cam", branch, "test"), test)
    return acc.table()


def loop(data, resamples, seed):
    rng_t, rng_v = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    n_test, n_val = (len(d.per_image_gt_known) for d in data["softmax"])
    out = []
    for _ in range(resamples):
        it, iv = rng_t.choice(n_test, n_test), rng_v.choice(n_val, n_val)
        value = {}
        for branch, (test, val) in data.items():
            j = np.argmax(val.per_image_multi[iv].sum(axis=0), axis=1)
            value[branch] = test.per_image_multi[it][:, np.arange(3), j].mean()
        out.append(value["sigmoid"] - value["softmax"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--thresholds", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--loop-resamples", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    data = {
        b: (outcomes(rng, a.n_test, a.thresholds), outcomes(rng, a.n_val, a.thresholds)) for b in ("softmax", "sigmoid")
    }
    fast, slow = [], []
    for r in range(a.rounds):
        t = time.perf_counter()
        vectorised(data, a.resamples, r)
        fast.append((time.perf_counter() - t) / a.resamples)
        t = time.perf_counter()
        loop(data, a.loop_resamples, r)
        slow.append((time.perf_counter() - t) / a.loop_resamples)
    f, s = statistics.median(fast), statistics.median(slow)
    print(f"n_test {a.n_test}, n_val {a.n_val}, 3 IoUs x {a.thresholds} thresholds, both branches:")
    print(f"  accumulator: {f * a.resamples:.2f} s per pair at R={a.resamples} (every metric)")
    print(f"  replicate loop (MaxBoxAcc only): {s * a.resamples:.2f} s per pair at R={a.resamples}")
    print(f"  speed-up: {s / f:.1f}x (medians of {a.rounds} rounds)")


if __name__ == "__main__":
    main()
