"""The engine through any head: parity with pytorch-grad-cam 1.5.7 on the gradient-family stand-ins
(MLP head and Inception head), both branches, at several seeds, batch sizes and map/grid sizes; the fast
GAP-linear path against autograd through the head; the variants differ from each other on an MLP head."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pipeline.cams import engine
from pipeline.cams.engine import BRANCHES, compute_cams, head_gradients, pool_cells, pooled_heads
from pipeline.cams.postprocess import PostProcess, postprocess
from pipeline.models.dual import BranchClassifier
from tests.cams.standins import inception_grad_model, vgg_grad_model

GRAD_CAMS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM}

pytestmark = pytest.mark.usefixtures("single_thread")

# (seed, batch, input side, pool grid): maps of 4x4 ... 9x9, grids that divide the map and grids that do not
# (adaptive pooling with overlapping cells), batch sizes 1..5.
MLP_SETTINGS = [(0, 3, 32, 3), (1, 1, 24, 2), (2, 5, 36, 4), (3, 2, 28, 7), (4, 4, 20, 1)]
INCEPTION_SETTINGS = [(0, 3, 32), (5, 1, 20), (6, 4, 36)]


def reference(model, branch, variant, x, targets):
    with GRAD_CAMS[variant](BranchClassifier(model, branch), [model.trunk]) as cam:
        return cam(x, [ClassifierOutputTarget(int(k)) for k in targets])


def check_parity(model, x, targets, cams):
    side = x.shape[-1]
    opts = PostProcess(weight_clamp=False, relu=True, upsample="bilinear", size=side, official_grad_scaling=True)
    assert cams.variants == tuple(GRAD_CAMS)  # the gradient family has no CAM
    live = 0
    for (b, branch), (v, variant) in itertools.product(enumerate(BRANCHES), enumerate(cams.variants)):
        ref = reference(model, branch, variant, x, targets)
        ours = postprocess(cams.pos[:, b, v], cams.neg[:, b, v], opts)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4, err_msg=f"{variant}, {branch}")
        live += int((ref.max(axis=(1, 2)) > 0.99).sum())
    assert live >= len(x) * 6, "fixture too degenerate: most reference maps are all zero"


@pytest.mark.parametrize("seed,batch,side,grid", MLP_SETTINGS)
@pytest.mark.parametrize("fast_path", [True, False])
def test_mlp_head_parity_with_pytorch_grad_cam(seed, batch, side, grid, fast_path):
    """fast_path: the pooled-head path (per-cell gradients); False: autograd through the whole head."""
    model = vgg_grad_model(seed=seed, input_size=side, grid=grid)
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed + 10))
    targets = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(seed + 20))
    check_parity(model, x, targets, compute_cams(model, x, targets, fast_path=fast_path))


@pytest.mark.parametrize("seed,batch,side", INCEPTION_SETTINGS)
@pytest.mark.parametrize("fast_path", [True, False])
def test_inception_head_parity_with_pytorch_grad_cam(seed, batch, side, fast_path):
    model = inception_grad_model(seed=seed, input_size=side)
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed + 10))
    targets = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(seed + 20))
    check_parity(model, x, targets, compute_cams(model, x, targets, fast_path=fast_path))


def test_logits_are_the_models_and_nothing_reaches_the_parameters():
    for model in (vgg_grad_model(), inception_grad_model()):
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        targets = torch.tensor([0, 2, 4])
        with torch.no_grad():
            out = model(x)
        for fast in (True, False):
            cams = compute_cams(model, x, targets, fast_path=fast)
            torch.testing.assert_close(cams.logits, out.logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cams.logits2, out.logits2, rtol=1e-5, atol=1e-6)
        assert all(p.grad is None for p in model.parameters())


def test_mlp_head_gradient_varies_and_the_four_variants_differ():
    """Through an MLP head dS/dA is not constant over the map (unlike GAP-linear), so Grad-CAM, Grad-CAM++,
    XGrad-CAM and LayerCAM give four different score maps, on both branches."""
    model = vgg_grad_model(seed=7, grid=4, input_size=32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    targets = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        features = model.trunk(x)
    _, _, grads = head_gradients(model, features, targets)
    spread = grads.amax(dim=(-2, -1)) - grads.amin(dim=(-2, -1))  # (B, 2, C)
    assert (spread > 1e-3 * grads.abs().amax()).float().mean() > 0.9  # nearly every channel varies over the map
    cams = compute_cams(model, x, targets)
    opts = PostProcess(weight_clamp=False, relu=True, upsample="bilinear", size=32, official_grad_scaling=True)
    scores = postprocess(cams.pos, cams.neg, opts)  # (B, 2, 4, 32, 32)
    for b in range(2):
        for i, j in itertools.combinations(range(4), 2):
            diff = np.abs(scores[:, b, i] - scores[:, b, j]).max(axis=(1, 2))
            assert (diff > 0.05).all(), (BRANCHES[b], cams.variants[i], cams.variants[j], diff)
    # The same trunk and map with a GAP-linear head: Grad-CAM == XGrad-CAM there (METHOD.md 8.17), not here.
    gap = inception_grad_model(seed=7, input_size=32)
    gap.trunk = model.trunk
    gap_cams = compute_cams(gap, x, targets)
    gap_scores = postprocess(gap_cams.pos, gap_cams.neg, opts)
    np.testing.assert_allclose(gap_scores[:, :, 0], gap_scores[:, :, 2], rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_equals_autograd_on_a_gap_linear_head(seed):
    model = inception_grad_model(seed=seed)
    model.spec = type(model.spec)("cam", model.spec.num_classes, model.spec.input_size)  # CAM family: all five
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    targets = torch.tensor([4, 0, 2])
    fast = compute_cams(model, x, targets, pred=True)
    slow = compute_cams(model, x, targets, pred=True, fast_path=False)
    assert fast.variants == slow.variants == ("cam", "gradcam", "gradcampp", "xgradcam", "layercam")
    for name in ("pos", "neg", "pred_pos", "pred_neg", "logits", "logits2"):
        a, b = getattr(fast, name), getattr(slow, name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=name)


@pytest.mark.parametrize("seed,side,grid", [(0, 32, 3), (1, 28, 7), (2, 36, 4), (3, 44, 3), (4, 20, 1)])
def test_pooled_head_path_equals_autograd_through_the_head(seed, side, grid, monkeypatch):
    """The per-cell gradient of a pooling head (`Head.pooled`, `pool_cells`) against autograd through the
    whole head, with windows that tile the map (8 -> 4) and that overlap (7 -> 3, 9 -> 4, 11 -> 3)."""
    model = vgg_grad_model(seed=seed, input_size=side, grid=grid)
    assert pooled_heads(model) is not None
    x = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(seed + 30))
    targets = torch.tensor([0, 1, 2, 3])

    def no_per_pixel_path(*args, **kwargs):
        raise AssertionError("the pooled head took the per-pixel autograd path")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_chunked_maps", no_per_pixel_path)
        fast = compute_cams(model, x, targets, pred=True)
    slow = compute_cams(model, x, targets, pred=True, fast_path=False)
    for name in ("logits", "logits2"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name  # the head's own forward
    for name in ("pos", "neg", "pred_pos", "pred_neg"):
        a, b = getattr(fast, name), getattr(slow, name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()), msg=name)


@pytest.mark.parametrize("height,width,grid", [(5, 5, 2), (4, 6, 3), (7, 3, 3), (6, 6, 3), (3, 3, 1)])
def test_pool_cells_give_the_pooling_gradient(height, width, grid):
    """dS/dA from the cells equals autograd through F.adaptive_avg_pool2d for a random dS/dpooled."""
    to_cells, index, one_hot = pool_cells(height, width, grid)
    a = torch.randn(2, 3, height, width, requires_grad=True)
    upstream = torch.randn(2, 3, grid, grid, generator=torch.Generator().manual_seed(height * width))
    (F.adaptive_avg_pool2d(a, grid) * upstream).sum().backward()
    per_cell = upstream.reshape(2, 3, -1) @ to_cells
    torch.testing.assert_close(per_cell[..., index].reshape(a.shape), a.grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(one_hot.argmax(1), index) and torch.equal(one_hot.sum(0), torch.bincount(index).float())


def test_pool_cells_by_hand():
    """5 x 5 -> 2 x 2: windows [0, 3) and [2, 5) on each axis overlap on the middle row and column, so the
    cells are the row segments {0, 1}, {2}, {3, 4} times the same for columns: 9 cells of 4, 2 or 1 pixels,
    and the centre pixel belongs to all four windows (its gradient is the sum of the four, each / 9)."""
    to_cells, index, one_hot = pool_cells(5, 5, 2)
    counts = one_hot.sum(0)
    assert len(counts) == 9 and sorted(counts.tolist()) == [1, 2, 2, 2, 2, 4, 4, 4, 4]
    centre = int(index[2 * 5 + 2])
    torch.testing.assert_close(to_cells[:, centre], torch.full((4,), 1 / 9))
    corner = int(index[0])
    torch.testing.assert_close(to_cells[:, corner], torch.tensor([1 / 9, 0, 0, 0]))


@pytest.mark.parametrize("make", [vgg_grad_model, inception_grad_model])
def test_pred_maps_from_the_same_forward_equal_a_second_call(make):
    model = make(seed=3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        predicted = model(x).logits.argmax(1)
    targets = predicted.clone()
    targets[1::2] = (predicted[1::2] + 1) % 5  # images 0, 2 correctly classified, 1, 3 not
    both = compute_cams(model, x, targets, pred=True)
    assert torch.equal(both.pred_pos[0::2], both.pos[0::2]) and not torch.equal(both.pred_pos[1], both.pos[1])
    again = compute_cams(model, x, both.logits.argmax(1))
    torch.testing.assert_close(both.pred_pos, again.pos, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(both.pred_neg, again.neg, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(both.pos, compute_cams(model, x, targets).pos, rtol=0, atol=0)


def test_batch_invariance_through_an_mlp_head():
    model = vgg_grad_model(seed=5)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([1, 2, 4, 0])
    together = compute_cams(model, x, targets)
    for i in (0, 3):
        alone = compute_cams(model, x[i : i + 1], targets[i : i + 1])
        torch.testing.assert_close(
            alone.pos[0], together.pos[i], rtol=1e-5, atol=1e-6 * float(together.pos.abs().max())
        )


def test_cam_needs_a_gap_linear_head():
    """A CAM-family model must have a GAP-linear head: CAM is undefined on an MLP head."""
    model = vgg_grad_model(family="cam")
    with pytest.raises(ValueError, match="GAP -> linear"):
        compute_cams(model, torch.zeros(1, 3, 32, 32), torch.tensor([0]))
