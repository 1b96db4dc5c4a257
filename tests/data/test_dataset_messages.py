"""Every message docs/datasets.md quotes is the one the code gives: each `<!-- message: ID -->` block is produced
here by its scenario (miniature copies in a temporary folder, shown as if it were `/`), and a stale block fails.

Refresh the blocks after changing a message: `python -m tests.data.test_dataset_messages --write`.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.data.fetch import FetchError
from pipeline.data.prepare import DataError
from pipeline.data.real import build_dataset, ilsvrc
from pipeline.params import CarsParams, CubParams, IlsvrcParams
from tests.data.archives import tar_bytes
from tests.data.test_layouts import cub_members, ilsvrc_layouts, ilsvrc_members, publish, recompress_xz, write_tree

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "datasets.md"
BLOCK = re.compile(r"(<!-- message: (?P<id>[\w-]+) -->\n)(?P<body>.*?)(<!-- end message -->)", re.S)


def _cub(tmp: Path, verify: str, num_classes: int = 3) -> tuple[CubParams, Path]:
    members, seg = cub_members()
    src = write_tree(tmp / "labdata" / "CUB", {**members, **seg})
    return CubParams(
        num_classes=num_classes, val_per_class=1, segmentations=True, mode="manual", source_dir=str(src), verify=verify
    ), src


def _error(call) -> str:
    try:
        call()
    except (FetchError, DataError, ValueError) as exc:
        return f"error: {exc}"
    raise AssertionError("the scenario raised no error")


def cub_extracted_published(tmp: Path, monkeypatch) -> str:
    cfg, _ = _cub(tmp, "published")
    return _error(
        lambda: build_dataset("cub", cfg, tmp / "data/raw/cub", archive_dir=tmp / "data/archives", progress=False)
    )


def cars_missing(tmp: Path, monkeypatch) -> str:
    (tmp / "labdata" / "cars").mkdir(parents=True)
    cfg = CarsParams(num_classes=2, val_per_class=1, source_dir=str(tmp / "labdata" / "cars"), verify="published")
    return _error(
        lambda: build_dataset("cars", cfg, tmp / "data/raw/cars", archive_dir=tmp / "data/archives", progress=False)
    )


def ilsvrc_missing(tmp: Path, monkeypatch) -> str:
    layout = {k: v for k, v in ilsvrc_layouts(ilsvrc_members())["localization challenge"].items() if "/train/" not in k}
    src = write_tree(tmp / "labdata", layout) / "challenge"
    cfg = IlsvrcParams(num_classes=2, val_per_class=1, train_per_class=8, source_dir=str(src), verify="content")
    return _error(
        lambda: build_dataset("ilsvrc", cfg, tmp / "data/raw/ilsvrc", archive_dir=tmp / "data/archives", progress=False)
    )


def ilsvrc_repacked_published(tmp: Path, monkeypatch) -> str:
    m = ilsvrc_members()
    val = tar_bytes(m["val"], mode="w")
    boxes = tar_bytes({f"val/{k}": v for k, v in m["boxes"].items()})
    train = tar_bytes({f"{w}.tar": tar_bytes(imgs, mode="w") for w, imgs in m["train"].items()}, mode="w")
    publish(monkeypatch, ilsvrc, "VAL", val)
    publish(monkeypatch, ilsvrc, "BBOX_VAL", boxes)
    publish(monkeypatch, ilsvrc, "TRAIN", train)
    src = write_tree(
        tmp / "labdata" / "imagenet",
        {
            "ILSVRC2012_img_val.tar": val,
            "ILSVRC2012_bbox_val_v3.tar.xz": recompress_xz(boxes),
            "ILSVRC2012_img_train.tar": train,
        },
    )
    cfg = IlsvrcParams(num_classes=2, val_per_class=1, train_per_class=2, source_dir=str(src), verify="published")
    return _error(
        lambda: build_dataset("ilsvrc", cfg, tmp / "data/raw/ilsvrc", archive_dir=tmp / "data/archives", progress=False)
    )


def num_classes_too_many(tmp: Path, monkeypatch) -> str:
    cfg, _ = _cub(tmp, "content", num_classes=200)
    return _error(
        lambda: build_dataset("cub", cfg, tmp / "data/raw/cub", archive_dir=tmp / "data/archives", progress=False)
    )


def content_differs(tmp: Path, monkeypatch) -> str:
    cfg, _ = _cub(tmp, "content")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        build_dataset("cub", cfg, tmp / "data/raw/cub", archive_dir=tmp / "data/archives", progress=False)
    return err.getvalue().rstrip("\n")


SCENARIOS = {
    "cub-extracted-published": cub_extracted_published,
    "cars-missing": cars_missing,
    "ilsvrc-missing": ilsvrc_missing,
    "ilsvrc-repacked-published": ilsvrc_repacked_published,
    "num-classes-too-many": num_classes_too_many,
    "content-differs": content_differs,
}


def message(name: str, monkeypatch) -> str:
    """The scenario's message with the temporary folder shown as the root, in a fenced block."""
    with tempfile.TemporaryDirectory() as tmp:
        text = SCENARIOS[name](Path(tmp), monkeypatch).replace(str(Path(tmp).resolve()), "").replace(tmp, "")
    return f"```\n{text}\n```\n"


def render(doc: str, monkeypatch) -> str:
    return BLOCK.sub(lambda m: m.group(1) + message(m.group("id"), monkeypatch) + m.group(4), doc)


def test_every_scenario_has_a_block_and_every_block_a_scenario():
    assert sorted(m.group("id") for m in BLOCK.finditer(DOC.read_text())) == sorted(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_doc_quotes_the_message_the_code_gives(name, monkeypatch):
    blocks = {m.group("id"): m.group("body") for m in BLOCK.finditer(DOC.read_text())}
    assert blocks[name] == message(name, monkeypatch), "run: python -m tests.data.test_dataset_messages --write"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.data.test_dataset_messages --write")
    with pytest.MonkeyPatch.context() as mp:
        DOC.write_text(render(DOC.read_text(), mp))
    print(f"refreshed the message blocks of {DOC.relative_to(ROOT)}")
