"""Stanford Cars and OpenImages30k as labs keep them: the published files, the same archives repacked or
recompressed, and the extracted folders (Kaggle-style Cars: ``cars_train/``, ``cars_test/``, ``devkit/`` and
``cars_test_annos_withlabels.mat`` side by side, flat, nested or doubly nested; wsolevaluation's
``dataset/OpenImages/`` where both zips are unzipped into the same folder). Every layout must give the raw output
of the published files byte for byte (source.json aside), read only what is used, write nothing into the user's
folder, and a copy that is not the published file is accepted only with `verify: content`.

The miniatures carry real quirks: a grayscale JPEG, a CMYK JPEG, a PNG named .jpg, an image with two instance
masks and an ignore mask, macOS ``._*`` files beside the images, an empty ``cars_train/`` of a half-done copy."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.fetch import ManualFilesError
from pipeline.data.prepare import prepare_dataset
from pipeline.data.real import NotPublishedError, build_dataset, cars, openimages
from pipeline.data.real.source import fingerprint
from pipeline.params import CarsParams, OpenImagesParams
from tests.data.archives import tar_bytes, zip_bytes
from tests.data.test_layouts import (
    cmyk_jpeg,
    grey_jpeg,
    listing,
    png_rgb,
    publish,
    recompress_xz,
    tree,
    untar,
    write_tree,
)
from tests.data.test_real_datasets import (
    CARS_NAMES,
    CARS_TEST,
    CARS_TRAIN,
    annotations_mat,
    jpeg,
    lines,
    no_temp_left,
    openimages_files,
    savemat_bytes,
)


def at(cfg, src: Path, verify: str):
    """The dataset params `cfg` reading from `src` with `verify`."""
    return dataclasses.replace(cfg, source_dir=str(src), verify=verify)


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # inside the last scan / chunk: still a readable image of the same size
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------------
# Stanford Cars

CARS_FILES = ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat")


def cars_members() -> dict[str, dict[str, bytes]]:
    """The members of each Cars file: train 00003 grayscale, train 00004 a PNG named .jpg, test 00002 CMYK."""
    class_names = np.empty((1, len(CARS_NAMES)), dtype=object)
    class_names[0, :] = CARS_NAMES
    quirks = {
        "cars_train/00003.jpg": grey_jpeg(40, 30),
        "cars_train/00004.jpg": png_rgb(40, 30),
        "cars_test/00002.jpg": cmyk_jpeg(40, 30),
    }
    train = {f"cars_train/{r[5]}": jpeg(40, 30, i) for i, r in enumerate(CARS_TRAIN)}
    test = {f"cars_test/{r[5]}": jpeg(40, 30, 50 + i) for i, r in enumerate(CARS_TEST)}
    return {
        "cars_train": {k: quirks.get(k, v) for k, v in train.items()},
        "cars_test": {k: quirks.get(k, v) for k, v in test.items()},
        "devkit": {
            "devkit/README.txt": b"bbox_x1: Min x-value of the bounding box, in pixels\n",
            "devkit/cars_meta.mat": savemat_bytes({"class_names": class_names}),
            "devkit/cars_train_annos.mat": annotations_mat(CARS_TRAIN),
            "devkit/cars_test_annos.mat": annotations_mat(CARS_TEST, with_class=False),
        },
        "test_annos": {"cars_test_annos_withlabels.mat": annotations_mat(CARS_TEST)},
    }


def cars_published_files(m: dict) -> dict[str, bytes]:
    return {
        "cars_train.tgz": tar_bytes(m["cars_train"]),
        "cars_test.tgz": tar_bytes(m["cars_test"]),
        "car_devkit.tgz": tar_bytes(m["devkit"]),
        "cars_test_annos_withlabels.mat": m["test_annos"]["cars_test_annos_withlabels.mat"],
    }


@pytest.fixture
def cars_published(monkeypatch, tmp_path):
    """Raw output A: from the published files, checked against their (test) size and sha256."""
    m = cars_members()
    files = cars_published_files(m)
    for attr in ("TRAIN", "TEST", "DEVKIT", "TEST_ANNOS"):
        publish(monkeypatch, cars, attr, files[getattr(cars, attr).name])
    src = write_tree(tmp_path / "published", files)
    cfg = at(CarsParams(num_classes=2, val_per_class=1, source_dir=None, verify="published"), src, "published")
    raw = tmp_path / "raw_published" / "cars"
    summary = build_dataset("cars", cfg, raw, archive_dir=tmp_path / "archives", progress=False)
    assert summary["counts"] == {"train": 2, "val": 2, "test": 2}
    assert summary["found"] == {"train images": 6, "test images": 3, "classes": 3, "boxes": 9}
    assert {n: s["kind"] for n, s in summary["sources"].items()} == {
        "cars_train": "published",
        "cars_test": "published",
        "car_devkit": "published",
        "cars_test_annos_withlabels": "published",
    }
    assert sorted(p.relative_to(raw / "images").as_posix() for p in (raw / "images").rglob("*.jpg")) == [
        "cars_test/00001.jpg",
        "cars_test/00002.jpg",  # class 3 (00003) not kept: not placed
        "cars_train/00001.jpg",
        "cars_train/00002.jpg",
        "cars_train/00003.jpg",
        "cars_train/00004.jpg",
    ]
    assert lines(raw / "metadata" / "val" / "localization.txt") == [
        "cars_train/00001.jpg,0,0,39,29",
        "cars_train/00003.jpg,1,2,3,4",
    ]
    assert lines(raw / "metadata" / "test" / "image_sizes.txt") == [
        "cars_test/00001.jpg,40,30",
        "cars_test/00002.jpg,40,30",
    ]
    assert sorted(p.name for p in src.iterdir()) == sorted(CARS_FILES)
    no_temp_left(raw.parent)
    info = prepare_dataset(raw, tmp_path / "prep", dataset="cars", num_classes=2, eval_size=16, progress=False)
    assert info["counts"] == {"train": 2, "val": 2, "test": 2}  # the quirky images are usable downstream
    return m, files, cfg, tree(raw)


def test_cars_repacked_archives_need_verify_content(cars_published, tmp_path):
    m, files, cfg, expected = cars_published
    src = write_tree(
        tmp_path / "repacked",
        {
            "cars_train.tar.xz": recompress_xz(files["cars_train.tgz"]),
            "cars_test.tar.xz": recompress_xz(files["cars_test.tgz"]),
            "car_devkit.zip": zip_bytes(untar(files["car_devkit.tgz"])),
            "cars_test_annos_withlabels.mat": files["cars_test_annos_withlabels.mat"],
        },
    )
    with pytest.raises(NotPublishedError) as err:
        build_dataset(
            "cars",
            at(cfg, src, "published"),
            tmp_path / "raw_refused" / "cars",
            archive_dir=tmp_path / "archives",
            progress=False,
        )
    message = str(err.value)
    assert "datasets.cars.verify is `published`, and 3 part(s) are not the publisher's archive" in message
    assert f"{src / 'cars_train.tar.xz'} (not the published file name)" in message
    assert f"{src / 'car_devkit.zip'} (not the published file name)" in message
    assert "cars_test_annos_withlabels.mat" not in message.split("Its content")[0]  # the published .mat is fine
    assert (
        "it differs from the published dataset in train images: 6 (published 8,144); test images: 3 "
        "(published 8,041); classes: 3 (published 196); boxes: 9 (published 16,185)"
    ) in message
    assert "datasets.cars.verify: content" in message
    assert not (tmp_path / "raw_refused").exists()

    raw = tmp_path / "raw_repacked" / "cars"
    summary = build_dataset("cars", at(cfg, src, "content"), raw, archive_dir=tmp_path / "archives", progress=False)
    assert tree(raw) == expected
    assert summary["sources"]["cars_train"] == {
        "kind": "archive",
        "name": "cars_train.tar.xz",
        "md5": hashlib.md5((src / "cars_train.tar.xz").read_bytes()).hexdigest(),
    }
    assert summary["sources"]["cars_test_annos_withlabels"]["kind"] == "published"
    assert "classes: 3 (published 196)" in summary["differs_from_published"]
    no_temp_left(raw.parent)


def cars_layouts(m: dict) -> dict[str, dict[str, bytes]]:
    """Kaggle-style folders: flat; nested one level deeper; Kaggle's own doubly nested copy."""
    flat = {
        **m["cars_train"],
        **m["cars_test"],
        **m["devkit"],
        **m["test_annos"],
        "cars_train/._00001.jpg": b"\x00\x05\x16\x07 AppleDouble",  # macOS metadata beside the images
        "cars_annos.mat": annotations_mat(CARS_TRAIN),
    }  # Kaggle's merged annotations: not read
    double = {
        **{f"cars_train/{k}": v for k, v in m["cars_train"].items()},
        **{f"cars_test/{k}": v for k, v in m["cars_test"].items()},
        **{f"car_devkit/{k}": v for k, v in m["devkit"].items()},
        **m["test_annos"],
    }
    return {
        "kaggle": flat,
        "nested": {f"stanford_cars/{k}": v for k, v in flat.items()},
        "kaggle doubly nested": double,
    }


