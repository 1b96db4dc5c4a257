"""Trunks: feature extractors that end at the CAM target layer.

`Trunk` is the base class: an `nn.Module` mapping images (B, 3, H, W) to the target-layer feature map
(B, C, h, w), with `channels` and `target_layer` attributes. The trunks themselves live with their
architecture in the backbone registry (`pipeline/models/archs/`: vgg16.py, resnet50.py, inception.py,
and timm_any.py for every timm name): `Backbone.build_trunk` builds them.
"""

from __future__ import annotations

import torch
from torch import nn


class Trunk(nn.Module):
    """Base class: `forward(x)` returns the target-layer feature map."""

    channels: int
    target_layer: str
    arch: str


def check_feature_map(trunk: Trunk, input_size: int) -> tuple[int, int]:
    """Run a dummy input through `trunk` and return the (h, w) of its feature map, or raise ValueError."""
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, input_size, input_size))
    trunk.train(was_training)
    if out.ndim != 4:
        raise ValueError(
            f"backbone '{trunk.arch}' gives a {out.ndim}-D output {tuple(out.shape)}, not a "
            f"(B, C, h, w) feature map; CAMs need a convolutional backbone"
        )
    return int(out.shape[2]), int(out.shape[3])
