"""ImageNet-1K (ILSVRC2012) from its own files; always manual (image-net.org needs a login).

Parts (DATA.md section 3; pipeline/data/real/source.py), each as the published archive or, with
``verify: content``, a repacked archive or the extracted folder:

* val images: `ILSVRC2012_img_val.tar` (50,000 JPEGs, flat), or a folder of the ``ILSVRC2012_val_*.JPEG``
  files, flat or sorted into ``<wnid>/`` folders (the localization challenge's ``ILSVRC/Data/CLS-LOC/val``);
* val boxes: `ILSVRC2012_bbox_val_v3.tgz` (``val/ILSVRC2012_val_XXXXXXXX.xml``, PASCAL VOC XML, every box of every
  image), or a folder of those XML files, or the localization challenge's ``LOC_val_solution.csv``
  (``ImageId,PredictionString`` with ``<wnid> xmin ymin xmax ymax`` repeated; the same boxes);
* train: `ILSVRC2012_img_train.tar` (1,000 inner `<wnid>.tar` files), or a folder of ``<wnid>/`` folders
  (``train/`` or ``ILSVRC/Data/CLS-LOC/train``).

Only what is used is read: the val images of the kept classes, and ``train_per_class`` images per kept class
(straight from the inner tars in one pass over the outer tar, or from the class folders).

Metadata:

* classes: the sorted WordNet ids found in the val boxes (the standard label order of torchvision,
  timm and wsolevaluation, the same as `LOC_synset_mapping.txt`); label = index; the first
  ``num_classes`` are kept. `classes.txt` lists the wnids (no devkit needed).
* test = every ILSVRC2012 val image (as wsolevaluation's test split): id ``val/ILSVRC2012_val_00000001.JPEG``,
  label from the first object's wnid (all objects of an image share it), one box per object. VOC coordinates
  are used as they are (wsolevaluation's converted test metadata has the same numbers, e.g. val_00000001 ->
  111,108,441,193), clipped to the image size from the JPEG header.
* val: the first ``val_per_class`` test images of each class (by file name). wsolevaluation's val is
  ImageNetV2 with boxes that exist only in its repository, so this val is a *subset of test*: choosing
  CAM thresholds on it is close to (not independent of) the official test-oracle protocol. Test stays the
  full, official 50,000 images so numbers remain comparable with the paper.
* train: the first ``train_per_class`` images (by name) of each class (null = all 1,281,167): id
  ``train/<wnid>/<file>.JPEG``, no boxes. The baseline can be imported (``baseline.checkpoint`` with ImageNet
  weights, ``baseline.epochs: 0``), but the finetune stage trains the sigmoid head on the train split, so train
  images are always needed.
* ``found`` (source.json) counts the copy: val images, classes and boxes in the val boxes, train classes and
  train images; the published counts of val images, classes and train images are compared.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

from pipeline.data.fetch import ArchiveError, RemoteFile, safe_tar_members
from pipeline.data.prepare import DataError
from pipeline.data.real.common import clamp_box, first_per_class, image_sizes, write_classes, write_metadata
from pipeline.data.real.source import Inputs, Part, Reader
from pipeline.progress import bar_disabled
from pipeline.schema import Field, Int, RealDatasetParams, params_class

NUM_CLASSES = 1000
TEST_IMAGES = 50_000  # test split of the full dataset (the paper's numbers are on all of it)
WHERE = (
    "https://image-net.org/download-images.php (log in and accept the terms; ILSVRC2012 "
    "'Validation images', 'Training images (Task 1 & 2)' and the val bounding boxes)"
)
VAL = RemoteFile(
    "ILSVRC2012_img_val.tar",
    "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar",
    6_744_924_160,
    "c7e06a6c0baccf06d8dbeb6577d71efff84673a5dbdd50633ab44f8ea0456ae0",
    "29b22e2961454d5413ddabcf34fc5622",
    WHERE,
)
BBOX_VAL = RemoteFile(
    "ILSVRC2012_bbox_val_v3.tgz",
    "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_bbox_val_v3.tgz",
    None,
    None,
    "f4cd18b5ea29fe6bbea62ec9c20d80f0",
    WHERE,
    max_size=64 << 20,
)  # about 2.2 MB
TRAIN = RemoteFile(
    "ILSVRC2012_img_train.tar",
    "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_train.tar",
    147_897_477_120,
    None,
    "1d675b47d978889d74fa0da5fadfb00e",
    WHERE,
)
MANUAL_WHY = "ImageNet cannot be downloaded automatically: image-net.org needs a login and accepting its terms."
PUBLISHED = {"val images": 50_000, "classes": 1000, "train images": 1_281_167}


@params_class
class IlsvrcParams(RealDatasetParams):
    """`datasets.ilsvrc`: ImageNet-1k (ILSVRC2012); always manual (image-net.org needs a login): place
    ILSVRC2012_img_val.tar, ILSVRC2012_bbox_val_v3.tgz and ILSVRC2012_img_train.tar in the source folder."""

    num_classes: Int = Field(
        ge=2, le=NUM_CLASSES, description=f"the first N of the {NUM_CLASSES} classes (sorted wnids)"
    )
    val_per_class: Int = Field(
        ge=0,
        le=50,
        description=(
            "ILSVRC2012 val images per class used as val (also kept in test)\n"
            "They stay in test: the test split is all 50,000 val images."
        ),
    )
    train_per_class: Int | None = Field(
        ge=1,
        le=1300,
        description=("train images per class from ILSVRC2012_img_train.tar (null = all)\nfinetune trains on them."),
    )


VAL_NAME = re.compile(r"ILSVRC2012_val_\d{8}\.(JPEG|jpeg|jpg)$")
WNID = re.compile(r"n\d{8}$")
VAL_PART, BOXES_PART, TRAIN_PART = "val", "val boxes", "train"
LOC_CSV = "LOC_val_solution.csv"


def _entries(folder: Path, limit: int | None = None) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(itertools.islice(it, limit))
    except OSError:
        return []


def _is_val_folder(folder: Path) -> bool:
    """Val JPEGs directly in it, or in <wnid>/ folders (the first one looked at)."""
    entries = _entries(folder)
    if any(e.is_file() and VAL_NAME.match(e.name) for e in entries):
        return True
    sub = next((e for e in sorted(entries, key=lambda e: e.name) if e.is_dir() and WNID.match(e.name)), None)
    return sub is not None and any(e.is_file() and VAL_NAME.match(e.name) for e in _entries(Path(sub.path), 50))


def _is_boxes_folder(folder: Path) -> bool:
    return (folder / LOC_CSV).is_file() or any(
        e.is_file() and e.name.startswith("ILSVRC2012_val_") and e.name.endswith(".xml") for e in _entries(folder)
    )


def _is_train_folder(folder: Path) -> bool:
    """<wnid>/ folders whose files are named <wnid>_*.JPEG (not the val images sorted by class)."""
    sub = next((e for e in sorted(_entries(folder), key=lambda e: e.name) if e.is_dir() and WNID.match(e.name)), None)
    return sub is not None and any(
        e.is_file() and e.name.startswith(sub.name + "_") for e in _entries(Path(sub.path), 50)
    )


def parts(cfg) -> list[Part]:
    return [
        Part(VAL_PART, VAL, _is_val_folder, "folder of ILSVRC2012_val_*.JPEG images (flat or in <wnid>/ folders)"),
        Part(
            BOXES_PART,
            BBOX_VAL,
            _is_boxes_folder,
            f"folder of ILSVRC2012_val_*.xml box files, or of the localization challenge's {LOC_CSV}",
            reads=lambda folder: [folder / LOC_CSV] if (folder / LOC_CSV).is_file() else None,
        ),
        Part(TRAIN_PART, TRAIN, _is_train_folder, "train folder of <wnid>/ folders of <wnid>_*.JPEG images"),
    ]


def _parse_xml(data: bytes, path: Path) -> tuple[list[str], list[tuple[int, int, int, int]]]:
    """(object wnids, boxes) of one VOC XML file's bytes (`path` names it in messages)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{path}: not valid XML ({exc})") from None
    names, boxes = [], []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        name = obj.findtext("name")
        try:
            coords = tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: an <object> without a numeric <bndbox> xmin/ymin/xmax/ymax") from None
        if not name:
            raise DataError(f"{path}: an <object> without a <name>")
        names.append(name.strip())
        boxes.append(coords)
    if not names:
        raise DataError(f"{path}: no <object>; every ILSVRC val image has at least one box")
    return names, boxes


