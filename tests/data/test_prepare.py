"""The preprocess step: image checks, GT box rescaling (METHOD.md 4.3), packed masks, clear errors."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.prepare import (DataError, load_ground_truth, load_prepared, prepare_dataset, read_gt_mask,
                                   read_mask, rescale_box)
from pipeline.data.synthbirds import SynthBirdsSpec, generate
from pipeline.data.wsol import SplitMetadata, write_split


def test_rescale_box_truncates_each_coordinate():
    # int(x * 224 / W), int(y * 224 / H): the CUB example row 60,27,385,331 on a 500x375 image.
    assert rescale_box((60, 27, 385, 331), 500, 375, 224) == (26, 16, 172, 197)
    assert rescale_box((0, 0, 499, 374), 500, 375, 224) == (0, 0, 223, 223)
    assert rescale_box((3, 3, 5, 5), 10, 10, 4) == (1, 1, 2, 2)  # 1.2 -> 1, 2.0 -> 2


def make_raw(root, *, sizes=((40, 30), (20, 20)), boxes=None, labels=(0, 1), masks=False):
    """A two-image raw dataset in the project's raw layout."""
    ids = [f"c{i}/img{i}.png" for i in range(len(sizes))]
    rng = np.random.default_rng(0)
    for image_id, (w, h) in zip(ids, sizes):
        path = root / "images" / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    boxes = boxes or {ids[0]: ((4, 3, 19, 14),), ids[1]: ((0, 0, 19, 19), (5, 5, 9, 9))}
    for split in ("train", "test"):
        write_split(root / "metadata" / split, SplitMetadata(
            image_ids=tuple(ids), labels=dict(zip(ids, labels)), sizes=dict(zip(ids, sizes)), boxes=boxes))
    if masks:
        for image_id, (w, h) in zip(ids, sizes):
            m = np.zeros((h, w), dtype=np.uint8)
            m[: h // 2, : w // 2] = 255
            ign = np.zeros((h, w), dtype=np.uint8)
            ign[:, : w // 4] = 255  # overlaps the foreground on its left half
            (root / "masks" / image_id).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).convert("1").save(root / "masks" / image_id)
            Image.fromarray(ign).save(root / "masks" / image_id.replace(".png", "_ignore.png"))
        for split in ("train", "test"):
            write_split(root / "metadata_mask" / split, SplitMetadata(
                image_ids=tuple(ids), labels=dict(zip(ids, labels)), sizes=dict(zip(ids, sizes)),
                masks={i: ((i,), i.replace(".png", "_ignore.png")) for i in ids}))
    return ids


def test_prepare_writes_tables(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prep"
    ids = make_raw(raw)
    summary = prepare_dataset(raw, out, dataset="toy", num_classes=2, eval_size=10, progress=False)
    assert summary["counts"] == {"train": 2, "test": 2}
    assert summary["boxes"] == 6
    with open(out / "boxes.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    assert [(r["image_id"], int(r["ex0"]), int(r["ey0"]), int(r["ex1"]), int(r["ey1"])) for r in rows] == [
        (ids[0], 1, 1, 4, 4),   # (4*10/40, 3*10/30, 19*10/40, 14*10/30) truncated
        (ids[1], 0, 0, 9, 9),
        (ids[1], 2, 2, 4, 4),
    ]
    prepared = load_prepared(out, dataset="toy", num_classes=2)
    assert prepared.split("test").image_ids == ids
    assert prepared.split("test").sizes == [(40, 30), (20, 20)]
    assert prepared.image_root == raw / "images"
    assert sorted(p.name for p in out.iterdir()) == ["boxes.csv", "dataset.json", "images.csv"]


def test_prepare_is_deterministic(tmp_path):
    raw = tmp_path / "raw"
    make_raw(raw, masks=True)
    for name in ("a", "b"):
        prepare_dataset(raw, tmp_path / name, dataset="toy", num_classes=2, eval_size=8, progress=False)
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_masks_are_packed_with_ignore_minus_foreground(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prep"
    make_raw(raw, masks=True)
    prepare_dataset(raw, out, dataset="toy", num_classes=2, eval_size=8, progress=False)
    fg = np.unpackbits(np.load(out / "test_mask_fg.npy"), axis=1)[:, :64].reshape(-1, 8, 8).astype(bool)
    ignore = np.unpackbits(np.load(out / "test_mask_ignore.npy"), axis=1)[:, :64].reshape(-1, 8, 8).astype(bool)
    expected_fg = np.zeros((8, 8), bool)
    expected_fg[:4, :4] = True
    expected_ignore = np.zeros((8, 8), bool)
    expected_ignore[4:, :2] = True  # left quarter, minus the foreground
    for i in range(2):
        assert np.array_equal(fg[i], expected_fg)
        assert np.array_equal(ignore[i], expected_ignore)


def test_synthbirds_boxes_match_masks_after_preprocess(tmp_path):
    spec = SynthBirdsSpec(num_classes=3, image_size=32, train_per_class=2, val_per_class=1, test_per_class=2,
                          supersample=1)
    generate(spec, tmp_path / "raw", progress=False)
    info = prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="synthbirds", num_classes=3, eval_size=32,
                           progress=False)
    assert info["counts"] == {"train": 6, "val": 3, "test": 6}
    assert info["class_names"][0].endswith("wing")
    fg = np.unpackbits(np.load(tmp_path / "prep" / "test_mask_fg.npy"), axis=1).reshape(-1, 32, 32)
    with open(tmp_path / "prep" / "boxes.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    for mask, row in zip(fg, rows):  # same grid as the images: the box is the mask's tight box
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == tuple(int(row[k]) for k in ("ex0", "ey0", "ex1", "ey1"))


def test_missing_image_is_named(tmp_path):
    ids = make_raw(tmp_path / "raw")
    (tmp_path / "raw" / "images" / ids[1]).unlink()
    with pytest.raises(DataError, match=r"img1\.png: image listed in the metadata is missing"):
        prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)
    assert not (tmp_path / "prep").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep")]  # nothing half-written


def test_corrupt_image_is_named(tmp_path):
    ids = make_raw(tmp_path / "raw")
    path = tmp_path / "raw" / "images" / ids[0]
    path.write_bytes(path.read_bytes()[:60])  # truncated PNG
    with pytest.raises(DataError, match=r"img0\.png: image cannot be decoded"):
        prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)


def test_size_mismatch_is_named(tmp_path):
    ids = make_raw(tmp_path / "raw")
    Image.new("RGB", (41, 30)).save(tmp_path / "raw" / "images" / ids[0])
    with pytest.raises(DataError, match=r"image_sizes.txt: c0/img0.png is listed as 40x30 but the image is 41x30"):
        prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)


