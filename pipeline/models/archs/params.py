"""The settings of one backbone, an entry of params.yaml's `backbones:` table (torch-free: params validation
imports it). pipeline/params.py resolves the selected entry (its own, an alias's or `any_timm`'s) with the dataset's
preset and `model:` over it into `model` of data/params.json."""

from __future__ import annotations

from typing import Literal

from pipeline.schema import Bool, Field, Float, Int, params_class


@params_class
class BackboneParams:
    """`backbones.<name>`: vgg16, resnet50 and inception are built in their WSOL form (METHOD.md 1.3); any other key
    is a timm model name, built as timm features -> global average pooling -> linear (any_timm: the settings of a
    timm model without an entry of its own)."""

    input_size: Int = Field(ge=32, le=1024, description="train crop and test resize side, pixels")
    large_feature_map: Bool = Field(
        description=(
            "WSOL 'LFM': one stride fewer (VGG16, ResNet50, InceptionV3)\n"
            "The WSOL backbones' only stride setting (their output_stride must be null)."
        )
    )
    output_stride: Literal[8, 16, 32] | None = Field(
        description=(
            "timm backbones only: feature stride (null = model default)\n"
            "Must be null for the WSOL backbones, whose stride METHOD.md 1.3 fixes."
        )
    )
    feature_stage: Int | None = Field(
        ge=0,
        le=16,
        description=(
            "timm backbones only: the CAM target layer is timm's feature stage N (null = the last)\n"
            "Its feature_info index; the later stages are not built (nor computed). Must be null for the WSOL "
            "backbones, whose target layer METHOD.md 1.3 fixes."
        ),
    )
    batch_size: Int = Field(ge=1, le=4096, description="images per training batch (and per cams batch by default)")
    baseline_lr: Float = Field(gt=0.0, le=10.0, description="learning rate of the baseline's training (baseline.lr)")
    baseline_weight_decay: Float = Field(ge=0.0, le=1.0, description="weight decay of the baseline's training")
    finetune_lr: Float = Field(
        gt=0.0,
        le=10.0,
        description=(
            "effective learning rate of the sigmoid head\n"
            "The official code's base LR x10 for VGG and Inception heads, x1 for ResNet (METHOD.md 2.2), folded in."
        ),
    )
    finetune_weight_decay: Float = Field(ge=0.0, le=1.0, description="weight decay of the sigmoid head's fine-tuning")
