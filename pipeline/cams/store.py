"""CAM shards: raw signed maps at feature resolution, streamed into a few .npy files plus an index.

Layout of a CAM folder (written atomically: a temporary folder renamed into place when complete):

    manifest.json      variants (by name, registry order), branches, parts, targets, feature size, dtype,
                       shard size, counts, model (family, backbone, ...)
    index.csv          row,image_id,label,pred,logit_softmax,logit_sigmoid,shard,offset  (one row per image,
                       in image order; pred = softmax-branch prediction; logits of the ground-truth class)
    shard_00000.npy    float array (n, T, 2, 2, V, h, w): [image, target kind, part (pos, neg),
                       branch (softmax, sigmoid), variant (the manifest's `variants`, V of them), y, x]

The variants are those of the model's family (`pipeline.cams.variants`): for the CAM family cam, gradcam,
gradcampp, xgradcam, layercam (V = 5); for the gradient family the same without cam (V = 4).

`pos` is the part of the map from non-negative channel weights and `neg` the part from negative ones, so
the raw signed map is pos + neg and the official weight-clamped map is pos (pipeline.cams.engine). Shard
boundaries depend only on the image order and `shard_size`, so the same maps give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cams import variants as registry
from pipeline.cams.engine import BRANCHES
from pipeline.io import atomic_dir, write_json, write_npy, write_text

PARTS = ("pos", "neg")
TARGET_KINDS = ("gt", "pred")
FORMAT = 1
INDEX_COLUMNS = ("row", "image_id", "label", "pred", "logit_softmax", "logit_sigmoid", "shard", "offset")


@dataclass
class CamRecord:
    """The maps of one image: `maps` is (T, 2 parts, 2 branches, V variants, h, w)."""

    image_id: str
    label: int
    pred: int
    logit_softmax: float  # softmax-branch logit of the ground-truth class
    logit_sigmoid: float  # sigmoid-branch logit of the ground-truth class
    maps: np.ndarray


def write_cams(
    out_dir: Path,
    records: Iterable[CamRecord],
    *,
    targets: tuple[str, ...],
    feature_size: tuple[int, int],
    dtype: str,
    shard_size: int,
    info: dict,
    variants: Sequence[str] | None = None,
) -> dict:
    """Stream `records` into shards of `shard_size` images under `out_dir`; return the manifest.

    `variants`: the names of the maps' variant axis, in order (default: the CAM family's, every registered
    variant); each must be registered."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"cams dtype: '{dtype}' is not valid; choose one of: float32, float16")
    variants = (
        [registry.get(v).name for v in variants]
        if variants is not None
        else [v.name for v in registry.for_family(registry.DEFAULT_FAMILY)]
    )
    h, w = feature_size
    expected = (len(targets), len(PARTS), len(BRANCHES), len(variants), h, w)
    rows, shard, shards = [], [], []
    with atomic_dir(out_dir) as tmp:

        def flush() -> None:
            if shard:
                name = f"shard_{len(shards):05d}.npy"
                write_npy(tmp / name, np.stack(shard).astype(dtype))
                shards.append({"file": name, "images": len(shard)})
                shard.clear()

        for rec in records:
            if rec.maps.shape != expected:
                raise ValueError(f"CAM maps of {rec.image_id} have shape {rec.maps.shape}, expected {expected}")
            rows.append(
                (
                    len(rows),
                    rec.image_id,
                    rec.label,
                    rec.pred,
                    f"{rec.logit_softmax:.6g}",
                    f"{rec.logit_sigmoid:.6g}",
                    len(shards),
                    len(shard),
                )
            )
            shard.append(rec.maps)
            if len(shard) == shard_size:
                flush()
        flush()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
        write_text(tmp / "index.csv", buf.getvalue())
        manifest = {
            "format": FORMAT,
            "variants": variants,
            "branches": list(BRANCHES),
            "parts": list(PARTS),
            "targets": list(targets),
            "feature_size": [h, w],
            "dtype": dtype,
            "shard_size": shard_size,
            "images": len(rows),
            "shards": shards,
            **info,
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


@dataclass
class CamSet:
    """A CAM folder read back: the manifest, the index rows and the maps of every image."""

    manifest: dict
    index: list[dict]
    maps: np.ndarray  # (N, T, 2, 2, V, h, w)

    def select(self, *, target: str = "gt", part: str, branch: str, variant: str) -> np.ndarray:
        """(N, h, w) maps of one target kind, part, branch and variant."""
        return select(self.maps, self.manifest, target=target, part=part, branch=branch, variant=variant)

    def __len__(self) -> int:
        return len(self.index)

    def block(self, start: int, stop: int) -> np.ndarray:
        """The maps of images start..stop-1 (CamStore's interface on a set in memory)."""
        return self.maps[start:stop]

    def maps_of(self, start: int, stop: int, *, target: str = "gt", part: str, branch: str, variant: str) -> np.ndarray:
        """(n, h, w) maps of images start..stop-1 of one target kind, part, branch and variant (CamStore's)."""
        return select(self.maps[start:stop], self.manifest, target=target, part=part, branch=branch, variant=variant)


def iter_shards(root: Path) -> Iterator[np.ndarray]:
    """Yield the shard arrays of a CAM folder in order (bounded memory for large sets)."""
    manifest = _manifest(root)
    for entry in manifest["shards"]:
        path = root / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: CAM shard listed in {root / 'manifest.json'} is missing; "
                f"rerun the cams stage (dvc repro cams)"
            )
        arr = np.load(path, allow_pickle=False)
        if arr.shape[0] != entry["images"]:
            raise ValueError(f"{path}: holds {arr.shape[0]} images, the manifest says {entry['images']}")
        yield arr


