"""CUB and ILSVRC as labs keep them: the published archives, the same archives repacked or recompressed, and the
extracted folders (CUB_200_2011/ + segmentations/; ImageNet's val and train folders, val sorted into <wnid>/
folders, and the localization challenge's layout with LOC_val_solution.csv). Every layout must give the raw
output of the published archives byte for byte (source.json aside), read only what is used, write nothing into
the user's folder, and a copy that is not the published archive is accepted only with `verify: content`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.fetch import ManualFilesError
from pipeline.data.real import NotPublishedError, build_dataset, cub, ilsvrc
from pipeline.data.real.source import fingerprint
from pipeline.params import CubParams, IlsvrcParams
from tests.data.archives import tar_bytes, zip_bytes
from tests.data.test_real_datasets import CUB_CLASSES, CUB_IMAGES, ILSVRC_VAL, WNIDS, jpeg, png, voc_xml


def grey_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(w * h, dtype=np.uint8).reshape(h, w)).save(buf, format="JPEG")
    return buf.getvalue()


def cmyk_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (w, h), (10, 200, 30, 5)).save(buf, format="JPEG")
    return buf.getvalue()


def png_rgb(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def publish(monkeypatch, module, attr: str, data: bytes):
    """Make `data` the published file of `module.attr` (its size and sha256), with no URL (nothing downloads)."""
    spec = getattr(module, attr)
    monkeypatch.setattr(
        module,
        attr,
        dataclasses.replace(spec, url=None, size=len(data), sha256=hashlib.sha256(data).hexdigest(), md5=None),
    )


def write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every file of a raw output but source.json, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "source.json"
    }


def listing(root: Path) -> list[tuple[str, int, int]]:
    return [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))]


def recompress_xz(tgz: bytes) -> bytes:
    """The same members as a .tar.xz (a repacked copy: other bytes, same content)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:xz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    return out.getvalue()


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# ----------------------------------------------------------------------------------------------------
# CUB


