"""OpenImages30k (wsolevaluation's subset of OpenImages V5: 100 classes, instance masks) from its zips.

Parts (pipeline/data/real/source.py), each as the published zip or, with ``verify: content``, a repacked archive
or the extracted folder:

* `OpenImages_images.zip` (``{train,val,test}/<class>/<id>.jpg``) or the folder it was unzipped into (the one
  holding ``train/`` class folders of JPEGs);
* `OpenImages_annotations.zip` (``{val,test}/<class>/<id>_m<class>_<hash>.png`` instance masks and
  ``<id>_ignore.png``) or the folder it was unzipped into (``val/`` or ``test/`` class folders holding PNGs).

Both zips come from wsolevaluation's OneDrive links (dataset/prepare_openimages.sh), which unzips both into the
same folder ``dataset/OpenImages/``: images and masks then share the ``{val,test}/<class>/`` folders, and that
one folder is both parts' extracted folder. **No checksum is published**: the registry has ``sha256: None``, so
the first download records the sha256 in ``<zip>.sha256`` beside the file and prints it; later runs check
against that record (pin it in this module to share it). Only the files used are read: the images of the kept
classes (train, the kept val images, test) and the masks of the kept val and test images.

Metadata (wsolevaluation's own metadata lives in its repository, not in the zips, so it is rebuilt from
the folder layout, which gives the same rows):

* classes: the sorted class folder names (``01226z`` ...); label = index (wsolevaluation's labels follow
  the same order); the first ``num_classes`` are kept. Image ids ``<split>/<class>/<id>.jpg`` in sorted
  order; sizes from the image headers (wsolevaluation leaves them empty).
* the official splits: train (29,819, no masks), val (2,500) and test (5,000). ``val_per_class`` keeps the
  first N val images of each class (25 = all; 0 = no val split).
* masks: a mask view `metadata_mask/{val,test}` with one row per instance mask
  ``<id>,<split>/<class>/<id>_m..png,<ignore>`` (instance masks sorted by name; the ignore path on the
  first row only, when `<id>_ignore.png` exists); the masks are placed in `masks/`.
* boxes (not in wsolevaluation, where OpenImages has PxAP only): the box view `metadata/{val,test}` gets the
  tight box of every non-empty instance mask, so the box metrics, which need >= 1 GT box per image, run
  too; PxAP from the masks remains the OpenImages metric. Train has no localization.
* ``found`` (source.json) counts the copy: the images of each split and the classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.fetch import ArchiveError, RemoteFile
from pipeline.data.prepare import DataError
from pipeline.data.real.common import first_per_class, image_sizes, write_classes, write_metadata
from pipeline.data.real.source import Inputs, Part
from pipeline.schema import DownloadableDatasetParams, Field, Int, params_class

NUM_CLASSES = 100
TEST_IMAGES = 5_000  # test split of the full dataset (the paper's numbers are on all of it)
SPLITS = ("train", "val", "test")
ONEDRIVE_HOSTS = (".1drv.com", ".onedrive.live.com", ".onedrive.com")
"""Where a onedrive.live.com download link redirects to (its file servers, e.g. public.<dc>.files.1drv.com;
not checked from here: no network). No checksum is published, so any other host is refused, and the first
download is recorded only when it is complete (pipeline/data/fetch.py)."""
IMAGES = RemoteFile(
    "OpenImages_images.zip",
    "https://onedrive.live.com/download?cid=B7111B95B80CCC66&resid=B7111B95B80CCC66%2130813&authkey=AHgXVPxKxO_5Fvc",
    None,
    None,
    None,
    "wsolevaluation's OneDrive link (clovaai/wsolevaluation dataset/prepare_openimages.sh) or its README's "
    "Google Drive id 1oOb4WQ-lb8SYppHEg3lWnpHk1X8WVO4e",
    allowed_hosts=ONEDRIVE_HOSTS,
    max_size=64 << 30,
)
ANNOTATIONS = RemoteFile(
    "OpenImages_annotations.zip",
    "https://onedrive.live.com/download?cid=B7111B95B80CCC66&resid=B7111B95B80CCC66%2130811&authkey=AMWbBWZVQFbm4jw",
    None,
    None,
    None,
    "wsolevaluation's OneDrive link (clovaai/wsolevaluation dataset/prepare_openimages.sh) or its README's "
    "Google Drive id 1eu1YvcZlsEalhXTS_5Ni5tkImCliIPie",
    allowed_hosts=ONEDRIVE_HOSTS,
    max_size=16 << 30,
)
MANUAL_WHY = ""

PUBLISHED = {"train images": 29_819, "val images": 2_500, "test images": 5_000, "classes": 100}


@params_class
class OpenImagesParams(DownloadableDatasetParams):
    """`datasets.openimages`: wsolevaluation's OpenImages30k (masks); no published checksum: the sha256 is
    recorded on the first download."""

    num_classes: Int = Field(ge=2, le=NUM_CLASSES, description=f"the first N of the {NUM_CLASSES} classes")
    val_per_class: Int = Field(ge=0, le=25, description="official val images per class kept (25 = all 2,500)")


IMAGES_PART, MASKS_PART = "OpenImages_images", "OpenImages_annotations"


def _names(folder: Path, *, dirs: bool) -> list[str]:
    """Sorted names of the sub-folders (`dirs`) or files of `folder`, hidden ones ('.', e.g. macOS '._x.jpg')
    left out; [] if it is not a folder."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and (e.is_dir() if dirs else e.is_file()))
    except OSError:
        return []


