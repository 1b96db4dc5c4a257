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
        m = self.manifest
        for name, value, choices in (
            ("target", target, m["targets"]),
            ("part", part, m["parts"]),
            ("branch", branch, m["branches"]),
            ("variant", variant, m["variants"]),
        ):
            if value not in choices:
                raise ValueError(f"{name}: '{value}' is not in this CAM set; choose one of: {', '.join(choices)}")
        return self.maps[
            :,
            m["targets"].index(target),
            m["parts"].index(part),
            m["branches"].index(branch),
            m["variants"].index(variant),
        ]


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