@pytest.mark.parametrize("layout", ["kaggle", "nested", "kaggle doubly nested"])
def test_cars_extracted_folders_give_the_published_bytes(cars_published, tmp_path, layout):
    m, _, cfg, expected = cars_published
    src = write_tree(tmp_path / "lab", cars_layouts(m)[layout])
    before = listing(src)
    raw = tmp_path / "raw_folder" / "cars"
    summary = build_dataset("cars", at(cfg, src, "content"), raw, archive_dir=tmp_path / "archives", progress=False)
    assert tree(raw) == expected
    assert listing(src) == before  # nothing written into the user's folder
    sources = summary["sources"]
    for part in ("cars_train", "cars_test", "car_devkit"):
        assert sources[part]["kind"] == "folder" and sources[part]["md5"].endswith(".dir"), sources[part]
    assert (sources["cars_train"]["name"], sources["car_devkit"]["name"]) == ("cars_train", "devkit")
    # the .mat lying in the dataset's folder is found by its published name; one level down, by its folder
    annos = sources["cars_test_annos_withlabels"]
    if layout == "nested":
        assert annos["kind"] == "folder" and annos["name"] == "stanford_cars" and annos["files_read"] == 1
    else:
        assert annos == {
            "kind": "published",
            "name": "cars_test_annos_withlabels.mat",
            "sha256": cars.TEST_ANNOS.sha256,
        }
    # only what is used is read: 4 train images of the 2 kept classes, 2 test images, 2 devkit files
    assert (
        sources["cars_train"]["files_read"],
        sources["cars_test"]["files_read"],
        sources["car_devkit"]["files_read"],
    ) == (4, 2, 2)
    assert summary["found"] == {"train images": 6, "test images": 3, "classes": 3, "boxes": 9}

    # one byte of a used image changes the identity (and the fingerprint the download stage depends on)
    fp = fingerprint(src, cars.parts(cfg))
    flip_a_byte(next(p for p in src.rglob("00002.jpg") if p.parent.name == "cars_train"))
    assert fingerprint(src, cars.parts(cfg)) != fp
    again = build_dataset(
        "cars",
        at(cfg, src, "content"),
        tmp_path / "raw_again" / "cars",
        archive_dir=tmp_path / "archives",
        progress=False,
    )
    assert again["sources"]["cars_train"]["md5"] != sources["cars_train"]["md5"]
    assert again["sources"]["cars_test"]["md5"] == sources["cars_test"]["md5"]