def _read_boxes(reader: Reader, progress: bool) -> dict[str, tuple[list[str], list[tuple[int, int, int, int]]]]:
    """stem -> (object wnids, VOC boxes), from the XML files or LOC_val_solution.csv."""
    root = reader.root
    if (root / LOC_CSV).is_file():
        return _parse_loc_csv(reader)
    xml_files = sorted((p for p in root.rglob("ILSVRC2012_val_*.xml")), key=lambda f: f.name)
    if not xml_files:
        raise ArchiveError(f"{reader.found.path}: unexpected layout: no .xml files inside it (is it the right file?)")
    out = {}
    for f in tqdm(xml_files, desc="val boxes", disable=bar_disabled(progress), leave=False):
        out[f.stem] = _parse_xml(reader.read_bytes(f.relative_to(root).as_posix()), f)  # read once, hashed
    return out


def _parse_loc_csv(reader: Reader) -> dict[str, tuple[list[str], list[tuple[int, int, int, int]]]]:
    """The localization challenge's val solution: ``ImageId,PredictionString`` with ``wnid x0 y0 x1 y1`` groups."""
    path = reader.path_of(LOC_CSV)
    rows = list(csv.reader(io.StringIO(reader.read_text(LOC_CSV))))
    if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
        raise DataError(f"{path}: expected the header 'ImageId,PredictionString', got {rows[0] if rows else 'nothing'}")
    out = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        fields = row[1].split() if len(row) == 2 else []
        if not fields or len(fields) % 5:
            raise DataError(f"{path}:{lineno}: expected '<image id>,<wnid x0 y0 x1 y1 ...>', got {','.join(row)!r}")
        try:
            groups = [
                (fields[k], tuple(int(float(v)) for v in fields[k + 1 : k + 5])) for k in range(0, len(fields), 5)
            ]
        except ValueError:
            raise DataError(f"{path}:{lineno}: a box coordinate is not a number: {row[1]!r}") from None
        out[row[0]] = ([g[0] for g in groups], [g[1] for g in groups])
    return out


