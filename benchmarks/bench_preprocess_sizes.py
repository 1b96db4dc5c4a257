"""Preprocess image sizes: full decode on one thread (the old check) against header-only reads.

On `--n` JPEGs of `--width` x `--height` (default: a case of 400 and one of 4,000, at 500x375, ILSVRC's and
CUB's most common size), each a random crop of one of scikit-image's photos (astronaut, chelsea, coffee,
rocket, hubble_deep_field, immunohistochemistry, retina) with a random flip, resized and saved at quality 90,
in one process and on the same files:

  (a) baseline, the old preprocess check: `Image.open(path)`, `im.load()` (a full decode), `im.size`, one
      image after the other on one thread;
  (b) `read_image_sizes(workers=1)` (pipeline/data/prepare.py): the size from the header (`Image.open(path)
      .size`, no decode) plus the end check (the last two bytes are JPEG's EOI marker), one process;
  (c) `read_image_sizes(workers=W)`: the same in a pool of W processes (default: one per usable CPU), chunks
      of `SIZE_CHUNK` images; the pool is started and stopped inside every timed call, as preprocess does
      once per run;
  (d) for comparison, the header route of (b) in a ThreadPoolExecutor of W threads (`pool.map`, chunked
      likewise): PIL parses JPEG headers in Python, under the GIL, so threads do not help on a warm cache.

The routes are interleaved round by round (`--rounds`, median per route), so that load from other processes
affects them alike; every route's sizes are checked against (a). The files sit in the page cache after the
first round: this measures the CPU cost. On a cold disk the header route also reads far less (the first
blocks and the last two bytes of each file instead of all of it), and the pool keeps W reads in flight.

Prints, and writes to `--out` (benchmarks/results/preprocess_sizes.md), the median wall time per image, each
route's speed-up over (a) measured in the same run, the median CPU time per image of all processes (the
pool's gain needs idle CPUs; the load average is recorded), and the rate extrapolated to ILSVRC's 1,281,167
train + 50,000 test images. The CPU may be shared: read the ratios, not the times.

    python benchmarks/bench_preprocess_sizes.py
    python benchmarks/bench_preprocess_sizes.py --n 300 --rounds 7 --workers 4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data import prepare  # noqa: E402
from pipeline.data.prepare import default_workers, image_size, read_image_sizes  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
ILSVRC_IMAGES = 1_281_167 + 50_000


def make_jpegs(root: Path, n: int, width: int, height: int, seed: int) -> list[str]:
    """`n` JPEGs under `root`: random crops (aspect width:height) of scikit-image's photos, resized."""
    import skimage.data

    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.5, 1.0)
        w = max(8, int(min(photo.width, photo.height * width / height) * scale))
        h = max(6, int(w * height / width))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((x, y, x + w, y + h)).resize((width, height), Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image_id = f"n{i % 10:02d}/{i:05d}.JPEG"
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / image_id, "JPEG", quality=90)
        ids.append(image_id)
    return ids


def full_decode(root: Path, ids: list[str]) -> list[tuple[int, int]]:
    """(a): the old check, one image after the other."""
    sizes = []
    for image_id in ids:
        with Image.open(root / image_id) as im:
            im.load()
            sizes.append(im.size)
    return sizes


def header_threads(root: Path, ids: list[str], workers: int) -> list[tuple[int, int]]:
    """(d): `image_size` in a thread pool, chunked as the process pool is."""
    chunk = prepare.SIZE_CHUNK
    chunks = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda part: [image_size(root / i) for i in part], chunks)
        return [size for part in parts for size in part]


def cpu_seconds() -> float:
    """CPU time of this process, its threads and its finished child processes (the pool's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_case(
    root: Path, ids: list[str], rounds: int, workers: int
) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    """Median wall and CPU seconds per image of routes (a)-(d) on `ids`, and whether each gave the sizes of
    (a)."""
    routes: dict[str, Callable[[], list]] = {
        "a": lambda: full_decode(root, ids),
        "b": lambda: read_image_sizes(root, ids, workers=1),
        "c": lambda: read_image_sizes(root, ids, workers=workers),
        "d": lambda: header_threads(root, ids, workers),
    }
    expected = routes["a"]()
    identical = {name: fn() == expected for name, fn in routes.items()}  # also the untimed warm-up round
    times: dict[str, list[float]] = {name: [] for name in routes}
    cpu: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(rounds):  # interleaved round by round, so that load changes hit every route alike
        for name, fn in routes.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - start_cpu)
    per_image = lambda d: {name: statistics.median(v) / len(ids) for name, v in d.items()}  # noqa: E731
    return per_image(times), per_image(cpu), identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[400, 4000], help="JPEGs, one case per value")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (medians), after one untimed")
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes / threads of (c), (d)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preprocess_sizes.md")
    args = parser.parse_args()

    prepare.SIZE_MIN_PARALLEL = 1  # (c) uses its pool on any list (preprocess: from SIZE_MIN_PARALLEL images on)
    labels = {
        "a": "(a) full decode, one thread (old check)",
        "b": "(b) header + end check, one process",
        "c": f"(c) header + end check, {args.workers} processes",
        "d": f"(d) header + end check, {args.workers} threads",
    }
    lines = [
        "# Preprocess image sizes: full decode vs header-only",
        "",
        "`" + " ".join(["python benchmarks/bench_preprocess_sizes.py", *sys.argv[1:]]) + "`",
        "",
    ]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        all_ids = make_jpegs(root, max(args.n), args.width, args.height, args.seed)
        kb = sum((root / i).stat().st_size for i in all_ids) / len(all_ids) / 1024
        lines += [
            f"JPEGs {args.width}x{args.height} (crops of scikit-image photos, quality 90, {kb:.0f} KB on average), "
            f"page cache warm; median of {args.rounds} rounds, routes interleaved; {os.cpu_count()} CPUs visible, "
            f"{default_workers()} usable ({platform.processor() or platform.machine()}), Python "
            f"{platform.python_version()}, Pillow {Image.__version__}, SIZE_CHUNK {prepare.SIZE_CHUNK}. "
            "The CPU may be shared with other work: read the ratios, not the times.",
        ]
        for n in args.n:
            load = os.getloadavg()[0]
            t, cpu, identical = run_case(root, all_ids[:n], args.rounds, args.workers)
            ok &= all(identical.values())
            lines += [
                "",
                f"## {n} images (load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)",
                "",
                "| route | ms / image | speed-up over (a) | CPU ms / image, all processes | sizes identical to (a) "
                "| 1.33 M images at this rate |",
                "|---|---:|---:|---:|---|---:|",
            ]
            for name, label in labels.items():
                lines.append(
                    f"| {label} | {1e3 * t[name]:.3f} | {t['a'] / t[name]:.1f}x | {1e3 * cpu[name]:.3f} | "
                    f"{identical[name]} | {t[name] * ILSVRC_IMAGES / 60:.1f} min |"
                )
            print("\n".join(lines[-8:]), flush=True)
    lines += [
        "",
        "(c) starts and stops its pool in every call (about 15 ms), as preprocess does once per run; the larger "
        "case shows the steady rate. Its wall-clock gain over (b) needs idle CPUs: the CPU column (this process, "
        "its threads and its finished workers) shows what the pool costs in all, whatever the load. The last "
        "column extrapolates the warm-cache rate to ILSVRC's 1,331,167 images; on a cold disk the old route also "
        "reads every byte of every file, the header route two small pieces of it.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwritten to {args.out}")
    if not ok:
        sys.exit("sizes differ between routes")


if __name__ == "__main__":
    main()
