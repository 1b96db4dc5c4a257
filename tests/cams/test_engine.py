"""The one-pass CAM engine: parity with pytorch-grad-cam, CAM by hand, GAP-head identities, signs, batching."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pipeline.cams.engine import BRANCHES, VARIANTS, compute_cams, head_gradients
from pipeline.cams.postprocess import PostProcess, normalize_scoremap, official_options, postprocess
from pipeline.models.backbones import Trunk
from pipeline.models.dual import BranchClassifier, DualBranchNet, ModelSpec

K = 6
GRAD_CAMS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM}
SPECS = {"resnet10t": ModelSpec("resnet10t", K, 64, output_stride=16), "vgg16": ModelSpec("vgg16", K, 64)}
LAST_STAGE = {"resnet10t": "body.layer4", "vgg16": "conv6"}  # the trunk module that ends at the target layer


pytestmark = pytest.mark.usefixtures("single_thread")


def make_model(spec: ModelSpec, seed: int = 0) -> DualBranchNet:
    """A random-init dual-branch model in eval mode with N(0, 1) head weights and biases."""
    torch.manual_seed(seed)
    model = DualBranchNet(spec)
    model.add_sigmoid_head("random")
    with torch.no_grad():
        for head in (model.head, model.head2):
            head.weight.normal_()
            head.bias.normal_()
    return model.eval()


def centre_target_rows(model: DualBranchNet, x: torch.Tensor, targets: torch.Tensor) -> None:
    """Make each image's target CAM change sign: project W_h[k_b] orthogonal to image b's pooled features,
    so that sum_c W_h[k_b, c] A_c has zero spatial mean (needs distinct targets)."""
    with torch.no_grad():
        pooled = model(x).features.mean(dim=(2, 3))
        for head in (model.head, model.head2):
            for p, k in zip(pooled, targets):
                head.weight[k] -= (head.weight[k] @ p) / (p @ p) * p


def clamped(cam_class: type) -> type:
    """The official code's modified pytorch-grad-cam for b2 models: channel weights alpha <- max(alpha, 0)."""
    if cam_class is LayerCAM:  # no channel weights: the clamp does not apply
        return LayerCAM

    class Clamped(cam_class):
        def get_cam_weights(self, *args):
            return np.maximum(super().get_cam_weights(*args), 0)

    return Clamped


def run_grad_cam(
    cam_class: type, model: DualBranchNet, branch: str, x: torch.Tensor, targets: torch.Tensor
) -> np.ndarray:
    with cam_class(BranchClassifier(model, branch), [model.trunk]) as cam:
        return cam(x, [ClassifierOutputTarget(int(k)) for k in targets])


@pytest.fixture(scope="module", params=sorted(SPECS))
def case(request):
    """A model, 3 images, their targets and our CamBatch. The trunk is frozen below its last stage so that
    pytorch-grad-cam's backward stops near the target layer (the gradient there is unchanged)."""
    model = make_model(SPECS[request.param])
    model.trunk.requires_grad_(False)
    model.trunk.get_submodule(LAST_STAGE[request.param]).requires_grad_(True)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 5])
    centre_target_rows(model, x, targets)
    return model, x, targets, compute_cams(model, x, targets)


def test_shapes_and_logits_match_the_model(case):
    model, x, targets, cams = case
    with torch.no_grad():
        out = model(x)
    h, w = model.feature_size
    assert cams.pos.shape == cams.neg.shape == (3, len(BRANCHES), len(VARIANTS), h, w)
    assert cams.pos.dtype == cams.neg.dtype == cams.logits.dtype == torch.float32
    torch.testing.assert_close(cams.logits, out.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cams.logits2, out.logits2, rtol=1e-6, atol=1e-6)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam runs of other tests leave .grad behind
    compute_cams(model, x, targets)
    assert all(p.grad is None for p in model.parameters())  # nothing was backpropagated into the model


