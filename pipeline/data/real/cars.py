"""Stanford Cars (196 classes) from its own files; always manual: the official links are dead since 2023.

Files (DATA.md section 3, checksums from torchvision/TFDS): `cars_train.tgz` (-> `cars_train/00001.jpg`...),
`cars_test.tgz` (-> `cars_test/`), `car_devkit.tgz` (-> `devkit/cars_meta.mat`,
`devkit/cars_train_annos.mat`, ...) and `cars_test_annos_withlabels.mat` (the test labels, published
separately). The user places them in ``download.archive_dir/cars/`` (or ``datasets.cars.source_dir``);
the download stage checks size and checksums and lists every missing or wrong file in one error.

Metadata from the .mat files (read with scipy.io.loadmat, ``annotations`` struct array with fields
``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname``; ``cars_meta.mat`` ``class_names``):

* image ids ``cars_train/00001.jpg`` / ``cars_test/00001.jpg`` (the folders wsolevaluation's CARS loader
  falls back to); label = ``class - 1``; the first ``num_classes`` classes are kept.
* boxes: the devkit's coordinates are MATLAB pixel indices, 1-based and inclusive (some reach
  ``x2 = W``), so the 0-based inclusive box is ``(x1 - 1, y1 - 1, x2 - 1, y2 - 1)``, clipped to the image.
* val: the first ``val_per_class`` train images of each class (by file name), removed from train.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.fetch import RemoteFile, extract
from pipeline.data.prepare import DataError
from pipeline.data.real.common import (clamp_box, find_dir, image_sizes, move, remove_unlisted, rmtree,
                                       split_off_per_class, write_classes, write_metadata)

NUM_CLASSES = 196
WHERE = ("a Stanford Cars mirror that keeps the original files (the official ai.stanford.edu links return "
         "404 since 2023, pytorch/vision#7545); the size and checksum identify the right file")
TRAIN = RemoteFile("cars_train.tgz", "http://ai.stanford.edu/~jkrause/car196/cars_train.tgz", 979_269_282,
                   "512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288",
                   "065e5b463ae28d29e77c1b4b166cfe61", WHERE)
TEST = RemoteFile("cars_test.tgz", "http://ai.stanford.edu/~jkrause/car196/cars_test.tgz", 977_350_468,
                  "bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243",
                  "4ce7ebf6a94d07f1952d94dd34c4d501", WHERE)
DEVKIT = RemoteFile("car_devkit.tgz", "https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz", 330_960,
                    "b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd",
                    "c3b158d763b6e2245038c8ad08e45376", WHERE)
TEST_ANNOS = RemoteFile("cars_test_annos_withlabels.mat",
                        "http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat", 185_758,
                        "790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05",
                        "b0a2b23655a3edd16d84508592a98d10", WHERE)
MANUAL_WHY = ("Stanford Cars cannot be downloaded automatically: its official links are dead since 2023 "
              "(DATA.md section 3).")


def files(cfg) -> list[RemoteFile]:
    return [TRAIN, TEST, DEVKIT, TEST_ANNOS]


def _annotations(path: Path) -> list[dict]:
    """Rows of the ``annotations`` struct array of a Stanford Cars .mat file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DataError(f"{path}: cannot be read as a MATLAB file ({exc})") from exc
    if "annotations" not in mat:
        raise DataError(f"{path}: no 'annotations' struct (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    ann = np.atleast_1d(mat["annotations"])
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    missing = [f for f in fields if f not in (ann.dtype.names or ())]
    if missing:
        raise DataError(f"{path}: 'annotations' lacks field(s) {', '.join(missing)}")
    return [{f: (str(row[f]) if f == "fname" else int(row[f])) for f in fields} for row in ann]


def _class_names(path: Path) -> list[str]:
    from scipy.io import loadmat

    mat = loadmat(path, squeeze_me=True)
    if "class_names" not in mat:
        raise DataError(f"{path}: no 'class_names' cell array")
    return [str(n) for n in np.atleast_1d(mat["class_names"])]


def build(paths: dict[str, Path], out: Path, cfg, *, progress: bool = True) -> dict:
    """Unpack Stanford Cars into `out` (images/cars_{train,test}/, metadata/, classes.txt)."""
    work = out / ".work"
    extract(paths[DEVKIT.name], work / "devkit", progress=progress)
    devkit = find_dir(work / "devkit", "cars_train_annos.mat", DEVKIT.name)
    names = _class_names(devkit / "cars_meta.mat")
    if cfg.num_classes > len(names):
        raise DataError(f"datasets.cars.num_classes is {cfg.num_classes} but cars_meta.mat has {len(names)} classes")
    rows = {"train": _annotations(devkit / "cars_train_annos.mat"), "test": _annotations(paths[TEST_ANNOS.name])}
    for split, spec in (("train", TRAIN), ("test", TEST)):
        extract(paths[spec.name], work / split, progress=progress)
        folder = f"cars_{split}"
        move(find_dir(work / split, folder, spec.name) / folder, out / "images" / folder)

    labels, boxes, ids = {}, {}, {}
    for split in ("train", "test"):
        ids[split] = []
        for row in sorted(rows[split], key=lambda r: r["fname"]):
            label = row["class"] - 1
            if not 0 <= label < len(names):
                raise DataError(f"{row['fname']} ({split}): class {row['class']} outside 1..{len(names)}")
            if label >= cfg.num_classes:
                continue
            image_id = f"cars_{split}/{row['fname']}"
            ids[split].append(image_id)
            labels[image_id] = label
            boxes[image_id] = (row["bbox_x1"] - 1, row["bbox_y1"] - 1, row["bbox_x2"] - 1, row["bbox_y2"] - 1)
    kept = ids["train"] + ids["test"]
    remove_unlisted(out / "images", set(kept))
    sizes = image_sizes(out / "images", kept, progress=progress, desc="cars sizes")
    boxes = {i: (clamp_box(*b, *sizes[i]),) for i, b in boxes.items()}
    train, val = split_off_per_class(ids["train"], labels, cfg.val_per_class, "train")
    splits = {"train": train, "val": val, "test": ids["test"]}
    for split, split_ids in splits.items():
        if split_ids or split != "val":
            write_metadata(out, "metadata", split, split_ids, labels, sizes, boxes=boxes)
    write_classes(out, names[: cfg.num_classes])
    rmtree(work)
    return {"counts": {s: len(v) for s, v in splits.items()}, "boxes": len(kept), "num_classes": cfg.num_classes,
            "val": f"first {cfg.val_per_class} train images per class (held out of train)"}
