"""VGG16 in its two WSOL forms (METHOD.md 1.3).

- cam (`wsol_cam/vgg.py` VggCam): the 13 VGG16 convolutions with only 4 max-pools (the 4th dropped too with
  `large_feature_map`), then conv6 (3x3, 512 -> 1024) + ReLU, GAP, `fc`. Target layer: ReLU(conv6),
  1024 x 14 x 14 at 224 px. Sigmoid head `fc2`.
- grad (`wsol/vgg.py` VggCam): the same 4-pool features, target `features[-1]` (the last ReLU, 512 x 14 x 14
  at 224 px), then adaptive average pool to 7x7, flatten and the 3-layer MLP `classifier`
  (25088 -> 4096 -> 4096 -> K, ReLU and dropout 0.5 between); the sigmoid branch is a second whole MLP
  (`classifier_2`).

Fresh sigmoid head (`random`): N(0, 0.01) weights, zero bias for `fc2` and every `classifier_2` linear.
LR groups: `features.*` at lr, everything else (conv6, heads) at lr * lr_classifier_ratio.
ImageNet weights: torchvision's vgg16-397923af.pth, convolutions matched by order (the official
`adjust_pretrained_model`); its classifier is dropped, except in the grad family where, for 1000 classes,
it fills the softmax MLP (the official ILSVRC grad-family VGG16 keeps it).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.models.archs import register
from pipeline.models.archs.base import Backbone, Rule, init_normal_
from pipeline.models.backbones import Trunk
from pipeline.models.heads import PoolMlpHead

URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def _features(large_feature_map: bool) -> nn.Sequential:
    vgg = torchvision.models.vgg16(weights=None)  # torchvision's init: kaiming normal (fan_out), zero bias
    layers = list(vgg.features.children())[:-1]  # drop pool5: 4 max-pools remain
    if large_feature_map:
        del layers[23]  # the 4th max-pool
    return nn.Sequential(*layers)


class VGG16Trunk(Trunk):
    """CAM family: 4-pool features, conv6 + ReLU."""

    arch = "vgg16"
    target_layer = "conv6 (after ReLU)"

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        self.features = _features(large_feature_map)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(self.conv6.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv6.bias)
        self.channels = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv6(self.features(x)))


class VGG16FeaturesTrunk(Trunk):
    """Gradient family: the 4-pool features alone; the target layer is features[-1]."""

    arch = "vgg16"
    target_layer = "features[-1] (last ReLU)"

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        self.features = _features(large_feature_map)
        self.channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class VGG16(Backbone):
    name = "vgg16"
    official_name = "vgg16"
    supports_large_feature_map = True
    pretrained_layout = "torchvision"

    def build_trunk(self, spec) -> Trunk:
        if spec.family == "grad":
            return VGG16FeaturesTrunk(spec.large_feature_map)
        return VGG16Trunk(spec.large_feature_map)

    def build_head(self, spec, channels: int):
        if spec.family == "cam":
            return super().build_head(spec, channels)
        head = PoolMlpHead(channels, spec.num_classes, grid=7, hidden=4096, dropout=0.5)
        init_normal_(head)  # the official initialize_weights: N(0, 0.01), zero bias
        return head

    def target_layer(self, spec) -> str:
        return "features[-1]" if spec.family == "grad" else "conv6 (after ReLU)"

    def in_classifier_group(self, trunk_param: str, spec) -> bool:
        return not trunk_param.startswith("features.")

    def describe(self, spec) -> str:
        if spec.family == "grad":
            return "vgg16/grad: 4-pool VGG16 features -> avgpool 7x7 -> MLP 25088-4096-4096-K (classifier)"
        return "vgg16/cam: 4-pool VGG16 features -> conv6 + ReLU -> GAP -> fc"

    def official_rules(self, spec) -> list[Rule]:
        if spec.family == "grad":
            return [
                Rule("features.", "trunk.features."),
                Rule("classifier_2.", "head2.classifier."),
                Rule("classifier.", "head.classifier."),
            ]
        return [
            Rule("features.", "trunk.features."),
            Rule("conv6.", "trunk.conv6."),
            Rule("fc2.", "head2."),
            Rule("fc.", "head."),
            Rule("conv2.", "head2.", export=False, conv1x1=True),
            Rule("conv.", "head.", export=False, conv1x1=True),
        ]

    def default_weights(self, spec):
        return URL

    def map_torchvision(self, model, state_dict):
        ours = [i for i, m in enumerate(model.trunk.features) if isinstance(m, nn.Conv2d)]
        theirs = sorted(
            {
                int(m.group(1))
                for k in state_dict
                if (m := re.fullmatch(r"features\.(\d+)\.weight", k)) and state_dict[k].ndim == 4
            }
        )
        if len(theirs) != len(ours):
            raise ValueError(
                f"has {len(theirs)} VGG convolutions under features.*, our VGG16 trunk has "
                f"{len(ours)}; expected torchvision's vgg16 (13 convs)"
            )
        index = dict(zip(theirs, ours))
        target = model.state_dict()
        out, dropped, unknown = {}, [], []
        grad = model.spec.family == "grad"
        for key, value in state_dict.items():
            m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
            if m and int(m.group(1)) in index:
                out[f"trunk.features.{index[int(m.group(1))]}.{m.group(2)}"] = value
            elif (
                grad
                and key.startswith("classifier.")
                and target.get(f"head.{key}") is not None
                and target[f"head.{key}"].shape == value.shape
                and "classifier.6.weight" in state_dict
                and state_dict["classifier.6.weight"].shape == target["head.classifier.6.weight"].shape
            ):
                out[f"head.{key}"] = value
            elif key.startswith(("classifier.", "conv6.", "fc.", "fc2.", "conv.", "conv2.")):
                dropped.append(key)
            else:
                unknown.append(key)
        return out, dropped, unknown, ("trunk.conv6.",)


register(VGG16())