def _val_paths(reader: Reader, stems: set[str]) -> dict[str, str]:
    """stem -> the val image's path relative to the part's root (flat or in a <wnid>/ folder)."""
    found = {}
    for dirpath, _, files in os.walk(reader.root):
        for name in files:
            stem = name.rsplit(".", 1)[0]
            if stem in stems and VAL_NAME.match(name):
                found[stem] = (Path(dirpath) / name).relative_to(reader.root).as_posix()
    return found


def _train_from_tar(
    archive: Path, out: Path, wnids: list[str], per_class: int | None, progress: bool
) -> tuple[list[str], dict[str, int]]:
    """The first `per_class` images (by name) of each wanted class, read from the tar of tars in one pass over its
    members; also the number of images of every class found (for the copy's counts)."""
    wanted, ids, counts = set(wnids), [], {}
    plain = _is_plain_tar(archive)
    try:
        with tarfile.open(archive, "r:*") as outer:
            for member in tqdm(
                safe_tar_members(outer, archive), desc="ILSVRC train", unit="class", disable=bar_disabled(progress)
            ):
                wnid = Path(member.name).name.removesuffix(".tar")
                if not member.isfile() or not WNID.match(wnid):
                    continue
                fileobj = outer.extractfile(member)
                if not plain:  # a compressed outer tar cannot seek back cheaply: read the class tar into memory
                    fileobj = io.BytesIO(fileobj.read())
                with tarfile.open(fileobj=fileobj, mode="r:") as inner:
                    members = sorted((m for m in safe_tar_members(inner, archive) if m.isfile()), key=lambda m: m.name)
                    counts[wnid] = len(members)
                    if wnid not in wanted:
                        continue
                    for m in members if per_class is None else members[:per_class]:
                        name = Path(m.name).name
                        m.name = name
                        inner.extract(m, out / "train" / wnid, filter="data")
                        ids.append(f"train/{wnid}/{name}")
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(
            f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); replace it with an intact copy"
        ) from None
    return ids, counts


def _is_plain_tar(archive: Path) -> bool:
    with open(archive, "rb") as fh:
        magic = fh.read(6)
    return not (magic.startswith(b"\x1f\x8b") or magic.startswith(b"BZh") or magic.startswith(b"\xfd7zXZ"))


