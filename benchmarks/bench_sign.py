"""Sign diagnostics (the report stage's sign table): the per-image loop it replaced against the vectorised,
streamed code, on a synthetic CAM folder at ImageNet's shapes (14 x 14 maps upsampled to 224 x 224, 5 variants,
2 branches, 1-3 GT boxes an image).

1. Speed: ms per image per variant-branch of `sign_diagnostics_reference` (one image at a time) and of the
   vectorised path, as the report runs them (`sign_table` over every variant x branch, the box masks of a
   batch shared by its map sets), and as one map set alone (`sign_diagnostics`); the ratio in the same run,
   `--rounds` rounds, medians. Wall and CPU time (the machine may be shared). Both give the same dict (checked).
2. Memory: peak of the streamed sign pass (`open_cams` + `sign_table`) over 1,000 and 4,000 images, each in a
   fresh process: tracemalloc peak (numpy's buffers) and the peak rise of the resident memory, anonymous and
   file-backed (the memory-mapped shards' pages: page cache, which the kernel drops under pressure) apart;
   with `--old-memory`, the same for the old way (`read_cams` + the per-image loop).

    python benchmarks/bench_sign.py                     # 256 images timed, 3 rounds; memory at 1000, 4000
    python benchmarks/bench_sign.py --images 512 --memory-sizes 1000 4000 8000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.cams import variants as registry  # noqa: E402
from pipeline.cams.store import CamRecord, open_cams, read_cams, write_cams  # noqa: E402
from pipeline.concepts import BRANCHES  # noqa: E402
from pipeline.data.prepare import GroundTruth  # noqa: E402
from pipeline.report.build import run_variants, sign_table  # noqa: E402
from pipeline.report.sign import region_sums, sign_diagnostics, sign_diagnostics_reference  # noqa: E402

SIZE, FEATURE = 224, 14
VARIANTS = [v.name for v in registry.for_family(registry.DEFAULT_FAMILY)]
NON_NEGATIVE = {v.name for v in registry.for_family(registry.DEFAULT_FAMILY) if v.nonnegative}  # no negative part


def synthetic(root: Path, n: int, seed: int = 0) -> GroundTruth:
    """A CAM folder of `n` images under `root` and its GT: smooth signed maps (pos >= 0, neg <= 0, the
    softmax branch's negative part larger), 1-3 boxes an image, some at the border."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        wh = rng.integers(16, SIZE, (k, 2))
        xy = rng.integers(-8, SIZE - 8, (k, 2))
        x0y0 = np.clip(xy, 0, SIZE - 1)
        x1y1 = np.clip(xy + wh, 0, SIZE - 1)
        boxes.append(np.concatenate([x0y0, x1y1], axis=1).astype(np.int64))

    def records():
        shape = (2, 2, 2, len(VARIANTS), FEATURE, FEATURE)  # target, part, branch, variant, h, w
        for i in range(n):
            maps = np.zeros(shape, np.float32)
            base = rng.gamma(1.0, 1.0, (2, FEATURE, FEATURE)).astype(np.float32)
            for v, name in enumerate(VARIANTS):
                maps[:, 0, :, v] = base * rng.uniform(0.5, 2.0)
                if name not in NON_NEGATIVE:
                    maps[:, 1, 0, v] = -rng.gamma(1.0, 1.2, (2, FEATURE, FEATURE))  # softmax: sign collapse
                    maps[:, 1, 1, v] = -rng.gamma(0.3, 0.5, (2, FEATURE, FEATURE))
            yield CamRecord(f"im{i:06d}.jpg", i % 10, i % 10, 0.0, 0.0, maps)

    write_cams(
        root,
        records(),
        targets=("gt", "pred"),
        feature_size=(FEATURE, FEATURE),
        dtype="float32",
        shard_size=4096,
        info={"family": "cam"},
        variants=VARIANTS,
    )
    ids = [f"im{i:06d}.jpg" for i in range(n)]
    return GroundTruth(ids, np.arange(n) % 10, boxes, None, None, SIZE)


def old_sign_table(cams, gt) -> dict:
    """The report's sign table before: the whole set in memory, one map set at a time, one image at a time."""
    return {
        v: {
            b: sign_diagnostics_reference(
                cams.select(part="pos", branch=b, variant=v),
                cams.select(part="neg", branch=b, variant=v),
                gt.boxes,
                SIZE,
            )
            for b in BRANCHES
        }
        for v in run_variants(cams)
    }


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def speed(n: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        gt = synthetic(Path(tmp) / "cams", n)
        cams = read_cams(Path(tmp) / "cams")
        store = open_cams(Path(tmp) / "cams")
        sets = len(cams.manifest["variants"]) * len(BRANCHES)
        pos = cams.select(part="pos", branch="softmax", variant="cam")
        neg = cams.select(part="neg", branch="softmax", variant="cam")
        rows = {k: [] for k in ("table_old", "table_new", "one_old", "one_new")}
        region_sums(np.zeros((1, SIZE, SIZE), np.float32), np.zeros((1, SIZE, SIZE), bool))  # numba's start-up
        for _ in range(rounds):
            old, w, c = timed(lambda: old_sign_table(cams, gt))
            rows["table_old"].append((w, c))
            new, w, c = timed(lambda: sign_table(store, gt))
            rows["table_new"].append((w, c))
            if json.dumps(old) != json.dumps(new):
                raise AssertionError(f"sign tables differ:\n{old}\n{new}")
            a, w, c = timed(lambda: sign_diagnostics_reference(pos, neg, gt.boxes, SIZE))
            rows["one_old"].append((w, c))
            b, w, c = timed(lambda: sign_diagnostics(pos, neg, gt.boxes, SIZE))
            rows["one_new"].append((w, c))
            if a != b:
                raise AssertionError(f"sign diagnostics differ: {a} {b}")
    per = {"table_old": n * sets, "table_new": n * sets, "one_old": n, "one_new": n}
    out = {}
    for key, values in rows.items():
        out[key] = {
            "wall_ms": 1e3 * statistics.median(w for w, _ in values) / per[key],
            "cpu_ms": 1e3 * statistics.median(c for _, c in values) / per[key],
        }
    return out


def save_gt(gt: GroundTruth, path: Path) -> None:
    """The synthetic GT boxes as one (k, 5) int64 array: image, x0, y0, x1, y1."""
    rows = [np.concatenate([np.full((len(b), 1), i), b], axis=1) for i, b in enumerate(gt.boxes)]
    np.save(path, np.concatenate(rows))


def load_gt(path: Path, n: int) -> GroundTruth:
    rows = np.load(path)
    boxes = [rows[rows[:, 0] == i, 1:] for i in range(n)]
    return GroundTruth([f"im{i:06d}.jpg" for i in range(n)], np.arange(n) % 10, boxes, None, None, SIZE)


def rss_mb() -> tuple[float, float]:
    """The process's resident memory now (Linux /proc/self/status), MB: anonymous (heap, numpy arrays) and
    file-backed (here: the memory-mapped CAM shards' pages, clean page cache the kernel can drop)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


class RssPeak:
    """The peak of `rss_mb()` over a `with` block, sampled every 5 ms in a thread."""

    def __enter__(self):
        import threading

        self.base, self.peak, self._stop = rss_mb(), rss_mb(), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                now = rss_mb()
                self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def memory_child(root: Path, n: int, way: str) -> None:
    """Run in a fresh process: the sign pass over the `n` images under `root`, its peak memory as JSON."""
    import tracemalloc

    gt = load_gt(root / "boxes.npy", n)
    region_sums(np.zeros((1, SIZE, SIZE), np.float32), np.zeros((1, SIZE, SIZE), bool))  # numba's start-up
    tracemalloc.start()
    with RssPeak() as rss:
        if way == "new":
            sign_table(open_cams(root / "cams"), gt)
        else:
            old_sign_table(read_cams(root / "cams"), gt)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"images": n, "way": way, "tracemalloc_peak_mb": peak / 2**20}
    out["anon_rise_mb"], out["file_rise_mb"] = (p - b for p, b in zip(rss.peak, rss.base))
    print(json.dumps(out))


def memory(n: int, ways: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_gt(synthetic(root / "cams", n), root / "boxes.npy")
        out = []
        for way in ways:
            run = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(root), str(n), "--way", way],
                check=True,
                capture_output=True,
                text=True,
            )
            out.append(json.loads(run.stdout.strip().splitlines()[-1]))
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256, help="images timed (each round, old and new)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[1000, 4000])
    ap.add_argument("--old-memory", action="store_true", help="also the old way's peak (slow: the per-image loop)")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--way", default="new", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(Path(args.memory_child[0]), int(args.memory_child[1]), args.way)
        return

    s = speed(args.images, args.rounds)
    print(
        f"speed: {args.images} images at {SIZE} px ({FEATURE}x{FEATURE} maps), {args.rounds} rounds, medians, "
        "ms per image per variant-branch"
    )
    for kind, label in (("table", "sign table (10 map sets)"), ("one", "one map set alone")):
        old, new = s[f"{kind}_old"], s[f"{kind}_new"]
        print(
            f"  {label:26s} per-image loop {old['wall_ms']:.3f} wall / {old['cpu_ms']:.3f} cpu | vectorised "
            f"{new['wall_ms']:.3f} wall / {new['cpu_ms']:.3f} cpu | speed-up "
            f"{old['wall_ms'] / new['wall_ms']:.2f}x wall, {old['cpu_ms'] / new['cpu_ms']:.2f}x cpu"
        )
    print("memory: the sign pass (after numba's start-up), a fresh process each")
    for n in args.memory_sizes:
        for m in memory(n, ["new", "old"] if args.old_memory else ["new"]):
            way = "streamed (open_cams)" if m["way"] == "new" else "old (read_cams)"
            print(
                f"  {way:22s} {n:6d} images: tracemalloc peak {m['tracemalloc_peak_mb']:.1f} MB, peak RSS rise: "
                f"anonymous {m['anon_rise_mb']:.1f} MB, file-backed {m['file_rise_mb']:.1f} MB"
            )


if __name__ == "__main__":
    main()
