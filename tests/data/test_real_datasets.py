"""Real-dataset builders end to end, offline: miniature archives in each dataset's real layout and annotation
format are served from 127.0.0.1, checksummed here (the registry's size/sha256 are monkeypatched), then
download -> metadata -> prepare_dataset, with exact metadata rows, boxes and labels."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data.fetch import ManualFilesError, download
from pipeline.data.prepare import load_ground_truth, prepare_dataset
from pipeline.data.real import DATASETS, build_dataset, cars, cub, ilsvrc, openimages
from pipeline.params import CarsParams, CubParams, IlsvrcParams, OpenImagesParams
from tests.data.archives import tar_bytes, zip_bytes

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------
# Archive and file builders


def jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(mask: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(mask.astype(np.uint8) * (255 if mask.dtype == bool else 1))
    (im.convert("1") if mode == "1" else im).save(buf, format="PNG")
    return buf.getvalue()


def serve(monkeypatch, server, module, attr: str, data: bytes, *, checksum: bool = True):
    """Serve `data` and point the registry entry `module.attr` at it, with this test's size and sha256."""
    spec = getattr(module, attr)
    url = server.add(f"/{module.__name__.rsplit('.', 1)[1]}/{spec.name}", data)
    digest = hashlib.sha256(data).hexdigest() if checksum else None
    new = dataclasses.replace(spec, url=url, size=len(data) if checksum else None, sha256=digest, md5=None)
    monkeypatch.setattr(module, attr, new)
    return new


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def boxes_csv(prep: Path, split: str) -> list[tuple]:
    with open(prep / "boxes.csv", newline="") as fh:
        return [
            (r["image_id"], *(int(r[k]) for k in ("x0", "y0", "x1", "y1", "ex0", "ey0", "ex1", "ey1")))
            for r in csv.DictReader(fh)
            if r["split"] == split
        ]


