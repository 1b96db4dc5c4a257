"""OpenImages30k (wsolevaluation's subset of OpenImages V5: 100 classes, instance masks) from its zips.

Files: `OpenImages_images.zip` (``{train,val,test}/<class>/<id>.jpg``) and `OpenImages_annotations.zip`
(``{val,test}/<class>/<id>_m<class>_<hash>.png`` instance masks and ``<id>_ignore.png``), both from
wsolevaluation's OneDrive links (dataset/prepare_openimages.sh). **No checksum is published**: the
registry has ``sha256: None``, so the first download records the sha256 in ``<zip>.sha256`` beside the
file and prints it; later runs check against that record (pin it in this module to share it).

Metadata (wsolevaluation's own metadata lives in its repository, not in the zips, so it is rebuilt from
the folder layout, which gives the same rows):

* classes: the sorted class folder names (``01226z`` ...); label = index (wsolevaluation's labels follow
  the same order); the first ``num_classes`` are kept. Image ids ``<split>/<class>/<id>.jpg`` in sorted
  order; sizes from the image headers (wsolevaluation leaves them empty).
* the official splits: train (29,819, no masks), val (2,500) and test (5,000). ``val_per_class`` keeps the
  first N val images of each class (25 = all; 0 = no val split).
* masks: a mask view `metadata_mask/{val,test}` with one row per instance mask
  ``<id>,<split>/<class>/<id>_m..png,<ignore>`` (instance masks sorted by name; the ignore path on the
  first row only, when `<id>_ignore.png` exists); masks are moved to `masks/`.
* boxes (not in wsolevaluation, where OpenImages has PxAP only): the box view `metadata/{val,test}` gets the
  tight box of every non-empty instance mask, so the box metrics, which need >= 1 GT box per image, run
  too; PxAP from the masks remains the OpenImages metric. Train has no localization.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.fetch import ArchiveError, RemoteFile, extract
from pipeline.data.prepare import DataError
from pipeline.data.real.common import (first_per_class, image_sizes, move, remove_unlisted, rmtree, write_classes,
                                       write_metadata)

NUM_CLASSES = 100
SPLITS = ("train", "val", "test")
ONEDRIVE_HOSTS = (".1drv.com", ".onedrive.live.com", ".onedrive.com")
"""Where a onedrive.live.com download link redirects to (its file servers, e.g. public.<dc>.files.1drv.com;
not checked from here: no network). No checksum is published, so any other host is refused, and the first
download is recorded only when it is complete (pipeline/data/fetch.py)."""
IMAGES = RemoteFile(
    "OpenImages_images.zip",
    "https://onedrive.live.com/download?cid=B7111B95B80CCC66&resid=B7111B95B80CCC66%2130813&authkey=AHgXVPxKxO_5Fvc",
    None, None, None,
    "wsolevaluation's OneDrive link (clovaai/wsolevaluation dataset/prepare_openimages.sh) or its README's "
    "Google Drive id 1oOb4WQ-lb8SYppHEg3lWnpHk1X8WVO4e",
    allowed_hosts=ONEDRIVE_HOSTS, max_size=64 << 30)
ANNOTATIONS = RemoteFile(
    "OpenImages_annotations.zip",
    "https://onedrive.live.com/download?cid=B7111B95B80CCC66&resid=B7111B95B80CCC66%2130811&authkey=AMWbBWZVQFbm4jw",
    None, None, None,
    "wsolevaluation's OneDrive link (clovaai/wsolevaluation dataset/prepare_openimages.sh) or its README's "
    "Google Drive id 1eu1YvcZlsEalhXTS_5Ni5tkImCliIPie",
    allowed_hosts=ONEDRIVE_HOSTS, max_size=16 << 30)
MANUAL_WHY = ""


def files(cfg) -> list[RemoteFile]:
    return [IMAGES, ANNOTATIONS]


def _split_root(root: Path, archive: str, splits: tuple[str, ...]) -> Path:
    """The folder (root or up to two levels down) that holds the split folders."""
    level = [root]
    for _ in range(3):
        for folder in sorted(level):
            if any((folder / s).is_dir() for s in splits):
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir()]
    raise ArchiveError(f"{archive}: unexpected layout: no {'/'.join(splits)} folder inside it (is it the right file?)")


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
        boxes.append((int(xs.min()) * width // mw, int(ys.min()) * height // mh,
                      min(width - 1, -(-(int(xs.max()) + 1) * width // mw) - 1),
                      min(height - 1, -(-(int(ys.max()) + 1) * height // mh) - 1)))
    return tuple(boxes) or ((0, 0, width - 1, height - 1),)


def build(paths: dict[str, Path], out: Path, cfg, *, progress: bool = True) -> dict:
    """Unpack OpenImages30k into `out` (images/, masks/, metadata/, metadata_mask/, classes.txt)."""
    work = out / ".work"
    extract(paths[IMAGES.name], work / "images", progress=progress)
    extract(paths[ANNOTATIONS.name], work / "masks", progress=progress)
    img_root = _split_root(work / "images", IMAGES.name, ("train",))
    mask_root = _split_root(work / "masks", ANNOTATIONS.name, ("val", "test"))
    classes = sorted({d.name for s in SPLITS if (img_root / s).is_dir() for d in (img_root / s).iterdir()
                      if d.is_dir()})
    if cfg.num_classes > len(classes):
        raise DataError(f"datasets.openimages.num_classes is {cfg.num_classes} but {IMAGES.name} has "
                        f"{len(classes)} class folders")
    kept = classes[: cfg.num_classes]
    labels, ids = {}, {}
    for split in SPLITS:
        ids[split] = []
        for label, name in enumerate(kept):
            folder = img_root / split / name
            for f in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
                image_id = f"{split}/{name}/{f.name}"
                ids[split].append(image_id)
                labels[image_id] = label
    if not ids["train"] or not ids["test"]:
        raise ArchiveError(f"{IMAGES.name}: no train or no test images for the first {cfg.num_classes} classes")
    ids["val"] = first_per_class(ids["val"], labels, cfg.val_per_class) if cfg.val_per_class else []

    masks: dict[str, tuple[tuple[str, ...], str | None]] = {}
    for split in ("val", "test"):
        for image_id in ids[split]:
            stem = image_id.rsplit(".", 1)[0]
            folder, name = (mask_root / stem).parent, Path(stem).name
            instances = sorted(p.name for p in folder.glob(f"{name}_m*.png")) if folder.is_dir() else []
            if instances:
                prefix = stem.rsplit("/", 1)[0]
                ignore = f"{stem}_ignore.png" if (folder / f"{name}_ignore.png").is_file() else None
                masks[image_id] = (tuple(f"{prefix}/{m}" for m in instances), ignore)
    if ids["test"] and not any(i in masks for i in ids["test"]):
        raise ArchiveError(f"{ANNOTATIONS.name}: no instance mask for any test image (is it the right file?)")

    for split in SPLITS:
        for name in kept:
            if (img_root / split / name).is_dir() and ids[split]:
                move(img_root / split / name, out / "images" / split / name)
            if split != "train" and (mask_root / split / name).is_dir() and ids[split]:
                move(mask_root / split / name, out / "masks" / split / name)
    all_ids = ids["train"] + ids["val"] + ids["test"]
    remove_unlisted(out / "images", set(all_ids))  # val images beyond val_per_class, stray files
    if (out / "masks").is_dir():
        remove_unlisted(out / "masks", {p for i in all_ids if i in masks
                                        for p in (*masks[i][0], *([masks[i][1]] if masks[i][1] else []))})
    sizes = image_sizes(out / "images", all_ids, progress=progress, desc="openimages sizes")
    boxes = {i: mask_boxes(out / "masks", masks[i][0], sizes[i]) for i in masks}
    for split in SPLITS:
        if ids[split] or split != "val":
            write_metadata(out, "metadata", split, ids[split], labels, sizes, boxes=boxes)
            if split != "train":
                write_metadata(out, "metadata_mask", split, ids[split], labels, sizes, masks=masks)
    write_classes(out, kept)
    rmtree(work)
    return {"counts": {s: len(v) for s, v in ids.items()}, "mask_rows": sum(len(m[0]) for m in masks.values()),
            "num_classes": cfg.num_classes, "val": f"first {cfg.val_per_class} official val images per class"}
