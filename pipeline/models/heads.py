"""Classification heads: modules that map the target-layer feature map (B, C, h, w) to logits (B, K).

Both branches of a dual-branch model are heads of the same form (the sigmoid branch is a second head,
cloned from the softmax head or freshly initialised). The CAM engine differentiates a head's target logit
with respect to the feature map through the head module itself, so any head works; a head whose eval-mode
function is exactly "mean over (h, w), then one linear layer" says so through `gap_linear()`, which lets the
engine use the closed form (dS/dA = W[k] / hw, constant over the map) and lets the CAM variant exist at all.

- `GapLinearHead` (the CAM family, and ResNet50 / InceptionV3 of the gradient family): GAP -> linear. It *is*
  an `nn.Linear` (parameters `weight`, `bias`), so state-dict keys stay `head.weight` / `head.bias`.
- `PoolMlpHead` (VGG16 of the gradient family, and the small gradient-family head of any timm trunk):
  adaptive average pool to a `grid` x `grid` map, flatten, Linear(C*grid*grid, hidden) - ReLU - Dropout -
  Linear(hidden, hidden) - ReLU - Dropout - Linear(hidden, K). Its MLP is `classifier` with the official
  `wsol/vgg.py` indices (`classifier.0`, `.3`, `.6`), so official keys map by prefix only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """A classification head on the feature map. Subclasses implement `forward(features) -> logits`."""

    def gap_linear(self) -> nn.Linear | None:
        """The linear layer if, in eval mode, this head is exactly mean_xy followed by it; else None."""
        return None

    def linear_layers(self) -> list[nn.Linear]:
        """The head's linear layers in forward order (for official initialisation schemes)."""
        return [m for m in self.modules() if isinstance(m, nn.Linear)]

    def pooled(self) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]] | None:
        """(grid, tail) if, in eval mode, this head is exactly tail(adaptive_avg_pool2d(A, grid)); else None.

        Then dS/dA is the pooling's transpose applied to dS/dpooled, constant on the cells where the same
        pooling windows overlap, and the CAM engine differentiates the tail alone (`pipeline.cams.engine`).
        """
        return None


class GapLinearHead(nn.Linear, Head):
    """Global average pool over (h, w), then a linear layer. Parameters: `weight` (K, C), `bias` (K,)."""

    def __init__(self, channels: int, num_classes: int):
        nn.Linear.__init__(self, channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features.mean(dim=(2, 3)), self.weight, self.bias)

    def gap_linear(self) -> nn.Linear:
        return self

    def linear_layers(self) -> list[nn.Linear]:
        return [self]


class PoolMlpHead(Head):
    """Adaptive average pool to grid x grid, flatten, then the 3-layer MLP `classifier` (official VGG form)."""

    def __init__(self, channels: int, num_classes: int, *, grid: int = 7, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.grid, self.hidden = grid, hidden
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.classifier = nn.Sequential(
            nn.Linear(channels * grid * grid, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(features), 1))

    def pooled(self) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]]:
        return self.grid, lambda pooled: self.classifier(torch.flatten(pooled, 1))
