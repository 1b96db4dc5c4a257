"""The preprocess step: image checks, GT box rescaling (METHOD.md 4.3), packed masks, clear errors."""

import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.data.prepare as prepare
from pipeline.data.prepare import (
    DataError,
    image_size,
    load_ground_truth,
    load_prepared,
    prepare_dataset,
    read_gt_mask,
    read_image_sizes,
    read_mask,
    rescale_box,
)
from pipeline.data.synthbirds import SynthBirdsSpec, generate
from pipeline.data.wsol import SplitMetadata, read_split, write_split


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
        write_split(
            root / "metadata" / split,
            SplitMetadata(
                image_ids=tuple(ids), labels=dict(zip(ids, labels)), sizes=dict(zip(ids, sizes)), boxes=boxes
            ),
        )
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
            write_split(
                root / "metadata_mask" / split,
                SplitMetadata(
                    image_ids=tuple(ids),
                    labels=dict(zip(ids, labels)),
                    sizes=dict(zip(ids, sizes)),
                    masks={i: ((i,), i.replace(".png", "_ignore.png")) for i in ids},
                ),
            )
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
        (ids[0], 1, 1, 4, 4),  # (4*10/40, 3*10/30, 19*10/40, 14*10/30) truncated
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
    spec = SynthBirdsSpec(
        num_classes=3, image_size=32, train_per_class=2, val_per_class=1, test_per_class=2, supersample=1
    )
    generate(spec, tmp_path / "raw", progress=False)
    info = prepare_dataset(
        tmp_path / "raw", tmp_path / "prep", dataset="synthbirds", num_classes=3, eval_size=32, progress=False
    )
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
    masks = {
        image_ids[0]: ((f"{stem[0]}_m0bt_c3_d2422806.png", f"{stem[0]}_m0bt_c3_3581e3ae.png"), f"{stem[0]}_ignore.png"),
        image_ids[1]: ((f"{stem[1]}_m0bt_c3_d4e2e136.png",), f"{stem[1]}_ignore.png"),
    }
    for split in ("train", "test"):
        write_split(raw / "metadata" / split, SplitMetadata(image_ids, dict.fromkeys(image_ids, 0), {}))
        write_split(
            raw / "metadata_mask" / split, SplitMetadata(image_ids, dict.fromkeys(image_ids, 0), {}, masks=masks)
        )
    prepare_dataset(raw, tmp_path / "prep", dataset="openimages", num_classes=1, eval_size=224, progress=False)
    truth = load_ground_truth(tmp_path / "prep", "test")
    # foreground pixels of wsolevaluation's evaluation_test.py; background + ignore = the rest
    assert np.asarray(truth.fg).sum(axis=(1, 2)).tolist() == [833, 347]
    assert np.asarray(truth.ignore).sum(axis=(1, 2)).tolist() == [0, 224 * 224 - 347 - 13910]
    assert truth.fg.shape == (2, 224, 224) and np.array_equal(truth.fg[0:2], np.asarray(truth.fg))
    for k, image_id in enumerate(image_ids):
        fg, ignore = read_gt_mask(raw / "masks", *masks[image_id], 224)
        assert np.array_equal(truth.fg[k], fg) and np.array_equal(truth.ignore[k], ignore)


# --- sizes from the headers, in parallel: same outputs and same errors as the full decode ------------


