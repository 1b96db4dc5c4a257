"""Explanation fidelity: % Average Drop and % Increase in Confidence (METHOD.md 4.6).

For image i with target class t_i:

    Y_i = softmax(model(x_i).logits)[t_i]             on the normalised image x_i
    O_i = softmax(model(x_i * cam_i).logits)[t_i]     cam_i in [0, 1] at input resolution, broadcast over
                                                      the channels and multiplied into the *normalised*
                                                      image, as the precursor code did
    AvgDrop = mean_i max(0, Y_i - O_i) / Y_i * 100    (lower is better)
    IncConf = mean_i 1[O_i > Y_i] * 100               (higher is better)

Both Y and O always come from the softmax head (`logits`), whichever branch produced the map, so the
baseline and the sigmoid-branch maps are scored by the same classifier (METHOD.md 8.13; the precursor used
the softmax of `logits2` for its dual-branch models). The target is whatever the caller passes: the
precursor used the softmax head's prediction, and the caller decides.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.metrics.registry import percent
from pipeline.models.dual import DualBranchNet


def fidelity_scores(
    model: DualBranchNet, images: torch.Tensor, cams: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (Y, O), float64 tensors of shape (B,): the softmax-head probability of `targets` on `images`
    (B, 3, H, W, normalised) and on `images * cams[:, None]` (`cams` (B, H, W) in [0, 1]).

    Runs in eval mode without gradients; the model's train/eval mode is restored afterwards.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if tuple(cams.shape) != (b, h, w):
        raise ValueError(f"cams must be (B, H, W) = {(b, h, w)} to match the images; got {tuple(cams.shape)}")
    if tuple(targets.shape) != (b,):
        raise ValueError(f"targets must have shape ({b},); got {tuple(targets.shape)}")
    if torch.isnan(cams).any() or (cams.numel() and (cams.min() < 0 or cams.max() > 1)):
        raise ValueError("cams must be in [0, 1] without NaN")
    targets = targets.to(device=images.device, dtype=torch.long)
    masked = images * cams.to(device=images.device, dtype=images.dtype)[:, None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits_y = model(images).logits
            logits_o = model(masked).logits
    finally:
        model.train(was_training)
    num_classes = logits_y.shape[1]
    if b and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must be class indices in [0, {num_classes}); got {targets.tolist()}")
    rows = torch.arange(b, device=images.device)
    y = torch.softmax(logits_y.double(), dim=1)[rows, targets]
    o = torch.softmax(logits_o.double(), dim=1)[rows, targets]
    return y, o


def fidelity_scores_many(
    model: DualBranchNet,
    images: torch.Tensor,
    cams: list[torch.Tensor],
    targets: torch.Tensor,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`fidelity_scores` of several map sets on the same images: (Y, [O per map set]). Y comes from one forward
    of `images` (or is the `y` given, from an earlier call on the same images and targets); the masked images
    of every map set go through one forward, concatenated. Per image, the same numbers as `fidelity_scores`
    where the backend's per-sample results do not depend on the batch (the tests check this on the CPU)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    for k, cam in enumerate(cams):
        if tuple(cam.shape) != (b, h, w):
            raise ValueError(f"cams[{k}] must be (B, H, W) = {(b, h, w)} to match the images; got {tuple(cam.shape)}")
        if torch.isnan(cam).any() or (cam.numel() and (cam.min() < 0 or cam.max() > 1)):
            raise ValueError(f"cams[{k}] must be in [0, 1] without NaN")
    if tuple(targets.shape) != (b,):
        raise ValueError(f"targets must have shape ({b},); got {tuple(targets.shape)}")
    targets = targets.to(device=images.device, dtype=torch.long)
    masked = (
        torch.cat([images * cam.to(device=images.device, dtype=images.dtype)[:, None] for cam in cams])
        if cams
        else images[:0]
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits_y = model(images).logits if y is None else None
            logits_o = model(masked).logits if cams else None
    finally:
        model.train(was_training)
    rows = torch.arange(b, device=images.device)
    if y is None:
        num_classes = logits_y.shape[1]
        if b and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"targets must be class indices in [0, {num_classes}); got {targets.tolist()}")
        y = torch.softmax(logits_y.double(), dim=1)[rows, targets]
    outs = (
        [] if logits_o is None else [torch.softmax(part.double(), dim=1)[rows, targets] for part in logits_o.split(b)]
    )
    return y, outs


class FidelityAccumulator:
    """Sums max(0, Y - O) / Y and 1[O > Y] in float64 over batches; `compute` returns the means in %, and the
    per-image terms behind them in accumulation order: `avg_drop_terms` (n,) float64 = 100 max(0, Y - O) / Y
    and `inc_conf_flags` (n,) bool = O > Y (their means are avg_drop, to float rounding, and inc_conf)."""

    def __init__(self) -> None:
        self.drop_sum = 0.0
        self.increase_sum = 0.0
        self.n = 0
        self._drops: list[np.ndarray] = []
        self._flags: list[np.ndarray] = []
        self.batches: list[tuple[float, float, int]] = []  # per batch: (sum of drops, sum of flags, images)

    def accumulate(self, y: torch.Tensor | np.ndarray, o: torch.Tensor | np.ndarray) -> None:
        """Add a batch of target-class probabilities Y (original image) and O (image * CAM)."""
        y = torch.as_tensor(y).detach().cpu().double()
        o = torch.as_tensor(o).detach().cpu().double()
        if y.ndim != 1 or y.shape != o.shape:
            raise ValueError(f"Y and O must be 1-D of the same length; got {tuple(y.shape)} and {tuple(o.shape)}")
        if not (y > 0).all() or torch.isnan(o).any():
            raise ValueError("Y must be > 0 (it divides the drop) and O must not be NaN")
        drops, flags = torch.clamp(y - o, min=0) / y, o > y
        self.batches.append((float(drops.sum()), float(flags.sum()), y.numel()))
        self.drop_sum += self.batches[-1][0]
        self.increase_sum += self.batches[-1][1]
        self.n += y.numel()
        self._drops.append(100.0 * drops.numpy())
        self._flags.append(flags.numpy())

    def compute(self) -> dict:
        """{"avg_drop": mean max(0, Y-O)/Y * 100, "inc_conf": mean 1[O > Y] * 100, "n": N, "avg_drop_terms",
        "inc_conf_flags"} (the last two: the per-image arrays of the class docstring)."""
        if self.n == 0:
            raise ValueError("no image was accumulated")
        return {
            "avg_drop": percent(self.drop_sum, self.n),
            "inc_conf": percent(self.increase_sum, self.n),
            "n": self.n,
            "avg_drop_terms": np.concatenate(self._drops).astype(np.float64),
            "inc_conf_flags": np.concatenate(self._flags).astype(bool),
        }

    def take_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-image terms (`avg_drop_terms`, `inc_conf_flags`) accumulated since the last call, then
        forgotten: a streaming caller reduces them block by block and keeps only the batch sums."""
        drops = np.concatenate(self._drops).astype(np.float64) if self._drops else np.zeros(0)
        flags = np.concatenate(self._flags).astype(bool) if self._flags else np.zeros(0, bool)
        self._drops, self._flags = [], []
        return drops, flags


def from_batches(batches: list[tuple[float, float, int]]) -> dict:
    """{"avg_drop", "inc_conf", "n"} from per-batch sums in batch order (`FidelityAccumulator.batches`, those of
    several accumulators over consecutive images concatenated): added one batch at a time as `accumulate` adds
    them, so the numbers are those of one accumulator over every batch, bit for bit."""
    drop_sum = increase_sum = 0.0
    n = 0
    for drop, increase, count in batches:
        drop_sum += drop
        increase_sum += increase
        n += count
    if n == 0:
        raise ValueError("no image was accumulated")
    return {"avg_drop": percent(drop_sum, n), "inc_conf": percent(increase_sum, n), "n": n}