def test_label_out_of_range_is_named(tmp_path):
    make_raw(tmp_path / "raw", labels=(0, 5))
    with pytest.raises(DataError, match=r"class_labels.txt: c1/img1.png has label 5; valid labels are 0..1"):
        prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)


def test_box_outside_image_is_named(tmp_path):
    make_raw(tmp_path / "raw", boxes={"c0/img0.png": ((0, 0, 40, 10),)})
    with pytest.raises(DataError, match=r"box \(0, 0, 40, 10\) of c0/img0.png lies outside the 40x30 image"):
        prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)


def test_missing_split_and_bad_metadata_are_named(tmp_path):
    with pytest.raises(DataError, match=r"metadata/train: metadata folder missing.*run the download stage"):
        prepare_dataset(tmp_path, tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)
    make_raw(tmp_path / "raw")
    (tmp_path / "raw" / "metadata" / "test" / "class_labels.txt").write_text("c0/img0.png,x\n")
    with pytest.raises(DataError, match=r"class_labels.txt:1"):
        prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="t", num_classes=2, eval_size=8, progress=False)


def test_load_prepared_checks_params(tmp_path):
    make_raw(tmp_path / "raw")
    prepare_dataset(tmp_path / "raw", tmp_path / "prep", dataset="toy", num_classes=2, eval_size=8, progress=False)
    with pytest.raises(DataError, match="prepared for dataset 'toy', params ask for 'synthbirds'"):
        load_prepared(tmp_path / "prep", dataset="synthbirds")
    with pytest.raises(DataError, match="prepared with 2 classes, params ask for 10"):
        load_prepared(tmp_path / "prep", num_classes=10)
    with pytest.raises(DataError, match="run the preprocess stage first"):
        load_prepared(tmp_path / "nothing")
    assert json.loads((tmp_path / "prep" / "dataset.json").read_text())["eval_size"] == 8


