"""ImageNet-1K (ILSVRC2012) from its own files; always manual (image-net.org needs a login).

Files (DATA.md section 3): `ILSVRC2012_img_val.tar` (50,000 JPEGs, flat), `ILSVRC2012_bbox_val_v3.tgz`
(`val/ILSVRC2012_val_XXXXXXXX.xml`, PASCAL VOC XML, every box of every image) and
`ILSVRC2012_img_train.tar` (1,000 inner `<wnid>.tar` files). The user places them in
``download.archive_dir/ilsvrc/`` (or ``datasets.ilsvrc.source_dir``).

Metadata:

* classes: the sorted WordNet ids found in the val XML files (the standard label order of torchvision,
  timm and wsolevaluation, the same as `LOC_synset_mapping.txt`); label = index; the first
  ``num_classes`` are kept. `classes.txt` lists the wnids (no devkit needed).
* test = every ILSVRC2012 val image (as wsolevaluation's test split): id ``val/ILSVRC2012_val_00000001.JPEG``,
  label from the XML's ``<object><name>`` (the first object's; all objects of an image share it), one box
  per ``<object>``. VOC coordinates are used as they are (wsolevaluation's converted test metadata has the
  same numbers, e.g. val_00000001 -> 111,108,441,193), clipped to the image size from the JPEG header.
* val: the first ``val_per_class`` test images of each class (by file name). wsolevaluation's val is
  ImageNetV2 with boxes that exist only in its repository, so this val is a *subset of test*: choosing
  CAM thresholds on it is close to (not independent of) the official test-oracle protocol. Test stays the
  full, official 50,000 images so numbers remain comparable with the paper.
* train: the first ``train_per_class`` images (by name) of each class, read straight from the inner tars
  of `ILSVRC2012_img_train.tar` (null = all 1,281,167): id ``train/<wnid>/<file>.JPEG``, no boxes.
  The baseline can be imported (``baseline.checkpoint`` with ImageNet weights, ``baseline.epochs: 0``),
  but the finetune stage trains the sigmoid head on the train split, so train images are always needed.
"""
from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

from pipeline.data.fetch import ArchiveError, RemoteFile, bar_disabled, extract, safe_tar_members
from pipeline.data.prepare import DataError
from pipeline.data.real.common import (clamp_box, first_per_class, image_sizes, remove_unlisted, rmtree,
                                       write_classes, write_metadata)

NUM_CLASSES = 1000
WHERE = ("https://image-net.org/download-images.php (log in and accept the terms; ILSVRC2012 "
         "'Validation images', 'Training images (Task 1 & 2)' and the val bounding boxes)")
VAL = RemoteFile("ILSVRC2012_img_val.tar", "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar",
                 6_744_924_160, "c7e06a6c0baccf06d8dbeb6577d71efff84673a5dbdd50633ab44f8ea0456ae0",
                 "29b22e2961454d5413ddabcf34fc5622", WHERE)
BBOX_VAL = RemoteFile("ILSVRC2012_bbox_val_v3.tgz",
                      "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_bbox_val_v3.tgz", None, None,
                      "f4cd18b5ea29fe6bbea62ec9c20d80f0", WHERE, max_size=64 << 20)  # about 2.2 MB
TRAIN = RemoteFile("ILSVRC2012_img_train.tar", "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_train.tar",
                   147_897_477_120, None, "1d675b47d978889d74fa0da5fadfb00e", WHERE)
MANUAL_WHY = "ImageNet cannot be downloaded automatically: image-net.org needs a login and accepting its terms."


def files(cfg) -> list[RemoteFile]:
    return [VAL, BBOX_VAL, TRAIN]


def _parse_xml(path: Path) -> tuple[list[str], list[tuple[int, int, int, int]]]:
    """(object wnids, boxes) of one VOC XML file."""
    try:
        root = ET.parse(path).getroot()
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