def _train_from_folder(
    reader: Reader, out: Path, wnids: list[str], per_class: int | None, progress: bool
) -> tuple[list[str], dict[str, int]]:
    """The first `per_class` images (by name) of each wanted <wnid>/ folder, copied; the size of every class."""
    ids, counts = [], {}
    folders = sorted(e.name for e in _entries(reader.root) if e.is_dir() and WNID.match(e.name))
    wanted = set(wnids)
    for wnid in tqdm(folders, desc="ILSVRC train", unit="class", disable=bar_disabled(progress)):
        names = sorted(e.name for e in _entries(reader.root / wnid) if e.is_file())
        counts[wnid] = len(names)
        if wnid not in wanted:
            continue
        for name in names if per_class is None else names[:per_class]:
            reader.place(f"{wnid}/{name}", out / "train" / wnid / name)
            ids.append(f"train/{wnid}/{name}")
    return ids, counts


def build(inputs: Inputs, out: Path, cfg, *, progress: bool = True) -> dict:
    """Read ILSVRC's parts and write `out` (images/val/, images/train/<wnid>/, metadata/, classes.txt)."""
    parsed = _read_boxes(inputs[BOXES_PART], progress)
    wnids = sorted({n for names, _ in parsed.values() for n in names})
    if cfg.num_classes > len(wnids):
        raise DataError(
            f"datasets.ilsvrc.num_classes is {cfg.num_classes} but the val boxes cover {len(wnids)} classes"
        )
    index = {w: i for i, w in enumerate(wnids)}
    kept_wnids = wnids[: cfg.num_classes]

    labels, raw_boxes, test = {}, {}, []
    for stem in sorted(parsed):
        names, boxes = parsed[stem]
        if index[names[0]] >= cfg.num_classes:
            continue
        image_id = f"val/{stem}.JPEG"
        test.append(image_id)
        labels[image_id] = index[names[0]]
        raw_boxes[image_id] = boxes
    val_reader = inputs[VAL_PART]
    stems = {i.removeprefix("val/").removesuffix(".JPEG") for i in test}
    if val_reader.owned:
        val_reader.unpack(
            keep=lambda name: VAL_NAME.match(Path(name).name) is not None and Path(name).name.rsplit(".", 1)[0] in stems
        )
    where = _val_paths(val_reader, stems)
    missing = sorted(stems - set(where))
    if missing:
        raise DataError(
            f"{val_reader.found.path}: {len(missing)} image(s) with boxes are not in it, e.g. {missing[0]}.JPEG"
        )
    for stem in sorted(stems):
        val_reader.place(where[stem], out / "images" / "val" / f"{stem}.JPEG")

    train_reader = inputs[TRAIN_PART]
    if train_reader.owned:
        train, train_counts = _train_from_tar(
            train_reader.found.path, out / "images", kept_wnids, cfg.train_per_class, progress
        )
    else:
        train, train_counts = _train_from_folder(
            train_reader, out / "images", kept_wnids, cfg.train_per_class, progress
        )
    no_train = sorted(set(kept_wnids) - {i.split("/")[1] for i in train})
    if no_train:
        raise DataError(
            f"{train_reader.found.path}: no training images for {len(no_train)} class(es), e.g. {no_train[0]}"
        )
    train.sort()
    for image_id in train:
        labels[image_id] = index[image_id.split("/")[1]]
    sizes = image_sizes(out / "images", test + train)
    boxes = {i: tuple(clamp_box(*b, *sizes[i]) for b in raw_boxes[i]) for i in test}
    val = first_per_class(test, labels, cfg.val_per_class) if cfg.val_per_class else []
    splits = {"train": train, "val": val, "test": test}
    for split, ids in splits.items():
        if ids or split != "val":
            write_metadata(out, "metadata", split, ids, labels, sizes, boxes=boxes)
    write_classes(out, kept_wnids)
    found = {
        "val images": len(parsed),
        "classes": len(wnids),
        "boxes": sum(len(b) for _, b in parsed.values()),
        "train classes": len(train_counts),
        "train images": sum(train_counts.values()),
    }
    return {
        "counts": {s: len(v) for s, v in splits.items()},
        "boxes": sum(len(b) for b in boxes.values()),
        "num_classes": cfg.num_classes,
        "found": found,
        "val": f"first {cfg.val_per_class} test images per class (a subset of test; ImageNetV2 not used)",
    }
