"""One-pass CAM engine: all five CAM variants for both heads from one trunk forward (METHOD.md 3).

`compute_cams(model, images, targets)` runs the trunk once without autograd, then treats the float32
target-layer feature map A (B, C, h, w) as a leaf, recomputes both heads from it (GAP -> linear, exactly
as `DualBranchNet.embed`/`forward` do in eval mode) and takes g = dS/dA of the raw target logit S of each
branch (pre-softmax for the softmax head, pre-sigmoid for the sigmoid head; per-sample scores summed over
the batch, as pytorch-grad-cam's `ClassifierOutputTarget` does). No gradient ever flows into the trunk.

With A, g and the head weights W of the branch, for target class k:

- `cam`:       alpha_c = W[k, c] / C              (the mean over channels, for every backbone; the official
                                                    Inception code sums instead, METHOD.md 1.6: the scale
                                                    disappears in the min-max normalisation)
- `gradcam`:   alpha_c = mean_xy g_c
- `gradcampp`: a = g^2 / (2 g^2 + (sum_xy A_c) g^3 + 1e-6), a = 0 where g = 0;  alpha_c = sum_xy relu(g_c) a
- `xgradcam`:  alpha_c = sum_xy (g_c A_c) / (sum_xy A_c + 1e-7)
- `layercam`:  pixel-wise, M = sum_c relu(g_c) A_c (no channel weights)

For the four channel-weight variants the map M = sum_c alpha_c A_c is returned split by the sign of the
weights: pos = sum_c max(alpha_c, 0) A_c and neg = sum_c min(alpha_c, 0) A_c, so the raw signed map is
pos + neg and the official "negative weight clamp" of the sigmoid branch (METHOD.md 3.1, 8.2) is pos alone.
For `layercam` pos = M and neg = 0. The maps are raw: no ReLU, clamp, upsampling or normalisation here;
those are evaluation-time options (`pipeline.cams.postprocess`), so changing them never recomputes maps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.models.dual import DualBranchNet
from pipeline.train.loops import to_device

VARIANTS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam")
BRANCHES = ("softmax", "sigmoid")

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam GradCAMPlusPlus
XGRADCAM_EPS = 1e-7   # pytorch-grad-cam XGradCAM


@dataclass
class CamBatch:
    """Logits of both heads and the raw maps of every (branch, variant), at feature-map resolution."""

    logits: torch.Tensor   # (B, K) float32, softmax branch
    logits2: torch.Tensor  # (B, K) float32, sigmoid branch (pre-sigmoid)
    pos: torch.Tensor      # (B, 2, 5, h, w) float32: [branch, variant] map from the non-negative weights
    neg: torch.Tensor      # (B, 2, 5, h, w) float32: map from the negative weights (<= 0 where A >= 0)


def check_eval_mode(model: DualBranchNet) -> None:
    """Raise ValueError unless every module of `model` is in eval mode and the sigmoid head exists.

    Eval mode makes the maps batch-invariant (BatchNorm running statistics) and makes the Inception
    feature dropout the identity, so pooling the feature map is exactly what the heads read.
    """
    if model.head2 is None:
        raise ValueError("the model has no sigmoid head; run the clone_head stage first")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"compute_cams needs the model in eval mode; in train mode: {', '.join(training[:5])}")


def head_gradients(model: DualBranchNet, features: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recompute both heads from the feature map A and differentiate the target logits with respect to A.

    logits_h = W_h (mean_xy A) + b_h for h in (softmax, sigmoid); S_h = sum_b logits_h[b, targets[b]];
    returns (logits, logits2, g) with g = stack_h dS_h/dA of shape (B, 2, C, h, w), all float32 and detached.
    Only A is differentiated: the head parameters enter as constants and the trunk is not in the graph.
    """
    with torch.enable_grad():
        a = features.detach().float().requires_grad_(True)
        pooled = a.mean(dim=(2, 3))
        index = targets.view(-1, 1)
        logits = [torch.nn.functional.linear(pooled, head.weight.detach().float(), head.bias.detach().float())
                  for head in (model.head, model.head2)]
        grads = [torch.autograd.grad(out.gather(1, index).sum(), a, retain_graph=i == 0)[0]
                 for i, out in enumerate(logits)]
    return logits[0].detach(), logits[1].detach(), torch.stack(grads, dim=1)


