"""Losses of the two training stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def balanced_bce(logits2: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Class-balanced one-vs-all binary cross-entropy of the sigmoid branch (METHOD.md 2.1).

    `binary_cross_entropy_with_logits` against the one-hot target with `pos_weight = K-1` (unless given)
    and mean reduction over all B*K entries:
    (1/(B*K)) * sum_i [ (K-1)*softplus(-s[i, y_i]) + sum_{j != y_i} softplus(s[i, j]) ].
    """
    num_classes = logits2.shape[1]
    weight = float(num_classes - 1) if pos_weight is None else float(pos_weight)
    onehot = F.one_hot(target, num_classes).to(logits2.dtype)
    pw = torch.full((num_classes,), weight, dtype=logits2.dtype, device=logits2.device)
    return F.binary_cross_entropy_with_logits(logits2, onehot, pos_weight=pw, reduction="mean")