def _extract_train(archive: Path, out: Path, wnids: list[str], per_class: int | None, progress: bool) -> list[str]:
    """Extract the first `per_class` images of each wanted class from the train tar of tars."""
    wanted, ids = set(wnids), []
    try:
        with tarfile.open(archive, "r:") as outer:
            for member in tqdm(safe_tar_members(outer, archive), desc="ILSVRC train", unit="class",
                               disable=bar_disabled(progress)):
                wnid = Path(member.name).name.removesuffix(".tar")
                if not member.isfile() or wnid not in wanted:
                    continue
                with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                    members = sorted((m for m in safe_tar_members(inner, archive) if m.isfile()), key=lambda m: m.name)
                    for m in members if per_class is None else members[:per_class]:
                        name = Path(m.name).name
                        m.name = name
                        inner.extract(m, out / "train" / wnid, filter="data")
                        ids.append(f"train/{wnid}/{name}")
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                           f"replace it with an intact copy") from None
    missing = sorted(wanted - {i.split("/")[1] for i in ids})
    if missing:
        raise DataError(f"{archive}: no training images for {len(missing)} class(es), e.g. {missing[0]}")
    return sorted(ids)


def build(paths: dict[str, Path], out: Path, cfg, *, progress: bool = True) -> dict:
    """Unpack ILSVRC into `out` (images/val/, images/train/<wnid>/, metadata/, classes.txt)."""
    work = out / ".work"
    extract(paths[BBOX_VAL.name], work / "bbox", progress=progress)
    xml_files = sorted((work / "bbox").rglob("*.xml"), key=lambda f: f.name)
    if not xml_files:
        raise ArchiveError(f"{BBOX_VAL.name}: unexpected layout: no .xml files inside it (is it the right file?)")
    parsed = {f.stem: _parse_xml(f) for f in tqdm(xml_files, desc="val boxes", disable=bar_disabled(progress),
                                                   leave=False)}
    wnids = sorted({n for names, _ in parsed.values() for n in names})
    if cfg.num_classes > len(wnids):
        raise DataError(f"datasets.ilsvrc.num_classes is {cfg.num_classes} but the val boxes cover "
                        f"{len(wnids)} classes")
    index = {w: i for i, w in enumerate(wnids)}
    kept_wnids = wnids[: cfg.num_classes]

    extract(paths[VAL.name], out / "images" / "val", progress=progress)
    labels, raw_boxes, test = {}, {}, []
    for stem, (names, boxes) in parsed.items():
        if index[names[0]] >= cfg.num_classes:
            continue
        image_id = f"val/{stem}.JPEG"
        test.append(image_id)
        labels[image_id] = index[names[0]]
        raw_boxes[image_id] = boxes
    missing = [i for i in test if not (out / "images" / i).is_file()]
    if missing:
        raise DataError(f"{VAL.name}: {len(missing)} image(s) with boxes are not in the archive, e.g. {missing[0]}")
    remove_unlisted(out / "images" / "val", {i.removeprefix("val/") for i in test})

    train = _extract_train(paths[TRAIN.name], out / "images", kept_wnids, cfg.train_per_class, progress)
    for image_id in train:
        labels[image_id] = index[image_id.split("/")[1]]
    sizes = image_sizes(out / "images", test + train, progress=progress, desc="ilsvrc sizes")
    boxes = {i: tuple(clamp_box(*b, *sizes[i]) for b in raw_boxes[i]) for i in test}
    val = first_per_class(test, labels, cfg.val_per_class) if cfg.val_per_class else []
    splits = {"train": train, "val": val, "test": test}
    for split, ids in splits.items():
        if ids or split != "val":
            write_metadata(out, "metadata", split, ids, labels, sizes, boxes=boxes)
    write_classes(out, kept_wnids)
    rmtree(work)
    return {"counts": {s: len(v) for s, v in splits.items()}, "boxes": sum(len(b) for b in boxes.values()),
            "num_classes": cfg.num_classes,
            "val": f"first {cfg.val_per_class} test images per class (a subset of test; ImageNetV2 not used)"}
