"""Tests for pipeline.data.wsol: wsolevaluation metadata reading and writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.wsol import MetadataError, SplitMetadata, read_split, write_split

CUB_A = "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
CUB_B = "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"
CUB_C = "200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg"


def _write(meta_dir: Path, **files: str) -> Path:
    """Write the given ``name=text`` files (``name`` without ``.txt``) into ``meta_dir``."""
    meta_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (meta_dir / f"{name}.txt").write_text(text, encoding="utf-8")
    return meta_dir


def _box_metadata() -> SplitMetadata:
    return SplitMetadata(
        image_ids=(CUB_C, CUB_A, CUB_B),
        labels={CUB_A: 0, CUB_B: 0, CUB_C: 199},
        sizes={CUB_A: (500, 335), CUB_B: (500, 336), CUB_C: (375, 500)},
        boxes={
            CUB_A: ((60, 27, 385, 331),),
            CUB_B: ((139, 30, 292, 290), (0, 0, 0, 0), (10, 20, 11, 22)),
            CUB_C: ((5, 6, 7, 8),),
        },
    )


def _mask_metadata() -> SplitMetadata:
    return SplitMetadata(
        image_ids=("test/dog/a.jpg", "test/cat/b.jpg", "test/cat/c.jpg"),
        labels={"test/dog/a.jpg": 1, "test/cat/b.jpg": 0, "test/cat/c.jpg": 0},
        sizes={},
        masks={
            "test/dog/a.jpg": (
                ("test/dog/a_m01_x1.png", "test/dog/a_m01_x2.png", "test/dog/a_m01_x3.png"),
                "test/dog/a_ignore.png",
            ),
            "test/cat/b.jpg": (("test/cat/b_m00_y.png",), "test/cat/b_ignore.png"),
            "test/cat/c.jpg": (("test/cat/c_m00_z.png",), None),
        },
    )


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_box_metadata, _mask_metadata], ids=["boxes", "masks"])
def test_round_trip(tmp_path: Path, make) -> None:
    metadata = make()
    write_split(tmp_path / "split", metadata)
    assert read_split(tmp_path / "split") == metadata


def test_round_trip_mixed_boxes_and_masks(tmp_path: Path) -> None:
    metadata = SplitMetadata(
        image_ids=("a.png", "b.png"),
        labels={"a.png": 0, "b.png": 1},
        sizes={"a.png": (10, 20)},
        boxes={"a.png": ((1, 2, 3, 4),)},
        masks={"a.png": (("a_m.png",), "a_ignore.png"), "b.png": (("b_m1.png", "b_m2.png"), None)},
    )
    write_split(tmp_path, metadata)
    assert read_split(tmp_path) == metadata


def test_write_is_deterministic_and_ordered(tmp_path: Path) -> None:
    write_split(tmp_path / "one", _box_metadata())
    write_split(tmp_path / "two", _box_metadata())
    for name in ("image_ids", "class_labels", "image_sizes", "localization"):
        one = (tmp_path / "one" / f"{name}.txt").read_bytes()
        assert one == (tmp_path / "two" / f"{name}.txt").read_bytes()
    assert (tmp_path / "one" / "localization.txt").read_text() == (
        f"{CUB_C},5,6,7,8\n{CUB_A},60,27,385,331\n{CUB_B},139,30,292,290\n{CUB_B},0,0,0,0\n{CUB_B},10,20,11,22\n"
    )


def test_write_mask_rows_give_ignore_on_first_row_only(tmp_path: Path) -> None:
    write_split(tmp_path, _mask_metadata())
    assert (tmp_path / "localization.txt").read_text().splitlines() == [
        "test/dog/a.jpg,test/dog/a_m01_x1.png,test/dog/a_ignore.png",
        "test/dog/a.jpg,test/dog/a_m01_x2.png,",
        "test/dog/a.jpg,test/dog/a_m01_x3.png,",
        "test/cat/b.jpg,test/cat/b_m00_y.png,test/cat/b_ignore.png",
        "test/cat/c.jpg,test/cat/c_m00_z.png,",
    ]
    assert (tmp_path / "image_sizes.txt").read_bytes() == b""


@pytest.mark.parametrize(
    "metadata",
    [
        SplitMetadata(image_ids=("a", "a"), labels={"a": 0}),
        SplitMetadata(image_ids=("a",), labels={}),
        SplitMetadata(image_ids=("a",), labels={"a": -1}),
        SplitMetadata(image_ids=("a",), labels={"a": 0, "b": 1}),
        SplitMetadata(image_ids=("a,b",), labels={"a,b": 0}),
        SplitMetadata(image_ids=("a",), labels={"a": 0}, boxes={"a": ((3, 0, 2, 0),)}),
        SplitMetadata(image_ids=("a",), labels={"a": 0}, boxes={"a": ()}),
        SplitMetadata(image_ids=("a",), labels={"a": 0}, masks={"a": ((), "i.png")}),
    ],
)
def test_write_rejects_inconsistent_metadata(tmp_path: Path, metadata: SplitMetadata) -> None:
    with pytest.raises(ValueError):
        write_split(tmp_path, metadata)


# --- reading hand-written files ------------------------------------------------------------------


def test_read_cub_style_rows_exactly(tmp_path: Path) -> None:
    meta_dir = _write(
        tmp_path,
        image_ids=f"{CUB_A}\n{CUB_B}\n{CUB_C}\n",
        class_labels=f"{CUB_A},0\n{CUB_B},0\n{CUB_C},199\n",
        image_sizes=f"{CUB_A},500,335\n{CUB_B},500,336\n{CUB_C},375,500\n",
        localization=f"{CUB_A},60,27,385,331\n{CUB_B},139,30,292,290\n{CUB_C},93,57,272,474\n",
    )
    metadata = read_split(meta_dir)
    assert metadata.image_ids == (CUB_A, CUB_B, CUB_C)
    assert metadata.labels == {CUB_A: 0, CUB_B: 0, CUB_C: 199}
    assert metadata.sizes == {CUB_A: (500, 335), CUB_B: (500, 336), CUB_C: (375, 500)}
    assert metadata.boxes == {
        CUB_A: ((60, 27, 385, 331),),
        CUB_B: ((139, 30, 292, 290),),
        CUB_C: ((93, 57, 272, 474),),
    }
    assert metadata.masks == {}


def test_read_without_trailing_newline_and_without_sizes(tmp_path: Path) -> None:
    meta_dir = _write(
        tmp_path,
        image_ids=f"{CUB_A}\n{CUB_B}",
        class_labels=f"{CUB_A},0\n{CUB_B},3",
        localization=f"{CUB_A},60,27,385,331\n{CUB_B},1,2,3,4\n{CUB_B},5,6,7,8",
    )
    metadata = read_split(meta_dir)
    assert metadata.image_ids == (CUB_A, CUB_B)
    assert metadata.labels == {CUB_A: 0, CUB_B: 3}
    assert metadata.sizes == {}
    assert metadata.boxes == {CUB_A: ((60, 27, 385, 331),), CUB_B: ((1, 2, 3, 4), (5, 6, 7, 8))}


def test_read_empty_sizes_and_crlf_and_no_localization(tmp_path: Path) -> None:
    meta_dir = _write(tmp_path, image_ids="a.jpg\r\nb.jpg\r\n", class_labels="a.jpg,1\r\nb.jpg,0")
    (meta_dir / "image_sizes.txt").write_bytes(b"")
    metadata = read_split(meta_dir)
    assert metadata == SplitMetadata(image_ids=("a.jpg", "b.jpg"), labels={"a.jpg": 1, "b.jpg": 0})


def test_read_openimages_style_masks(tmp_path: Path) -> None:
    meta_dir = _write(
        tmp_path,
        image_ids="val/Bird/x.jpg\nval/Cat/y.jpg",
        class_labels="val/Bird/x.jpg,4\nval/Cat/y.jpg,7",
        image_sizes="",
        localization=(
            "val/Bird/x.jpg,val/Bird/x_m0_a.png,val/Bird/x_ignore.png\n"
            "val/Bird/x.jpg,val/Bird/x_m0_b.png,\n"
            "val/Cat/y.jpg,val/Cat/y_m1_c.png,"
        ),
    )
    metadata = read_split(meta_dir)
    assert metadata.boxes == {}
    assert metadata.masks == {
        "val/Bird/x.jpg": (("val/Bird/x_m0_a.png", "val/Bird/x_m0_b.png"), "val/Bird/x_ignore.png"),
        "val/Cat/y.jpg": (("val/Cat/y_m1_c.png",), None),
    }


# --- errors: one test per case, each checking the file name and line number ----------------------

GOOD_IDS = "a.jpg\nb.jpg\n"
GOOD_LABELS = "a.jpg,0\nb.jpg,1\n"


@pytest.mark.parametrize("missing", ["image_ids", "class_labels"])
def test_error_missing_required_file(tmp_path: Path, missing: str) -> None:
    files = {"image_ids": GOOD_IDS, "class_labels": GOOD_LABELS}
    del files[missing]
    _write(tmp_path, **files)
    with pytest.raises(MetadataError, match="missing") as info:
        read_split(tmp_path)
    assert str(tmp_path / f"{missing}.txt") in str(info.value)


# (file written with an error, its text, the bad line number, a phrase the message must contain)
ERROR_CASES = {
    "ids_wrong_columns": ("image_ids", "a.jpg\nb.jpg,1\n", 2, "got 2 column"),
    "ids_blank_line": ("image_ids", "a.jpg\n\nb.jpg\n", 2, "blank line"),
    "ids_duplicate": ("image_ids", "a.jpg\nb.jpg\na.jpg\n", 3, "duplicate image id 'a.jpg'"),
    "label_wrong_columns": ("class_labels", "a.jpg,0\nb.jpg\n", 2, "'<path>,<label>'"),
    "label_not_integer": ("class_labels", "a.jpg,zero\nb.jpg,1\n", 1, "label 'zero' is not an int"),
    "label_float": ("class_labels", "a.jpg,0\nb.jpg,1.0\n", 2, "not an integer"),
    "label_negative": ("class_labels", "a.jpg,0\nb.jpg,-1\n", 2, "label is -1; expected"),
    "label_unknown_id": ("class_labels", "a.jpg,0\nb.jpg,1\nc.jpg,2\n", 3, "'c.jpg' is not listed"),
    "label_duplicate": ("class_labels", "a.jpg,0\na.jpg,0\nb.jpg,1\n", 2, "first on line 1"),
    "size_wrong_columns": ("image_sizes", "a.jpg,10,20\nb.jpg,10\n", 2, "'<path>,<W>,<H>'"),
    "size_not_integer": ("image_sizes", "a.jpg,10,2x\n", 1, "height H '2x' is not an integer"),
    "size_zero": ("image_sizes", "a.jpg,0,20\n", 1, "width W is 0"),
    "size_unknown_id": ("image_sizes", "a.jpg,10,20\nz.jpg,10,20\n", 2, "'z.jpg' is not listed"),
    "size_duplicate": ("image_sizes", "a.jpg,10,20\na.jpg,10,20\n", 2, "duplicate image id"),
    "loc_wrong_columns": ("localization", "a.jpg,1,2,3,4\nb.jpg,1,2,3\n", 2, "got 4 column"),
    "loc_not_integer": ("localization", "a.jpg,1,2,3,4.5\n", 1, "coordinate y1 '4.5'"),
    "loc_negative": ("localization", "a.jpg,1,2,3,4\na.jpg,-1,2,3,4\n", 2, "x0 is -1"),
    "loc_x_inverted": ("localization", "a.jpg,5,2,4,4\n", 1, "x0 <= x1"),
    "loc_y_inverted": ("localization", "b.jpg,1,2,3,4\na.jpg,1,9,3,4\n", 2, "inverted"),
    "loc_unknown_id": ("localization", "a.jpg,1,2,3,4\nq.jpg,1,2,3,4\n", 2, "'q.jpg' is not"),
    "mask_empty_path": ("localization", "a.jpg,a_m.png,a_i.png\nb.jpg,,\n", 2, "empty mask path"),
    "mask_late_ignore": ("localization", "a.jpg,m1.png,i.png\na.jpg,m2.png,j.png\n", 2, "first"),
    "mask_unknown_id": ("localization", "a.jpg,m.png,i.png\nx.jpg,m.png,\n", 2, "is not listed"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_in_row(tmp_path: Path, case: tuple[str, str, int, str]) -> None:
    name, text, lineno, phrase = case
    files = {"image_ids": GOOD_IDS, "class_labels": GOOD_LABELS, name: text}
    _write(tmp_path, **files)
    with pytest.raises(MetadataError) as info:
        read_split(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / (name + '.txt')}:{lineno}:" in message
    assert phrase in message
    assert "expected" in message


def test_error_id_without_label(tmp_path: Path) -> None:
    _write(tmp_path, image_ids="a.jpg\nb.jpg\nc.jpg", class_labels="a.jpg,0\nc.jpg,2")
    with pytest.raises(MetadataError) as info:
        read_split(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'image_ids.txt'}:2:" in message
    assert "'b.jpg' has no row in" in message and "class_labels.txt" in message


def test_metadata_error_is_value_error() -> None:
    assert issubclass(MetadataError, ValueError)
