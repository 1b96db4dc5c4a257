"""Tests for pipeline.data.synthbirds: the procedural SynthBirds dataset."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.synthbirds import (
    MAX_CLASSES,
    SPLITS,
    SynthBirdsSpec,
    class_attributes,
    class_names,
    generate,
    render_image,
    tight_box,
)
from pipeline.data.wsol import read_split

TINY = SynthBirdsSpec(
    num_classes=3,
    image_size=32,
    train_per_class=3,
    val_per_class=1,
    test_per_class=2,
    seed=7,
    supersample=2,
)


def _digests(root: Path) -> dict[str, str]:
    """Return the sha256 of every file below ``root``, keyed by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The TINY dataset, generated once with one worker, and its summary."""
    root = tmp_path_factory.mktemp("tiny") / "synthbirds"
    return root, generate(TINY, root, progress=False)


# --- determinism ---------------------------------------------------------------------------------


def test_same_spec_and_any_worker_count_give_identical_bytes(tiny, tmp_path: Path) -> None:
    root, _ = tiny
    reference = _digests(root)
    assert len(reference) == 3 * 6 * 3 + 2 * 3 * 4 + 1  # 3 PNGs per image, 24 metadata files
    generate(TINY, tmp_path / "again", progress=False)
    generate(TINY, tmp_path / "pool", workers=2, progress=False)
    assert _digests(tmp_path / "again") == reference
    assert _digests(tmp_path / "pool") == reference


def test_different_seed_gives_different_images(tiny, tmp_path: Path) -> None:
    root, _ = tiny
    other = replace(TINY, seed=TINY.seed + 1)
    generate(other, tmp_path / "other", progress=False)
    ours = _digests(root / "images")
    theirs = _digests(tmp_path / "other" / "images")
    shared = set(ours) & set(theirs)
    assert len(shared) < len(ours)  # class names may change with the seed
    assert all(ours[p] != theirs[p] for p in shared)
    first, _ = render_image(TINY, "train", 0, 0)
    second, _ = render_image(other, "train", 0, 0)
    assert np.abs(np.asarray(first, float) - np.asarray(second, float)).mean() > 10


def test_render_image_is_deterministic_and_splits_differ() -> None:
    image, mask = render_image(TINY, "val", 2, 5)
    again, mask_again = render_image(TINY, "val", 2, 5)
    assert image.tobytes() == again.tobytes()
    assert np.array_equal(mask, mask_again)
    other, _ = render_image(TINY, "test", 2, 5)
    assert image.tobytes() != other.tobytes()


# --- layout and metadata -------------------------------------------------------------------------


def test_summary_and_classes_file(tiny) -> None:
    root, summary = tiny
    assert summary["counts"] == {"train": 9, "val": 3, "test": 6}
    assert summary["num_classes"] == 3 and summary["image_size"] == 32
    assert 0.0 < summary["mean_mask_area_fraction"] < summary["mean_box_area_fraction"] < 1.0
    names = class_names(TINY)
    assert (root / "classes.txt").read_text() == "".join(f"{i},{n}\n" for i, n in enumerate(names))
    assert sorted(p.name for p in root.iterdir()) == [
        "classes.txt",
        "images",
        "masks",
        "metadata",
        "metadata_mask",
    ]
    assert not list(root.parent.glob(".synthbirds.*"))  # no temporary folders left behind


@pytest.mark.parametrize("split", SPLITS)
def test_metadata_round_trips_with_right_counts_labels_and_sizes(tiny, split: str) -> None:
    root, _ = tiny
    names = class_names(TINY)
    boxes = read_split(root / "metadata" / split)
    masks = read_split(root / "metadata_mask" / split)
    per_class = TINY.per_split(split)
    assert len(boxes.image_ids) == TINY.num_classes * per_class
    assert boxes.image_ids == masks.image_ids and boxes.labels == masks.labels
    assert boxes.image_ids == tuple(sorted(boxes.image_ids))
    assert Counter(boxes.labels.values()) == {label: per_class for label in range(3)}
    for image_id in boxes.image_ids:
        label = boxes.labels[image_id]
        assert re.fullmatch(rf"{split}/{label:03d}\.{names[label]}/\d{{5}}\.png", image_id)
        assert boxes.sizes[image_id] == (32, 32) == masks.sizes[image_id]
        assert len(boxes.boxes[image_id]) == 1
        assert masks.masks[image_id] == ((image_id,), image_id[: -len(".png")] + "_ignore.png")
        assert (root / "images" / image_id).is_file()
    assert boxes.masks == {} and masks.boxes == {}


@pytest.mark.parametrize("split", SPLITS)
def test_boxes_are_tight_boxes_of_non_empty_masks_on_disk(tiny, split: str) -> None:
    root, _ = tiny
    boxes = read_split(root / "metadata" / split)
    masks = read_split(root / "metadata_mask" / split)
    for image_id in boxes.image_ids:
        image = Image.open(root / "images" / image_id)
        assert (image.mode, image.size) == ("RGB", (32, 32))
        (mask_path,), ignore_path = masks.masks[image_id]
        mask_png = Image.open(root / "masks" / mask_path)
        assert (mask_png.mode, mask_png.size) == ("1", (32, 32))
        mask = np.asarray(mask_png, dtype=bool)
        assert mask.any() and not mask.all()
        ys, xs = np.nonzero(mask)
        assert boxes.boxes[image_id] == ((xs.min(), ys.min(), xs.max(), ys.max()),)
        ignore = Image.open(root / "masks" / ignore_path)
        assert (ignore.mode, ignore.size) == ("L", (32, 32))
        assert not np.asarray(ignore).any()
        # the written mask is exactly the one render_image returns
        label, index = boxes.labels[image_id], int(Path(image_id).stem)
        assert np.array_equal(render_image(TINY, split, label, index)[1], mask)


def test_generate_replaces_an_existing_dataset(tmp_path: Path) -> None:
    spec = SynthBirdsSpec(
        num_classes=2, image_size=16, train_per_class=1, val_per_class=0, test_per_class=1, supersample=1
    )
    out = tmp_path / "data"
    (out / "images").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    summary = generate(spec, out, progress=False)
    assert summary["counts"] == {"train": 2, "val": 0, "test": 2}
    assert not (out / "stale.txt").exists()
    assert read_split(out / "metadata" / "val").image_ids == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- classes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num_classes", [2, 3, 4, 5, 8, 10, 16, 33, 64, MAX_CLASSES])
def test_class_designs_are_distinct_and_need_part_conjunctions(num_classes: int, seed: int) -> None:
    spec = SynthBirdsSpec(num_classes=num_classes, seed=seed)
    names = class_names(spec)
    birds = class_attributes(spec)
    assert len(set(names)) == num_classes
    assert len({bird.part_values() for bird in birds}) == num_classes
    assert all(re.fullmatch(r"[a-z]+_head_(short|long)_[a-z]+_beak_[a-z_]+_wing", n) for n in names)
    if num_classes >= 4:  # no single part value identifies a class
        for axis in range(3):
            counts = Counter(bird.part_values()[axis] for bird in birds)
            assert min(counts.values()) >= 2, (axis, counts)


def test_default_classes_differ_in_at_least_two_parts() -> None:
    birds = [bird.part_values() for bird in class_attributes(SynthBirdsSpec())]
    for i, one in enumerate(birds):
        for other in birds[i + 1 :]:
            assert sum(a != b for a, b in zip(one, other)) >= 2


def test_class_design_depends_on_seed() -> None:
    assert class_names(SynthBirdsSpec(seed=0)) != class_names(SynthBirdsSpec(seed=1))


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size, supersample", [(16, 1), (20, 3), (48, 4)])
def test_image_size_is_respected(size: int, supersample: int) -> None:
    spec = SynthBirdsSpec(num_classes=4, image_size=size, supersample=supersample)
    for index in range(3):
        image, mask = render_image(spec, "train", index, index)
        assert image.mode == "RGB" and image.size == (size, size)
        assert mask.dtype == bool and mask.shape == (size, size) and mask.any()


def test_distractor_counts_are_respected() -> None:
    plain = SynthBirdsSpec(num_classes=2, image_size=32, min_distractors=0, max_distractors=0)
    busy = SynthBirdsSpec(num_classes=2, image_size=32, min_distractors=8, max_distractors=8)
    image, mask = render_image(plain, "train", 0, 0)
    cluttered, same_mask = render_image(busy, "train", 0, 0)
    assert image.tobytes() != cluttered.tobytes()
    assert mask.any() and same_mask.any()


@pytest.mark.parametrize("num_classes", [MAX_CLASSES + 1, 1000])
def test_too_many_classes_raise_naming_the_limit(num_classes: int) -> None:
    with pytest.raises(ValueError, match=rf"num_classes={num_classes}.*2\.\.{MAX_CLASSES}"):
        SynthBirdsSpec(num_classes=num_classes)


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"image_size": 8}, "image_size=8"),
        ({"supersample": 5}, "supersample=5"),
        ({"supersample": 0}, "supersample=0"),
        ({"train_per_class": -1}, "train_per_class=-1"),
        ({"min_distractors": 4, "max_distractors": 3}, "max_distractors=3"),
        ({"confuser_prob": 1.5}, "confuser_prob=1.5"),
    ],
)
def test_invalid_spec_raises(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=re.escape(phrase)):
        SynthBirdsSpec(**kwargs)


def test_render_image_rejects_bad_split_and_class() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        render_image(TINY, "dev", 0, 0)
    with pytest.raises(ValueError, match="class_index=3"):
        render_image(TINY, "train", 3, 0)
    with pytest.raises(ValueError, match="workers=0"):
        generate(TINY, Path("unused"), workers=0)


def test_tight_box() -> None:
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2] = True
    mask[4, 4] = True
    assert tight_box(mask) == (2, 1, 4, 4)
    with pytest.raises(ValueError):
        tight_box(np.zeros((2, 2), dtype=bool))


# --- the same bytes on every machine --------------------------------------------------------------

_AVX512 = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_KNL AVX512_KNM"
DISPATCH_SETTINGS: dict[str, dict[str, str]] = {
    "default dispatch": {},
    "no AVX-512": {"NPY_DISABLE_CPU_FEATURES": _AVX512},
    "no AVX2/FMA/AVX-512, generic BLAS": {
        "NPY_DISABLE_CPU_FEATURES": f"AVX2 FMA3 {_AVX512}",
        "OPENBLAS_CORETYPE": "Prescott",
    },
}
"""numpy SIMD dispatch and OpenBLAS kernel choices that stand in for other CPU generations."""

# Images of the default spec (seed 42) whose bytes on the generator before the deterministic-math
# rewrite differed between AVX-512 and AVX2 dispatch on an AVX-512 machine, then a plain range.
_RENDERED = [("train", 6, 7), ("train", 1, 100), ("train", 4, 108)] + [
    (split, label, index) for split in ("train", "test") for label in range(10) for index in range(3)
]
_RENDER_SCRIPT = f"""
import hashlib
from pipeline.data.synthbirds import SynthBirdsSpec, render_image
spec = SynthBirdsSpec(num_classes=10, image_size=96, seed=42)
digest = hashlib.sha256()
for split, label, index in {_RENDERED!r}:
    image, mask = render_image(spec, split, label, index)
    digest.update(image.tobytes() + mask.tobytes())
