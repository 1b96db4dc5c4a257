"""Backbone registry: feature extractors that end at the CAM target layer.

`build_trunk(name, ...)` returns a `Trunk`: an `nn.Module` mapping images (B, 3, H, W) to the target-layer
feature map (B, C, h, w), with `channels` and `target_layer` attributes. Three backbones are built in their
WSOL form exactly as METHOD.md 1.3 describes the official CAM networks, from torchvision modules (so
their parameter names match torchvision / wsolevaluation checkpoints):

- `vgg16`: the 13 VGG16 convolutions with only 4 max-pools, then conv6 (3x3, 512 -> 1024) + ReLU.
  Stride 16 (8 with `large_feature_map`). Target layer: ReLU(conv6).
- `resnet50`: torchvision ResNet50 with layer4 stride 1 (and layer3 stride 1 with `large_feature_map`),
  no dilation. Stride 16 (8). Target layer: layer4.
- `inception` (alias `inception_v3`): the SPG-style InceptionV3: padded stem, Mixed_5b-5d, an extra
  max-pool (dropped with `large_feature_map`), Mixed_6a at stride 1, Mixed_6b-6e, then SPG_A3_1b and
  SPG_A3_2b (3x3 convs to 1024 channels, ReLU) with dropout 0.5 around them. Target layer:
  ReLU(SPG_A3_2b).

Any other name is a timm model, built as `timm.create_model(name, num_classes=0, global_pool='')` and used
through `forward_features` (with `output_stride` when given). Its target layer is the last feature map.
The data transforms normalise every image with the ImageNet mean/std; a timm model whose own normalisation
differs (e.g. `tf_efficientnet_lite0`: mean = std = 0.5) re-normalises its input first, inside the trunk
(an exact per-channel affine map, no parameters), so its ImageNet weights see the inputs they were trained on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import inception as tv_inception

from pipeline.data.images import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.names import ALIASES


class Trunk(nn.Module):
    """Base class: `forward(x)` returns the target-layer feature map."""

    channels: int
    target_layer: str
    arch: str


class VGG16Trunk(Trunk):
    arch = "vgg16"
    target_layer = "conv6 (after ReLU)"

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        vgg = torchvision.models.vgg16(weights=None)  # torchvision's init: kaiming normal, fan_out
        layers = list(vgg.features.children())[:-1]  # drop pool5: 4 max-pools remain
        if large_feature_map:
            del layers[23]  # the 4th max-pool
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(self.conv6.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv6.bias)
        self.channels = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv6(self.features(x)))


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


def _unstride(block: nn.Module) -> None:
    """Make a torchvision Bottleneck stride 1 (conv2 and the downsample shortcut), without dilation."""
    block.conv2.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


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


class InceptionTrunk(Trunk):
    arch = "inception"
    target_layer = "SPG_A3_2b (after ReLU)"

    def __init__(self, large_feature_map: bool = False):
        super().__init__()
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True,
                                              transform_input=False)
        self.Conv2d_1a_3x3 = net.Conv2d_1a_3x3
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        self.Conv2d_2a_3x3, self.Conv2d_2b_3x3 = net.Conv2d_2a_3x3, net.Conv2d_2b_3x3
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = net.Conv2d_3b_1x1, net.Conv2d_4a_3x3
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = net.Mixed_5b, net.Mixed_5c, net.Mixed_5d
        self.Mixed_6a = _InceptionBStride1(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (
            net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e)
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


class TimmTrunk(Trunk):
    """Any timm CNN, used through `forward_features`."""

    target_layer = "forward_features (last feature map)"

    def __init__(self, name: str, output_stride: int | None = None, pretrained_cfg_overlay: dict | None = None):
        """`pretrained_cfg_overlay`: build with timm's `pretrained=True` from this source, e.g.
        `dict(file=path)` or `dict(state_dict=sd)` (see pipeline.models.pretrained); None = random init."""
        super().__init__()
        import timm

        kwargs = {} if output_stride is None else {"output_stride": output_stride}
        if pretrained_cfg_overlay is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=pretrained_cfg_overlay)
        try:
            self.body = timm.create_model(name, num_classes=0, global_pool="", **kwargs)
        except (TypeError, AssertionError, ValueError) as exc:
            raise ValueError(f"backbone '{name}': timm could not build it with output_stride="
                             f"{output_stride}: {exc}") from exc
        self.arch = name
        self.channels = self.body.num_features
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.input_mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
        self.input_std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
        scale = shift = None
        if len(self.input_mean) == 3 and (self.input_mean, self.input_std) != (IMAGENET_MEAN, IMAGENET_STD):
            # x is normalised with the ImageNet mean/std; the model wants (raw - mean) / std
            mean, std = torch.tensor(self.input_mean), torch.tensor(self.input_std)
            scale = (torch.tensor(IMAGENET_STD) / std).view(1, 3, 1, 1)
            shift = ((torch.tensor(IMAGENET_MEAN) - mean) / std).view(1, 3, 1, 1)
        self.register_buffer("input_scale", scale, persistent=False)
        self.register_buffer("input_shift", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = torch.addcmul(self.input_shift, x, self.input_scale)
        return self.body.forward_features(x)


def build_trunk(name: str, *, large_feature_map: bool = False, output_stride: int | None = None) -> Trunk:
    """Build the feature extractor for `name` (a WSOL arch, an alias, or a timm model name)."""
    name = ALIASES.get(name, name)
    if name == "vgg16":
        trunk: Trunk = VGG16Trunk(large_feature_map)
    elif name == "resnet50":
        trunk = ResNet50Trunk(large_feature_map)
    elif name == "inception":
        trunk = InceptionTrunk(large_feature_map)
    else:
        if large_feature_map:
            raise ValueError(f"backbone '{name}': large_feature_map applies to vgg16, resnet50 and "
                             f"inception only; for timm models set output_stride instead")
        trunk = TimmTrunk(name, output_stride)
    return trunk


def check_feature_map(trunk: Trunk, input_size: int) -> tuple[int, int]:
    """Run a dummy input through `trunk` and return the (h, w) of its feature map, or raise ValueError."""
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, input_size, input_size))
    trunk.train(was_training)
    if out.ndim != 4:
        raise ValueError(f"backbone '{trunk.arch}' gives a {out.ndim}-D output {tuple(out.shape)}, not a "
                         f"(B, C, h, w) feature map; CAMs need a convolutional backbone")
    return int(out.shape[2]), int(out.shape[3])
