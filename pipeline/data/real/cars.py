"""Stanford Cars (196 classes) from its own files; always manual: the official links are dead since 2023.

Parts (DATA.md section 3, checksums from torchvision/TFDS; pipeline/data/real/source.py), each as the published
file or, with ``verify: content``, a repacked archive or the extracted folder:

* `cars_train.tgz` (-> ``cars_train/00001.jpg`` ...) or an extracted ``cars_train/`` folder of JPEGs (Kaggle's
  copies nest it twice, ``cars_train/cars_train/``: the innermost folder holding JPEGs is used);
* `cars_test.tgz` or a ``cars_test/`` folder, the same way;
* `car_devkit.tgz` (-> ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``, ...) or the extracted folder
  holding those two files;
* `cars_test_annos_withlabels.mat` (the test labels, published separately; a single file, not an archive):
  the file itself by its name in the dataset's folder, or a folder (up to four levels down) holding it.

So the Kaggle-style folder that labs keep (``cars_train/``, ``cars_test/``, ``devkit/`` and the .mat side by
side, at the top of ``datasets.cars.source_dir`` or nested, e.g. ``stanford_cars/cars_train/...``) is read as it
is. Only the images of the kept classes are read (and only they are unpacked from the archives).

Metadata from the .mat files (read with scipy.io.loadmat, ``annotations`` struct array with fields
``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname``; ``cars_meta.mat`` ``class_names``):

* image ids ``cars_train/00001.jpg`` / ``cars_test/00001.jpg`` (the folders wsolevaluation's CARS loader
  falls back to); label = ``class - 1``; the first ``num_classes`` classes are kept.
* boxes: the devkit's coordinates are MATLAB pixel indices, 1-based and inclusive (some reach
  ``x2 = W``), so the 0-based inclusive box is ``(x1 - 1, y1 - 1, x2 - 1, y2 - 1)``, clipped to the image.
* val: the first ``val_per_class`` train images of each class (by file name), removed from train.
* ``found`` (source.json) counts the copy from its annotations: train and test images (rows), classes, boxes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.data.fetch import RemoteFile
from pipeline.data.prepare import DataError
from pipeline.data.real.common import clamp_box, image_sizes, split_off_per_class, write_classes, write_metadata
from pipeline.data.real.source import Inputs, Part, Reader
from pipeline.schema import Field, Int, RealDatasetParams, params_class

NUM_CLASSES = 196
TEST_IMAGES = 8_041  # test split of the full dataset (the paper's numbers are on all of it)
WHERE = (
    "a Stanford Cars mirror that keeps the original files (the official ai.stanford.edu links return "
    "404 since 2023, pytorch/vision#7545); the size and checksum identify the right file"
)
TRAIN = RemoteFile(
    "cars_train.tgz",
    "http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
    979_269_282,
    "512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288",
    "065e5b463ae28d29e77c1b4b166cfe61",
    WHERE,
)
TEST = RemoteFile(
    "cars_test.tgz",
    "http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",
    977_350_468,
    "bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243",
    "4ce7ebf6a94d07f1952d94dd34c4d501",
    WHERE,
)
DEVKIT = RemoteFile(
    "car_devkit.tgz",
    "https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",
    330_960,
    "b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd",
    "c3b158d763b6e2245038c8ad08e45376",
    WHERE,
)
TEST_ANNOS = RemoteFile(
    "cars_test_annos_withlabels.mat",
    "http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",
    185_758,
    "790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05",
    "b0a2b23655a3edd16d84508592a98d10",
    WHERE,
)
MANUAL_WHY = (
    "Stanford Cars cannot be downloaded automatically: its official links are dead since 2023 (DATA.md section 3)."
)

PUBLISHED = {"train images": 8_144, "test images": 8_041, "classes": 196, "boxes": 16_185}


@params_class
class CarsParams(RealDatasetParams):
    """`datasets.cars`: Stanford Cars; always manual (the official links are dead since 2023): place
    cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat in the source folder."""

    num_classes: Int = Field(ge=2, le=NUM_CLASSES, description=f"the first N of the {NUM_CLASSES} classes")
    val_per_class: Int = Field(ge=0, le=20, description="train images per class held out as val")


TRAIN_PART, TEST_PART, DEVKIT_PART = "cars_train", "cars_test", "car_devkit"
TEST_ANNOS_PART = "cars_test_annos_withlabels"
META, TRAIN_ANNOS, TEST_ANNOS_FILE = "cars_meta.mat", "cars_train_annos.mat", "cars_test_annos_withlabels.mat"


def _holds_jpeg(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.lower().endswith(".jpg") and not e.name.startswith(".") and e.is_file() for e in it)
    except OSError:
        return False


def _images_marker(name: str):
    def marker(folder: Path) -> bool:
        """The ``cars_train/`` (``cars_test/``) folder itself, holding JPEGs."""
        return folder.name == name and _holds_jpeg(folder)

    return marker


def _is_devkit(folder: Path) -> bool:
    return (folder / META).is_file() and (folder / TRAIN_ANNOS).is_file()


def _holds_test_annos(folder: Path) -> bool:
    return (folder / TEST_ANNOS_FILE).is_file()


def parts(cfg) -> list[Part]:
    return [
        Part(TRAIN_PART, TRAIN, _images_marker("cars_train"), "extracted cars_train/ folder of JPEGs"),
        Part(TEST_PART, TEST, _images_marker("cars_test"), "extracted cars_test/ folder of JPEGs"),
        Part(DEVKIT_PART, DEVKIT, _is_devkit, f"extracted devkit/ folder ({META} and {TRAIN_ANNOS})"),
        Part(TEST_ANNOS_PART, TEST_ANNOS, _holds_test_annos, f"folder holding {TEST_ANNOS_FILE}"),
    ]


def _loadmat(reader: Reader, rel: str) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(io.BytesIO(reader.read_bytes(rel)), squeeze_me=True)
    except FileNotFoundError:
        raise DataError(f"{reader.path_of(rel)}: missing") from None
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DataError(f"{reader.path_of(rel)}: cannot be read as a MATLAB file ({exc})") from exc


def _annotations(reader: Reader, rel: str) -> list[dict]:
    """Rows of the ``annotations`` struct array of a Stanford Cars .mat file."""
    mat, path = _loadmat(reader, rel), reader.path_of(rel)
    if "annotations" not in mat:
        raise DataError(f"{path}: no 'annotations' struct (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    ann = np.atleast_1d(mat["annotations"])
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    missing = [f for f in fields if f not in (ann.dtype.names or ())]
    if missing:
        raise DataError(f"{path}: 'annotations' lacks field(s) {', '.join(missing)}")
    return [{f: (str(row[f]) if f == "fname" else int(row[f])) for f in fields} for row in ann]


def _class_names(reader: Reader, rel: str) -> list[str]:
    mat = _loadmat(reader, rel)
    if "class_names" not in mat:
        raise DataError(f"{reader.path_of(rel)}: no 'class_names' cell array")
    return [str(n) for n in np.atleast_1d(mat["class_names"])]


def _place_images(reader: Reader, folder: str, names: list[str], out: Path) -> None:
    """Unpack (only `names`, from an archive) and place ``images/<folder>/<name>`` for each of `names`."""
    if not names:
        return
    wanted = set(names)
    reader.unpack(lambda m: PurePosixPath(m).parent.name == folder and PurePosixPath(m).name in wanted)
    missing = [n for n in names if not reader.path_of(n).is_file()]
    if missing:
        raise DataError(
            f"{reader.found.describe()}: {len(missing)} image(s) listed in the annotations are missing, "
            f"e.g. {folder}/{missing[0]}"
        )
    for name in names:
        reader.place(name, out / "images" / folder / name)


def build(inputs: Inputs, out: Path, cfg, *, progress: bool = True) -> dict:
    """Read Stanford Cars' parts and write `out` (images/cars_{train,test}/, metadata/, classes.txt)."""
    devkit = inputs[DEVKIT_PART]
    devkit.unpack(lambda m: PurePosixPath(m).name in (META, TRAIN_ANNOS))
    names = _class_names(devkit, META)
    rows = {"train": _annotations(devkit, TRAIN_ANNOS), "test": _annotations(inputs[TEST_ANNOS_PART], TEST_ANNOS_FILE)}
    found = {
        "train images": len(rows["train"]),
        "test images": len(rows["test"]),
        "classes": len(names),
        "boxes": len(rows["train"]) + len(rows["test"]),
    }
    if cfg.num_classes > len(names):
        raise DataError(
            f"datasets.cars.num_classes is {cfg.num_classes} but {devkit.path_of(META)} has {len(names)} classes"
        )

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
    for split, part in (("train", TRAIN_PART), ("test", TEST_PART)):
        _place_images(inputs[part], f"cars_{split}", [i.split("/", 1)[1] for i in ids[split]], out)
    kept = ids["train"] + ids["test"]
    sizes = image_sizes(out / "images", kept)
    boxes = {i: (clamp_box(*b, *sizes[i]),) for i, b in boxes.items()}
    train, val = split_off_per_class(ids["train"], labels, cfg.val_per_class, "train")
    splits = {"train": train, "val": val, "test": ids["test"]}
    for split, split_ids in splits.items():
        if split_ids or split != "val":
            write_metadata(out, "metadata", split, split_ids, labels, sizes, boxes=boxes)
    write_classes(out, names[: cfg.num_classes])
    return {
        "counts": {s: len(v) for s, v in splits.items()},
        "boxes": len(kept),
        "num_classes": cfg.num_classes,
        "found": found,
        "val": f"first {cfg.val_per_class} train images per class (held out of train)",
    }
