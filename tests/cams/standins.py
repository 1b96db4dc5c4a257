"""Stand-in dual-branch models of the gradient family, for the CAM engine's tests and benchmark.

They have the interface the engine is written against (the backbone registry's models will have it too, and
can replace these): `trunk(x)` -> target-layer map A (B, C, h, w); `head`, `head2`: `pipeline.models.heads.Head`
modules with `head(A)` = the logits in eval mode; `spec.family`; `forward(x)` -> `DualOutput`.

- `vgg_grad_model`: a small conv trunk + `PoolMlpHead` (adaptive pool to a grid, 3-layer MLP with dropout), a
  second independent MLP as the sigmoid branch: the VGG16 gradient-family form (METHOD.md 1.3).
- `inception_grad_model`: a small conv trunk + GAP -> dropout -> linear (`GapDropoutLinearHead`) with a
  second linear `fc2`: the torchvision InceptionV3 gradient-family form.
- `timm_grad_model`: any timm trunk (`forward_features`) with a `PoolMlpHead` on it (the benchmark's case).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.dual import DualOutput
from pipeline.models.heads import GapLinearHead, Head, PoolMlpHead


@dataclass(frozen=True)
class StandInSpec:
    family: str
    num_classes: int
    input_size: int


class GapDropoutLinearHead(Head):
    """torchvision Inception3's head: GAP, dropout, fc. In eval mode exactly GAP -> fc."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean(dim=(2, 3))))

    def gap_linear(self) -> nn.Linear | None:
        return None if self.training else self.fc


class ConvTrunk(nn.Module):
    """Two 3x3 conv + ReLU layers at stride 2 and 2 (so h = input / 4); the output is non-negative."""

    target_layer = "conv2 (after ReLU)"

    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, channels, 3, stride=2, padding=1)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class TimmTrunk(nn.Module):
    target_layer = "forward_features"

    def __init__(self, name: str, output_stride: int | None = None, feature_stage: int | None = None):
        super().__init__()
        import timm

        kwargs = {"output_stride": output_stride} if output_stride else {}
        if feature_stage is None:
            self.net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **kwargs)
            self.channels = self.net.num_features
        else:  # timm's features_only model up to that stage
            self.net = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=(feature_stage,), **kwargs
            )
            self.channels = self.net.feature_info.channels()[-1]
        self.feature_stage = feature_stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_stage is not None:
            return self.net(x)[-1]
        return self.net.forward_features(x)


class StandInDualNet(nn.Module):
    """trunk -> A; head(A) = logits, head2(A) = sigmoid-branch logits."""

    def __init__(self, trunk: nn.Module, head: Head, head2: Head, spec: StandInSpec):
        super().__init__()
        self.trunk, self.head, self.head2, self.spec = trunk, head, head2, spec
        with torch.no_grad():
            self.feature_size = tuple(trunk(torch.zeros(1, 3, spec.input_size, spec.input_size)).shape[-2:])

    def forward(self, x: torch.Tensor) -> DualOutput:
        features = self.trunk(x)
        return DualOutput(self.head(features), self.head2(features), features)


def _randomise(head: nn.Module, generator: torch.Generator) -> None:
    """N(0, 1/fan_in) weights, N(0, 0.1) biases: logits of order one, gradients that vary in sign."""
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, m.in_features**-0.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)


def vgg_grad_model(
    *,
    seed: int = 0,
    num_classes: int = 5,
    input_size: int = 32,
    channels: int = 8,
    grid: int = 3,
    hidden: int = 16,
    family: str = "grad",
) -> StandInDualNet:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    trunk = ConvTrunk(channels)
    heads = [PoolMlpHead(channels, num_classes, grid=grid, hidden=hidden) for _ in range(2)]
    for h in heads:
        _randomise(h, gen)
    return StandInDualNet(trunk, heads[0], heads[1], StandInSpec(family, num_classes, input_size)).eval()


def inception_grad_model(
    *, seed: int = 0, num_classes: int = 5, input_size: int = 32, channels: int = 8
) -> StandInDualNet:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    trunk = ConvTrunk(channels)
    heads = [GapDropoutLinearHead(channels, num_classes) for _ in range(2)]
    for h in heads:
        _randomise(h, gen)
    return StandInDualNet(trunk, heads[0], heads[1], StandInSpec("grad", num_classes, input_size)).eval()


def timm_model(
    name: str,
    *,
    family: str,
    num_classes: int,
    input_size: int,
    output_stride: int | None = None,
    grid: int = 3,
    hidden: int = 256,
    seed: int = 0,
    feature_stage: int | None = None,
) -> StandInDualNet:
    """A timm trunk (up to `feature_stage`) with GAP-linear heads (`family="cam"`) or PoolMlpHeads (`family="grad"`)."""
    torch.manual_seed(seed)
    trunk = TimmTrunk(name, output_stride, feature_stage=feature_stage)
    if family == "grad":
        heads = [PoolMlpHead(trunk.channels, num_classes, grid=grid, hidden=hidden) for _ in range(2)]
    else:
        heads = [GapLinearHead(trunk.channels, num_classes) for _ in range(2)]
    return StandInDualNet(trunk, heads[0], heads[1], StandInSpec(family, num_classes, input_size)).eval()
