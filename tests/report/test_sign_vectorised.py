"""The batched sign diagnostics against the per-image definition, bit for bit, and the streamed sign table and
gallery against the same computations on a CAM set in memory."""

import dataclasses
import json

import numpy as np
import pytest

from pipeline.cams.store import CamRecord, open_cams, read_cams, write_cams
from pipeline.concepts import BRANCHES
from pipeline.data.prepare import GroundTruth
from pipeline.metrics.evaluate import EvalOptions
from pipeline.report.build import gallery_panel, read_images, sign_table
from pipeline.report.sign import (
    _np_sums,
    box_union,
    box_unions,
    region_sums,
    sign_diagnostics,
    sign_diagnostics_reference,
)


def bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).view(np.int64)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 255, 1000, 8191, 8192, 8193, 20000, 50176])
def test_sums_are_numpys_bit_for_bit(n):
    """numpy's own summation order (pairwise within buffers of np.getbufsize() values): values spanning 30
    binary orders of magnitude, where any other order changes the last bits."""
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 5, n))).astype(np.float32).astype(np.float64)
    stack, values = np.empty((64, 2), np.int64), np.empty((64, 2))
    total, absolute = _np_sums(a, n, np.getbufsize(), stack, values)
    assert bits(total) == bits(a.sum())
    assert bits(absolute) == bits(np.abs(a).sum())


def per_image_sums(m: np.ndarray, inside: np.ndarray) -> list[float]:
    """The five sums as the per-image code forms them."""
    out = []
    for region in (inside, ~inside):
        values = m[region].astype(np.float64)
        out += [np.abs(values).sum(), values[values < 0].sum()]
        if region is inside:
            out.append(values.sum())
    return [out[0], out[1], out[2], out[3], out[4]]


def edge_case_boxes(size: int) -> list[np.ndarray]:
    return [
        np.array([[2, 3, 5, 9]]),  # one box
        np.array([[0, 0, 3, 3], [2, 2, 8, 6], [size - 4, 0, size - 1, size - 1]]),  # overlapping, at the border
        np.zeros((0, 4), np.int64),  # no box: every pixel outside
        np.array([[0, 0, size - 1, size - 1]]),  # the whole grid: nothing outside
        np.array([[size - 3, size - 3, size + 10, size + 10]]),  # past the border (slices clip)
        np.array([[5, 5, 3, 3]]),  # x1 < x0: empty
        np.array([[-2, 1, 2, 4]]),  # a negative start counts from the end, as a Python slice does
        np.array([[1, 1, 1, 1], [7, 7, 7, 7]]),  # single pixels
    ]


def test_box_unions_match_box_union():
    size = 12
    boxes = edge_case_boxes(size)
    assert np.array_equal(box_unions(boxes, size), np.stack([box_union(b, size) for b in boxes]))
    assert box_unions([], size).shape == (0, size, size)


def test_region_sums_match_the_per_image_sums_bit_for_bit():
    size = 12
    boxes = edge_case_boxes(size)
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((len(boxes), size, size)) * np.exp(rng.uniform(-12, 3, (len(boxes), size, size)))
    maps = maps.astype(np.float32)
    maps[0] = 0.0  # all zero
    maps[1] = -np.abs(maps[1])  # all negative
    maps[3, 0, 0] = -0.0
    inside = box_unions(boxes, size)
    got = region_sums(maps, inside)
    for i in range(len(boxes)):
        assert list(bits(got[i])) == list(bits(per_image_sums(maps[i], inside[i]))), i


def random_maps(rng, n, h):
    """Smooth signed maps: pos >= 0 and neg <= 0 at feature resolution, some all zero, some one-signed."""
    pos = rng.gamma(1.0, 1.0, (n, h, h)).astype(np.float32) * np.exp(rng.uniform(-6, 2, (n, 1, 1))).astype(np.float32)
    neg = -rng.gamma(0.7, 1.0, (n, h, h)).astype(np.float32) * np.exp(rng.uniform(-6, 2, (n, 1, 1))).astype(np.float32)
    pos[0] = neg[0] = 0.0  # an all-zero map: no share (denominators 0), box not net negative
    neg[1] = 0.0  # no negative part
    pos[2] = 0.0  # no positive part
    return pos, neg


def random_boxes(rng, n, size):
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        xy = rng.integers(-2, size, (k, 2))
        wh = rng.integers(0, size, (k, 2))
        out.append(np.clip(np.concatenate([xy, xy + wh], axis=1), 0, size - 1).astype(np.int64))
    out[3] = np.array([[0, 0, size - 1, 3], [size - 5, 0, size - 1, size - 1]])  # two boxes at the border
    return out


