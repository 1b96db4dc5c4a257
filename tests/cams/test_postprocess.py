"""Evaluation-time post-processing of raw maps: normalisation, kernels, clamp, ReLU, official presets."""

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from pipeline.cams.engine import BRANCHES, VARIANTS
from pipeline.cams.postprocess import (
    PostProcess,
    clean_options,
    normalize_scoremap,
    official_options,
    postprocess,
    resize_maps,
)

RNG = np.random.default_rng(0)


def raw_maps(n: int = 3, h: int = 5, w: int = 5) -> tuple[np.ndarray, np.ndarray]:
    pos = RNG.uniform(0, 1, (n, h, w)).astype(np.float32)
    neg = -RNG.uniform(0, 1, (n, h, w)).astype(np.float32)
    return pos, neg


def test_normalize_scoremap_follows_the_official_rule():
    maps = RNG.normal(size=(4, 6, 6)).astype(np.float32)
    maps[1, 2, 3] = np.nan
    maps[2] = 3.5
    out = normalize_scoremap(maps)
    assert out.dtype == np.float32 and out.shape == maps.shape
    assert (out[1] == 0).all() and (out[2] == 0).all()  # NaN anywhere, constant map -> zeros
    for i in (0, 3):
        m = maps[i]
        np.testing.assert_allclose(out[i], (m - m.min()) / (m.max() - m.min()), rtol=0, atol=1e-7)
        assert out[i].min() == 0 and out[i].max() == 1
    # bit for bit the rule as written: zeros where a map has a NaN or no range, else shifted / top
    shifted = maps - maps.min(axis=(1, 2), keepdims=True)
    top = shifted.max(axis=(1, 2), keepdims=True)
    invalid = np.isnan(maps).any(axis=(1, 2), keepdims=True) | ~(top > 0)
    np.testing.assert_array_equal(out, np.where(invalid, np.float32(0), shifted / np.where(invalid, 1, top)))
    np.testing.assert_array_equal(normalize_scoremap(torch.from_numpy(maps)), out)  # torch input
    np.testing.assert_array_equal(normalize_scoremap(maps[0]), out[0])  # a single map


@pytest.mark.parametrize("kernel,flag", [("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC)])
def test_kernels_use_the_right_cv2_flags(kernel, flag):
    pos, neg = raw_maps()
    expected = np.stack([cv2.resize(m, (24, 24), interpolation=flag) for m in pos])
    np.testing.assert_array_equal(resize_maps(pos, 24, 24, kernel), expected)
    opts = PostProcess(weight_clamp=True, relu=False, upsample=kernel, size=24, official_grad_scaling=False)
    np.testing.assert_array_equal(postprocess(pos, neg, opts), normalize_scoremap(expected))


def test_bicubic_and_bilinear_differ():
    pos, _ = raw_maps()
    assert not np.allclose(resize_maps(pos, 24, 24, "bilinear"), resize_maps(pos, 24, 24, "bicubic"))


def test_non_square_resize_puts_width_and_height_the_right_way_round():
    ramp = np.tile(np.arange(3, dtype=np.float32), (2, 1))[None]  # (1, h=2, w=3): varies along x only
    out = resize_maps(ramp, 4, 6, "bilinear")
    assert out.shape == (1, 4, 6)
    assert (out == out[:, :1]).all()  # every row is the same: still constant along y
    assert (np.diff(out[0, 0]) >= 0).all() and out[0, 0, -1] > out[0, 0, 0]


def test_weight_clamp_uses_pos_only():
    pos, neg = raw_maps()
    clamp = PostProcess(weight_clamp=True, relu=False, upsample="bilinear", size=10, official_grad_scaling=False)
    signed = PostProcess(weight_clamp=False, relu=False, upsample="bilinear", size=10, official_grad_scaling=False)
    np.testing.assert_array_equal(postprocess(pos, neg, clamp), postprocess(pos, np.zeros_like(neg), signed))
    np.testing.assert_array_equal(postprocess(pos, None, clamp), postprocess(pos, neg, clamp))
    np.testing.assert_array_equal(
        postprocess(pos, neg, signed), normalize_scoremap(resize_maps(pos + neg, 10, 10, "bilinear"))
    )
    with pytest.raises(ValueError, match="neg"):
        postprocess(pos, None, signed)


def test_relu_zeroes_the_negative_part_before_scaling():
    pos, neg = raw_maps()
    relu = PostProcess(weight_clamp=False, relu=True, upsample="bilinear", size=5, official_grad_scaling=False)
    out = postprocess(pos, neg, relu)  # size 5 = the map size: cv2.resize copies
    signed = pos + neg
    assert (signed < 0).any()
    np.testing.assert_array_equal(out, normalize_scoremap(np.maximum(signed, 0)))
    assert (out[signed <= 0] == 0).all()


def test_official_grad_scaling_is_pytorch_grad_cams_scale_cam_image():
    """ReLU -> scale_cam_image(M, (size, size)) -> ReLU -> scale_cam_image(M) -> exact min-max."""
    pos, neg = raw_maps()
    opts = PostProcess(weight_clamp=False, relu=True, upsample="bilinear", size=32, official_grad_scaling=True)
    cam = scale_cam_image(np.maximum(pos + neg, 0), (32, 32))
    expected = normalize_scoremap(scale_cam_image(np.maximum(cam, 0)))
    np.testing.assert_array_equal(postprocess(pos, neg, opts), expected)
    np.testing.assert_allclose(postprocess(torch.from_numpy(pos), torch.from_numpy(neg), opts), expected)


def test_postprocess_keeps_leading_dimensions():
    pos = RNG.normal(size=(2, len(BRANCHES), len(VARIANTS), 4, 4)).astype(np.float16)
    out = postprocess(pos, -np.abs(pos), clean_options(8))
    assert out.shape == (2, len(BRANCHES), len(VARIANTS), 8, 8) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


def test_presets():
    for variant in VARIANTS:
        softmax, sigmoid = (official_options(variant, branch, 224) for branch in BRANCHES)
        assert not softmax.weight_clamp and sigmoid.weight_clamp and softmax.size == 224
        if variant == "cam":
            assert (softmax.relu, softmax.upsample, softmax.official_grad_scaling) == (False, "bicubic", False)
        else:
            assert (softmax.relu, softmax.upsample, softmax.official_grad_scaling) == (True, "bilinear", True)
    assert clean_options(96) == PostProcess(
        weight_clamp=False, relu=True, upsample="bilinear", size=96, official_grad_scaling=False
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: official_options("scorecam", "sigmoid", 8), "variant"),
        (lambda: official_options("cam", "softmax2", 8), "branch"),
        (lambda: PostProcess(False, True, "nearest", 8, False), "upsample"),
        (lambda: PostProcess(False, True, "bilinear", 0, False), "size"),
    ],
)
def test_invalid_options_are_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