def cub_members() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """CUB_200_2011/ and segmentations/ members with CUB's quirks: a grayscale JPEG, 0/51/153/255 masks."""
    r = "CUB_200_2011/"
    members = {
        "attributes.txt": b"1 has_bill_shape::curved\n",
        r + "classes.txt": "".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)).encode(),
    }
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    seg = {}
    for n, (cls, name, train, box, (w, h)) in enumerate(CUB_IMAGES, 1):
        path = f"{CUB_CLASSES[cls - 1]}/{name}"
        members[r + "images/" + path] = grey_jpeg(w, h) if n == 2 else jpeg(w, h, n)
        rows["images.txt"].append(f"{n} {path}")
        rows["image_class_labels.txt"].append(f"{n} {cls}")
        rows["train_test_split.txt"].append(f"{n} {train}")
        rows["bounding_boxes.txt"].append(f"{n} {box}")
        m = np.zeros((h, w), np.uint8)
        m[: h // 2, : w // 2] = 255
        m[h // 2 :, : w // 2] = 153
        m[: h // 2, w // 2 :] = 51
        seg[f"segmentations/{path[:-4]}.png"] = png(m)
    for file, r_lines in rows.items():
        members[r + file] = ("\n".join(r_lines) + "\n").encode()
    return members, seg


@pytest.fixture
def cub_published(monkeypatch, tmp_path):
    members, seg = cub_members()
    tgz, seg_tgz = tar_bytes(members), tar_bytes(seg)
    publish(monkeypatch, cub, "ARCHIVE", tgz)
    publish(monkeypatch, cub, "SEGMENTATIONS", seg_tgz)
    src = write_tree(tmp_path / "published", {"CUB_200_2011.tgz": tgz, "segmentations.tgz": seg_tgz})
    cfg = CubParams(
        num_classes=3, val_per_class=1, segmentations=True, mode="manual", source_dir=str(src), verify="published"
    )
    raw = tmp_path / "raw_published"
    build_dataset("cub", cfg, raw, archive_dir=tmp_path / "archives", progress=False)
    return members, seg, cfg, tree(raw)


def at(cfg, src: Path, verify: str):
    """The dataset params `cfg` reading from `src` with `verify`."""
    return dataclasses.replace(cfg, source_dir=str(src), verify=verify)


def test_cub_extracted_folders_give_the_published_bytes(cub_published, tmp_path):
    members, seg, cfg, expected = cub_published
    src = write_tree(tmp_path / "lab" / "datasets", {"CUB/" + k: v for k, v in {**members, **seg}.items()})
    before = listing(src)
    raw = tmp_path / "raw_folder"
    summary = build_dataset("cub", at(cfg, src, "content"), raw, archive_dir=tmp_path / "archives", progress=False)
    assert tree(raw) == expected
    assert listing(src) == before  # nothing written into the user's folder
    assert summary["sources"]["CUB_200_2011"]["kind"] == "folder"
    assert summary["sources"]["CUB_200_2011"]["md5"].endswith(".dir")
    assert summary["sources"]["CUB_200_2011"]["files_read"] == 5 + 9  # five annotation files + 9 images
    assert summary["found"] == {"images": 9, "classes": 3, "boxes": 9}
    assert "images: 9 (published 11,788)" in summary["differs_from_published"]

    # one byte of a used image changes the identity (and the fingerprint the download stage depends on)
    image = next(src.rglob("Black_Footed_Albatross_0001_1.jpg"))
    fp = fingerprint(src, cub.parts(cfg))
    data = bytearray(image.read_bytes())
    data[-3] ^= 1
    image.write_bytes(bytes(data))
    assert fingerprint(src, cub.parts(cfg)) != fp
    again = build_dataset(
        "cub", at(cfg, src, "content"), tmp_path / "raw_again", archive_dir=tmp_path / "archives", progress=False
    )
    assert again["sources"]["CUB_200_2011"]["md5"] != summary["sources"]["CUB_200_2011"]["md5"]


def test_cub_repacked_archives_need_verify_content(cub_published, tmp_path):
    members, seg, cfg, expected = cub_published
    src = write_tree(
        tmp_path / "repacked",
        {"CUB_200_2011.tar.xz": recompress_xz(tar_bytes(members)), "segmentations.zip": zip_bytes(seg)},
    )
    with pytest.raises(NotPublishedError) as err:
        build_dataset(
            "cub",
            at(cfg, src, "published"),
            tmp_path / "raw_refused",
            archive_dir=tmp_path / "archives",
            progress=False,
        )
    message = str(err.value)
    assert "datasets.cub.verify: content" in message
    assert "CUB_200_2011.tar.xz (not the published file name)" in message
    assert "images: 9 (published 11,788); classes: 3 (published 200); boxes: 9 (published 11,788)" in message
    assert "Delete it and run again" not in message.split("\n")[0]
    assert not (tmp_path / "raw_refused").exists()

    raw = tmp_path / "raw_repacked"
    summary = build_dataset("cub", at(cfg, src, "content"), raw, archive_dir=tmp_path / "archives", progress=False)
    assert tree(raw) == expected
    assert summary["sources"]["CUB_200_2011"] == {
        "kind": "archive",
        "name": "CUB_200_2011.tar.xz",
        "md5": hashlib.md5((src / "CUB_200_2011.tar.xz").read_bytes()).hexdigest(),
    }


def test_cub_published_name_with_other_bytes_names_verify_and_the_differences(cub_published, tmp_path):
    members, seg, cfg, _ = cub_published
    subset = {k: v for k, v in members.items() if "Sooty_Albatross_0003" not in k}  # a lab's copy, one image less
    src = write_tree(tmp_path / "other", {"CUB_200_2011.tgz": tar_bytes(subset), "segmentations.tgz": tar_bytes(seg)})
    with pytest.raises(
        NotPublishedError,
        match=r"(?s)CUB_200_2011\.tgz: size is .* bytes, expected .*"
        r"datasets\.cub\.verify: content.*interrupted download, delete it",
    ):
        build_dataset(
            "cub", at(cfg, src, "published"), tmp_path / "raw", archive_dir=tmp_path / "archives", progress=False
        )


def test_cub_missing_part_names_the_file_the_folder_and_source_dir(tmp_path):
    cfg = CubParams(
        num_classes=3,
        val_per_class=1,
        segmentations=True,
        mode="manual",
        source_dir=str(tmp_path / "empty"),
        verify="content",
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManualFilesError) as err:
        build_dataset("cub", cfg, tmp_path / "raw", archive_dir=tmp_path / "archives", progress=False)
    message = str(err.value)
    assert "CUB_200_2011.tgz: missing (1,150,585,339 bytes" in message
    assert "no extracted CUB_200_2011/ folder (images.txt and images/)" in message
    assert "segmentations.tgz: missing" in message and "datasets.cub.source_dir" in message


# ----------------------------------------------------------------------------------------------------
# ILSVRC


def ilsvrc_members() -> dict[str, dict[str, bytes]]:
    """val images (one CMYK JPEG), val boxes (a two-object image), train images per class (one PNG named .JPEG)."""
    val = {
        f"{stem}.JPEG": (cmyk_jpeg(w, h) if i == 2 else jpeg(w, h, i))
        for i, (stem, (w, h, _)) in enumerate(ILSVRC_VAL.items())
    }
    boxes = {f"{stem}.xml": voc_xml(stem, w, h, objs) for stem, (w, h, objs) in ILSVRC_VAL.items()}
    train = {
        w: {
            f"{w}_{k}.JPEG": (png_rgb(20, 16) if (i, k) == (1, 10) else jpeg(20, 16, 100 + 10 * i + k))
            for k in (30, 10, 20)
        }
        for i, w in enumerate(WNIDS)
    }
    return {"val": val, "boxes": boxes, "train": train}


def loc_csv(boxes: dict[str, bytes]) -> bytes:
    rows = ["ImageId,PredictionString"]
    for stem, (_, _, objs) in ILSVRC_VAL.items():
        rows.append(f"{stem}," + " ".join(f"{n} {x0} {y0} {x1} {y1}" for n, x0, y0, x1, y1 in objs) + " ")
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture
def ilsvrc_published(monkeypatch, tmp_path):
    m = ilsvrc_members()
    files = {
        "ILSVRC2012_img_val.tar": tar_bytes(m["val"], mode="w"),
        "ILSVRC2012_bbox_val_v3.tgz": tar_bytes({f"val/{k}": v for k, v in m["boxes"].items()}),
        "ILSVRC2012_img_train.tar": tar_bytes(
            {f"{w}.tar": tar_bytes(imgs, mode="w") for w, imgs in m["train"].items()}, mode="w"
        ),
    }
    for attr in ("VAL", "BBOX_VAL", "TRAIN"):
        publish(monkeypatch, ilsvrc, attr, files[getattr(ilsvrc, attr).name])
    src = write_tree(tmp_path / "published", files)
    cfg = IlsvrcParams(num_classes=2, val_per_class=1, train_per_class=2, source_dir=str(src), verify="published")
    raw = tmp_path / "raw_published"
    summary = build_dataset("ilsvrc", cfg, raw, archive_dir=tmp_path / "a", progress=False)
    assert summary["counts"] == {"train": 4, "val": 2, "test": 4}
    return m, files, cfg, tree(raw)


def ilsvrc_layouts(m: dict) -> dict[str, dict[str, bytes]]:
    train = {f"{w}/{name}": data for w, imgs in m["train"].items() for name, data in imgs.items()}
    by_class = {f"{ILSVRC_VAL[k[:-5]][2][0][0]}/{k}": v for k, v in m["val"].items()}
    return {
        "folders": {
            **{f"imagenet/train/{k}": v for k, v in train.items()},
            **{f"imagenet/val/{k}": v for k, v in m["val"].items()},
            **{f"imagenet/bbox/val/{k}": v for k, v in m["boxes"].items()},
        },
        "val sorted by class": {
            **{f"train/{k}": v for k, v in train.items()},
            **{f"val/{k}": v for k, v in by_class.items()},
            **{f"val_boxes/{k}": v for k, v in m["boxes"].items()},
        },
        "localization challenge": {
            "challenge/LOC_val_solution.csv": loc_csv(m["boxes"]),
            "challenge/LOC_synset_mapping.txt": "".join(f"{w} fish {i}\n" for i, w in enumerate(WNIDS)).encode(),
            **{f"challenge/ILSVRC/Data/CLS-LOC/train/{k}": v for k, v in train.items()},
            **{f"challenge/ILSVRC/Data/CLS-LOC/val/{k}": v for k, v in m["val"].items()},
            **{f"challenge/ILSVRC/Data/CLS-LOC/test/ILSVRC2012_test_0000000{i}.JPEG": jpeg(8, 8, i) for i in (1, 2)},
            **{f"challenge/ILSVRC/Annotations/CLS-LOC/val/{k}": v for k, v in m["boxes"].items()},
        },
    }


@pytest.mark.parametrize("layout", ["folders", "val sorted by class", "localization challenge"])
def test_ilsvrc_extracted_layouts_give_the_published_bytes(ilsvrc_published, tmp_path, layout):
    m, _, cfg, expected = ilsvrc_published
    src = write_tree(tmp_path / "lab", ilsvrc_layouts(m)[layout])
    before = listing(src)
    raw = tmp_path / "raw"
    summary = build_dataset("ilsvrc", at(cfg, src, "content"), raw, archive_dir=tmp_path / "a", progress=False)
    assert tree(raw) == expected
    assert listing(src) == before
    assert {s["kind"] for s in summary["sources"].values()} == {"folder"}
    # read only what is used: 2 of 3 classes x 2 train images, the 4 val images of the kept classes
    assert summary["sources"]["train"]["files_read"] == 4
    assert summary["sources"]["val"]["files_read"] == 4
    assert summary["found"] == {"val images": 5, "classes": 3, "boxes": 6, "train classes": 3, "train images": 9}


def test_ilsvrc_train_tar_reads_only_the_selected_members(ilsvrc_published, tmp_path, monkeypatch):
    _, files, cfg, expected = ilsvrc_published
    extracted = []
    real = tarfile.TarFile.extract

    def spy(self, member, path="", **kw):
        extracted.append(member.name if isinstance(member, tarfile.TarInfo) else member)
        return real(self, member, path, **kw)

    monkeypatch.setattr(tarfile.TarFile, "extract", spy)
    src = tmp_path / "published"
    build_dataset("ilsvrc", at(cfg, src, "published"), tmp_path / "raw", archive_dir=tmp_path / "a", progress=False)
    train = sorted(n for n in extracted if n.startswith("n0"))
    assert train == sorted(f"{w}_{k}.JPEG" for w in WNIDS[:2] for k in (10, 20))  # 4 of the 9 train images


def test_ilsvrc_recompressed_archives_with_verify_content(ilsvrc_published, tmp_path):
    _, files, cfg, expected = ilsvrc_published
    src = write_tree(
        tmp_path / "repacked",
        {
            "ILSVRC2012_img_val.tar.gz": tar_bytes(untar(files["ILSVRC2012_img_val.tar"])),
            "ILSVRC2012_bbox_val_v3.tar.xz": recompress_xz(files["ILSVRC2012_bbox_val_v3.tgz"]),
            "ILSVRC2012_img_train.tar.gz": tar_bytes(
                {k: v for k, v in untar(files["ILSVRC2012_img_train.tar"]).items()}
            ),
        },
    )
    with pytest.raises(
        NotPublishedError,
        match=r"(?s)3 part\(s\) are not the publisher's archive.*"
        r"val images: 5 \(published 50,000\).*"
        r"datasets\.ilsvrc\.verify: content",
    ):
        build_dataset(
            "ilsvrc", at(cfg, src, "published"), tmp_path / "refused", archive_dir=tmp_path / "a", progress=False
        )
    raw = tmp_path / "raw"
    build_dataset("ilsvrc", at(cfg, src, "content"), raw, archive_dir=tmp_path / "a", progress=False)
    assert tree(raw) == expected


def test_ilsvrc_loc_csv_errors_name_the_file_and_line(ilsvrc_published, tmp_path):
    m, _, cfg, _ = ilsvrc_published
    layout = ilsvrc_layouts(m)["localization challenge"]
    layout["challenge/LOC_val_solution.csv"] = b"ImageId,PredictionString\nILSVRC2012_val_00000001,n01484850 1 2 3\n"
    src = write_tree(tmp_path / "lab", layout)
    with pytest.raises(ValueError, match=r"LOC_val_solution\.csv:2: expected '<image id>,<wnid x0 y0 x1 y1 \.\.\.>'"):
        build_dataset("ilsvrc", at(cfg, src, "content"), tmp_path / "raw", archive_dir=tmp_path / "a", progress=False)


def test_ilsvrc_without_train_names_the_tar_and_the_train_folder(ilsvrc_published, tmp_path):
    m, _, cfg, _ = ilsvrc_published
    layout = {k: v for k, v in ilsvrc_layouts(m)["folders"].items() if "/train/" not in k}
    src = write_tree(tmp_path / "lab", layout)
    with pytest.raises(
        ManualFilesError,
        match=r"ILSVRC2012_img_train\.tar: missing \([\d,]+ bytes.*"
        r"no train folder of <wnid>/ folders",
    ):
        build_dataset("ilsvrc", at(cfg, src, "content"), tmp_path / "raw", archive_dir=tmp_path / "a", progress=False)


def test_ilsvrc_fingerprint_of_the_challenge_layout_walks_each_part_once(ilsvrc_published, tmp_path):
    """The box part is the challenge's top folder (it holds LOC_val_solution.csv): its fingerprint covers that file
    alone, not the train and val images the other parts already cover."""
    m, _, cfg, _ = ilsvrc_published
    src = write_tree(tmp_path / "lab", ilsvrc_layouts(m)["localization challenge"]) / "challenge"
    fp = fingerprint(src, ilsvrc.parts(cfg))
    assert (fp["val boxes"]["kind"], fp["val boxes"]["files"]) == ("folder", 1)
    assert fp["train"]["files"] == 9 and fp["val"]["files"] == 5
    (src / "LOC_val_solution.csv").write_bytes((src / "LOC_val_solution.csv").read_bytes() + b"\n")
    assert fingerprint(src, ilsvrc.parts(cfg))["val boxes"]["stat_md5"] != fp["val boxes"]["stat_md5"]
