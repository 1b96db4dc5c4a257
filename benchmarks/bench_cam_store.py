"""Lossless compression of the CAM store's float32 shards: ratio and speed of a few codecs against plain .npy.

Reads every `shard_*.npy` under `--cams` (default: data/cams of `--repo`, the maps the cams stage wrote) and, on
the concatenated raw bytes of each shard, measures in the same run

- `npy` (the store today): np.save to memory and np.load from the file's bytes, the baseline of the speed ratios;
- `savez_compressed`: np.savez_compressed (zip + zlib at its default level) and np.load of the archive;
- `zlib-1`, `zlib-6`: zlib on the raw bytes at level 1 and 6;
- `lzma`: lzma on the raw bytes (preset 6, xz container);
- `shuffle+zlib-1`: the float32 bytes reordered into 4 planes (byte 0 of every value, then byte 1, ...; the
  sign/exponent bytes compress, the low mantissa bytes hardly) and zlib level 1; undone after decompression.

Every codec is checked to give back the same bytes. Speeds are MB/s of raw (uncompressed) data, medians of
`--rounds` rounds, all in memory (no disk in the timings): compression = encode, decompression = decode to the
float32 array. `speed vs npy` divides by np.save / np.load of the same arrays in the same round. `--out` also
writes the table as Markdown (benchmarks/results/cam_store.md).

    python benchmarks/bench_cam_store.py --repo /tmp/wsC --out benchmarks/results/cam_store.md
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import platform
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def npy_encode(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_decode(b: bytes, like: np.ndarray) -> np.ndarray:
    return np.load(io.BytesIO(b))


def savez_encode(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, maps=a)
    return buf.getvalue()


def savez_decode(b: bytes, like: np.ndarray) -> np.ndarray:
    with np.load(io.BytesIO(b)) as z:
        return z["maps"]


def raw_codec(compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]):
    def encode(a: np.ndarray) -> bytes:
        return compress(np.ascontiguousarray(a).tobytes())

    def decode(b: bytes, like: np.ndarray) -> np.ndarray:
        return np.frombuffer(decompress(b), dtype=like.dtype).reshape(like.shape)

    return encode, decode


def shuffle_encode(a: np.ndarray) -> bytes:
    planes = np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.itemsize).T  # (4, n): byte k of every value
    return zlib.compress(np.ascontiguousarray(planes).tobytes(), 1)


def shuffle_decode(b: bytes, like: np.ndarray) -> np.ndarray:
    planes = np.frombuffer(zlib.decompress(b), dtype=np.uint8).reshape(like.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(like.dtype).reshape(like.shape)


CODECS: dict[str, tuple[Callable, Callable]] = {
    "npy": (npy_encode, npy_decode),
    "savez_compressed": (savez_encode, savez_decode),
    "zlib-1": raw_codec(lambda b: zlib.compress(b, 1), zlib.decompress),
    "zlib-6": raw_codec(lambda b: zlib.compress(b, 6), zlib.decompress),
    "lzma": raw_codec(lambda b: lzma.compress(b, preset=6), lzma.decompress),
    "shuffle+zlib-1": (shuffle_encode, shuffle_decode),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--cams", type=Path, default=None, help="folder of shards (default: <repo>/data/cams)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    cams = args.cams or args.repo / "data" / "cams"
    paths = sorted(cams.rglob("shard_*.npy"))
    if not paths:
        raise SystemExit(f"no shard_*.npy under {cams}: run the pipeline (dvc repro) first")
    arrays = [np.load(p) for p in paths]
    dtypes = sorted({str(a.dtype) for a in arrays})
    raw = sum(a.nbytes for a in arrays)
    on_disk = sum(p.stat().st_size for p in paths)
    mb = raw / 1e6

    encoded: dict[str, list[bytes]] = {}
    enc_s: dict[str, list[float]] = {c: [] for c in args.codecs}
    dec_s: dict[str, list[float]] = {c: [] for c in args.codecs}
    enc_rel: dict[str, list[float]] = {c: [] for c in args.codecs}
    dec_rel: dict[str, list[float]] = {c: [] for c in args.codecs}
    for _ in range(args.rounds):
        round_enc, round_dec = {}, {}
        for name in ["npy", *[c for c in args.codecs if c != "npy"]]:
            encode, decode = CODECS[name]
            start = time.perf_counter()
            blobs = [encode(a) for a in arrays]
            round_enc[name] = time.perf_counter() - start
            start = time.perf_counter()
            back = [decode(b, a) for b, a in zip(blobs, arrays, strict=True)]
            round_dec[name] = time.perf_counter() - start
            for a, x in zip(arrays, back, strict=True):
                assert a.dtype == x.dtype and a.shape == x.shape and a.tobytes() == x.tobytes(), name
            encoded[name] = blobs
        for name in args.codecs:
            enc_s[name].append(round_enc[name])
            dec_s[name].append(round_dec[name])
            enc_rel[name].append(round_enc["npy"] / round_enc[name])
            dec_rel[name].append(round_dec["npy"] / round_dec[name])

    lines = [
        "# CAM store: lossless compression of the float32 shards",
        "",
        "<!-- Generated by `python benchmarks/bench_cam_store.py --out benchmarks/results/cam_store.md`; "
        "do not edit by hand. -->",
        "",
        f"{len(paths)} shard(s) under `{cams.relative_to(args.repo) if cams.is_relative_to(args.repo) else cams}`, "
        f"dtype {', '.join(dtypes)}, shapes {sorted({a.shape[1:] for a in arrays})} per image, "
        f"{sum(len(a) for a in arrays):,} image rows; {raw:,} bytes of maps ({on_disk:,} bytes of .npy files). "
        f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs available, "
        f"Python {platform.python_version()}, NumPy {np.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}. "
        f"In memory; medians of {args.rounds} rounds; MB/s of raw map bytes; `vs npy`: speed relative to "
        f"np.save / np.load of the same arrays in the same round (higher is faster).",
        "",
        "| codec | ratio (raw / compressed) | compressed bytes | compress MB/s | vs npy | decompress MB/s | vs npy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.codecs:
        size = sum(len(b) for b in encoded[name])
        lines.append(
            f"| {name} | {raw / size:.3f} | {size:,} | {mb / statistics.median(enc_s[name]):,.1f} | "
            f"{statistics.median(enc_rel[name]):.3f}x | {mb / statistics.median(dec_s[name]):,.1f} | "
            f"{statistics.median(dec_rel[name]):.3f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