def _has_files(folder: Path, splits: tuple[str, ...], suffix: str) -> bool:
    """Some class folder of one of `splits` holds a file ending in `suffix`."""
    for split in splits:
        for cls in _names(folder / split, dirs=True):
            try:
                with os.scandir(folder / split / cls) as it:
                    if any(e.name.endswith(suffix) and not e.name.startswith(".") for e in it):
                        return True
            except OSError:
                continue
    return False


def _is_images_root(folder: Path) -> bool:
    return _has_files(folder, ("train",), ".jpg")


def _is_masks_root(folder: Path) -> bool:
    return _has_files(folder, ("val", "test"), ".png")


def parts(cfg) -> list[Part]:
    return [
        Part(
            IMAGES_PART,
            IMAGES,
            _is_images_root,
            "extracted folder of train/, val/, test/ class folders of JPEGs (wsolevaluation's OpenImages/)",
        ),
        Part(
            MASKS_PART,
            ANNOTATIONS,
            _is_masks_root,
            "extracted folder of val/, test/ class folders of PNG masks (wsolevaluation's OpenImages/)",
        ),
    ]


def mask_boxes(mask_root: Path, instances: tuple[str, ...], size: tuple[int, int]) -> tuple:
    """Tight inclusive box of each non-empty instance mask (binarised as in prepare: grey / 255 > 0.5), in
    image pixels (scaled when a mask's resolution differs from the image's); the whole image if all are empty."""
    width, height = size
    boxes = []
    for rel in instances:
        try:
            with Image.open(mask_root / rel) as im:
                mask = np.asarray(im.convert("L")) > 127
        except OSError as exc:
            raise DataError(f"{mask_root / rel}: mask cannot be read ({exc})") from exc
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        mh, mw = mask.shape
        boxes.append(
            (
                int(xs.min()) * width // mw,
                int(ys.min()) * height // mh,
                min(width - 1, -(-(int(xs.max()) + 1) * width // mw) - 1),
                min(height - 1, -(-(int(ys.max()) + 1) * height // mh) - 1),
            )
        )
    return tuple(boxes) or ((0, 0, width - 1, height - 1),)


def build(inputs: Inputs, out: Path, cfg, *, progress: bool = True) -> dict:
    """Read OpenImages30k's parts and write `out` (images/, masks/, metadata/, metadata_mask/, classes.txt)."""
    img, ann = inputs[IMAGES_PART], inputs[MASKS_PART]
    img_root, mask_root = img.unpack(), ann.unpack()
    classes = sorted({c for s in SPLITS for c in _names(img_root / s, dirs=True)})
    files = {
        (s, c): [n for n in _names(img_root / s / c, dirs=False) if n.endswith(".jpg")] for s in SPLITS for c in classes
    }
    found = {f"{s} images": sum(len(files[s, c]) for c in classes) for s in SPLITS}
    found["classes"] = len(classes)
    if cfg.num_classes > len(classes):
        raise DataError(
            f"datasets.openimages.num_classes is {cfg.num_classes} but {img.found.describe()} has "
            f"{len(classes)} class folders"
        )
    kept = classes[: cfg.num_classes]
    labels, ids = {}, {}
    for split in SPLITS:
        ids[split] = []
        for label, name in enumerate(kept):
            for f in files[split, name]:
                image_id = f"{split}/{name}/{f}"
                ids[split].append(image_id)
                labels[image_id] = label
    if not ids["train"] or not ids["test"]:
        raise ArchiveError(
            f"{img.found.describe()}: no train or no test images for the first {cfg.num_classes} classes"
        )
    ids["val"] = first_per_class(ids["val"], labels, cfg.val_per_class) if cfg.val_per_class else []

    masks: dict[str, tuple[tuple[str, ...], str | None]] = {}
    listed: dict[str, list[str]] = {}
    for split in ("val", "test"):
        for image_id in ids[split]:
            stem = image_id.rsplit(".", 1)[0]
            prefix, name = stem.rsplit("/", 1)
            if prefix not in listed:
                listed[prefix] = _names(mask_root / prefix, dirs=False)
            instances = [m for m in listed[prefix] if m.startswith(f"{name}_m") and m.endswith(".png")]
            if instances:
                ignore = f"{stem}_ignore.png" if f"{name}_ignore.png" in listed[prefix] else None
                masks[image_id] = (tuple(f"{prefix}/{m}" for m in instances), ignore)
    if ids["test"] and not any(i in masks for i in ids["test"]):
        raise ArchiveError(f"{ann.found.describe()}: no instance mask for any test image (is it the right file?)")

    all_ids = ids["train"] + ids["val"] + ids["test"]
    img.place_all(all_ids, out / "images")
    ann.place_all(sorted(p for m in masks.values() for p in (*m[0], *([m[1]] if m[1] else []))), out / "masks")
    sizes = image_sizes(out / "images", all_ids)
    boxes = {i: mask_boxes(out / "masks", masks[i][0], sizes[i]) for i in masks}
    for split in SPLITS:
        if ids[split] or split != "val":
            write_metadata(out, "metadata", split, ids[split], labels, sizes, boxes=boxes)
            if split != "train":
                write_metadata(out, "metadata_mask", split, ids[split], labels, sizes, masks=masks)
    write_classes(out, kept)
    return {
        "counts": {s: len(v) for s, v in ids.items()},
        "mask_rows": sum(len(m[0]) for m in masks.values()),
        "num_classes": cfg.num_classes,
        "found": found,
        "val": f"first {cfg.val_per_class} official val images per class",
    }