def no_temp_left(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


# ----------------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# (class, file, is_train, (x, y, w, h) as CUB writes it, (W, H))
CUB_IMAGES = [
    (1, "Black_Footed_Albatross_0001_1.jpg", 1, "4.0 3.0 20.0 10.0", (40, 30)),
    (1, "Black_Footed_Albatross_0002_2.jpg", 1, "0.0 0.0 40.0 30.0", (40, 30)),  # reaches W, H: clipped
    (1, "Black_Footed_Albatross_0003_3.jpg", 0, "5.0 6.0 10.0 12.0", (32, 32)),
    (2, "Laysan_Albatross_0001_4.jpg", 0, "1.0 2.0 3.0 4.0", (30, 40)),
    (2, "Laysan_Albatross_0002_5.jpg", 1, "2.0 2.0 20.0 30.0", (30, 40)),
    (2, "Laysan_Albatross_0003_6.jpg", 1, "3.0 1.0 5.0 6.0", (30, 40)),
    (3, "Sooty_Albatross_0001_7.jpg", 1, "0.0 0.0 10.0 10.0", (24, 24)),
    (3, "Sooty_Albatross_0002_8.jpg", 0, "10.0 10.0 13.0 13.0", (24, 24)),
    (3, "Sooty_Albatross_0003_9.jpg", 1, "1.0 1.0 1.0 1.0", (24, 24)),
]


def cub_archives() -> tuple[bytes, bytes]:
    members = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    r = "CUB_200_2011/"
    members[r + "classes.txt"] = "".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)).encode()
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    seg = {}
    for n, (cls, name, train, box, (w, h)) in enumerate(CUB_IMAGES, 1):
        path = f"{CUB_CLASSES[cls - 1]}/{name}"
        members[r + "images/" + path] = jpeg(w, h, n)
        rows["images.txt"].append(f"{n} {path}")
        rows["image_class_labels.txt"].append(f"{n} {cls}")
        rows["train_test_split.txt"].append(f"{n} {train}")
        rows["bounding_boxes.txt"].append(f"{n} {box}")
        m = np.zeros((h, w), np.uint8)
        m[: h // 2, : w // 2] = 255  # all 5 annotators
        m[h // 2 :, : w // 2] = 102  # 2 of 5: below the majority
        seg[f"segmentations/{path[:-4]}.png"] = png(m)
    for file, r_lines in rows.items():
        members[r + file] = ("\n".join(r_lines) + "\n").encode()
    return tar_bytes(members), tar_bytes(seg)


def test_cub_download_metadata_prepare(file_server, monkeypatch, tmp_path):
    tgz, seg = cub_archives()
    serve(monkeypatch, file_server, cub, "ARCHIVE", tgz)
    serve(monkeypatch, file_server, cub, "SEGMENTATIONS", seg)
    cfg = CubParams(
        num_classes=3, val_per_class=1, segmentations=True, mode="auto", source_dir=None, verify="published"
    )
    raw, archives = tmp_path / "raw" / "cub", tmp_path / "archives"
    summary = build_dataset("cub", cfg, raw, archive_dir=archives, progress=False)
    assert summary["counts"] == {"train": 3, "val": 3, "test": 3}
    assert sorted(p.name for p in (archives / "cub").iterdir() if not p.name.startswith(".")) == [
        "CUB_200_2011.tgz",
        "segmentations.tgz",
    ]
    m = raw / "metadata"
    a, b, c = (f"{cls}/" for cls in CUB_CLASSES)
    assert lines(m / "val" / "image_ids.txt") == [
        a + "Black_Footed_Albatross_0001_1.jpg",
        b + "Laysan_Albatross_0002_5.jpg",
        c + "Sooty_Albatross_0001_7.jpg",
    ]
    assert lines(m / "train" / "class_labels.txt") == [
        a + "Black_Footed_Albatross_0002_2.jpg,0",
        b + "Laysan_Albatross_0003_6.jpg,1",
        c + "Sooty_Albatross_0003_9.jpg,2",
    ]
    assert lines(m / "train" / "localization.txt") == [
        a + "Black_Footed_Albatross_0002_2.jpg,0,0,39,29",
        b + "Laysan_Albatross_0003_6.jpg,3,1,8,7",
        c + "Sooty_Albatross_0003_9.jpg,1,1,2,2",
    ]
    assert lines(m / "test" / "localization.txt") == [
        a + "Black_Footed_Albatross_0003_3.jpg,5,6,15,18",
        b + "Laysan_Albatross_0001_4.jpg,1,2,4,6",
        c + "Sooty_Albatross_0002_8.jpg,10,10,23,23",
    ]
    assert lines(m / "test" / "image_sizes.txt")[0] == a + "Black_Footed_Albatross_0003_3.jpg,32,32"
    assert lines(raw / "metadata_mask" / "test" / "localization.txt")[0] == (
        a + "Black_Footed_Albatross_0003_3.jpg," + a + "Black_Footed_Albatross_0003_3.png,"
    )
    assert lines(raw / "classes.txt") == [f"{i},{c}" for i, c in enumerate(CUB_CLASSES)]
    assert not (raw / ".work").exists() and not (raw / "metadata_mask" / "train").exists()
    no_temp_left(raw.parent)

    prep = tmp_path / "prep"
    info = prepare_dataset(raw, prep, dataset="cub", num_classes=3, eval_size=16, progress=False)
    assert info["counts"] == {"train": 3, "val": 3, "test": 3}
    assert info["boxes"] == 9 and info["mask_splits"] == ["test", "val"]
    assert info["class_names"] == CUB_CLASSES
    assert boxes_csv(prep, "test")[0] == (a + "Black_Footed_Albatross_0003_3.jpg", 5, 6, 15, 18, 2, 3, 7, 9)
    gt = load_ground_truth(prep, "test")
    assert gt.labels.tolist() == [0, 1, 2]
    assert gt.fg[0, :8, :8].all() and not gt.fg[0, 8:, :].any()  # majority vote: the 2/5 half is background


def test_cub_class_subset_and_source_dir_without_download(file_server, monkeypatch, tmp_path):
    tgz, _ = cub_archives()
    serve(monkeypatch, file_server, cub, "ARCHIVE", tgz)
    src = tmp_path / "my_cub"
    src.mkdir()
    (src / "CUB_200_2011.tgz").write_bytes(tgz)
    cfg = CubParams(
        num_classes=2, val_per_class=0, segmentations=False, mode="auto", source_dir=str(src), verify="published"
    )
    raw = tmp_path / "raw" / "cub"
    summary = build_dataset("cub", cfg, raw, archive_dir=tmp_path / "unused", progress=False)
    assert file_server.log == []  # a source_dir is only checked, never downloaded into
    assert summary["counts"] == {"train": 4, "val": 0, "test": 2}
    assert not (raw / "metadata" / "val").exists()
    assert sorted(p.name for p in (raw / "images").iterdir()) == CUB_CLASSES[:2]
    assert lines(raw / "metadata" / "train" / "class_labels.txt")[-1] == (
        f"{CUB_CLASSES[1]}/Laysan_Albatross_0003_6.jpg,1"
    )
    assert sorted(p.name for p in src.iterdir()) == ["CUB_200_2011.tgz"]  # nothing written into the user's folder
    assert [p.name for p in (tmp_path / "unused").iterdir()] == [".verified"]  # checksum stamps: the project's folder


def test_cub_wrong_archive_is_rejected(file_server, monkeypatch, tmp_path):
    tgz, _ = cub_archives()
    serve(monkeypatch, file_server, cub, "ARCHIVE", tgz)
    file_server.files["/cub/CUB_200_2011.tgz"] = tgz[:-10] + bytes(10)  # the server now serves other bytes
    cfg = CubParams(
        num_classes=3, val_per_class=1, segmentations=False, mode="auto", source_dir=None, verify="published"
    )
    with pytest.raises(ValueError, match=r"CUB_200_2011\.tgz: the file downloaded from http://127\.0\.0\.1"):
        build_dataset("cub", cfg, tmp_path / "raw" / "cub", archive_dir=tmp_path / "archives", progress=False)
    assert not (tmp_path / "raw" / "cub").exists()
    assert [p.name for p in (tmp_path / "archives" / "cub").iterdir()] == []


# ----------------------------------------------------------------------------------------------------
# Stanford Cars


def savemat_bytes(data: dict) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, data)
    return buf.getvalue()


def annotations_mat(rows: list[tuple], with_class: bool = True) -> bytes:
    """The devkit's layout: `annotations`, a 1xN struct array of bbox_x1..bbox_y2, class, fname."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        values = row if with_class else (*row[:4], row[5])
        for f, v in zip(fields, values):
            arr[0, i][f] = np.array([v]) if f == "fname" else np.array([[v]], dtype=np.uint16)
    return savemat_bytes({"annotations": arr})


CARS_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
# (x1, y1, x2, y2 as MATLAB 1-based inclusive pixels, class 1-based, fname), all images 40 x 30
CARS_TRAIN = [
    (1, 1, 40, 30, 1, "00001.jpg"),
    (5, 6, 20, 25, 1, "00002.jpg"),
    (2, 3, 4, 5, 2, "00003.jpg"),
    (10, 10, 30, 20, 2, "00004.jpg"),
    (3, 3, 9, 9, 3, "00005.jpg"),
    (1, 2, 41, 31, 3, "00006.jpg"),
]
CARS_TEST = [(7, 8, 9, 10, 2, "00001.jpg"), (1, 1, 2, 2, 1, "00002.jpg"), (11, 12, 13, 14, 3, "00003.jpg")]


def cars_files() -> dict[str, bytes]:
    class_names = np.empty((1, len(CARS_NAMES)), dtype=object)
    class_names[0, :] = CARS_NAMES
    devkit = {
        "devkit/README.txt": b"bbox_x1: Min x-value of the bounding box, in pixels\n",
        "devkit/cars_meta.mat": savemat_bytes({"class_names": class_names}),
        "devkit/cars_train_annos.mat": annotations_mat(CARS_TRAIN),
        "devkit/cars_test_annos.mat": annotations_mat(CARS_TEST, with_class=False),
    }
    return {
        "cars_train.tgz": tar_bytes({f"cars_train/{r[5]}": jpeg(40, 30, i) for i, r in enumerate(CARS_TRAIN)}),
        "cars_test.tgz": tar_bytes({f"cars_test/{r[5]}": jpeg(40, 30, 50 + i) for i, r in enumerate(CARS_TEST)}),
        "car_devkit.tgz": tar_bytes(devkit),
        "cars_test_annos_withlabels.mat": annotations_mat(CARS_TEST),
    }


def test_cars_manual_then_metadata_prepare(file_server, monkeypatch, tmp_path):
    data = cars_files()
    specs = {
        spec.name: serve(monkeypatch, file_server, cars, attr, data[spec.name])
        for attr, spec in (
            ("TRAIN", cars.TRAIN),
            ("TEST", cars.TEST),
            ("DEVKIT", cars.DEVKIT),
            ("TEST_ANNOS", cars.TEST_ANNOS),
        )
    }
    cfg = CarsParams(num_classes=3, val_per_class=1, source_dir=None, verify="published")
    archives, raw = tmp_path / "archives", tmp_path / "raw" / "cars"
    folder = (archives / "cars").absolute()
    with pytest.raises(ManualFilesError) as info:
        build_dataset("cars", cfg, raw, archive_dir=archives, progress=False)
    assert [p.split(": ")[0] for p in info.value.problems] == [str(folder / n) for n in data]
    assert "official links are dead" in str(info.value) and "datasets.cars.source_dir" in str(info.value)
    assert file_server.log == []  # manual: nothing is downloaded

    for name, spec in specs.items():  # the user fetches the files from a mirror (here: the local server)
        download(spec.url, folder / name, size=spec.size, sha256=spec.sha256, progress=False)
    summary = build_dataset("cars", cfg, raw, archive_dir=archives, progress=False)
    assert summary["counts"] == {"train": 3, "val": 3, "test": 3}
    m = raw / "metadata"
    assert lines(m / "val" / "localization.txt") == [
        "cars_train/00001.jpg,0,0,39,29",
        "cars_train/00003.jpg,1,2,3,4",
        "cars_train/00005.jpg,2,2,8,8",
    ]
    assert lines(m / "train" / "localization.txt") == [
        "cars_train/00002.jpg,4,5,19,24",
        "cars_train/00004.jpg,9,9,29,19",
        "cars_train/00006.jpg,0,1,39,29",
    ]
    assert lines(m / "test" / "class_labels.txt") == [
        "cars_test/00001.jpg,1",
        "cars_test/00002.jpg,0",
        "cars_test/00003.jpg,2",
    ]
    assert lines(m / "test" / "localization.txt")[0] == "cars_test/00001.jpg,6,7,8,9"
    assert lines(raw / "classes.txt") == [f"{i},{n}" for i, n in enumerate(CARS_NAMES)]
    no_temp_left(raw.parent)

    prep = tmp_path / "prep"
    info = prepare_dataset(raw, prep, dataset="cars", num_classes=3, eval_size=20, progress=False)
    assert info["counts"] == {"train": 3, "val": 3, "test": 3} and info["boxes"] == 9
    assert boxes_csv(prep, "test")[2] == ("cars_test/00003.jpg", 10, 11, 12, 13, 5, 7, 6, 8)


# ----------------------------------------------------------------------------------------------------
# ImageNet (ILSVRC2012)

WNIDS = ["n01440764", "n01443537", "n01484850"]
# stem -> (W, H, [(wnid, xmin, ymin, xmax, ymax)])
ILSVRC_VAL = {
    "ILSVRC2012_val_00000001": (50, 40, [("n01484850", 10, 12, 30, 35), ("n01484850", 0, 0, 5, 5)]),
    "ILSVRC2012_val_00000002": (40, 40, [("n01440764", 1, 2, 39, 39)]),
    "ILSVRC2012_val_00000003": (30, 20, [("n01443537", 3, 4, 5, 6)]),
    "ILSVRC2012_val_00000004": (30, 20, [("n01440764", 0, 0, 30, 20)]),  # xmax = W: clipped
    "ILSVRC2012_val_00000005": (30, 20, [("n01443537", 7, 7, 9, 9)]),
}


def voc_xml(stem: str, w: int, h: int, objects: list[tuple]) -> bytes:
    objs = "".join(
        f"\t<object>\n\t\t<name>{n}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
        f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for n, x0, y0, x1, y1 in objects
    )
    return (
        f"<annotation>\n\t<folder>val</folder>\n\t<filename>{stem}</filename>\n\t<source>\n"
        f"\t\t<database>ILSVRC_2012</database>\n\t</source>\n\t<size>\n\t\t<width>{w}</width>\n"
        f"\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"
        f"{objs}</annotation>\n"
    ).encode()


def ilsvrc_files() -> dict[str, bytes]:
    val = {f"{stem}.JPEG": jpeg(w, h, i) for i, (stem, (w, h, _)) in enumerate(ILSVRC_VAL.items())}
    boxes = {f"val/{stem}.xml": voc_xml(stem, w, h, objs) for stem, (w, h, objs) in ILSVRC_VAL.items()}
    inner = {
        w: tar_bytes({f"{w}_{k}.JPEG": jpeg(20, 16, 100 + 10 * i + k) for k in (30, 10, 20)}, mode="w")
        for i, w in enumerate(WNIDS)
    }
    return {
        "ILSVRC2012_img_val.tar": tar_bytes(val, mode="w"),
        "ILSVRC2012_bbox_val_v3.tgz": tar_bytes(boxes),
        "ILSVRC2012_img_train.tar": tar_bytes({f"{w}.tar": b for w, b in inner.items()}, mode="w"),
    }


def test_ilsvrc_manual_source_dir_metadata_prepare(file_server, monkeypatch, tmp_path):
    data = ilsvrc_files()
    src = tmp_path / "imagenet"
    for attr in ("VAL", "BBOX_VAL", "TRAIN"):
        spec = serve(monkeypatch, file_server, ilsvrc, attr, data[getattr(ilsvrc, attr).name])
        download(spec.url, src / spec.name, size=spec.size, sha256=spec.sha256, progress=False)  # the user's copy
    cfg = IlsvrcParams(num_classes=3, val_per_class=1, train_per_class=2, source_dir=str(src), verify="published")
    raw = tmp_path / "raw" / "ilsvrc"
    summary = build_dataset("ilsvrc", cfg, raw, archive_dir=tmp_path / "archives", progress=False)
    assert summary["counts"] == {"train": 6, "val": 3, "test": 5}
    m = raw / "metadata"
    assert lines(m / "test" / "class_labels.txt") == [
        "val/ILSVRC2012_val_00000001.JPEG,2",
        "val/ILSVRC2012_val_00000002.JPEG,0",
        "val/ILSVRC2012_val_00000003.JPEG,1",
        "val/ILSVRC2012_val_00000004.JPEG,0",
        "val/ILSVRC2012_val_00000005.JPEG,1",
    ]
    assert lines(m / "test" / "localization.txt") == [
        "val/ILSVRC2012_val_00000001.JPEG,10,12,30,35",
        "val/ILSVRC2012_val_00000001.JPEG,0,0,5,5",
        "val/ILSVRC2012_val_00000002.JPEG,1,2,39,39",
        "val/ILSVRC2012_val_00000003.JPEG,3,4,5,6",
        "val/ILSVRC2012_val_00000004.JPEG,0,0,29,19",
        "val/ILSVRC2012_val_00000005.JPEG,7,7,9,9",
    ]
    assert lines(m / "val" / "image_ids.txt") == [
        "val/ILSVRC2012_val_00000001.JPEG",
        "val/ILSVRC2012_val_00000002.JPEG",
        "val/ILSVRC2012_val_00000003.JPEG",
    ]
    assert lines(m / "train" / "class_labels.txt") == [
        f"train/{w}/{w}_{k}.JPEG,{i}" for i, w in enumerate(WNIDS) for k in (10, 20)
    ]
    assert (m / "train" / "localization.txt").read_bytes() == b""
    assert lines(raw / "classes.txt") == [f"{i},{w}" for i, w in enumerate(WNIDS)]
    assert file_server.log.count(("/ilsvrc/ILSVRC2012_img_val.tar", None, 200)) == 1  # only the user's fetch

    prep = tmp_path / "prep"
    info = prepare_dataset(raw, prep, dataset="ilsvrc", num_classes=3, eval_size=10, progress=False)
    assert (
        info["counts"] == {"train": 6, "val": 3, "test": 5} and info["boxes"] == 6 + 4
    )  # test boxes + val (a subset of test) boxes
    gt = load_ground_truth(prep, "test")
    assert gt.boxes[0].tolist() == [[2, 3, 6, 8], [0, 0, 1, 1]]  # int(10*10/50), int(12*10/40), ...


# ----------------------------------------------------------------------------------------------------
# OpenImages30k

OI = ["01226z", "0138tl", "014j1m"]


def openimages_files() -> dict[str, bytes]:
    images, masks = {}, {}
    layout = {
        "train": {"01226z": ["a1", "a2"], "0138tl": ["b1"], "014j1m": ["c1"]},
        "val": {"01226z": ["v1", "v2"], "0138tl": ["v3"], "014j1m": ["v4"]},
        "test": {"01226z": ["t1"], "0138tl": ["t2"], "014j1m": ["t3"]},
    }
    seed = 0
    for split, classes in layout.items():
        for mid, stems in classes.items():
            for stem in stems:
                seed += 1
                images[f"{split}/{mid}/{stem}.jpg"] = jpeg(32, 24, seed)
                if split == "train":
                    continue
                left, right = np.zeros((24, 32), bool), np.zeros((24, 32), bool)
                left[:, :8], right[:, 24:] = True, True
                masks[f"{split}/{mid}/{stem}_m{mid}_aaaa1111.png"] = png(left, "1")
                if stem in ("v2", "t1"):
                    masks[f"{split}/{mid}/{stem}_m{mid}_0bbb2222.png"] = png(right, "1")
                if stem != "v3":
                    ign = np.zeros((24, 32), bool)
                    ign[:12, :16] = True
                    masks[f"{split}/{mid}/{stem}_ignore.png"] = png(ign)
    return {"OpenImages_images.zip": zip_bytes(images), "OpenImages_annotations.zip": zip_bytes(masks)}


def test_openimages_download_records_sha256_masks_prepare(file_server, monkeypatch, tmp_path, capsys):
    data = openimages_files()
    serve(monkeypatch, file_server, openimages, "IMAGES", data["OpenImages_images.zip"], checksum=False)
    serve(monkeypatch, file_server, openimages, "ANNOTATIONS", data["OpenImages_annotations.zip"], checksum=False)
    cfg = OpenImagesParams(num_classes=3, val_per_class=1, mode="auto", source_dir=None, verify="published")
    raw, archives = tmp_path / "raw" / "openimages", tmp_path / "archives"
    summary = build_dataset("openimages", cfg, raw, archive_dir=archives, progress=False)
    sha = hashlib.sha256(data["OpenImages_images.zip"]).hexdigest()
    assert (archives / "openimages" / "OpenImages_images.zip.sha256").read_text().split()[0] == sha
    assert f"recorded sha256 {sha}" in capsys.readouterr().err
    assert summary["sources"]["OpenImages_images"]["sha256"] == sha
    assert summary["counts"] == {"train": 4, "val": 3, "test": 3}
    m = raw / "metadata"
    assert lines(m / "train" / "class_labels.txt") == [
        "train/01226z/a1.jpg,0",
        "train/01226z/a2.jpg,0",
        "train/0138tl/b1.jpg,1",
        "train/014j1m/c1.jpg,2",
    ]
    assert lines(m / "val" / "image_ids.txt") == ["val/01226z/v1.jpg", "val/0138tl/v3.jpg", "val/014j1m/v4.jpg"]
    assert (m / "train" / "localization.txt").read_bytes() == b""
    assert lines(m / "test" / "localization.txt") == [  # tight boxes of the instance masks (for the box metrics)
        "test/01226z/t1.jpg,24,0,31,23",
        "test/01226z/t1.jpg,0,0,7,23",
        "test/0138tl/t2.jpg,0,0,7,23",
        "test/014j1m/t3.jpg,0,0,7,23",
    ]
    assert lines(raw / "metadata_mask" / "test" / "localization.txt") == [
        "test/01226z/t1.jpg,test/01226z/t1_m01226z_0bbb2222.png,test/01226z/t1_ignore.png",
        "test/01226z/t1.jpg,test/01226z/t1_m01226z_aaaa1111.png,",
        "test/0138tl/t2.jpg,test/0138tl/t2_m0138tl_aaaa1111.png,test/0138tl/t2_ignore.png",
        "test/014j1m/t3.jpg,test/014j1m/t3_m014j1m_aaaa1111.png,test/014j1m/t3_ignore.png",
    ]
    assert (
        lines(raw / "metadata_mask" / "val" / "localization.txt")[1]
        == "val/0138tl/v3.jpg,val/0138tl/v3_m0138tl_aaaa1111.png,"
    )
    assert not (raw / "images" / "val" / "01226z" / "v2.jpg").exists()
    assert not (raw / "masks" / "val" / "01226z" / "v2_ignore.png").exists()
    no_temp_left(raw.parent)

    prep = tmp_path / "prep"
    info = prepare_dataset(raw, prep, dataset="openimages", num_classes=3, eval_size=16, progress=False)
    assert info["mask_splits"] == ["test", "val"] and info["boxes"] == 3 + 4
    gt = load_ground_truth(prep, "test")
    assert gt.labels.tolist() == [0, 1, 2]
    assert gt.fg[0, :, :4].all() and gt.fg[0, :, 12:].all() and not gt.fg[0, :, 4:12].any()  # two instances
    assert gt.fg[1, :, :4].all() and not gt.fg[1, :, 4:].any()
    assert gt.ignore[1, :8, 4:8].all() and not gt.ignore[1, :8, :4].any()  # ignore minus foreground

    build_dataset("openimages", cfg, raw, archive_dir=archives, progress=False)  # second run: no new download
    assert len([entry for entry in file_server.log if entry[2] == 200]) == 2


# ----------------------------------------------------------------------------------------------------
# Registry and stage wiring


def test_registry_matches_params():
    from pipeline.params import DATASET_PARAMS
    from pipeline.params import DATASETS as PARAM_DATASETS

    assert set(DATASETS) == set(PARAM_DATASETS) - {"synthbirds"}
    values = yaml.safe_load((ROOT / "params.yaml").read_text())["datasets"]
    for name, module in DATASETS.items():
        full = DATASET_PARAMS[name](**values[name])
        bounds = DATASET_PARAMS[name].__pydantic_fields__["num_classes"].metadata
        assert [b.le for b in bounds if hasattr(b, "le")] == [module.NUM_CLASSES] == [full.num_classes]
        for part in module.parts(dataclasses.replace(full, **({"segmentations": True} if name == "cub" else {}))):
            spec = part.published
            assert spec is None or (spec.where and (spec.sha256 or spec.md5 or name == "openimages")), part.name


def test_download_stage_lists_missing_manual_files(tmp_path, monkeypatch, capsys):
    from pipeline.params import load_or_exit
    from pipeline.stages import download as stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = "cars"
    params["download"]["archive_dir"] = "archives"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "start", load_or_exit)  # the stage's params, without seeding torch here
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cars: 4 of 4 part(s) not found. Stanford Cars cannot be downloaded automatically")
    for name in ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat"):
        assert f"  - {tmp_path / 'archives' / 'cars' / name}: missing (" in err
    assert not (tmp_path / "data").exists()


def test_openimages_mask_boxes_scale_to_the_image(tmp_path):
    mask = np.zeros((12, 16), bool)
    mask[3:6, 4:8] = True  # x 4..7, y 3..5 on a 16 x 12 mask of a 32 x 24 image
    (tmp_path / "m.png").write_bytes(png(mask, "1"))
    (tmp_path / "empty.png").write_bytes(png(np.zeros((12, 16), bool), "1"))
    assert openimages.mask_boxes(tmp_path, ("m.png", "empty.png"), (32, 24)) == ((8, 6, 15, 11),)
    assert openimages.mask_boxes(tmp_path, ("empty.png",), (32, 24)) == ((0, 0, 31, 23),)


def test_params_for_real_datasets_name_key_and_valid_values():
    import copy

    from pipeline.params import ParamsError, validate

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert validate({**base, "dataset": "cub"}).num_classes == 200
    data = copy.deepcopy(base)
    data["dataset"] = "cars"
    data["datasets"]["cub"]["mode"] = "torrent"
    data["datasets"]["ilsvrc"]["train_per_class"] = 0
    data["datasets"]["openimages"]["num_classes"] = 101
    data["datasets"]["mnist"] = {"num_classes": 10}
    del data["datasets"]["cars"]["source_dir"]
    with pytest.raises(ParamsError) as info:
        validate(data)
    assert sorted(info.value.problems) == sorted(
        [
            "datasets.cub.mode: 'torrent' is not valid; choose one of: auto, manual",
            "datasets.ilsvrc.train_per_class: 0 is out of range; valid: [1, 1300]",
            "datasets.openimages.num_classes: 101 is out of range; valid: [2, 100]",
            "datasets.mnist: unknown key; valid keys here: synthbirds, cub, cars, ilsvrc, openimages",
            "datasets.cars.source_dir: missing (folder holding the dataset's files "
            "(null = download.archive_dir/<dataset>))",
        ]
    )
