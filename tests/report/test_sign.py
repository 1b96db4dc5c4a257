"""Sign diagnostics against hand computations."""

import numpy as np
import pytest

from pipeline.report.sign import SignAccumulator, box_union, sign_diagnostics, signed_maps


def test_box_union_uses_inclusive_coordinates_and_unions():
    mask = box_union(np.array([[0, 0, 1, 1], [3, 2, 3, 3]]), 4)
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = True
    expected[2:4, 3] = True
    assert np.array_equal(mask, expected)


def test_shares_match_a_hand_computation():
    # Image 1: inside the box (top-left 2x2): 1, -1, 2, -4 -> |.| sum 8, negative 5 -> 62.5 %, net -2 < 0.
    # Outside: ten 1s and two -0.5 -> |.| sum 11, negative 1 -> 9.0909 %.
    m1 = np.ones((4, 4), np.float32)
    m1[0, 0], m1[0, 1], m1[1, 0], m1[1, 1] = 1, -1, 2, -4
    m1[3, 3] = m1[3, 2] = -0.5
    # Image 2: all positive -> 0 % inside and outside, net positive.
    m2 = np.full((4, 4), 2.0, np.float32)
    acc = SignAccumulator()
    acc.accumulate(np.stack([m1, m2]), [np.array([[0, 0, 1, 1]]), np.array([[1, 1, 2, 2]])])
    out = acc.compute()
    assert out["neg_share_inside"] == pytest.approx((62.5 + 0.0) / 2)
    assert out["neg_share_outside"] == pytest.approx((100 / 11 + 0.0) / 2)
    assert out["net_negative_inside"] == pytest.approx(50.0)


def test_all_zero_regions_are_left_out_of_the_mean():
    m = np.zeros((4, 4), np.float32)
    m[0, 0] = -1  # only inside mass, all negative
    acc = SignAccumulator()
    acc.accumulate(m[None], [np.array([[0, 0, 1, 1]])])
    assert acc.compute() == {"neg_share_inside": 100.0, "neg_share_outside": 0.0, "net_negative_inside": 100.0}


def test_signed_maps_add_the_parts_and_upsample():
    pos = np.full((1, 2, 2), 3.0, np.float32)
    neg = np.full((1, 2, 2), -1.0, np.float32)
    out = signed_maps(pos, neg, 8)
    assert out.shape == (1, 8, 8)
    assert np.allclose(out, 2.0)


def test_signed_maps_upsample_bilinearly():
    """A non-constant map against torch's bilinear (half-pixel centres, as cv2's INTER_LINEAR): nearest-neighbour
    or bicubic upsampling would fail here."""
    import torch

    rng = np.random.default_rng(3)
    pos = rng.random((2, 3, 3)).astype(np.float32)
    neg = -rng.random((2, 3, 3)).astype(np.float32)
    out = signed_maps(pos, neg, 12)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(pos + neg)[:, None], size=(12, 12), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    assert np.allclose(out, ref, atol=1e-5)
    assert len(np.unique(out[0])) > 9  # values between the 9 source values, not copies of them


def test_sign_diagnostics_flips_with_the_sign_of_the_map():
    rng = np.random.default_rng(0)
    pos = rng.random((5, 3, 3)).astype(np.float32)
    zero = np.zeros_like(pos)
    boxes = [np.array([[0, 0, 5, 5]])] * 5
    assert sign_diagnostics(pos, zero, boxes, 12)["neg_share_inside"] == 0.0
    flipped = sign_diagnostics(zero, -pos, boxes, 12)
    assert flipped["neg_share_inside"] == pytest.approx(100.0)
    assert flipped["net_negative_inside"] == pytest.approx(100.0)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="3 maps but 2 box lists"):
        SignAccumulator().accumulate(np.zeros((3, 4, 4)), [np.zeros((1, 4))] * 2)
