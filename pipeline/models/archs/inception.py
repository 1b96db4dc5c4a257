"""InceptionV3 in its two WSOL forms (METHOD.md 1.3); alias `inception_v3`.

- cam (`wsol_cam/inception.py`, SPG style): padded stem, Mixed_5b-5d, an extra max-pool (dropped with
  `large_feature_map`), Mixed_6a at stride 1, Mixed_6b-6e, then SPG_A3_1b and SPG_A3_2b (3x3 convs to 1024
  channels, ReLU) with dropout 0.5 before each, and dropout 0.5 on the map before the heads (the shared
  pre-head op: one mask for both heads). Target layer ReLU(SPG_A3_2b), 1024 x 14 x 14 at 224 px. Heads
  `SPG_A4` / `SPG_A4_2`: 1x1 convs then GAP (= GAP then linear). Fresh sigmoid head: xavier uniform, zero bias.
- grad (`wsol/inception.py`): torchvision Inception3 without the aux head, `transform_input=False`,
  target Mixed_7c (2048 x 5 x 5 at 224 px; `large_feature_map` is ignored, as by the official code), GAP,
  dropout 0.5 (the shared pre-head op, after pooling: `fc` and `fc2` share one mask, METHOD.md 2.4), `fc`;
  sigmoid `fc2`. Every conv / linear weight: truncated normal (std 0.1, cut at +-2), PyTorch default bias;
  the fresh `fc2` likewise.

LR groups: `Mixed*` and `Conv2d_*` at lr, the rest (SPG layers, heads) at lr * lr_classifier_ratio.
ImageNet weights: torchvision's inception_v3_google-0cc3c7bd.pth by name; AuxLogits dropped; Mixed_7* and
`fc` dropped in the cam family; in the grad family Mixed_7* kept and `fc` loaded for a 1000-class head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import inception as tv_inception

from pipeline.models.archs import register
from pipeline.models.archs.base import Backbone, PooledDropout, Rule
from pipeline.models.backbones import Trunk
from pipeline.models.heads import GapLinearHead

URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
_SPG_CONVS = ("SPG_A3_1b", "SPG_A3_2b")


class _InceptionBStride1(tv_inception.InceptionB):
    """Mixed_6a of the SPG InceptionV3: kernel 3, stride 1, padding 1 on every branch."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        self.branch3x3 = tv_inception.BasicConv2d(in_channels, 384, kernel_size=3, stride=1, padding=1)
        self.branch3x3dbl_3 = tv_inception.BasicConv2d(96, 96, kernel_size=3, stride=1, padding=1)

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [b3, bd, F.max_pool2d(x, kernel_size=3, stride=1, padding=1)]


def _torchvision_inception() -> nn.Module:
    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False)


