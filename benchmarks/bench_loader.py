"""Eval-loader throughput (the cams stage's loader) with 0, 1, 2, ... DataLoader worker processes.

Iterates the ordered loader of a prepared split (default: test) exactly as the cams stage builds it (the official
test transform at the run's `model.input_size`, batches of `cams.batch_size`, read from the repository's
data/params.json; a fresh loader per pass, so the workers' start-up is counted) and reports images/s and the
ratio against workers=0 in the same round. Two modes: `preloaded` (the split decoded into memory once, as
SynthBirds and any split under 1 GiB are: the workers only resize and normalise) and `files` (every image decoded
from its JPEG on each pass, as a large real dataset is). Interleaved rounds, medians over `--rounds`.

    python benchmarks/bench_loader.py                    # this checkout (after `dvc repro` prepared the data)
    python benchmarks/bench_loader.py --repo /tmp/wsC --workers 0 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.data.images import ImageSet, eval_transform, make_loader  # noqa: E402
from pipeline.data.prepare import load_prepared  # noqa: E402


def one_pass(data: ImageSet, batch_size: int, workers: int) -> float:
    """Seconds to iterate one fresh ordered loader over `data` (worker start-up included)."""
    start = time.perf_counter()
    loader = make_loader(data, batch_size=batch_size, train=False, seed=0, workers=workers)
    n = sum(len(y) for _, y in loader)
    seconds = time.perf_counter() - start
    del loader
    assert n == len(data)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository whose data/ holds the prepared split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["preloaded", "files"], choices=["preloaded", "files"])
    args = parser.parse_args()

    os.chdir(args.repo)  # the prepared index names its images relative to the repository
    values = json.loads(Path("data/params.json").read_text())
    size, batch_size = values["model"]["input_size"], values["cams"]["batch_size"]
    prepared = load_prepared(Path(values["preprocess"]["root"]) / values["dataset"])
    split = prepared.split(args.split)
    torch.set_num_threads(1)  # the main process's transform runs on one thread either way (workers: one each)
    print(
        f"eval loader, {values['dataset']} {args.split} split: {len(split.image_ids)} images at {size} px, "
        f"batch {batch_size}; {len(os.sched_getaffinity(0))} CPUs available; medians of {args.rounds} rounds"
    )
    print()
    print("| mode | workers | images/s | vs workers=0 |")
    print("|---|---|---|---|")
    for mode in args.modes:
        data = ImageSet(
            prepared.image_root,
            split.image_ids,
            split.labels,
            eval_transform(size),
            approx_bytes=0 if mode == "preloaded" else None,
        )
        one_pass(data, batch_size, 0)  # warm-up: file cache, allocator
        times: dict[int, list[float]] = {w: [] for w in args.workers}
        ratios: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            round_times = {w: one_pass(data, batch_size, w) for w in args.workers}
            for w, t in round_times.items():
                times[w].append(t)
                ratios[w].append(round_times[args.workers[0]] / t)
        for w in args.workers:
            rate = len(data) / statistics.median(times[w])
            print(f"| {mode} | {w} | {rate:,.0f} | {statistics.median(ratios[w]):.2f}x |")


if __name__ == "__main__":
    main()
