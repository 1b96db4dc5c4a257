"""CUB-200-2011 from its own annotation files (CUB_200_2011.tgz, optional segmentations.tgz).

Parts (DATA.md section 3; pipeline/data/real/source.py): `CUB_200_2011.tgz` from CaltechDATA (sha256 from
TFDS) or, with ``verify: content``, a repacked copy or the extracted ``CUB_200_2011/`` folder (the one holding
`images.txt` and `images/`); `segmentations.tgz` or the extracted ``segmentations/`` folder (class folders of
PNGs) only with ``datasets.cub.segmentations: true``. Only the images of the kept classes are read.

Metadata built from the archive's `images.txt`, `image_class_labels.txt`, `bounding_boxes.txt`,
`train_test_split.txt` and `classes.txt`:

* image ids are the archive's paths under `images/` (``001.Black_footed_Albatross/X.jpg``), as in
  wsolevaluation; labels are the 1-based class ids minus one (0..199, folder order); the first
  ``num_classes`` classes are kept.
* boxes: `bounding_boxes.txt` holds ``x y w h`` floats; like wsolevaluation's metadata
  (``60 27 325 304`` -> ``60,27,385,331``) the box is ``int(x), int(y), int(x + w), int(y + h)``, then
  clipped to the image (``x1 <= W - 1``, ``y1 <= H - 1``) since an inclusive pixel box cannot reach W.
* image sizes are read from the image headers.
* splits: test = `train_test_split.txt` 0 (5,794 images). wsolevaluation's val is CUBV2 (1,000 extra
  Flickr images whose boxes live only in the wsolevaluation repository); it is not fetched here.
  Instead the first ``val_per_class`` train images of each class (in `images.txt` order) form val and
  are **removed** from train, so val is held out from training (5 per class = 1,000 images, the size
  of CUBV2; train keeps 4,994). ``val_per_class: 0`` gives no val split and the full 5,994 train images.
* ``segmentations: true``: `segmentations/<class>/<name>.png` (grey levels = fraction of 5 annotators)
  become `masks/<id>.png` and a mask view `metadata_mask/{val,test}` (no ignore masks); the preprocess
  step binarises them at > 0.5, i.e. a majority of annotators.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.data.fetch import RemoteFile
from pipeline.data.prepare import DataError
from pipeline.data.real.common import clamp_box, image_sizes, split_off_per_class, write_classes, write_metadata
from pipeline.data.real.source import Inputs, Part, Reader
from pipeline.schema import Bool, DownloadableDatasetParams, Field, Int, params_class

NUM_CLASSES = 200
TEST_IMAGES = 5_794  # test split of the full dataset (the paper's numbers are on all of it)
WHERE = (
    "https://data.caltech.edu/records/65de6-vp158 (CaltechDATA); Google Drive mirror id "
    "1hbzc_P1FuxMkcabkgn9ZKinBwW683j45 (same sha256)"
)
CALTECH_HOSTS = (".caltech.edu", "s3.us-west-2.amazonaws.com")
"""Hosts a CaltechDATA download may be redirected to (its S3 file store; not checked from here: no
network). The sha256 is published, so a file from anywhere else would be rejected by it anyway."""
ARCHIVE = RemoteFile(
    name="CUB_200_2011.tgz",
    url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    size=1_150_585_339,
    sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
    md5="97eceeb196236b17998738112f37df78",
    where=WHERE,
    allowed_hosts=CALTECH_HOSTS,
)
SEGMENTATIONS = RemoteFile(
    name="segmentations.tgz",
    url="https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz?download=1",
    size=39_272_883,
    sha256="dc77f6cffea0cbe2e41d4201115c8f29a6320ecb04fffd2444f51b8066e4b84f",
    md5=None,  # two different md5s circulate; the TFDS sha256 is trusted (DATA.md section 3)
    where="https://data.caltech.edu/records/w9d68-gec53 (CaltechDATA); Google Drive mirror id "
    "1EamOKGLoTuZdtcVYbHMWNpkn3iAVj8TP",
    allowed_hosts=CALTECH_HOSTS,
)
MANUAL_WHY = ""
PUBLISHED = {"images": 11_788, "classes": 200, "boxes": 11_788}


@params_class
class CubParams(DownloadableDatasetParams):
    """`datasets.cub`: CUB-200-2011 (this module's docstring describes what is read and built)."""

    num_classes: Int = Field(ge=2, le=NUM_CLASSES, description=f"the first N of the {NUM_CLASSES} classes")
    val_per_class: Int = Field(
        ge=0,
        le=28,
        description=(
            "train images per class held out as val (CUBV2 is not used)\n"
            "CUBV2's boxes are not public files; the first val_per_class train images of each class form val and are "
            "removed from train (5 per class = 1,000 images, the size of CUBV2)."
        ),
    )
    segmentations: Bool = Field(description="also fetch segmentations.tgz: masks and PxAP on val/test")


def _is_cub_root(folder: Path) -> bool:
    return (folder / "images.txt").is_file() and (folder / "images").is_dir()


def _is_segmentations_root(folder: Path) -> bool:
    """A folder of class folders (``001.Black_footed_Albatross``) holding PNGs, not CUB's own images folder."""
    if folder.name == "images" or (folder / "images.txt").exists():
        return False
    try:
        first = next(
            (
                e
                for e in sorted(os.scandir(folder), key=lambda e: e.name)
                if e.is_dir() and re.match(r"\d{3}\.", e.name)
            ),
            None,
        )
        return first is not None and any(n.endswith(".png") for n in os.listdir(first.path))
    except OSError:
        return False


IMAGES_PART = "CUB_200_2011"
SEGMENTATIONS_PART = "segmentations"


def parts(cfg) -> list[Part]:
    images = Part(IMAGES_PART, ARCHIVE, _is_cub_root, "extracted CUB_200_2011/ folder (images.txt and images/)")
    seg = Part(
        SEGMENTATIONS_PART,
        SEGMENTATIONS,
        _is_segmentations_root,
        "extracted segmentations/ folder (class folders of PNG masks)",
    )
    return [images] + ([seg] if cfg.segmentations else [])


def _table(reader: Reader, name: str, columns: int) -> dict[int, list[str]]:
    """`<id> <col> ...` rows of a CUB annotation file -> {id: [cols]}; DataError naming file and line."""
    rows: dict[int, list[str]] = {}
    path = reader.path_of(name)
    for lineno, line in enumerate(reader.read_text(name).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != columns + 1 or not parts[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<image id> ' and {columns} column(s), got {line!r}")
        rows[int(parts[0])] = parts[1:]
    return rows


def build(inputs: Inputs, out: Path, cfg, *, progress: bool = True) -> dict:
    """Read CUB's parts and write `out` (images/, metadata/, classes.txt; masks/ and metadata_mask/ with
    segmentations); return a summary."""
    src = inputs[IMAGES_PART]
    images = _table(src, "images.txt", 1)
    labels_1 = _table(src, "image_class_labels.txt", 1)
    is_train = _table(src, "train_test_split.txt", 1)
    boxes_raw = _table(src, "bounding_boxes.txt", 4)
    classes = _table(src, "classes.txt", 1)
    found = {"images": len(images), "classes": len(classes), "boxes": len(boxes_raw)}
    if cfg.num_classes > len(classes):
        raise DataError(
            f"datasets.cub.num_classes is {cfg.num_classes} but {src.found.path} has {len(classes)} classes"
        )
    names = [classes[c][0] for c in sorted(classes)][: cfg.num_classes]

    ids_by_num = {n: images[n][0] for n in sorted(images)}
    for table, file in (
        (labels_1, "image_class_labels.txt"),
        (is_train, "train_test_split.txt"),
        (boxes_raw, "bounding_boxes.txt"),
    ):
        missing = sorted(set(ids_by_num) - set(table))
        if missing:
            raise DataError(f"{src.path_of(file)}: no row for image id {missing[0]} ({ids_by_num[missing[0]]})")
    labels = {ids_by_num[n]: int(labels_1[n][0]) - 1 for n in ids_by_num}
    kept = [ids_by_num[n] for n in ids_by_num if labels[ids_by_num[n]] < cfg.num_classes]

    src.place_all([f"images/{i}" for i in kept], out)
    sizes = image_sizes(out / "images", kept)
    boxes = {}
    num_of = {v: k for k, v in ids_by_num.items()}
    for i in kept:
        x, y, w, h = (float(v) for v in boxes_raw[num_of[i]])
        boxes[i] = (clamp_box(int(x), int(y), int(x + w), int(y + h), *sizes[i]),)

    train = [i for i in kept if is_train[num_of[i]][0] == "1"]
    test = [i for i in kept if is_train[num_of[i]][0] != "1"]
    train, val = split_off_per_class(train, labels, cfg.val_per_class, "train")
    splits = {"train": train, "val": val, "test": test}
    for split, ids in splits.items():
        if ids or split != "val":
            write_metadata(out, "metadata", split, ids, labels, sizes, boxes=boxes)

    masks = 0
    if cfg.segmentations:
        seg = inputs[SEGMENTATIONS_PART]
        mask_of = {i: i.rsplit(".", 1)[0] + ".png" for i in val + test}
        missing = [m for m in mask_of.values() if not seg.path_of(m).is_file()]
        if missing:
            raise DataError(f"{seg.found.path}: no segmentation for {len(missing)} image(s), e.g. {missing[0]}")
        for m in mask_of.values():
            seg.place(m, out / "masks" / m)
        for split in ("val", "test"):
            if splits[split]:
                write_metadata(
                    out,
                    "metadata_mask",
                    split,
                    splits[split],
                    labels,
                    sizes,
                    masks={i: ((mask_of[i],), None) for i in splits[split]},
                )
        masks = len(mask_of)
    write_classes(out, names)
    return {
        "counts": {s: len(ids) for s, ids in splits.items()},
        "boxes": len(kept),
        "masks": masks,
        "num_classes": cfg.num_classes,
        "found": found,
        "val": f"first {cfg.val_per_class} train images per class (held out of train); CUBV2 not used",
    }