class InceptionTrunk(Trunk):
    """CAM family: the SPG-style InceptionV3."""

    arch = "inception"
    target_layer = "SPG_A3_2b (after ReLU)"

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        net = _torchvision_inception()
        self.Conv2d_1a_3x3 = net.Conv2d_1a_3x3
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        self.Conv2d_2a_3x3, self.Conv2d_2b_3x3 = net.Conv2d_2a_3x3, net.Conv2d_2b_3x3
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = net.Conv2d_3b_1x1, net.Conv2d_4a_3x3
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = net.Mixed_5b, net.Mixed_5c, net.Mixed_5d
        self.Mixed_6a = _InceptionBStride1(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (
            net.Mixed_6b,
            net.Mixed_6c,
            net.Mixed_6d,
            net.Mixed_6e,
        )
        self.SPG_A3_1b = nn.Conv2d(768, 1024, kernel_size=3, padding=1)
        self.SPG_A3_2b = nn.Conv2d(1024, 1024, kernel_size=3, padding=1)
        for conv in (self.SPG_A3_1b, self.SPG_A3_2b):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.large_feature_map = large_feature_map
        self.dropout = nn.Dropout(0.5)
        self.channels = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = F.relu(self.SPG_A3_1b(self.dropout(x)))
        return F.relu(self.SPG_A3_2b(self.dropout(x)))


_TV_PARTS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


class Inception3Trunk(Trunk):
    """Gradient family: torchvision Inception3 (no aux head, transform_input=False) up to Mixed_7c."""

    arch = "inception"
    target_layer = "Mixed_7c"

    def __init__(self):
        super().__init__()
        net = _torchvision_inception()
        for part in _TV_PARTS:
            setattr(self, part, getattr(net, part))
        self.channels = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in _TV_PARTS:
            x = getattr(self, part)(x)
        return x


def _inception_linear_init_(linear: nn.Linear, generator: torch.Generator | None, bias: bool) -> None:
    """torchvision / wsol Inception3 init: weight ~ truncated normal (std 0.1, cut at +-2); with `bias`, a
    fresh PyTorch-default bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    with torch.no_grad():
        nn.init.trunc_normal_(linear.weight, mean=0.0, std=0.1, a=-2.0, b=2.0, generator=generator)
        if bias:
            bound = 1.0 / math.sqrt(linear.in_features)
            linear.bias.uniform_(-bound, bound, generator=generator)


class Inception(Backbone):
    name = "inception"
    official_name = "inception_v3"
    supports_large_feature_map = True  # cam family only (check_spec)
    pretrained_layout = "torchvision"

    def normalize_spec(self, spec):
        spec = super().normalize_spec(spec)
        if spec.family == "grad" and spec.large_feature_map:  # ignored, as by the official code
            import dataclasses

            return dataclasses.replace(spec, large_feature_map=False)
        return spec

    def layout_variants(self) -> list[dict]:
        return [
            dict(family="cam", large_feature_map=False),
            dict(family="cam", large_feature_map=True),
            dict(family="grad", large_feature_map=False),
        ]

    def build_trunk(self, spec) -> Trunk:
        if spec.family == "grad":
            return Inception3Trunk()
        return InceptionTrunk(spec.large_feature_map)

    def build_head(self, spec, channels: int):
        head = GapLinearHead(channels, spec.num_classes)
        if spec.family == "grad":
            _inception_linear_init_(head, None, bias=False)  # Inception3's init leaves the bias at PyTorch's
        return head

    def build_pre_head(self, spec) -> nn.Module:
        # cam: dropout on the map before the 1x1-conv heads; grad: dropout on the pooled vector
        return PooledDropout(0.5) if spec.family == "grad" else nn.Dropout(0.5)

    def init_fresh_head(self, head, spec, generator) -> None:
        if spec.family == "grad":  # fc2: truncated normal (std 0.1), PyTorch default bias
            _inception_linear_init_(head, generator, bias=True)
            return
        with torch.no_grad():  # SPG_A4_2: xavier_uniform, zero bias
            bound = (6.0 / (head.in_features + head.out_features)) ** 0.5
            head.weight.uniform_(-bound, bound, generator=generator)
            head.bias.zero_()

    def target_layer(self, spec) -> str:
        return "Mixed_7c" if spec.family == "grad" else "SPG_A3_2b (after ReLU)"

    def in_classifier_group(self, trunk_param: str, spec) -> bool:
        return not trunk_param.startswith(("Mixed", "Conv2d_"))

    def describe(self, spec) -> str:
        if spec.family == "grad":
            return "inception/grad: torchvision Inception3 to Mixed_7c -> GAP -> dropout -> fc"
        return "inception/cam: SPG InceptionV3 -> SPG_A3_2b + ReLU -> dropout -> SPG_A4 (1x1 conv) -> GAP"

    def official_rules(self, spec) -> list[Rule]:
        if spec.family == "grad":
            return [
                Rule("Conv2d_", "trunk.Conv2d_"),
                Rule("Mixed_", "trunk.Mixed_"),
                Rule("fc2.", "head2."),
                Rule("fc.", "head."),
            ]
        return [
            Rule("Conv2d_", "trunk.Conv2d_"),
            Rule("Mixed_5", "trunk.Mixed_5"),
            Rule("Mixed_6", "trunk.Mixed_6"),
            *(Rule(f"{c}.0.", f"trunk.{c}.") for c in _SPG_CONVS),
            Rule("SPG_A4_2.", "head2.", conv1x1=True),
            Rule("SPG_A4.", "head.", conv1x1=True),
        ]

    def default_weights(self, spec):
        return URL

    def map_torchvision(self, model, state_dict):
        grad = model.spec.family == "grad"
        target = model.state_dict()
        out, dropped, unknown = {}, [], []
        keep = ("Conv2d_", "Mixed_") if grad else ("Conv2d_", "Mixed_5", "Mixed_6")
        for key, value in state_dict.items():
            prefix = key.partition(".")[0]
            if prefix.startswith(keep):
                out[f"trunk.{key}"] = value
            elif grad and key in ("fc.weight", "fc.bias") and value.shape == target[f"head.{key[3:]}"].shape:
                out[f"head.{key[3:]}"] = value
            elif prefix.startswith(("Mixed_7", "AuxLogits", "fc", "SPG_A")):
                dropped.append(key)
            else:
                unknown.append(key)
        return out, dropped, unknown, () if grad else ("trunk.SPG_A3_1b.", "trunk.SPG_A3_2b.")


register(Inception())