@pytest.mark.parametrize("branch", BRANCHES)
def test_parity_with_pytorch_grad_cam(case, branch):
    """raw map -> ReLU -> pytorch-grad-cam's scaling == pytorch-grad-cam's output, for all 4 variants."""
    model, x, targets, cams = case
    b = BRANCHES.index(branch)
    opts = PostProcess(weight_clamp=False, relu=True, upsample="bilinear", size=64, official_grad_scaling=True)
    for variant, cam_class in GRAD_CAMS.items():
        reference = run_grad_cam(cam_class, model, branch, x, targets)
        assert reference.shape == (3, 64, 64) and reference.dtype == np.float32
        assert (reference.max(axis=(1, 2)) > 0.99).all(), f"{variant}: degenerate all-zero fixture map"
        v = VARIANTS.index(variant)
        ours = postprocess(cams.pos[:, b, v], cams.neg[:, b, v], opts)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4, err_msg=f"{variant}, {branch}")
    signed = (cams.pos + cams.neg)[:, b, VARIANTS.index("gradcam")]
    assert ((signed < 0).any(dim=(1, 2)) & (signed > 0).any(dim=(1, 2))).all()  # the ReLU matters


def test_official_sigmoid_options_match_the_clamped_grad_cam(case):
    """official_options(v, "sigmoid") == the official code's pytorch-grad-cam with alpha <- max(alpha, 0)."""
    model, x, targets, cams = case
    assert (cams.neg[:, 1, VARIANTS.index("gradcam")] < 0).any()  # the clamp matters
    for variant, cam_class in GRAD_CAMS.items():
        reference = run_grad_cam(clamped(cam_class), model, "sigmoid", x, targets)
        v = VARIANTS.index(variant)
        ours = postprocess(cams.pos[:, 1, v], cams.neg[:, 1, v], official_options(variant, "sigmoid", 64))
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4, err_msg=variant)


def test_cam_matches_hand_computation(case):
    """cam = mean_c W_h[k, c] A_c, split by the sign of W_h[k, c], for both heads (biases unused)."""
    model, x, targets, cams = case
    with torch.no_grad():
        features = model(x).features.double().numpy()
    c = features.shape[1]
    v = VARIANTS.index("cam")
    for b, head in enumerate((model.head, model.head2)):
        rows = head.weight.detach().double().numpy()[targets.numpy()]  # (B, C)
        pos = np.einsum("bc,bchw->bhw", np.maximum(rows, 0), features) / c
        neg = np.einsum("bc,bchw->bhw", np.minimum(rows, 0), features) / c
        atol = 1e-5 * (pos - neg).max()  # the maps cancel by construction: compare to the terms' size
        np.testing.assert_allclose(cams.pos[:, b, v], pos, rtol=0, atol=atol)
        np.testing.assert_allclose(cams.neg[:, b, v], neg, rtol=0, atol=atol)
        np.testing.assert_allclose(cams.pos[:, b, v] + cams.neg[:, b, v], pos + neg, rtol=0, atol=atol)


def test_gap_linear_head_identities(case):
    """GAP + linear head: dS/dA_c = W[k, c]/(hw) everywhere, so Grad-CAM == XGrad-CAM == CAM * C/(hw)."""
    model, x, targets, cams = case
    with torch.no_grad():
        features = model.trunk(x)
    batch, c, h, w = features.shape
    _, _, grads = head_gradients(model, features, targets)
    for b, head in enumerate((model.head, model.head2)):
        expected = (head.weight.detach()[targets] / (h * w))[:, :, None, None].expand(batch, c, h, w)
        torch.testing.assert_close(grads[:, b], expected, rtol=1e-5, atol=1e-9)
    signed = (cams.pos + cams.neg).numpy()
    cam, gradcam, xgradcam = (signed[:, :, VARIANTS.index(v)] for v in ("cam", "gradcam", "xgradcam"))
    scale = (cams.pos - cams.neg)[:, :, VARIANTS.index("gradcam")].max().item()
    np.testing.assert_allclose(xgradcam, gradcam, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(cam * c / (h * w), gradcam, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(normalize_scoremap(cam), normalize_scoremap(gradcam), rtol=0, atol=1e-5)


def test_batch_invariance():
    model = make_model(SPECS["resnet10t"])
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 2, 4, 0])
    together = compute_cams(model, x, targets)
    for i in (0, 2):
        alone = compute_cams(model, x[i : i + 1], targets[i : i + 1])
        for name in ("pos", "neg", "logits", "logits2"):
            ours, ref = getattr(alone, name)[0], getattr(together, name)[i]
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()), msg=name)