def reference_prepare_dataset(
    raw_dir: Path, out_dir: Path, *, dataset: str, num_classes: int, eval_size: int, progress: bool = True
) -> dict:
    """`prepare_dataset` as it was before sizes came from the headers (commit 49d8fea): every image decoded
    in full, one after the other. Verbatim but for the module prefixes."""
    from tqdm import tqdm

    from pipeline.data.prepare import FORMAT, REQUIRED_SPLITS, SPLITS, _class_names, _csv, _pack_masks
    from pipeline.data.wsol import MetadataError
    from pipeline.io import atomic_dir, write_json, write_npy, write_text

    def _image_size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as im:
                im.load()  # decode fully: a truncated file fails here, not in training
                return im.size
        except FileNotFoundError:
            raise DataError(f"{path}: image listed in the metadata is missing") from None
        except OSError as exc:
            raise DataError(f"{path}: image cannot be decoded ({exc})") from exc

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    image_root, mask_root = raw_dir / "images", raw_dir / "masks"
    splits: dict[str, SplitMetadata] = {}
    mask_views: dict[str, SplitMetadata] = {}
    for split in SPLITS:
        meta_dir = raw_dir / "metadata" / split
        if not meta_dir.is_dir():
            if split in REQUIRED_SPLITS:
                raise DataError(
                    f"{meta_dir}: metadata folder missing; a dataset needs "
                    f"{', '.join(REQUIRED_SPLITS)} (run the download stage)"
                )
            continue
        try:
            splits[split] = read_split(meta_dir)
            if (raw_dir / "metadata_mask" / split).is_dir():
                mask_views[split] = read_split(raw_dir / "metadata_mask" / split)
        except MetadataError as exc:
            raise DataError(str(exc)) from exc

    image_rows, box_rows, counts, n_boxes = [], [], {}, 0
    with atomic_dir(out_dir) as tmp:
        for split, meta in splits.items():
            ids = list(meta.image_ids)
            for image_id in tqdm(ids, desc=f"check {split} images", disable=not progress, leave=False):
                label = meta.labels[image_id]
                if not 0 <= label < num_classes:
                    raise DataError(
                        f"{raw_dir}/metadata/{split}/class_labels.txt: {image_id} has label "
                        f"{label}; valid labels are 0..{num_classes - 1} (num_classes={num_classes})"
                    )
                width, height = _image_size(image_root / image_id)
                listed = meta.sizes.get(image_id)
                if listed is not None and listed != (width, height):
                    raise DataError(
                        f"{raw_dir}/metadata/{split}/image_sizes.txt: {image_id} is listed as "
                        f"{listed[0]}x{listed[1]} but the image is {width}x{height}"
                    )
                image_rows.append((split, image_id, label, width, height))
                for box in meta.boxes.get(image_id, ()):
                    if box[2] >= width or box[3] >= height:
                        raise DataError(
                            f"{raw_dir}/metadata/{split}/localization.txt: box {box} of {image_id} "
                            f"lies outside the {width}x{height} image"
                        )
                    box_rows.append((split, image_id, *box, *rescale_box(box, width, height, eval_size)))
                    n_boxes += 1
            counts[split] = len(ids)
            if split in mask_views:
                fg, ignore = _pack_masks(ids, mask_views[split], mask_root, eval_size)
                write_npy(tmp / f"{split}_mask_fg.npy", fg)
                write_npy(tmp / f"{split}_mask_ignore.npy", ignore)
        write_text(tmp / "images.csv", _csv(("split", "image_id", "label", "width", "height"), image_rows))
        write_text(
            tmp / "boxes.csv", _csv(("split", "image_id", "x0", "y0", "x1", "y1", "ex0", "ey0", "ex1", "ey1"), box_rows)
        )
        summary = {
            "format": FORMAT,
            "dataset": dataset,
            "num_classes": num_classes,
            "eval_size": eval_size,
            "image_root": image_root.as_posix(),
            "counts": counts,
            "boxes": n_boxes,
            "mask_splits": sorted(mask_views),
            "class_names": _class_names(raw_dir, num_classes),
        }
        write_json(tmp / "dataset.json", summary)
    return summary


