"""The model spec: plain data naming everything needed to rebuild a model (stored in every checkpoint).

Torch-free, so that the registry (`pipeline.models.archs`), the model module (`pipeline.models.dual`) and
code that only names a model can all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pipeline.concepts import DEFAULT_FAMILY


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    backbone: str
    num_classes: int
    input_size: int
    large_feature_map: bool = False
    output_stride: int | None = None
    feature_stage: int | None = None  # timm trunks: the feature stage read (None = the last)
    family: str = DEFAULT_FAMILY  # one of pipeline.concepts.FAMILIES
    grad_grid: int | None = None  # timm grad-family head: pooled grid side (None where unused)
    grad_hidden: int | None = None  # timm grad-family head: MLP width (None where unused)


# the spec fields that change the weights (input_size does not)
SPEC_KEYS = tuple(f.name for f in fields(ModelSpec) if f.name != "input_size")
