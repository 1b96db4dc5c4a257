"""The building blocks of the params schema (pipeline/params.py), torch-free and free of the project's other
modules, so that the modules that own a part of params.yaml declare its class beside their code: each real
dataset's class in pipeline/data/real/<name>.py, SynthBirds' in pipeline/data/synthbirds.py, the `backbones:`
entry's in pipeline/models/archs/params.py.

A params class is a frozen pydantic dataclass (`params_class`): unknown keys are refused, every scalar is strictly
typed (no "3" for 3, no true for 1; an integer is accepted for a float), NaN and infinity are refused, and each
field carries its documentation in `Field(description=...)`: the first line is the short summary that error
messages and the generated reference (docs/params.md) show, the rest the longer explanation.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

# Strict scalar types of params.yaml.
Int = StrictInt
Float = StrictFloat
Bool = StrictBool
Str = StrictStr

CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

FALLBACK = "fallback"  # json_schema_extra key: the default of a key a dataset's preset can fill


def params_class(cls: type) -> type:
    """Make `cls` a frozen pydantic dataclass with the schema's configuration."""
    return dataclass(frozen=True, config=CONFIG)(cls)


def fallback(value: Any, description: str = "", **constraints: Any) -> Any:
    """A field that a dataset's preset can fill (pipeline/params.py PRESET_TARGETS): null in params.yaml means the
    preset's value, else `value`."""
    show = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    summary = f"null = the dataset's preset, else {show}"
    return Field(
        description=f"{summary}; {description}" if description else summary,
        json_schema_extra={FALLBACK: value},
        **constraints,
    )


_SOURCE_DOC = (
    "folder holding the dataset's files (null = download.archive_dir/<dataset>)\n"
    "Its published archives, or (with verify: content) repacked archives or the extracted folders; then "
    "nothing is downloaded: the files are checked and the metadata built. Nothing is written into it."
)
_VERIFY_DOC = (
    "published | content: which copies of the files are accepted\n"
    "published: only the publisher's archives, checked against the published checksums. content: also a "
    "repacked or recompressed archive or the extracted folders; the copy is identified by the content of "
    "the files read (recorded in <download.root>/<dataset>/source.json)."
)
_MODE_DOC = (
    "auto: download missing files from the official host | manual: you place the files\n"
    "In mode manual the files go to download.archive_dir/<dataset>/ (or source_dir)."
)
_PRESETS_DOC = (
    "the paper's hyperparameters per backbone: they fill the keys that params.yaml leaves null\n"
    "`presets.shared` holds the values common to every backbone listed beside it, `presets.<backbone>` (a key of "
    "`backbones`) that backbone's own values, over the shared ones. When the selected backbone has an entry, the "
    "merged values fill the keys of params.yaml they name (PRESET_TARGETS) where params.yaml has null; a value set "
    "in params.yaml always wins. A backbone without an entry gets no preset (not even the shared values)."
)
SHARED_PRESET = "shared"  # the key of `presets` that holds the values of every backbone listed


@params_class
class PresetParams:
    """The paper's hyperparameters for one (dataset, backbone) (METHOD.md 6.2, the `cam` rows; learning rates are
    effective head rates as everywhere in params.yaml). A set field fills the key of params.yaml it names
    (pipeline/params.py PRESET_TARGETS) where params.yaml has null, replacing the backbone table's value
    (`input_size` ... `finetune_weight_decay`) or the stage param's default; a value set in params.yaml always
    wins. Null or absent: no value of the preset's."""

    input_size: Int | None = Field(None, ge=32, le=1024, description="fills model.input_size")
    large_feature_map: Bool | None = Field(None, description="fills model.large_feature_map")
    batch_size: Int | None = Field(None, ge=1, le=4096, description="fills model.batch_size")
    baseline_lr: Float | None = Field(None, gt=0.0, le=10.0, description="fills baseline.lr")
    baseline_weight_decay: Float | None = Field(None, ge=0.0, le=1.0, description="fills model.baseline_weight_decay")
    finetune_lr: Float | None = Field(None, gt=0.0, le=10.0, description="fills finetune.lr")
    finetune_weight_decay: Float | None = Field(None, ge=0.0, le=1.0, description="fills model.finetune_weight_decay")
    pretrained: Literal["none", "imagenet"] | None = Field(
        None, description="fills baseline.pretrained (unless a checkpoint is given)"
    )
    lr_classifier_ratio: Float | None = Field(None, gt=0.0, le=1000.0, description="fills baseline.lr_classifier_ratio")
    baseline_epochs: Int | None = Field(None, ge=0, le=10000, description="fills baseline.epochs")
    baseline_lr_decay_every: Int | None = Field(None, ge=1, le=10000, description="fills baseline.lr_decay_every")
    finetune_epochs: Int | None = Field(None, ge=1, le=10000, description="fills finetune.epochs")
    finetune_lr_decay_every: Int | None = Field(None, ge=1, le=10000, description="fills finetune.lr_decay_every")
    loc_threshold: Float | None = Field(None, ge=0.0, le=1.0, description="fills evaluate.loc_threshold")


@params_class
class DatasetParams:
    """What every dataset's settings have (`datasets.<name>`); each dataset's class narrows `val_per_class` to its
    own range and adds its own keys."""

    num_classes: Int = Field(ge=2, description="number of classes used (the first N in label order)")
    val_per_class: Int = Field(ge=0, description="val images per class")


@params_class
class RealDatasetParams(DatasetParams):
    """A real dataset (pipeline/data/real/): its files are found, checked and read, never generated."""

    source_dir: Str | None = Field(description=_SOURCE_DOC)
    verify: Literal["published", "content"] = Field(description=_VERIFY_DOC)
    presets: dict[str, PresetParams] = Field(default_factory=dict, description=_PRESETS_DOC)


@params_class
class DownloadableDatasetParams(RealDatasetParams):
    """A real dataset whose files can be downloaded from the official host (mode auto)."""

    mode: Literal["auto", "manual"] = Field(description=_MODE_DOC)


def preset_for(presets: dict[str, PresetParams], entry: str | None) -> PresetParams | None:
    """The preset of backbone entry `entry`: `presets.shared` overlaid with `presets.<entry>` (None when `entry` has
    no entry of its own)."""
    if entry is None or entry == SHARED_PRESET or entry not in presets:
        return None
    shared = presets.get(SHARED_PRESET)
    if shared is None:
        return presets[entry]
    own = presets[entry]
    return PresetParams(
        **{
            name: value if (value := getattr(own, name)) is not None else getattr(shared, name)
            for name in PresetParams.__pydantic_fields__
        }
    )