def test_cars_missing_parts_name_the_file_the_folder_and_source_dir(tmp_path):
    m = cars_members()
    # a half-done copy: cars_train/ holds no JPEG yet, and the test labels (published separately) are not there
    src = write_tree(tmp_path / "lab", {**m["cars_test"], **m["devkit"], "cars_train/._00001.jpg": b"\x00"})
    before = listing(src)
    cfg = at(CarsParams(num_classes=2, val_per_class=1, source_dir=None, verify="published"), src, "content")
    with pytest.raises(ManualFilesError) as err:
        build_dataset("cars", cfg, tmp_path / "raw" / "cars", archive_dir=tmp_path / "archives", progress=False)
    message = str(err.value)
    assert message.startswith("cars: 2 of 4 part(s) not found. Stanford Cars cannot be downloaded automatically")
    assert len(err.value.problems) == 2
    assert (
        f"{src.absolute() / 'cars_train.tgz'}: missing (979,269,282 bytes, sha256 "
        f"{cars.TRAIN.sha256}), and no extracted cars_train/ folder of JPEGs under {src}"
    ) in message
    assert (
        f"{src.absolute() / 'cars_test_annos_withlabels.mat'}: missing (185,758 bytes, sha256 "
        f"{cars.TEST_ANNOS.sha256}), and no folder holding cars_test_annos_withlabels.mat under {src}"
    ) in message
    assert "datasets.cars.source_dir" in message
    assert listing(src) == before
    assert not (tmp_path / "raw").exists()


