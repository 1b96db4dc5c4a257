import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.metrics.fidelity import FidelityAccumulator, fidelity_scores
from pipeline.models.dual import DualBranchNet, ModelSpec
from pipeline.models.heads import GapLinearHead


class PixelTrunk(nn.Module):
    """Stand-in trunk: the image itself is the feature map, so the pooled vector is the channel means."""

    arch = "pixels"
    channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base_model(single_thread) -> DualBranchNet:
    """Built once (timm construction dominates the run time); tests use deep copies."""
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 5, 32, output_stride=16))
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture
def model(base_model) -> DualBranchNet:
    return copy.deepcopy(base_model)


def pixel_model(model: DualBranchNet) -> DualBranchNet:
    """logits = (mean of channel 0, 0): softmax-head probabilities are sigmoid(+-m0)."""
    model.trunk = PixelTrunk()
    model.head, model.head2 = GapLinearHead(3, 2), None
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        model.head.bias.zero_()
    return model


def test_hand_checked_example(model):
    # Channel 0 is ln 9 everywhere, the other channels are noise the head ignores.
    # Y(class 0) = 9 / (9 + 1) = 0.9, Y(class 1) = 0.1. The cam is 1 on half the pixels and 0 elsewhere, so
    # the masked channel-0 mean is ln 3: O(class 0) = 3/4, O(class 1) = 1/4.
    # Image 0 (target 0): drop (0.9 - 0.75) / 0.9 = 1/6, no increase. Image 1 (target 1): O > Y, drop 0.
    # AvgDrop = (1/6 + 0) / 2 * 100 = 8.333..., IncConf = 50.
    model = pixel_model(model)
    images = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    images[:, 0] = math.log(9.0)
    cams = torch.zeros(2, 4, 4)
    cams[:, :, :2] = 1.0
    y, o = fidelity_scores(model, images, cams, torch.tensor([0, 1]))
    assert y.dtype == torch.float64
    assert torch.allclose(y, torch.tensor([0.9, 0.1], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(o, torch.tensor([0.75, 0.25], dtype=torch.float64), atol=1e-6)
    acc = FidelityAccumulator()
    acc.accumulate(y, o)
    out = acc.compute()
    assert out["avg_drop"] == pytest.approx(100 / 12, abs=1e-4)
    assert out["inc_conf"] == 50.0 and out["n"] == 2


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g), torch.tensor([4, 0, 2])


def test_matches_direct_softmax_of_the_softmax_head_on_the_masked_image(model):
    images, cams, targets = batch()
    y, o = fidelity_scores(model, images, cams, targets)
    with torch.no_grad():
        direct_y = torch.softmax(model(images).logits, dim=1)[torch.arange(3), targets]
        masked = images * cams.unsqueeze(1).expand(-1, 3, -1, -1)  # cam on every channel of the normalised image
        direct_o = torch.softmax(model(masked).logits, dim=1)[torch.arange(3), targets]
    assert torch.allclose(y.float(), direct_y, atol=1e-6) and torch.allclose(o.float(), direct_o, atol=1e-6)
    assert not torch.allclose(y, o)


def test_all_ones_cam_keeps_the_confidence(model):
    images, _, targets = batch()
    y, o = fidelity_scores(model, images, torch.ones(3, 32, 32), targets)
    assert torch.equal(y, o)
    acc = FidelityAccumulator()
    acc.accumulate(y, o)
    assert summary(acc.compute()) == {"avg_drop": 0.0, "inc_conf": 0.0, "n": 3}


def test_sigmoid_head_is_never_used(model):
    images, cams, targets = batch()
    before = fidelity_scores(model, images, cams, targets)
    with torch.no_grad():
        model.head2.weight.fill_(float("nan"))
        model.head2.bias.fill_(float("nan"))
    after = fidelity_scores(model, images, cams, targets)
    assert all(torch.isfinite(t).all() for t in after)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_eval_mode_no_grad_and_mode_restored(model):
    images, cams, targets = batch()
    reference = fidelity_scores(model, images, cams, targets)
    model.train()
    y, o = fidelity_scores(model, images, cams, targets)
    assert model.training  # restored
    assert torch.equal(y, reference[0]) and torch.equal(o, reference[1])  # BN used running stats
    assert not y.requires_grad and not o.requires_grad


def test_accumulator_formulas_by_hand():
    # drops: max(0, .8-.4)/.8 = .5, max(0, .5-.6)/.5 = 0, max(0, .2-.2)/.2 = 0, max(0, 1-.25)/1 = .75
    # -> AvgDrop = 1.25 / 4 * 100 = 31.25; increases: only .6 > .5 -> IncConf = 25 (equality is no increase)
    y = np.array([0.8, 0.5, 0.2, 1.0])
    o = np.array([0.4, 0.6, 0.2, 0.25])
    whole = FidelityAccumulator()
    whole.accumulate(y, o)
    out = whole.compute()
    assert summary(out) == {"avg_drop": pytest.approx(31.25), "inc_conf": 25.0, "n": 4}
    split = FidelityAccumulator()
    split.accumulate(torch.tensor(y[:1]), torch.tensor(o[:1]))
    split.accumulate(torch.tensor(y[1:]), torch.tensor(o[1:]))
    assert summary(split.compute()) == pytest.approx(summary(whole.compute()))
    # per-image terms, in accumulation order: 100 max(0, Y - O) / Y and O > Y
    for result in (out, split.compute()):
        assert result["avg_drop_terms"].dtype == np.float64 and result["inc_conf_flags"].dtype == np.bool_
        np.testing.assert_array_equal(result["avg_drop_terms"], [50.0, 0.0, 0.0, 75.0])
        assert result["inc_conf_flags"].tolist() == [False, True, False, False]
        assert result["avg_drop_terms"].mean() == pytest.approx(result["avg_drop"], rel=1e-14, abs=0)
        assert 100.0 * result["inc_conf_flags"].sum() / len(result["inc_conf_flags"]) == result["inc_conf"]


def summary(result: dict) -> dict:
    """The aggregate numbers of FidelityAccumulator.compute (without the per-image arrays)."""
    return {k: result[k] for k in ("avg_drop", "inc_conf", "n")}


def test_errors(model):
    acc = FidelityAccumulator()
    with pytest.raises(ValueError, match="no image"):
        acc.compute()
    with pytest.raises(ValueError, match="Y must be > 0"):
        acc.accumulate(np.array([0.0]), np.array([0.1]))
    with pytest.raises(ValueError, match="same length"):
        acc.accumulate(np.array([0.5, 0.5]), np.array([0.1]))
    images, cams, targets = batch()
    with pytest.raises(ValueError, match="cams must be"):
        fidelity_scores(model, images, cams[:, :16], targets)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fidelity_scores(model, images, cams * 2, targets)
    with pytest.raises(ValueError, match="class indices"):
        fidelity_scores(model, images, cams, torch.tensor([0, 1, 5]))


def test_many_map_sets_in_one_forward_match_one_at_a_time(model):
    from pipeline.metrics.fidelity import fidelity_scores_many

    images, cams, targets = batch()
    others = [cams, torch.ones_like(cams), cams.flip(-1)]
    y, outs = fidelity_scores_many(model, images, others, targets)
    for cam, o in zip(others, outs):
        y1, o1 = fidelity_scores(model, images, cam, targets)
        assert torch.equal(y, y1) and torch.equal(o, o1)
    y2, outs2 = fidelity_scores_many(model, images, others[:1], targets, y=y)  # Y handed over: no forward
    assert y2 is y and torch.equal(outs2[0], outs[0])
    with pytest.raises(ValueError, match=r"cams\[1\] must be in \[0, 1\]"):
        fidelity_scores_many(model, images, [cams, cams * 2], targets)
