"""The compiled sweeps of pipeline.metrics.box_levels on the cases their code branches on, each checked level by
level against tests/metrics/reference_boxes.py (one findContours per level): single pixels, 1 x N and N x 1
maps, all-equal maps, plateaus that meet within one level, holes (nested, touching the border, closed only
diagonally), ties of the largest contour, many images in one batch (state carried from image to image, the
row buffer growing), and the in-memory fallback when no numba cache directory is writable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline.metrics.box_levels as box_levels_module
from pipeline.metrics.box_levels import level_boxes
from tests.metrics.reference_boxes import reference_level_boxes

ROOT = Path(__file__).resolve().parents[2]


def assert_official(batch: np.ndarray) -> None:
    """`level_boxes(batch)` against the reference at every level 0..max(U_i) of every image (beyond: nothing)."""
    found = level_boxes(batch)
    assert found.tops.tolist() == batch.reshape(len(batch), -1).max(1).tolist()
    for i, u in enumerate(batch):
        top = int(u.max())
        mine = found.multi_image == i
        assert found.multi_level[mine].max() == top
        assert (found.single_boxes[i, top:] == 0).all()
        for level in range(top + 1):
            multi, single = reference_level_boxes(u, level)
            ours = found.multi_boxes[mine & (found.multi_level == level)]
            assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, multi.tolist())), (i, level)
            assert found.single_boxes[i, level].tolist() == single.tolist(), (i, level)


def test_single_pixel_images():
    assert_official(np.array([0, 1, 7, 128, 254, 255], np.uint8).reshape(6, 1, 1))


@pytest.mark.parametrize("shape", [(1, 37), (37, 1), (1, 2), (2, 1)])
def test_one_pixel_wide_maps(shape):
    rng = np.random.default_rng(sum(shape))
    batch = np.stack(
        [
            rng.integers(0, 256, shape),
            rng.integers(0, 3, shape) * 100,
            np.arange(np.prod(shape)).reshape(shape) % 5 * 60,
            np.full(shape, 200),
        ]
    ).astype(np.uint8)
    assert_official(batch)


def test_all_equal_maps():
    assert_official(np.stack([np.full((6, 9), v, np.uint8) for v in (0, 1, 77, 255)]))


def test_plateaus_that_meet_within_a_level():
    u = np.zeros((12, 13), np.uint8)
    u[2:10, 2] = u[2:10, 10] = u[9, 2:11] = 90  # a U of one value: two sets in raster order, joined at its foot
    u[1, 1:12:2] = 90  # a comb of pixels touching the U's arms only diagonally
    u[4:7, 5:8] = 200  # a higher plateau inside, and one level of ties around it
    u[3:8, 4] = u[3:8, 8] = 150
    v = np.full((11, 11), 40, np.uint8)  # a plateau with a lower plateau (a hole) and higher islands
    v[3:8, 3:8] = 10
    v[5, 5] = v[0, 0] = v[10, 10] = 240
    w = np.tile(np.repeat(np.array([30, 60, 60, 30], np.uint8), 3), (5, 1))  # vertical stripes, equal pairs
    assert_official(np.stack([u, np.pad(v, ((0, 1), (0, 2)), constant_values=40), np.pad(w[:, :11], ((0, 7), (0, 2)))]))


def test_holes():
    rings = np.zeros((21, 21), np.uint8)  # concentric rings, each level opening and closing holes
    for k, value in enumerate((50, 0, 120, 30, 200, 90, 255)):
        rings[k + 1 : 20 - k, k + 1 : 20 - k] = value
    border = np.full((10, 10), 100, np.uint8)  # background touching the border (no hole) and a real hole
    border[0, 3:6] = border[4:6, 9] = 0
    border[3:6, 3:6] = 0
    diagonal = np.full((9, 9), 180, np.uint8)  # a hole closed only by a diagonal pinch of the ring: still a
    diagonal[2:6, 2:6] = 20  # hole (the background is 4-connected), and one that leaks
    diagonal[6, 6] = 20
    diagonal[1:4, 7] = 20
    diagonal[0, 8] = 20
    assert_official(
        np.stack([rings, np.pad(border, ((0, 11), (0, 11))), np.pad(diagonal, ((0, 12), (0, 12)), constant_values=180)])
    )


def test_ties_of_the_largest_contour(monkeypatch):
    calls = []
    fallback = box_levels_module._largest_contour_box
    monkeypatch.setattr(
        box_levels_module, "_largest_contour_box", lambda u, level: calls.append(level) or fallback(u, level)
    )
    twins = np.zeros((12, 20), np.uint8)  # two equal squares: a tie, findContours decides (the first)
    twins[2:6, 2:6] = twins[6:10, 12:16] = 200
    twins[3, 3] = 250  # higher up, a single pixel alone: certain
    ringed = np.zeros((12, 20), np.uint8)  # W favours the solid one (24 against 18), but the hole makes the
    ringed[1:7, 1:7] = ringed[1:7, 10:17] = 150  # ringed one's contour the larger (25 against 24)
    ringed[3:5, 3:5] = 0  # 6 x 6 with a 2 x 2 hole ...
    ringed[1:7, 16] = 0  # ... against 6 x 6 solid with two corners cut
    ringed[1, 10] = ringed[6, 10] = 0
    dots = np.zeros((12, 20), np.uint8)  # isolated pixels and 1-pixel lines: zero areas, all tied
    dots[1, 1] = dots[5, 9] = dots[10, 18] = 90
    dots[8, 2:7] = 90
    assert_official(np.stack([twins, ringed, dots]))
    assert calls  # the ties reach findContours


def test_many_images_in_one_batch():
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (40, 9, 7)).astype(np.uint8)  # many rows per image: the row buffer grows
    noise[::5] = 0  # empty images between full ones
    noise[1::7] = rng.integers(0, 2, (6, 9, 7)) * 255  # binary ones
    assert_official(noise)
    # each image's rows are those it gets alone, whatever the batch around it
    whole = level_boxes(noise)
    for i in (0, 1, 17, 39):
        alone = level_boxes(noise[i : i + 1])
        rows = np.column_stack([whole.multi_level, whole.multi_boxes])[whole.multi_image == i]
        assert sorted(map(tuple, rows.tolist())) == sorted(
            map(tuple, np.column_stack([alone.multi_level, alone.multi_boxes]).tolist())
        )
        assert (whole.single_boxes[i] == alone.single_boxes[0]).all()


def test_side_limit():
    with pytest.raises(ValueError, match="32768"):
        level_boxes(np.zeros((1, 1, 2**15), np.uint8))


def test_without_a_writable_numba_cache_it_compiles_in_memory(tmp_path):
    """No cache directory at all (the module's __pycache__ is a file, the user-wide one cannot be made): numba
    refuses cache=True, the module warns and compiles in memory, and gives the same boxes."""
    copy = tmp_path / "pkg" / "box_levels.py"
    copy.parent.mkdir()
    copy.write_text((ROOT / "pipeline" / "metrics" / "box_levels.py").read_text())
    (copy.parent / "__pycache__").write_text("")
    (tmp_path / "blocker").write_text("")
    script = f"""
import importlib.util, sys, warnings
import numpy as np
warnings.simplefilter("error")
spec = importlib.util.spec_from_file_location("box_levels_copy", {str(copy)!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
try:
    spec.loader.exec_module(module)
except Warning as warning:
    print("warned:", type(warning).__name__)
warnings.simplefilter("ignore")
spec.loader.exec_module(module)
u = np.arange(30, dtype=np.uint8).reshape(1, 5, 6) % 7 * 30
found = module.level_boxes(u)
print(found.tops.tolist(), sorted(zip(found.multi_level.tolist(), map(tuple, found.multi_boxes.tolist()))))
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "blocker" / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    warned, result = out.stdout.splitlines()
    assert warned == "warned: NumbaWarning"
    u = np.arange(30, dtype=np.uint8).reshape(1, 5, 6) % 7 * 30
    found = level_boxes(u)
    assert result == str(found.tops.tolist()) + " " + str(
        sorted(zip(found.multi_level.tolist(), map(tuple, found.multi_boxes.tolist())))
    )
    assert not (copy.parent / "__pycache__").is_dir()