def test_amp_is_ignored_on_the_cpu(case):
    model, x, targets, cams = case
    amp = compute_cams(model, x, targets, amp=True)
    assert torch.equal(amp.pos, cams.pos) and torch.equal(amp.neg, cams.neg)


class FeatureTrunk(Trunk):
    """A stand-in trunk whose 'images' are the feature map itself (C=3, non-negative)."""

    arch = "features"
    target_layer = "input"
    channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)


def test_negative_weights_give_negative_maps_and_the_clamp_removes_them():
    model = DualBranchNet(ModelSpec("resnet10t", 2, 32))
    model.trunk, model.head = FeatureTrunk(), nn.Linear(3, 2)
    model.add_sigmoid_head("clone")
    with torch.no_grad():
        for head in (model.head, model.head2):
            head.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.3, 0.3]]))
    model.eval()
    features = torch.zeros(1, 3, 4, 4)
    features[0, 0, :, :2] = 1.0  # channel 0 (weight +1) fires on the left half
    features[0, 1, :2, 2:] = 1.0  # channel 1 (weight -2) fires in the top-right quadrant
    features[0, 2] = 0.2  # channel 2 (weight +0.5) everywhere, weakly
    cams = compute_cams(model, features, torch.tensor([0]))
    top_right, bottom_right = (slice(None), slice(0, 2), slice(2, 4)), (slice(None), slice(2, 4), slice(2, 4))
    for variant in ("cam", "gradcam", "xgradcam"):
        v = VARIANTS.index(variant)
        pos, neg = cams.pos[0, :, v], cams.neg[0, :, v]  # (branch, h, w)
        raw = pos + neg
        assert (raw[top_right] < 0).all() and (neg[top_right] < 0).all(), variant
        assert (pos >= 0).all() and (pos[top_right] > 0).all(), variant  # channel 2 still counts there
        assert (neg[:, 2:] == 0).all() and (raw[:, :, :2] > 0).all(), variant
        signed_map = postprocess(pos, neg, PostProcess(False, False, "bilinear", 4, False))
        clamped_map = postprocess(pos, None, PostProcess(True, False, "bilinear", 4, False))
        # signed: the inhibited region ranks below the background; clamped: the inhibition is gone
        assert (signed_map[top_right] == 0).all() and (signed_map[bottom_right] > 0).all(), variant
        np.testing.assert_array_equal(clamped_map[top_right], clamped_map[bottom_right])
    for variant in ("gradcampp", "layercam"):  # weights already >= 0: nothing negative to clamp
        v = VARIANTS.index(variant)
        assert (cams.neg[0, :, v] == 0).all() and (cams.pos[0, :, v] >= 0).all(), variant


def test_rejects_train_mode_and_a_missing_sigmoid_head():
    model = make_model(SPECS["resnet10t"])
    x, targets = torch.zeros(1, 3, 64, 64), torch.tensor([0])
    model.trunk.train()
    with pytest.raises(ValueError, match="eval mode"):
        compute_cams(model, x, targets)
    model.eval()
    model.head2 = None
    with pytest.raises(ValueError, match="sigmoid head"):
        compute_cams(model, x, targets)