class CamStore:
    """A CAM folder opened for streaming: the manifest, the index rows, and the maps read block by block
    (`block`, `maps_of`) straight from the shard files with positioned reads: memory holds the block asked
    for, never the set, and nothing is memory-mapped (mapped pages would count in the process's resident
    memory as they are touched). The same `select` as CamSet, on a block."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest = _manifest(self.root)
        with open(self.root / "index.csv", newline="") as fh:
            self.index = list(csv.DictReader(fh))
        self._shards: list[tuple[Path, int]] = []  # (file, byte offset of the data)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.record_bytes = int(np.prod(self.shape)) * self.dtype.itemsize  # one image's maps
        starts = [0]
        for entry in self.manifest["shards"]:
            path = self.root / entry["file"]
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: CAM shard listed in {self.root / 'manifest.json'} is missing; "
                    f"rerun the cams stage (dvc repro cams)"
                )
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fh)
                offset = fh.tell()
            if shape[0] != entry["images"]:
                raise ValueError(f"{path}: holds {shape[0]} images, the manifest says {entry['images']}")
            if tuple(shape[1:]) != self.shape or dtype != self.dtype or fortran:
                raise ValueError(
                    f"{path}: holds {dtype} maps of shape {shape}, the manifest says {self.dtype} (n, {self.shape})"
                )
            self._shards.append((path, offset))
            starts.append(starts[-1] + shape[0])
        self._starts = np.array(starts)
        if starts[-1] != len(self.index):
            raise ValueError(f"{self.root}: index.csv lists {len(self.index)} images but the shards hold {starts[-1]}")
        self.bytes_read = 0  # bytes read from the shards so far (the work log of a distributed evaluation)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        m = self.manifest
        h, w = m["feature_size"]
        return (len(m["targets"]), len(m["parts"]), len(m["branches"]), len(m["variants"]), h, w)

    def block(self, start: int, stop: int) -> np.ndarray:
        """The maps of images start..stop-1, (n, T, 2, 2, V, h, w), read from the shards they lie in."""
        start, stop = max(0, start), min(stop, len(self))
        out = np.empty((max(0, stop - start), *self.shape), dtype=self.dtype)
        for k, (path, offset) in enumerate(self._shards):
            lo, hi = self._starts[k], self._starts[k + 1]
            a, b = max(start, lo), min(stop, hi)
            if b > a:
                count = (b - a) * self.record_bytes // self.dtype.itemsize
                data = np.fromfile(path, dtype=self.dtype, count=count, offset=offset + (a - lo) * self.record_bytes)
                out[a - start : b - start] = data.reshape(b - a, *self.shape)
        self.bytes_read += out.nbytes
        return out

    def maps_of(self, start: int, stop: int, *, target: str = "gt", part: str, branch: str, variant: str) -> np.ndarray:
        """(n, h, w) maps of images start..stop-1 of one target kind, part, branch and variant."""
        block = self.block(start, stop)
        return np.ascontiguousarray(
            select(block, self.manifest, target=target, part=part, branch=branch, variant=variant)
        )

    def read(self) -> CamSet:
        """The whole set in memory (small sets, tests)."""
        return CamSet(self.manifest, self.index, self.block(0, len(self)))


def open_cams(root: Path) -> CamStore:
    """Open a CAM folder for streaming (`CamStore`): nothing but the manifest and index is read yet."""
    return CamStore(root)


def _axes(manifest: dict, target: str, part: str, branch: str, variant: str) -> tuple[int, int, int, int]:
    """The indices of (target, part, branch, variant) on a map block's axes 1-4; ValueError naming a bad one."""
    for name, value, choices in (
        ("target", target, manifest["targets"]),
        ("part", part, manifest["parts"]),
        ("branch", branch, manifest["branches"]),
        ("variant", variant, manifest["variants"]),
    ):
        if value not in choices:
            raise ValueError(f"{name}: '{value}' is not in this CAM set; choose one of: {', '.join(choices)}")
    return (
        manifest["targets"].index(target),
        manifest["parts"].index(part),
        manifest["branches"].index(branch),
        manifest["variants"].index(variant),
    )


def select(maps: np.ndarray, manifest: dict, *, target: str = "gt", part: str, branch: str, variant: str) -> np.ndarray:
    """(n, h, w) maps of one target kind, part, branch and variant out of a (n, T, 2, 2, V, h, w) block."""
    return maps[(slice(None), *_axes(manifest, target, part, branch, variant))]


def read_cams(root: Path) -> CamSet:
    """Read a whole CAM folder (manifest, index and every shard)."""
    root = Path(root)
    manifest = _manifest(root)
    with open(root / "index.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    arrays = list(iter_shards(root))
    h, w = manifest["feature_size"]
    shape = (
        0,
        len(manifest["targets"]),
        len(manifest["parts"]),
        len(manifest["branches"]),
        len(manifest["variants"]),
        h,
        w,
    )
    maps = np.concatenate(arrays) if arrays else np.zeros(shape, dtype=manifest["dtype"])
    if len(maps) != len(index):
        raise ValueError(f"{root}: index.csv lists {len(index)} images but the shards hold {len(maps)}")
    return CamSet(manifest, index, maps)


def _manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the cams stage first (dvc repro cams)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: CAM format {manifest.get('format')} is not {FORMAT}; rerun the cams stage")
    return manifest