def channel_weights(features: torch.Tensor, grads: torch.Tensor, head_rows: torch.Tensor) -> torch.Tensor:
    """Channel weights alpha (B, 2, 4, C) of the variants cam, gradcam, gradcampp, xgradcam.

    features A: (B, C, h, w); grads g: (B, 2, C, h, w) (one per branch); head_rows: (B, 2, C), the FC weight
    row W_h[k_b] of each branch for each sample's target. Formulas in the module docstring.
    """
    a = features[:, None]                                   # (B, 1, C, h, w)
    spatial = (-2, -1)
    sum_a = a.sum(dim=spatial)                              # (B, 1, C)
    cam = head_rows / features.shape[1]
    gradcam = grads.mean(dim=spatial)
    g2 = grads * grads
    aij = g2 / (2 * g2 + sum_a[..., None, None] * (g2 * grads) + GRADCAMPP_EPS)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    gradcampp = (grads.clamp(min=0) * aij).sum(dim=spatial)
    xgradcam = (grads * a).sum(dim=spatial) / (sum_a + XGRADCAM_EPS)
    return torch.stack([cam, gradcam, gradcampp, xgradcam], dim=2)


def compute_cams(model: DualBranchNet, images: torch.Tensor, targets: torch.Tensor, *,
                 amp: bool = False) -> CamBatch:
    """Raw signed CAMs of all five variants for both heads and each image's target class.

    One no-grad trunk forward on the model's device gives A (B, C, h, w); `head_gradients` gives the logits
    and g; then pos[b, h, v] = sum_c max(alpha_c, 0) A_c and neg[b, h, v] = sum_c min(alpha_c, 0) A_c for the
    channel-weight variants v (`channel_weights`), and pos = sum_c relu(g_c) A_c, neg = 0 for layercam.
    `targets` (B,) holds class indices (the ground-truth labels in the official protocol). The model must be
    in eval mode (`check_eval_mode`); the result does not depend on which other images share the batch.
    `amp`: on CUDA, run the trunk under bf16 autocast (faster; features, and so the logits, then differ
    from a float32 forward by bf16 rounding). Everything after the trunk is float32; ignored on the CPU.
    """
    check_eval_mode(model)
    device = model.head.weight.device
    images = to_device(images, device)
    targets = targets.to(device=device, dtype=torch.long)
    bf16 = amp and device.type == "cuda"
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        features = model.trunk(images)
    features = features.float()
    logits, logits2, grads = head_gradients(model, features, targets)
    with torch.no_grad():
        batch, channels, height, width = features.shape
        head_rows = torch.stack([model.head.weight[targets], model.head2.weight[targets]], dim=1).float()
        alpha = channel_weights(features, grads, head_rows)                  # (B, 2, 4, C)
        signed = torch.cat([alpha.clamp(min=0), alpha.clamp(max=0)], dim=1)  # (B, sign x branch, 4, C)
        flat = features.reshape(batch, channels, height * width)
        maps = torch.bmm(signed.reshape(batch, -1, channels), flat).reshape(batch, 2, 2, 4, height, width)
        layercam = (grads.clamp(min=0) * features[:, None]).sum(dim=2)         # (B, 2, h, w)
        pos = torch.cat([maps[:, 0], layercam[:, :, None]], dim=2)
        neg = torch.cat([maps[:, 1], torch.zeros_like(layercam)[:, :, None]], dim=2)
    return CamBatch(logits=logits, logits2=logits2, pos=pos.contiguous(), neg=neg.contiguous())
