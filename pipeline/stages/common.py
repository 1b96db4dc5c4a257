"""Shared wiring for the stage scripts: params, seeding, paths, data loaders, model specs, logging.

Stage scripts (`python -m pipeline.stages.<name>`) read the validated params (data/params.json, restricted to the
keys their dvc.yaml entry declares) through here and call library code;
this module and the stage scripts are the only places that know about DVC's conventions.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from pipeline.params import PARAMS_FILE, RESOLVED_FILE, StageParams, UndeclaredParamError

MODELS = Path("data/models")
REPORTS = Path("reports")
CAMS_DIR = Path("data/cams")  # one folder per model (baseline j, fine-tuning replicate k): see `replicate`


@dataclass(frozen=True)
class Baseline:
    """One baseline replicate j (DVC stage baseline@j) and its files."""

    index: int
    seed: int | None  # baseline.seed + index: init, shuffling and augmentation (None: not declared)
    ckpt: Path  # the trained softmax classifier
    live_dir: Path  # DVCLive metrics and plots

    @property
    def stage(self) -> str:
        return f"baseline@{self.index}"


@dataclass(frozen=True)
class Replicate:
    """One fine-tuning replicate k of baseline j (DVC stages clone_head@j-k, finetune@j-k, cams@j-k), i.e. one
    model of the run, and its files."""

    baseline: int
    index: int
    seed: int | None  # finetune.seed + 1000 j + k: clone_head's random init, finetune's shuffling and init
    # (None: a stage that does not declare finetune.seed)
    baseline_ckpt: Path  # the baseline it starts from
    dual_ckpt: Path  # clone_head's output
    finetuned_ckpt: Path  # finetune's output
    cams_dir: Path  # cams' output: <cams_dir>/<split>/
    live_dir: Path  # finetune's DVCLive metrics and plots
    classification: Path  # finetune's Top-1 Cls of both branches

    @property
    def model(self) -> tuple[int, int]:
        return self.baseline, self.index

    @property
    def name(self) -> str:
        return f"{self.baseline}-{self.index}"


def baseline(params: StageParams, index: int | None = None) -> Baseline:
    """The paths and seed of baseline replicate `index` (one of baseline.replicates; None = the first). These
    paths and dvc.yaml's must stay the same. A stage that does not declare baseline.replicates (a per-model
    stage, given its indices by dvc.yaml) is not checked against the list; one that does not declare
    baseline.seed gets seed None."""
    if index is None or params.declares("baseline.replicates"):
        bases = params.baseline.replicates
        index = bases[0] if index is None else index
        if index not in bases:
            raise ValueError(
                f"baseline replicate {index}: not in baseline.replicates {bases}; add it there "
                f"(dvc.yaml makes one stage per entry)"
            )
    seed = params.baseline_seed(index) if params.declares("baseline.seed") else None
    return Baseline(
        index=index,
        seed=seed,
        ckpt=MODELS / f"baseline_{index}" / "baseline.pt",
        live_dir=REPORTS / "baseline" / f"baseline_{index}",
    )


def replicate(params: StageParams, base: int | None = None, index: int | None = None) -> Replicate:
    """The paths and seed of fine-tuning replicate `index` of baseline replicate `base` (None: the first of
    baseline.replicates / finetune.replicates). The stage scripts get both from their command line
    (`python -m pipeline.stages.finetune 0 2`, written by dvc.yaml's matrix), see `replicate_args`. These paths
    and dvc.yaml's (`data/models/baseline_${item.baseline}/replicate_${item.finetune}/...`) must stay the same.
    The lists are checked and the seed computed only where the stage declares them (see `baseline`)."""
    b = baseline(params, base)
    if index is None or params.declares("finetune.replicates"):
        reps = params.finetune.replicates
        index = reps[0] if index is None else index
        if index not in reps:
            raise ValueError(
                f"fine-tuning replicate {index}: not in finetune.replicates {reps}; add it there "
                f"(dvc.yaml's matrix makes one stage per entry)"
            )
    name = Path(f"baseline_{b.index}") / f"replicate_{index}"
    seed = params.finetune_seed(index, b.index) if params.declares("finetune.seed") else None
    return Replicate(
        baseline=b.index,
        index=index,
        seed=seed,
        baseline_ckpt=b.ckpt,
        dual_ckpt=MODELS / name / "dual.pt",
        finetuned_ckpt=MODELS / name / "finetuned.pt",
        cams_dir=CAMS_DIR / name,
        live_dir=REPORTS / "finetune" / name,
        classification=REPORTS / "finetune" / name / "classification.json",
    )


def replicates(params: StageParams) -> list[Replicate]:
    """Every model of the run, baseline by baseline: (j, k) for j in baseline.replicates, k in
    finetune.replicates."""
    return [replicate(params, j, k) for j in params.baseline.replicates for k in params.finetune.replicates]


def replicate_args(count: int) -> list[int] | None:
    """The indices a per-replicate stage script was given on its command line (dvc.yaml passes them): `count`
    of them (1: a baseline j; 2: a model's j and k), or None without any (the first, for a stage run by hand)."""
    args = sys.argv[1:]
    if not args:
        return None
    if len(args) != count or not all(a.isdigit() for a in args):
        what = "BASELINE" if count == 1 else "BASELINE REPLICATE"
        print(
            f"error: usage: python -m pipeline.stages.{Path(sys.argv[0]).stem} [{what}] (indices of "
            f"baseline.replicates{'' if count == 1 else ' and finetune.replicates'}); got arguments {args}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return [int(a) for a in args]


def model_arg(params: StageParams) -> Replicate:
    """The model (baseline j, fine-tuning replicate k) of a per-model stage, from its command line."""
    args = replicate_args(2)
    return replicate(params, *(args or (None, None)))


def baseline_arg(params: StageParams) -> Baseline:
    """The baseline replicate j of the baseline stage, from its command line."""
    args = replicate_args(1)
    return baseline(params, args[0] if args else None)


def start(
    *, distributed: bool = False, seed: Callable[[StageParams], int] | None = None, pin_cpu: bool = False
) -> StageParams:
    """Read the validated params (`load_stage_params`: data/params.json through the keys this stage declares in
    dvc.yaml), then seed every generator with `seed(params)` (None = the top-level seed, the dataset's; baseline:
    baseline.seed; the per-replicate stages: the replicate's seed). `distributed`: the stage can run on
    `distributed.nproc` processes (re-launched under torchrun, pipeline/dist.py). `pin_cpu` (the training
    stages): fix the CPU kernels and thread count to `cpu.kernels` / `cpu.threads` before torch is imported
    (pipeline/train/cpu_repro.py)."""
    params = load_stage_params()
    if pin_cpu:
        from pipeline.train import cpu_repro

        with user_errors():
            cpu_repro.pin(params.cpu.kernels, params.cpu.threads)
    if distributed:
        from pipeline import dist

        # The process count: a stage whose bytes do not depend on it (cams) does not declare it.
        d = params.distributed if params.declares("distributed") else params.runtime("distributed")
        with user_errors():
            dist.setup(d.nproc, d.backend, params.device)
    with user_errors():
        seed_everything(params.seed if seed is None else seed(params))
        if pin_cpu:
            cpu_repro.apply_torch_flags()
    if params.declares("device"):
        _print_device(params)
    return params


# ----------------------------------------------------------------------------------------------------
# What a stage reads
#
# DVC has no pre-run hook, so validation is the first stage, `validate` (dvc.yaml, `always_changed: true`): it
# checks the whole params.yaml and writes data/params.json, the params as the stages use them
# (pipeline/params.py `resolved`). Every other stage declares its keys of that file as DVC params, and reads that
# file, not params.yaml, through a view restricted to those keys (pipeline/params.py `StageParams`): a key read
# but not declared fails the stage naming it, so a stage depends on exactly the values it reads, and DVC records
# in dvc.lock the values the stage used.


def stage_name() -> str:
    """The DVC stage running this process (DVC sets DVC_STAGE; `cams@0-0` -> `cams`), else the stage module's
    name."""
    return (os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem).split("@")[0]


def stage_keys(stage: str, dvc_file: str | Path = "dvc.yaml") -> list[str] | None:
    """The keys of RESOLVED_FILE that `dvc_file` declares as params of `stage` (None: not declared there)."""
    import yaml

    try:
        spec = yaml.safe_load(Path(dvc_file).read_text())["stages"][stage.split("@")[0]]
    except (OSError, KeyError, TypeError):
        return None
    spec = spec.get("do", spec)  # a foreach stage is defined under `do` (a matrix stage at the top)
    for entry in spec.get("params") or []:
        if isinstance(entry, dict) and RESOLVED_FILE.as_posix() in entry:
            return list(entry[RESOLVED_FILE.as_posix()] or [])
    return None


def load_stage_params(stage: str | None = None, dvc_file: str | Path = "dvc.yaml") -> StageParams:
    """RESOLVED_FILE (written by the `validate` stage) as `stage` may read it (None: `stage_name()`): only the
    keys its params in `dvc_file` declare. Exits 2 with a message when the file is missing or unreadable, or the
    stage declares no keys of it."""
    stage = stage or stage_name()
    try:
        values = json.loads(RESOLVED_FILE.read_text())
    except FileNotFoundError:
        _params_exit(
            f"{RESOLVED_FILE}: not found; the stages read the validated params from it: run `dvc repro` "
            f"(its first stage, validate, writes it) or `python -m pipeline.params validate`"
        )
    except (OSError, ValueError) as exc:
        _params_exit(
            f"{RESOLVED_FILE}: cannot be read ({exc}); run `python -m pipeline.params validate` or `dvc repro`"
        )
    if (
        "DVC_STAGE" not in os.environ
        and PARAMS_FILE.is_file()
        and PARAMS_FILE.stat().st_mtime > RESOLVED_FILE.stat().st_mtime
    ):
        print(
            f"warning: {PARAMS_FILE} changed after {RESOLVED_FILE} was written: this stage uses the values "
            f"validated last; run `python -m pipeline.params validate` to use the new ones",
            file=sys.stderr,
        )
    keys = stage_keys(stage, dvc_file)
    if keys is None:
        _params_exit(
            f"stage '{stage}': no `params: - {RESOLVED_FILE.as_posix()}:` list in {dvc_file}; declare the "
            f"keys the stage reads there"
        )
    _exit_cleanly_on_undeclared_reads()
    return StageParams(values, keys, stage)


def _exit_cleanly_on_undeclared_reads() -> None:
    """An undeclared read outside `user_errors` ends the process with its one-line message (status 2), not a
    traceback."""
    previous = sys.excepthook

    if getattr(previous, "undeclared_reads_exit", False):
        return

    def hook(kind, exc, tb):
        if isinstance(exc, UndeclaredParamError):
            report_error(f"error: {exc}")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)  # a hook cannot set the exit status otherwise
        previous(kind, exc, tb)

    hook.undeclared_reads_exit = True
    sys.excepthook = hook


def _params_exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _print_device(params: StageParams) -> None:
    """One line naming the stage's device and the GPUs it was given (so `dvc queue logs` shows which
    worker's GPU ran an experiment)."""
    from pipeline.dist import is_main
    from pipeline.train.loops import resolve_device

    if not is_main():
        return
    try:
        device = resolve_device(params.device)
    except ValueError:
        return  # the stage reports it
    print(
        f"{Path(sys.argv[0]).stem}: device {device_name(device)}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}",
        flush=True,
    )


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@contextlib.contextmanager
def throughput(stage: str, images: int, device) -> Iterator[None]:
    """Print the images per second of the block (rank 0), e.g. 'finetune: 2,400 images in 30.1 s ...'.
    `images` counts the work this run does (a resumed training's restored epochs excluded, `epochs_to_run`);
    no line when it is 0 (every epoch was restored)."""
    import time

    from pipeline.dist import is_main

    start_time = time.perf_counter()
    yield
    seconds = time.perf_counter() - start_time
    if is_main() and seconds > 0 and images > 0:
        print(
            f"{stage}: {images:,} images in {seconds:.1f} s = {images / seconds:,.0f} images/s on "
            f"{device_name(device)}",
            flush=True,
        )


def epochs_to_run(epochs: int, checkpoints=None) -> int:
    """The epochs a training runs in this process: `epochs` less those restored from `checkpoints`
    (pipeline/train/resume.py's EpochCheckpoints, or None)."""
    return max(0, epochs - (checkpoints.epochs_done if checkpoints is not None else 0))


def deterministic_algorithms() -> None:
    """`torch.use_deterministic_algorithms(True, warn_only=True)` without its import of torch._inductor (about
    2 s in every stage process here) when nothing has imported the inductor: the pipeline never compiles, so
    the inductor's `deterministic` flag has nothing to act on. With the inductor loaded, the public call."""
    import torch

    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    deterministic_algorithms()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's clear ValueErrors / missing-file errors into one message and exit status 1."""
    try:
        yield
    except (ValueError, FileNotFoundError, OSError) as exc:
        report_error(f"error: {exc}")
        raise SystemExit(1) from None


def report_error(line: str) -> None:
    """Print `line` to stderr on a line of its own, never glued to the end of a progress bar: through tqdm.write,
    which clears every open bar, writes the line and its newline, then redraws the bars below it (a bar that the
    exception closed has already ended its line)."""
    from tqdm import tqdm

    sys.stdout.flush()
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def resume_params(params: StageParams, stage: str):
    """The params of training stage `stage` as pipeline/train/resume.py's `for_stage` / `key_material` read them
    (attributes, and `dataclasses.asdict` of `data`, `model` and the stage's own group): only what the stage
    declares, each group a dataclass of its declared keys, and None for an undeclared top-level key (finetune's
    `seed`). Everything the training depends on is declared, so the resume key still covers it."""
    import types
    from dataclasses import make_dataclass

    values = params.declared_values()

    def group(name: str):
        fields = values.get(name) or {}
        return make_dataclass(name, list(fields), frozen=True)(**fields)

    return types.SimpleNamespace(
        dataset=values.get("dataset"),
        backbone=values.get("backbone"),
        seed=values.get("seed"),
        data=group("data"),
        model=group("model"),
        **{stage: group(stage)},
        baseline_lr=params.baseline_lr if stage == "baseline" else None,
        finetune_lr=params.finetune_lr if stage == "finetune" else None,
        prepared_dir=params.prepared_dir,
    )


def model_spec(params: StageParams):
    from pipeline.models.spec import ModelSpec

    return ModelSpec(
        backbone=params.backbone,
        num_classes=params.num_classes,
        input_size=params.model.input_size,
        large_feature_map=params.model.large_feature_map,
        output_stride=params.model.output_stride,
        feature_stage=params.model.feature_stage,
        family=params.family,
        grad_grid=params.grad_head.grid,
        grad_hidden=params.grad_head.hidden,
    )


# Caps loader_workers: past a few processes the decode of one batch is no longer the bottleneck, and every worker
# holds a copy-on-write view of the dataset (a preloaded split's decoded images) and its prefetched batches.
MAX_LOADER_WORKERS = 8
WORKERS_ENV = "PIPELINE_LOADER_WORKERS"  # an explicit count overrides the automatic one (0: decode in the main process)


def loader_workers() -> int:
    """DataLoader worker processes for an ordered (eval) loader, from the machine: the CPUs this process may run on
    (its affinity mask, so a container's or `taskset`'s limit counts) shared among the ranks on this node
    (LOCAL_WORLD_SIZE under torchrun, else pipeline.dist's world size), less one for the main process, at most
    MAX_LOADER_WORKERS and never negative. The environment variable PIPELINE_LOADER_WORKERS, when set, gives the
    count instead (not a param: the `cams` group is declared whole by the cams and evaluate stages, so a key there
    would rerun both). The batches, and so every output byte, are the same on any count (tests/stages/
    test_loader_workers.py)."""
    explicit = os.environ.get(WORKERS_ENV, "").strip()
    if explicit:
        if not explicit.isdigit():
            raise ValueError(f"{WORKERS_ENV}={explicit!r}: expected a worker count, an integer >= 0")
        return int(explicit)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        cpus = os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 0:
        ranks = int(local)
    else:
        from pipeline import dist

        ranks = dist.world_size()
    return max(0, min(MAX_LOADER_WORKERS, cpus // max(1, ranks) - 1))


def loader(
    params: StageParams,
    split: str,
    *,
    train: bool,
    workers: int = 0,
    batch_size: int | None = None,
    seed: int | None = None,
):
    """DataLoader over a prepared split with the official train or test transform; `seed` (None = the top-level
    seed) sets a train loader's shuffling and augmentation. In a distributed run a train loader covers this
    rank's share (DistributedSampler) with batch_size / nproc images per batch."""
    from pipeline import dist
    from pipeline.data.images import ImageSet, eval_transform, make_loader, train_transform
    from pipeline.data.prepare import load_prepared

    prepared = load_prepared(params.prepared_dir(), dataset=params.dataset, num_classes=params.num_classes)
    data = prepared.split(split)
    size = params.model.input_size
    transform = train_transform(size) if train else eval_transform(size)
    dataset = ImageSet(
        prepared.image_root, data.image_ids, data.labels, transform, approx_bytes=prepared.approx_bytes(split)
    )
    batch_size = batch_size or params.model.batch_size
    if seed is None:  # an ordered (eval) loader's seed has no effect: the top-level seed only for a train loader
        seed = params.seed if train else 0
    return make_loader(
        dataset,
        batch_size=dist.local_batch(batch_size) if train else batch_size,
        train=train,
        seed=seed,
        workers=workers,
        pin_memory=dist.uses_cuda(params.device),
        sampler=dist.train_sampler(dataset, seed) if train else None,
    )


def eval_options(params: StageParams):
    """The evaluate.* params as the library's EvalOptions."""
    from pipeline.metrics.evaluate import EvalOptions

    e = params.evaluate
    return EvalOptions(
        postprocess=e.postprocess,
        weight_clamp=e.weight_clamp,
        relu=e.relu,
        upsample=e.upsample,
        threshold_grid=e.threshold_grid,
        threshold_split=e.threshold_split,
        gt_box_match=e.gt_box_match,
        loc_threshold=e.loc_threshold,
        protocols=() if e.protocols == "none" else tuple(e.protocols.split("+")),
    )


def live(directory: str):
    """A DVCLive logger that writes only metrics and plots (no dvc.yaml, no experiment, no timestamps)."""
    from dvclive import Live

    from pipeline.dist import NullLive, is_main

    if not is_main():  # distributed: rank 0 alone writes
        return NullLive()
    return Live(dir=directory, save_dvc_exp=False, dvcyaml=False, report=None)
