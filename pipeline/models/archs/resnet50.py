"""ResNet50 in its WSOL form (METHOD.md 1.3), the same trunk for both families.

torchvision ResNet50 with layer4 stride 1 (and layer3 stride 1 with `large_feature_map`), no dilation:
stride 16 (8), 2048 x 14 x 14 at 224 px (28 x 28 with LFM). Target layer: layer4 (= layer4[-1]). Head:
GAP, `fc`; sigmoid head `fc2`, both Linear(2048, K), in both families (`wsol_cam/resnet.py` and
`wsol/resnet.py` have the same keys; an official checkpoint fits either family).

Fresh sigmoid head (`random`): N(0, 0.01) weights, zero bias. LR groups (METHOD.md 2.2): `layer4.*` and the
heads at lr * lr_classifier_ratio, the rest at lr. (The official rule matches the substring `fc.`, which
misses `fc2.`: its sigmoid head trains at 1x lr. Here the heads always get the ratio; the backbones table's
finetune_lr is the sigmoid head's effective rate, so this changes no run.)
ImageNet weights: torchvision's resnet50-0676ba61.pth by name; `fc` only for a 1000-class head.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from pipeline.models.archs import register
from pipeline.models.archs.base import Backbone, Rule, init_normal_
from pipeline.models.backbones import Trunk
from pipeline.models.heads import GapLinearHead

URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
_TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def _unstride(block: nn.Module) -> None:
    """Make a torchvision Bottleneck stride 1 (conv2 and the downsample shortcut), without dilation."""
    block.conv2.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


class ResNet50Trunk(Trunk):
    arch = "resnet50"
    target_layer = "layer4"

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        _unstride(net.layer4[0])
        if large_feature_map:
            _unstride(net.layer3[0])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet50(Backbone):
    name = "resnet50"
    official_name = "resnet50"
    supports_large_feature_map = True
    pretrained_layout = "torchvision"

    def build_trunk(self, spec) -> Trunk:
        return ResNet50Trunk(spec.large_feature_map)

    def build_head(self, spec, channels: int):
        head = GapLinearHead(channels, spec.num_classes)
        if spec.family == "grad":
            init_normal_(head)  # wsol/resnet.py initialize_weights: N(0, 0.01), zero bias
        return head

    def target_layer(self, spec) -> str:
        return "layer4[-1]" if spec.family == "grad" else "layer4"

    def in_classifier_group(self, trunk_param: str, spec) -> bool:
        return trunk_param.startswith("layer4.")

    def describe(self, spec) -> str:
        return f"resnet50/{spec.family}: ResNet50 (layer4 stride 1) -> GAP -> fc"

    def official_rules(self, spec) -> list[Rule]:
        return [*(Rule(f"{p}.", f"trunk.{p}.") for p in _TRUNK), Rule("fc2.", "head2."), Rule("fc.", "head.")]

    def default_weights(self, spec):
        return URL

    def map_torchvision(self, model, state_dict):
        target = model.state_dict()
        out, dropped, unknown = {}, [], []
        for key, value in state_dict.items():
            if key.startswith(tuple(f"{p}." for p in _TRUNK)):
                out[f"trunk.{key}"] = value
            elif key in ("fc.weight", "fc.bias") and value.shape == target[f"head.{key[3:]}"].shape:
                out[f"head.{key[3:]}"] = value
            elif key.startswith(("fc.", "fc2.")):
                dropped.append(key)
            else:
                unknown.append(key)
        return out, dropped, unknown, ()


register(ResNet50())