print(digest.hexdigest())
"""
RENDERED_SHA256 = "8cfdafe010c789e3d03a91778e729c18712a4f14515dbce552263a2f4557d900"
"""sha256 of the images and masks of ``_RENDERED``, on every machine."""


def _render_digest(env: dict[str, str]) -> str:
    """Run _RENDER_SCRIPT in a fresh interpreter (numpy reads the dispatch variables at import)."""
    root = Path(__file__).resolve().parents[2]
    full_env = {**os.environ, "PYTHONPATH": str(root), **env}
    for name in ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "OPENBLAS_CORETYPE"):
        if name not in env:
            full_env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", _RENDER_SCRIPT], env=full_env, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_images_are_bit_identical_under_any_simd_dispatch_and_blas_kernel() -> None:
    digests = {name: _render_digest(env) for name, env in DISPATCH_SETTINGS.items()}
    assert digests == dict.fromkeys(DISPATCH_SETTINGS, RENDERED_SHA256)


def test_tiny_dataset_files_are_pinned(tiny) -> None:
    root, _ = tiny
    combined = hashlib.sha256("".join(f"{p} {d}\n" for p, d in _digests(root).items()).encode())
    assert combined.hexdigest() == TINY_SHA256


TINY_SHA256 = "12634ca50a752e5f579e60635448c375d9ff5c2f8b6ffeb1fba6600ba52c1adf"
"""sha256 over the sorted ``path digest`` lines of every file of the TINY dataset."""


def test_float_helpers_use_no_platform_maths() -> None:
    from pipeline.data.synthbirds import _cos_sin, _exp, _rotate, _steps

    # mpmath's correctly rounded values, checked against exact identities and libm within 1 ulp
    assert _cos_sin(0.0) == (1.0, 0.0) and _exp(0.0) == 1.0
    for x in (-3.0, -0.7, 0.1, 0.5, 1.0, 2.0, 12.5):
        c, s = _cos_sin(x)
        assert abs(c - math.cos(x)) <= math.ulp(c) and abs(s - math.sin(x)) <= math.ulp(s)
        assert abs(_exp(x) - math.exp(x)) <= math.ulp(math.exp(x))
    assert _cos_sin(1.0) == (0.5403023058681398, 0.8414709848078965)  # cos 1, sin 1 to 17 digits
    assert _exp(1.0) == 2.718281828459045 == math.e
    points = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    c, s = _cos_sin(0.3)
    np.testing.assert_allclose(_rotate(points, c, s), points @ np.array([[c, s], [-s, c]]), rtol=0, atol=1e-15)
    assert _steps(0.0, 0.3, 0.1) == [0.0, 0.1, 0.2] and _steps(1.0, 1.0, 0.1) == []
    np.testing.assert_allclose(_steps(-0.19, 0.24, 0.11), np.arange(-0.19, 0.24, 0.11), atol=1e-15)
