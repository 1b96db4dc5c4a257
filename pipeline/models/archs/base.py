"""`Backbone`: the one object per architecture that the registry (`pipeline.models.archs`) hands out.

An arch module subclasses it and overrides what differs from the defaults below. Key-map rules (`Rule`)
describe an official checkpoint layout as ordered prefix renames, used in both directions, so one list
is the import map, the export map and (with a trunk built on the meta device) the detector of which
architecture and family a state dict holds.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from pipeline.concepts import FAMILIES
from pipeline.models.heads import GapLinearHead, Head, PoolMlpHead
from pipeline.models.spec import ModelSpec

NBT = "num_batches_tracked"
GRAD_GRID, GRAD_HIDDEN = 3, 256  # the timm grad head's defaults (params.yaml grad_head)


class Rule(NamedTuple):
    """Official key `<official><rest>` <-> our key `<ours><rest>`."""

    official: str
    ours: str
    export: bool = True  # used when writing the official layout (the first matching rule wins)
    conv1x1: bool = False  # the official weight is a 1x1 conv (K, C, 1, 1); ours is linear (K, C)


@dataclass(frozen=True)
class Found:
    """What `Backbone.identify` recognised in a state dict."""

    backbone: str
    family: str
    num_classes: int | None
    large_feature_map: bool = False
    layout: str = "official"

    def describe(self) -> str:
        lfm = ", large_feature_map" if self.large_feature_map else ""
        k = f", {self.num_classes} classes" if self.num_classes is not None else ""
        return f"a {self.backbone} network ({self.family} family{k}{lfm})"


class PooledDropout(nn.Module):
    """Dropout after global average pooling (InceptionV3 of the gradient family, METHOD.md 2.4: `fc` and `fc2`
    read one dropped-out pooled vector, so both heads share one mask). In training it returns the pooled,
    dropped-out features as a (B, C, 1, 1) map (a GAP head's mean over 1x1 is the identity); in eval mode it
    returns the feature map unchanged, so the heads read exactly the target-layer map."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(p)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        return self.dropout(features.mean(dim=(2, 3), keepdim=True))


def init_normal_(head: Head, generator: torch.Generator | None = None, std: float = 0.01) -> None:
    """Every linear layer of `head`: N(0, std) weights, zero bias (the official `initialize_weights`)."""
    with torch.no_grad():
        for linear in head.linear_layers():
            linear.weight.normal_(0.0, std, generator=generator)
            linear.bias.zero_()


class Backbone:
    """Defaults: a GAP-linear head (cam) or a PoolMlpHead (grad), no pre-head op, a fresh sigmoid head
    drawn from N(0, 0.01) with zero bias, every trunk parameter in the "features" LR group, no official
    layout, no pretrained source."""

    name: str = ""
    families: tuple[str, ...] = FAMILIES
    official_name: str | None = None  # the official code's `--architecture` value
    supports_large_feature_map: bool = False
    supports_feature_stage: bool = False  # the target layer can be an earlier stage (timm trunks)
    pretrained_layout: str | None = None  # "torchvision" | "timm" | None
    grad_head_params: bool = False  # the grad head's grid / hidden come from the spec (grad_head.*)

    # -- model parts --------------------------------------------------------------------------------------

    def check_spec(self, spec) -> None:
        """ValueError naming what to change when `spec` cannot be built."""
        if spec.family not in self.families:
            raise ValueError(
                f"family: '{spec.family}' is not available for backbone '{self.name}'; "
                f"choose one of: {', '.join(self.families)}"
            )
        if spec.large_feature_map and not self.supports_large_feature_map:
            raise ValueError(
                f"backbone '{self.name}': large_feature_map applies to vgg16, resnet50 and "
                f"inception only; for timm models set output_stride instead"
            )
        if spec.feature_stage is not None and not self.supports_feature_stage:
            raise ValueError(
                f"backbone '{self.name}': feature_stage applies to timm backbones only; set "
                f"backbones.{self.name}.feature_stage: null (its target layer is fixed by METHOD.md 1.3)"
            )

    def normalize_spec(self, spec):
        """`spec` without settings this architecture ignores (so they never make checkpoints differ), and
        with the grad head's defaults filled in where it uses them."""
        import dataclasses

        if self.grad_head_params and spec.family == "grad":
            return dataclasses.replace(
                spec, grad_grid=spec.grad_grid or GRAD_GRID, grad_hidden=spec.grad_hidden or GRAD_HIDDEN
            )
        if (spec.grad_grid, spec.grad_hidden) != (None, None):
            return dataclasses.replace(spec, grad_grid=None, grad_hidden=None)
        return spec

    def build_trunk(self, spec) -> nn.Module:
        raise NotImplementedError

    def build_head(self, spec, channels: int) -> Head:
        """The softmax head of the family."""
        if spec.family == "cam":
            return GapLinearHead(channels, spec.num_classes)
        return PoolMlpHead(
            channels, spec.num_classes, grid=spec.grad_grid or GRAD_GRID, hidden=spec.grad_hidden or GRAD_HIDDEN
        )

    def build_pre_head(self, spec) -> nn.Module:
        """The op both heads read through (identity in eval mode)."""
        return nn.Identity()

    def make_sigmoid_head(self, head: Head, spec, init: str, generator: torch.Generator | None = None) -> Head:
        """`clone`: an exact copy of the softmax head; `random`: the official code's fresh init (METHOD.md 1.4)."""
        head2 = copy.deepcopy(head)
        if init == "random":
            self.init_fresh_head(head2, spec, generator)
        return head2

    def init_fresh_head(self, head: Head, spec, generator: torch.Generator | None) -> None:
        init_normal_(head, generator)

    def in_classifier_group(self, trunk_param: str, spec) -> bool:
        """Whether trunk parameter `trunk_param` (name inside the trunk) gets lr * lr_classifier_ratio
        (METHOD.md 2.2). Head parameters always do."""
        return False

    def target_layer(self, spec) -> str:
        raise NotImplementedError

    def describe(self, spec) -> str:
        return f"{self.name}/{spec.family}"

    # -- official checkpoint layout -----------------------------------------------------------------------

    def official_rules(self, spec) -> list[Rule]:
        """The official layout of `spec`'s family as ordered prefix rules (empty: no official layout)."""
        return []

    def official_to_ours(self, state_dict: Mapping[str, torch.Tensor], spec) -> tuple[dict, list[str]]:
        """(our keys -> tensors, official keys that have no place in the network)."""
        rules = self.official_rules(spec)
        out, unknown = {}, []
        for key, value in state_dict.items():
            rule = next((r for r in rules if key.startswith(r.official)), None)
            if rule is None:
                unknown.append(key)
                continue
            ours = rule.ours + key[len(rule.official) :]
            if rule.conv1x1 and value.ndim == 4:
                value = value.reshape(value.shape[0], -1)
            out[ours] = value
        return out, unknown

    def ours_to_official_key(self, key: str, spec) -> str:
        rule = self._export_rule(key, spec)
        return key if rule is None else rule.official + key[len(rule.ours) :]

    def _export_rule(self, key: str, spec) -> Rule | None:
        return next((r for r in self.official_rules(spec) if r.export and key.startswith(r.ours)), None)

    def ours_to_official(self, state: Mapping[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state.items():
            rule = self._export_rule(key, spec)
            if rule is None:
                raise ValueError(f"{key}: no place in the official {self.name} {spec.family} layout")
            if rule.conv1x1 and key.endswith(".weight") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
            out[rule.official + key[len(rule.ours) :]] = value.detach().clone()
        return out

    def layout_variants(self) -> list[dict]:
        """Spec settings under which `identify` tries a state dict (family x large_feature_map)."""
        lfms = (False, True) if self.supports_large_feature_map else (False,)
        return [dict(family=f, large_feature_map=lfm) for f in self.families for lfm in lfms]

    def identify(self, state_dict: Mapping[str, torch.Tensor]) -> list[Found]:
        """Every (family, large_feature_map) of this architecture whose official trunk keys and shapes the
        state dict holds exactly; with the class count read from the softmax head when present."""
        found = []
        for variant in self.layout_variants():
            spec = ModelSpec(self.name, 2, 224, **variant)
            if not self.official_rules(spec):
                continue
            renamed, unknown = self.official_to_ours(state_dict, spec)
            if unknown:
                continue
            trunk = {k: v for k, v in renamed.items() if k.startswith("trunk.") and not k.endswith(NBT)}
            if not trunk or _shapes(trunk) != self._trunk_signature(spec):
                continue
            head = sorted((k for k in renamed if k.startswith("head.") and k.endswith(".weight")), key=_layer_order)
            if not self._head_fits(renamed, spec):
                continue
            k = int(renamed[head[-1]].shape[0]) if head else None
            found.append(Found(self.name, spec.family, k, spec.large_feature_map))
        return found

    def _head_fits(self, renamed: Mapping[str, torch.Tensor], spec) -> bool:
        """The softmax head's tensors (if any) have the family's shapes apart from the class count."""
        have = {k: tuple(v.shape) for k, v in renamed.items() if k.startswith("head.")}
        if not have:
            return True
        want = self._head_signature(spec)
        if set(have) != set(want):
            return False
        return all(have[k][1:] == want[k][1:] for k in want)

    def _trunk_signature(self, spec) -> dict[str, tuple[int, ...]]:
        return _trunk_signature(self, _key(spec))

    def _head_signature(self, spec) -> dict[str, tuple[int, ...]]:
        return _head_signature(self, _key(spec))

    # -- pretrained weights -------------------------------------------------------------------------------

    def default_weights(self, spec):
        """The default ImageNet weights: a URL (str), a `WheelWeights`, or None (timm's own default)."""
        return None

    def map_torchvision(self, model, state_dict: Mapping[str, torch.Tensor]):
        """torchvision-format ImageNet weights onto our model: (our key -> tensor, file keys dropped,
        file keys unknown, our key prefixes of new layers that keep their init)."""
        raise NotImplementedError


def _key(spec) -> tuple:
    return (
        spec.family,
        spec.large_feature_map,
        spec.output_stride,
        spec.feature_stage,
        spec.grad_grid,
        spec.grad_hidden,
    )


def _shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _layer_order(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in key.split("."))


def _meta_spec(backbone: Backbone, key: tuple) -> ModelSpec:
    family, lfm, stride, stage, grid, hidden = key
    return ModelSpec(backbone.name, 2, 224, lfm, stride, stage, family=family, grad_grid=grid, grad_hidden=hidden)


@functools.lru_cache(maxsize=64)
def _trunk_signature(backbone: Backbone, key: tuple) -> dict[str, tuple[int, ...]]:
    """Our trunk's parameter names and shapes (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        trunk = backbone.build_trunk(_meta_spec(backbone, key))
    return {f"trunk.{k}": tuple(v.shape) for k, v in trunk.state_dict().items() if not k.endswith(NBT)}


@functools.lru_cache(maxsize=64)
def _head_signature(backbone: Backbone, key: tuple) -> dict[str, tuple[int, ...]]:
    spec = _meta_spec(backbone, key)
    with torch.device("meta"):
        head = backbone.build_head(spec, backbone.build_trunk(spec).channels)
    return {f"head.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