# ----------------------------------------------------------------------------------------------------
# OpenImages30k

OI_FILES = ("OpenImages_images.zip", "OpenImages_annotations.zip")


def openimages_members() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The zips' members (tests/data/test_real_datasets.py: t1 and v2 have two instance masks and an ignore mask,
    v3 no ignore mask) with a PNG named .jpg in train, a grayscale val and a CMYK test image."""
    data = openimages_files()
    images, masks = unzip(data["OpenImages_images.zip"]), unzip(data["OpenImages_annotations.zip"])
    images["train/0138tl/b1.jpg"] = png_rgb(32, 24)
    images["val/01226z/v1.jpg"] = grey_jpeg(32, 24)
    images["test/0138tl/t2.jpg"] = cmyk_jpeg(32, 24)
    return images, masks


@pytest.fixture
def openimages_published(monkeypatch, tmp_path):
    images, masks = openimages_members()
    files = {"OpenImages_images.zip": zip_bytes(images), "OpenImages_annotations.zip": zip_bytes(masks)}
    publish(monkeypatch, openimages, "IMAGES", files["OpenImages_images.zip"])
    publish(monkeypatch, openimages, "ANNOTATIONS", files["OpenImages_annotations.zip"])
    src = write_tree(tmp_path / "published", files)
    cfg = at(
        OpenImagesParams(num_classes=2, val_per_class=1, mode="manual", source_dir=None, verify="published"),
        src,
        "published",
    )
    raw = tmp_path / "raw_published" / "openimages"
    summary = build_dataset("openimages", cfg, raw, archive_dir=tmp_path / "archives", progress=False)
    assert summary["counts"] == {"train": 3, "val": 2, "test": 2}
    assert summary["found"] == {"train images": 4, "val images": 4, "test images": 3, "classes": 3}
    assert summary["mask_rows"] == 1 + 1 + 2 + 1
    assert lines(raw / "metadata" / "test" / "localization.txt") == [
        "test/01226z/t1.jpg,24,0,31,23",
        "test/01226z/t1.jpg,0,0,7,23",
        "test/0138tl/t2.jpg,0,0,7,23",
    ]
    assert lines(raw / "metadata_mask" / "test" / "localization.txt")[:2] == [
        "test/01226z/t1.jpg,test/01226z/t1_m01226z_0bbb2222.png,test/01226z/t1_ignore.png",
        "test/01226z/t1.jpg,test/01226z/t1_m01226z_aaaa1111.png,",
    ]
    assert sorted(p.relative_to(raw).as_posix() for p in (raw / "masks").rglob("*.png")) == [
        "masks/test/01226z/t1_ignore.png",
        "masks/test/01226z/t1_m01226z_0bbb2222.png",
        "masks/test/01226z/t1_m01226z_aaaa1111.png",
        "masks/test/0138tl/t2_ignore.png",
        "masks/test/0138tl/t2_m0138tl_aaaa1111.png",
        "masks/val/01226z/v1_ignore.png",
        "masks/val/01226z/v1_m01226z_aaaa1111.png",
        "masks/val/0138tl/v3_m0138tl_aaaa1111.png",
    ]
    assert not (raw / "images" / "val" / "01226z" / "v2.jpg").exists()  # beyond val_per_class: not placed
    assert not (raw / "images" / "train" / "014j1m").exists()  # class not kept: not placed
    assert sorted(p.name for p in src.iterdir()) == sorted(OI_FILES)
    no_temp_left(raw.parent)
    info = prepare_dataset(raw, tmp_path / "prep", dataset="openimages", num_classes=2, eval_size=16, progress=False)
    assert info["mask_splits"] == ["test", "val"]  # the quirky images are usable downstream
    return images, masks, files, cfg, tree(raw)


def test_openimages_repacked_archives_need_verify_content(openimages_published, tmp_path):
    images, masks, files, cfg, expected = openimages_published
    src = write_tree(
        tmp_path / "repacked",
        {
            "OpenImages_images.tar.gz": tar_bytes(images),  # the zip's members as a .tar.gz
            "OpenImages_annotations.tar.xz": tar_bytes({f"OpenImages/{k}": v for k, v in masks.items()}, mode="w:xz"),
        },
    )  # re-tarred from the folder it was unzipped into
    with pytest.raises(NotPublishedError) as err:
        build_dataset(
            "openimages",
            at(cfg, src, "published"),
            tmp_path / "raw_refused" / "openimages",
            archive_dir=tmp_path / "archives",
            progress=False,
        )
    message = str(err.value)
    assert "datasets.openimages.verify is `published`, and 2 part(s) are not the publisher's archive" in message
    assert f"{src / 'OpenImages_images.tar.gz'} (not the published file name)" in message
    assert (
        "it differs from the published dataset in train images: 4 (published 29,819); val images: 4 "
        "(published 2,500); test images: 3 (published 5,000); classes: 3 (published 100)"
    ) in message
    assert "datasets.openimages.verify: content" in message
    assert not (tmp_path / "raw_refused").exists()

    raw = tmp_path / "raw_repacked" / "openimages"
    summary = build_dataset(
        "openimages", at(cfg, src, "content"), raw, archive_dir=tmp_path / "archives", progress=False
    )
    assert tree(raw) == expected
    assert summary["sources"]["OpenImages_annotations"] == {
        "kind": "archive",
        "name": "OpenImages_annotations.tar.xz",
        "md5": hashlib.md5((src / "OpenImages_annotations.tar.xz").read_bytes()).hexdigest(),
    }
    no_temp_left(raw.parent)


def openimages_layouts(images: dict, masks: dict) -> dict[str, dict[str, bytes]]:
    return {
        # clovaai/wsolevaluation dataset/prepare_openimages.sh: both zips unzipped into dataset/OpenImages/ (the
        # zips deleted afterwards), beside the other datasets' folders
        "wsolevaluation": {
            **{f"wsolevaluation/dataset/OpenImages/{k}": v for k, v in {**masks, **images}.items()},
            "wsolevaluation/dataset/OpenImages/val/01226z/._v1.jpg": b"\x00\x05\x16\x07",
            "wsolevaluation/dataset/ILSVRC/val/ILSVRC2012_val_00000001.JPEG": jpeg(8, 8, 1),
        },
        "separate folders": {
            **{f"OpenImages_images/{k}": v for k, v in images.items()},
            **{f"OpenImages_annotations/{k}": v for k, v in masks.items()},
        },
    }


@pytest.mark.parametrize("layout", ["wsolevaluation", "separate folders"])
def test_openimages_extracted_folders_give_the_published_bytes(openimages_published, tmp_path, layout):
    images, masks, _, cfg, expected = openimages_published
    src = write_tree(tmp_path / "lab", openimages_layouts(images, masks)[layout])
    before = listing(src)
    raw = tmp_path / "raw_folder" / "openimages"
    summary = build_dataset(
        "openimages", at(cfg, src, "content"), raw, archive_dir=tmp_path / "archives", progress=False
    )
    assert tree(raw) == expected
    assert listing(src) == before  # nothing written into the user's folder
    sources = summary["sources"]
    for part in ("OpenImages_images", "OpenImages_annotations"):
        assert sources[part]["kind"] == "folder" and sources[part]["md5"].endswith(".dir"), sources[part]
    if layout == "wsolevaluation":  # one folder is both parts
        assert sources["OpenImages_images"]["name"] == sources["OpenImages_annotations"]["name"] == "OpenImages"
    # only what is used is read: 3 train + 2 val + 2 test images; 2 + 1 + 3 + 2 masks
    assert (sources["OpenImages_images"]["files_read"], sources["OpenImages_annotations"]["files_read"]) == (7, 8)
    assert summary["found"] == {"train images": 4, "val images": 4, "test images": 3, "classes": 3}

    cfg_parts = openimages.parts(cfg)
    fp = fingerprint(src, cfg_parts)
    flip_a_byte(next(src.rglob("t2.jpg")))
    assert fingerprint(src, cfg_parts) != fp
    again = build_dataset(
        "openimages",
        at(cfg, src, "content"),
        tmp_path / "raw_again" / "openimages",
        archive_dir=tmp_path / "archives",
        progress=False,
    )
    assert again["sources"]["OpenImages_images"]["md5"] != sources["OpenImages_images"]["md5"]
    assert again["sources"]["OpenImages_annotations"]["md5"] == sources["OpenImages_annotations"]["md5"]


@pytest.mark.parametrize("missing", ["OpenImages_annotations.zip", "OpenImages_images.zip"])
def test_openimages_missing_part_names_the_file_the_folder_and_source_dir(tmp_path, missing):
    """Only one zip was unzipped into OpenImages/: the masks part is not satisfied by a folder without PNGs, nor
    the images part by one without train JPEGs."""
    images, masks = openimages_members()
    present = masks if missing == "OpenImages_images.zip" else images
    src = write_tree(tmp_path / "dataset", {f"OpenImages/{k}": v for k, v in present.items()})
    cfg = at(
        OpenImagesParams(num_classes=2, val_per_class=1, mode="manual", source_dir=None, verify="published"),
        src,
        "content",
    )
    with pytest.raises(ManualFilesError) as err:
        build_dataset(
            "openimages", cfg, tmp_path / "raw" / "openimages", archive_dir=tmp_path / "archives", progress=False
        )
    message = str(err.value)
    assert message.startswith("openimages: 1 of 2 part(s) not found.")
    what = {
        "OpenImages_annotations.zip": "extracted folder of val/, test/ class folders of PNG masks",
        "OpenImages_images.zip": "extracted folder of train/, val/, test/ class folders of JPEGs",
    }[missing]
    assert f"{src.absolute() / missing}: missing, and no {what} (wsolevaluation's OpenImages/) under {src}" in message
    assert err.value.problems == [message.split("\n  - ")[1].split("\n")[0]]
    assert "datasets.openimages.source_dir" in message
    assert not (tmp_path / "raw").exists()