@pytest.mark.parametrize(("n", "h", "size"), [(60, 7, 28), (24, 14, 224)])
def test_sign_diagnostics_equal_the_per_image_reference(n, h, size):
    """At 224 px regions exceed numpy's 8192-value buffers: the buffered summation order is matched too."""
    rng = np.random.default_rng(size)
    pos, neg = random_maps(rng, n, h)
    boxes = random_boxes(rng, n, size)
    ref = sign_diagnostics_reference(pos, neg, boxes, size)
    for chunk in (1, 5, 64):
        got = sign_diagnostics(pos, neg, boxes, size, chunk=chunk)
        assert json.dumps(got) == json.dumps(ref)
        assert got == ref


def test_nan_maps_are_handled_as_the_reference_does():
    rng = np.random.default_rng(7)
    pos, neg = random_maps(rng, 6, 5)
    pos[4, 1, 1] = np.nan  # NaN sums: left out of the shares (not > 0), not net negative
    boxes = random_boxes(rng, 6, 20)
    boxes[4] = np.array([[0, 0, 19, 19]])
    assert sign_diagnostics(pos, neg, boxes, 20) == sign_diagnostics_reference(pos, neg, boxes, 20)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="3 maps but 2 box lists"):
        sign_diagnostics(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), [np.zeros((1, 4))] * 2, 8)


VARIANTS = ["cam", "gradcam", "gradcampp", "xgradcam", "layercam"]


@pytest.fixture
def cam_folder(tmp_path):
    rng = np.random.default_rng(3)
    n, h, size = 37, 6, 24
    shape = (2, 2, 2, len(VARIANTS), h, h)

    def records():
        for i in range(n):
            maps = rng.standard_normal(shape).astype(np.float32)
            maps[:, 0] = np.abs(maps[:, 0])
            maps[:, 1] = -np.abs(maps[:, 1])
            yield CamRecord(f"img{i:03d}.jpg", i % 3, (i + 1) % 3, 0.5, -0.5, maps)

    write_cams(
        tmp_path / "cams",
        records(),
        targets=("gt", "pred"),
        feature_size=(h, h),
        dtype="float32",
        shard_size=10,  # blocks cross shard boundaries
        info={"family": "cam"},
        variants=VARIANTS,
    )
    gt = GroundTruth(
        [f"img{i:03d}.jpg" for i in range(n)], np.arange(n) % 3, random_boxes(rng, n, size), None, None, size
    )
    return tmp_path / "cams", gt


def test_streamed_sign_table_equals_the_per_map_set_reference(cam_folder):
    root, gt = cam_folder
    cams = read_cams(root)
    ref = {
        v: {
            b: sign_diagnostics_reference(
                cams.select(part="pos", branch=b, variant=v),
                cams.select(part="neg", branch=b, variant=v),
                gt.boxes,
                gt.size,
            )
            for b in BRANCHES
        }
        for v in VARIANTS
    }
    for block, chunk in ((512, 64), (8, 3), (1, 1)):
        assert json.dumps(sign_table(open_cams(root), gt, block=block, chunk=chunk)) == json.dumps(ref)
    assert json.dumps(sign_table(cams, gt)) == json.dumps(ref)  # a CamSet in memory works the same


@pytest.mark.parametrize(("variant", "protocol"), [("cam", "clean"), ("cam", "official"), ("gradcam", "official")])
def test_gallery_reads_only_its_images(cam_folder, variant, protocol):
    root, gt = cam_folder
    gt = dataclasses.replace(gt, boxes=[b if len(b) else np.array([[0, 0, 3, 3]]) for b in gt.boxes])  # captions
    store, cams = open_cams(root), read_cams(root)
    indices = [0, 9, 10, 36]  # across shard boundaries
    assert np.array_equal(read_images(store, indices), cams.maps[indices])
    store = open_cams(root)
    metrics = {v: {b: {"best_threshold_iou50": 0.4} for b in BRANCHES} for v in VARIANTS}
    opts = EvalOptions(postprocess=protocol)
    streamed = gallery_panel(store, gt, variant, indices, metrics, opts)
    assert store.bytes_read == len(indices) * cams.maps[0].nbytes  # those images' maps, nothing else
    memory = gallery_panel(cams, gt, variant, indices, metrics, opts)
    for branch in BRANCHES:
        assert np.array_equal(streamed.signed[branch], memory.signed[branch])
        assert np.array_equal(streamed.pred_boxes[branch], memory.pred_boxes[branch])
        assert streamed.captions[branch] == memory.captions[branch]