def jpeg_bytes(w: int, h: int, seed: int = 0, **save) -> bytes:
    """A JPEG of a smooth random picture (a natural-looking scan: long entropy-coded data)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    noisy = np.clip(np.asarray(small, np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png_bytes(w: int, h: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def body_corrupt_jpeg(w: int = 64, h: int = 48) -> bytes:
    """Header and EOI intact, a marker (SOI) planted in the middle of the scan: the full decode fails."""
    data = jpeg_bytes(w, h)
    mid = len(data) // 2
    return data[:mid] + b"\xff\xd8" + data[mid + 2 :]


def grey_cmyk_progressive_exif() -> dict[str, bytes]:
    """JPEGs of the kinds real datasets hold (ILSVRC has CMYK ones and a PNG named .JPEG; phones write MPO)."""
    rgb = Image.open(io.BytesIO(jpeg_bytes(50, 37, seed=1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation "rotate 90": PIL does not apply it, neither size nor decode
    out = {}
    for name, im, kwargs in (
        ("grey", rgb.convert("L"), {}),
        ("cmyk", rgb.convert("CMYK"), {}),
        ("progressive", rgb, {"progressive": True}),
        ("exif", rgb, {"exif": exif}),
    ):
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kwargs)
        out[f"{name}.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    rgb.save(buf, "MPO", save_all=True, append_images=[rgb.convert("L").convert("RGB")])  # two JPEGs in one file
    out["mpo.jpg"] = buf.getvalue()
    out["png_named.JPEG"] = png_bytes(33, 21)
    out["trailing_zeros.jpg"] = jpeg_bytes(40, 30, seed=2) + bytes(100)  # padded: decodes, ends without EOI
    out["png_no_iend.png"] = png_bytes(20, 10)[:-12]  # the decoder does not need IEND
    return out


def make_jpeg_raw(root: Path, files: dict[str, bytes], *, n_plain: int = 12, labels=None) -> list[str]:
    """A raw dataset of `n_plain` plain JPEGs then `files`, train = test, one box per image."""
    contents = {f"c{i % 3}/{i:03d}.jpg": jpeg_bytes(40 + i, 30 + 2 * i, seed=i) for i in range(n_plain)}
    contents.update({f"odd/{name}": data for name, data in files.items()})
    ids = list(contents)
    sizes = {}
    for image_id, data in contents.items():
        (root / "images" / image_id).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / image_id).write_bytes(data)
        try:
            sizes[image_id] = Image.open(io.BytesIO(data)).size
        except OSError:
            sizes[image_id] = (10, 10)
    labels = labels or {i: k % 2 for k, i in enumerate(ids)}
    for split in ("train", "test"):
        write_split(
            root / "metadata" / split,
            SplitMetadata(
                image_ids=tuple(ids),
                labels=labels,
                sizes=sizes,
                boxes={i: ((1, 2, min(w, h) - 2, min(w, h) - 3),) for i, (w, h) in sizes.items()},
            ),
        )
    return ids


@pytest.fixture(params=["serial", "pool"])
def pool_mode(request, monkeypatch):
    """`workers` for prepare_dataset: one process, or a pool of two with tiny chunks (the order of the work
    then differs from the listing order)."""
    if request.param == "serial":
        yield 1
        return
    pools = []

    class Recorded(prepare.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(prepare, "ProcessPoolExecutor", Recorded)
    monkeypatch.setattr(prepare, "SIZE_MIN_PARALLEL", 1)
    monkeypatch.setattr(prepare, "SIZE_CHUNK", 2)
    yield 2
    assert len(pools) == 1  # the sizes did come from the pool, one pool for all splits


def assert_same_outputs(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name


def test_header_sizes_give_the_outputs_of_the_full_decode_on_synthbirds(tmp_path, pool_mode):
    spec = SynthBirdsSpec(
        num_classes=4, image_size=40, train_per_class=5, val_per_class=2, test_per_class=4, supersample=1
    )
    generate(spec, tmp_path / "raw", progress=False)
    kwargs = dict(dataset="synthbirds", num_classes=4, eval_size=32, progress=False)
    old = reference_prepare_dataset(tmp_path / "raw", tmp_path / "old", **kwargs)
    new = prepare_dataset(tmp_path / "raw", tmp_path / "new", workers=pool_mode, **kwargs)
    assert old == new and new["counts"] == {"train": 20, "val": 8, "test": 16} and new["mask_splits"]
    assert_same_outputs(tmp_path / "old", tmp_path / "new")


def test_header_sizes_give_the_outputs_of_the_full_decode_on_jpegs(tmp_path, pool_mode):
    make_jpeg_raw(tmp_path / "raw", grey_cmyk_progressive_exif())
    kwargs = dict(dataset="toy", num_classes=2, eval_size=16, progress=False)
    reference_prepare_dataset(tmp_path / "raw", tmp_path / "old", **kwargs)
    prepare_dataset(tmp_path / "raw", tmp_path / "new", workers=pool_mode, **kwargs)
    assert_same_outputs(tmp_path / "old", tmp_path / "new")


def test_image_size_decodes_only_files_without_their_end_marker(tmp_path, monkeypatch):
    decoded = []
    full = prepare._decoded_size
    monkeypatch.setattr(prepare, "_decoded_size", lambda path: decoded.append(path.name) or full(path))
    gif = io.BytesIO()
    Image.new("P", (6, 4)).save(gif, "GIF")
    files = {
        "plain.jpg": jpeg_bytes(40, 30),
        "plain.png": png_bytes(7, 5),
        **grey_cmyk_progressive_exif(),
        "plain.gif": gif.getvalue(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert image_size(tmp_path / name) == Image.open(io.BytesIO(data)).size, name
    # no end marker (padding after EOI, no IEND) or a format without one: decoded, as before; all others not
    assert sorted(decoded) == ["plain.gif", "png_no_iend.png", "trailing_zeros.jpg"]


# Damaged files: (name, bytes) of the image `odd/bad` among good ones. Every one fails the full decode.
CUT_SHORT = {
    "jpeg cut in half": lambda: jpeg_bytes(64, 48)[: len(jpeg_bytes(64, 48)) // 2],
    "jpeg without its EOI": lambda: jpeg_bytes(64, 48)[:-2],
    "jpeg cut inside the header": lambda: jpeg_bytes(64, 48)[:300],
    "progressive jpeg cut": lambda: jpeg_bytes(64, 48, progressive=True)[:-100],
    "png cut after IHDR": lambda: png_bytes(40, 30)[:60],
    "png cut in the data": lambda: png_bytes(40, 30)[:2000],
    "not an image": lambda: b"<html>404 Not Found</html>\n",
    "empty file": lambda: b"",
}


@pytest.mark.parametrize("damage", sorted(CUT_SHORT))
def test_files_cut_short_fail_in_preprocess_with_the_message_of_the_full_decode(tmp_path, pool_mode, damage):
    make_jpeg_raw(tmp_path / "raw", {"bad": CUT_SHORT[damage]()})
    kwargs = dict(dataset="t", num_classes=2, eval_size=8, progress=False)
    with pytest.raises(DataError) as old:
        reference_prepare_dataset(tmp_path / "raw", tmp_path / "old", **kwargs)
    with pytest.raises(DataError) as new:
        prepare_dataset(tmp_path / "raw", tmp_path / "new", workers=pool_mode, **kwargs)
    assert str(new.value) == str(old.value)
    assert str(new.value).startswith(f"{tmp_path / 'raw' / 'images' / 'odd' / 'bad'}: image cannot be decoded")
    assert not (tmp_path / "new").exists()


def test_a_damaged_body_behind_intact_ends_is_left_to_the_first_read(tmp_path):
    """What the header and end checks cannot see: the full decode rejected this file in preprocess, now
    preprocess passes it and load_rgb (training, cams) fails on it with its path (tests/data/test_images.py
    runs it through a DataLoader)."""
    from pipeline.data.images import load_rgb

    make_jpeg_raw(tmp_path / "raw", {"bad.jpg": body_corrupt_jpeg()})
    kwargs = dict(dataset="t", num_classes=2, eval_size=8, progress=False)
    with pytest.raises(DataError, match="bad.jpg: image cannot be decoded"):
        reference_prepare_dataset(tmp_path / "raw", tmp_path / "old", **kwargs)
    prepare_dataset(tmp_path / "raw", tmp_path / "new", **kwargs)
    with pytest.raises(OSError, match=r"odd/bad\.jpg: image cannot be decoded"):
        load_rgb(load_prepared(tmp_path / "new").image_root / "odd" / "bad.jpg")


def test_the_first_bad_image_in_listing_order_is_reported(tmp_path, monkeypatch):
    """Three bad images, the first one slowest to check (a full decode of a large file cut short, the others
    fail at once): the error is the first one's, whatever finishes first; the other checks keep their order."""
    monkeypatch.setattr(prepare, "SIZE_MIN_PARALLEL", 1)
    monkeypatch.setattr(prepare, "SIZE_CHUNK", 1)
    raw = tmp_path / "raw"
    ids = make_jpeg_raw(raw, {"a_cut.jpg": jpeg_bytes(1600, 1200)[:-2], "b_missing.jpg": b"", "c_text.jpg": b"x"})
    (raw / "images" / "odd" / "b_missing.jpg").unlink()
    kwargs = dict(dataset="t", num_classes=2, eval_size=8, progress=False, workers=2)
    for _ in range(3):
        with pytest.raises(DataError, match=r"odd/a_cut\.jpg: image cannot be decoded \(image file is truncated"):
            prepare_dataset(raw, tmp_path / "prep", **kwargs)
    # a bad label on an earlier row still comes first, as before
    meta = read_split(raw / "metadata" / "train")
    write_split(raw / "metadata" / "train", replace(meta, labels={**meta.labels, ids[3]: 7}))
    with pytest.raises(DataError, match=rf"class_labels.txt: {ids[3]} has label 7"):
        prepare_dataset(raw, tmp_path / "prep", **kwargs)
    with pytest.raises(DataError, match=rf"class_labels.txt: {ids[3]} has label 7"):
        reference_prepare_dataset(raw, tmp_path / "old", dataset="t", num_classes=2, eval_size=8, progress=False)


def test_read_image_sizes_in_parallel_matches_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "SIZE_MIN_PARALLEL", 1)
    monkeypatch.setattr(prepare, "SIZE_CHUNK", 3)
    ids = make_jpeg_raw(tmp_path, grey_cmyk_progressive_exif(), n_plain=20)
    expected = [Image.open(tmp_path / "images" / i).size for i in ids]
    assert read_image_sizes(tmp_path / "images", ids, workers=2) == expected
    assert read_image_sizes(tmp_path / "images", ids, workers=1) == expected
    (tmp_path / "images" / ids[7]).write_bytes(b"")
    (tmp_path / "images" / ids[2]).unlink()
    with pytest.raises(DataError, match=rf"{ids[2]}: image listed in the metadata is missing"):
        read_image_sizes(tmp_path / "images", ids, workers=2)
