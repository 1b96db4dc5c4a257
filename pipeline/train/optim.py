"""SGD with Nesterov momentum and the official step decay (METHOD.md 2.2)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def lr_factor(epoch: int, decay_every: int) -> float:
    """LR multiplier for 1-based `epoch`: x0.1 before every epoch e with e % decay_every == 0.

    With 3 epochs and decay_every=3, epochs 1-2 run at lr and epoch 3 at 0.1*lr; with 10 and 3, the LR
    drops before epochs 3, 6 and 9.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    return 0.1 ** sum(1 for e in range(1, epoch + 1) if e % decay_every == 0)


def make_sgd(
    groups: Iterable[tuple[list[torch.nn.Parameter], float]], *, momentum: float, nesterov: bool, weight_decay: float
) -> torch.optim.SGD:
    """SGD over (parameters, base lr) groups; each group remembers its base lr as `initial_lr`."""
    param_groups = [{"params": params, "lr": lr, "initial_lr": lr} for params, lr in groups if params]
    return torch.optim.SGD(
        param_groups, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
    )


def apply_lr(optimizer: torch.optim.Optimizer, epoch: int, decay_every: int) -> float:
    """Set every group's lr for `epoch`; return the multiplier."""
    factor = lr_factor(epoch, decay_every)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return factor