# --- masks read as wsolevaluation's load_mask_image (OpenCV INTER_NEAREST) ------------------------

FIXTURE_MASKS = Path(__file__).resolve().parents[1] / "fixtures" / "wsol_test_masks"


def test_read_mask_samples_source_pixel_floor_x_times_scale(tmp_path):
    # 7 columns -> 3: OpenCV INTER_NEAREST takes columns floor(x * 7 / 3) = 0, 2, 4; Pillow's NEAREST
    # would take floor((x + 0.5) * 7 / 3) = 1, 3, 5.
    stripes = np.zeros((7, 7), np.uint8)
    stripes[:, [0, 2, 4]] = 255
    Image.fromarray(stripes).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", 3).tolist() == [[True, True, True]] * 3
    pil = np.asarray(Image.fromarray(stripes).resize((3, 3), Image.NEAREST)) > 127
    assert not pil.any()


def test_read_mask_threshold_is_half_of_full_scale(tmp_path):
    soft = np.array([[0, 127, 128, 255]], np.uint8)  # CUB: grey = fraction of annotators
    Image.fromarray(soft).save(tmp_path / "soft.png")
    assert read_mask(tmp_path / "soft.png", 4)[0].tolist() == [False, False, True, True]


def test_read_mask_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.png: mask listed in the metadata is missing"):
        read_mask(tmp_path / "nope.png", 8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: mask cannot be decoded"):
        read_mask(tmp_path / "bad.png", 8)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: mask cannot be decoded"):
        read_mask(tmp_path / "empty.png", 8)


def test_prepare_packs_the_official_masks_as_the_official_loader_reads_them(tmp_path):
    # A raw dataset made of wsolevaluation's test masks (two val images, one with two instances).
    raw = tmp_path / "raw"
    image_ids = ("val/0bt_c3/3a29f0b33894d4a6.png", "val/0bt_c3/3b3b9931325d65c9.png")
    shutil.copytree(FIXTURE_MASKS / "val", raw / "masks" / "val")
    for image_id in image_ids:
        (raw / "images" / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (1600, 1066)).save(raw / "images" / image_id)
    stem = [i.removesuffix(".png") for i in image_ids]
    masks = {image_ids[0]: ((f"{stem[0]}_m0bt_c3_d2422806.png", f"{stem[0]}_m0bt_c3_3581e3ae.png"),
                            f"{stem[0]}_ignore.png"),
             image_ids[1]: ((f"{stem[1]}_m0bt_c3_d4e2e136.png",), f"{stem[1]}_ignore.png")}
    for split in ("train", "test"):
        write_split(raw / "metadata" / split, SplitMetadata(image_ids, dict.fromkeys(image_ids, 0), {}))
        write_split(raw / "metadata_mask" / split,
                    SplitMetadata(image_ids, dict.fromkeys(image_ids, 0), {}, masks=masks))
    prepare_dataset(raw, tmp_path / "prep", dataset="openimages", num_classes=1, eval_size=224, progress=False)
    truth = load_ground_truth(tmp_path / "prep", "test")
    # foreground pixels of wsolevaluation's evaluation_test.py; background + ignore = the rest
    assert truth.fg.sum(axis=(1, 2)).tolist() == [833, 347]
    assert truth.ignore.sum(axis=(1, 2)).tolist() == [0, 224 * 224 - 347 - 13910]
    for k, image_id in enumerate(image_ids):
        fg, ignore = read_gt_mask(raw / "masks", *masks[image_id], 224)
        assert np.array_equal(truth.fg[k], fg) and np.array_equal(truth.ignore[k], ignore)
