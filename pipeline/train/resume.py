"""Resumable training: an end-of-epoch checkpoint of everything that shapes the next epoch.

A training loop given an `EpochCheckpoints` calls `restore` once before its first epoch and `save` after
every epoch (after its `on_epoch` callback). A checkpoint holds the model's and the optimizer's state dicts
(momentum buffers, the groups' lr and initial_lr), the number of completed epochs, the metrics dicts that
`on_epoch` saw (as the callback left them: the baseline stage adds val/acc to it), and every random state
the next epoch draws from:

* the torch CPU generator (random crops and flips when the DataLoader has no workers, dropout on the CPU),
  every CUDA device's generator (dropout on the GPU), numpy's and Python's global generators;
* the DataLoader's own generator (and its sampler's, when that is another one): it draws the shuffle order
  and the base seed from which worker processes seed their generators at the start of each epoch (the
  train loaders do not keep their workers between epochs, see pipeline/data/images.py, so a worker's
  random state is a function of that generator alone).

A run killed mid-epoch and rerun therefore continues from the last complete epoch and ends with weights
bit-identical to an uninterrupted run on the same device with the same params.

Stage scripts use `for_stage`: the folder is data/resume/<stage>/<key[:16]>/ (checkpoint.pt and a
readable key.json), keyed by the sha256 of everything the training depends on (the stage's resolved params,
the resolved device, torch's version and thread count, the sha256 of the prepared dataset tables and of
the stage's input model, the source files the stage's DVC deps name), so a checkpoint of another
configuration is never resumed. It lives outside DVC's outputs (a `persist` output would keep the stage out
of DVC's run-cache) and is removed once the stage has written its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import write_bytes, write_text

RESUME_ROOT = Path("data/resume")
CHECKPOINT = "checkpoint.pt"
FORMAT = 1
PACKAGE = Path(__file__).resolve().parents[1]  # pipeline/
# Source files each training stage depends on (its code deps in dvc.yaml), relative to pipeline/.
CODE_DEPS = {
    "baseline": ("stages/baseline.py", "stages/common.py", "data/images.py", "models", "train"),
    "finetune": ("stages/finetune.py", "stages/common.py", "data/images.py", "models", "train"),
}


# ----------------------------------------------------------------------------------------------------
# Random states


def rng_state() -> dict[str, Any]:
    """The global generators' states: torch CPU, every initialised CUDA device, numpy, Python."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def loader_generators(loader) -> dict[str, torch.Generator]:
    """The generators a DataLoader draws its shuffle order and worker seeds from."""
    found = {}
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        found["loader"] = loader.generator
    sampler_gen = getattr(getattr(loader, "sampler", None), "generator", None)
    if isinstance(sampler_gen, torch.Generator) and sampler_gen is not found.get("loader"):
        found["sampler"] = sampler_gen
    return found


# ----------------------------------------------------------------------------------------------------
# Checkpoints


class ResumeError(ValueError):
    pass


class EpochCheckpoints:
    """End-of-epoch checkpoints of one training run in `directory`, valid only for `key`.

    A checkpoint found there with another key, another format, or that cannot be read is ignored (with a
    note on stderr) and overwritten by the first new one.
    """

    def __init__(
        self, directory: str | Path, key: str, *, label: str = "training", describe: dict[str, Any] | None = None
    ):
        self.directory = Path(directory)
        self.key = key
        self.label = label
        self.describe = describe
        self.path = self.directory / CHECKPOINT
        self._state = self._load()
        # The metrics of the completed epochs, in order (restored ones first); `replay` logs the restored ones.
        self.restored_history: list[dict[str, float]] = list(self._state["history"]) if self._state else []
        self.history = list(self.restored_history)

    @property
    def epochs_done(self) -> int:
        """Epochs completed in the checkpoint found at construction (0 without one)."""
        return self._state["epoch"] if self._state else 0

    def _load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- a half-written or foreign file: start over
            print(f"{self.label}: ignoring unreadable resume checkpoint {self.path} ({exc})", file=sys.stderr)
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("key") != self.key:
            print(
                f"{self.label}: ignoring resume checkpoint {self.path}: written for another configuration",
                file=sys.stderr,
            )
            return None
        return payload

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader) -> int:
        """Load the checkpoint into `model`, `optimizer`, the global generators and `loader`'s generators;
        return the first epoch to run (1 without a checkpoint). Call after moving the model to its device
        and building the optimizer, right before the first epoch."""
        state = self._state
        if state is None:
            return 1
        try:
            model.load_state_dict(state["model"], strict=True)
            optimizer.load_state_dict(state["optimizer"])
            generators = loader_generators(loader)
            if set(generators) != set(state["loader"]):
                raise ResumeError(
                    f"the loader's generators ({sorted(generators)}) differ from the saved ones "
                    f"({sorted(state['loader'])})"
                )
            for name, generator in generators.items():
                generator.set_state(state["loader"][name])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(
                f"{self.path}: cannot resume from this checkpoint ({exc}); delete {self.directory} to start over"
            ) from exc
        set_rng_state(state["rng"])
        return state["epoch"] + 1

    def save(
        self,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Atomically write the state after `epoch` (1-based) completed, `metrics` being its figures."""
        self.history = self.history[: epoch - 1] + [dict(metrics or {})]
        payload = {
            "format": FORMAT,
            "key": self.key,
            "epoch": epoch,
            "history": self.history,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "loader": {name: g.get_state() for name, g in loader_generators(loader).items()},
            "rng": rng_state(),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        if self.describe is not None and not (self.directory / "key.json").is_file():
            write_text(
                self.directory / "key.json",
                json.dumps({"key": self.key, **self.describe}, indent=2, sort_keys=True, default=str) + "\n",
            )
        write_bytes(self.path, buf.getvalue())

    def replay(self, live) -> None:
        """Log the restored epochs' metrics to a fresh DVCLive `live` exactly as the stages' `on_epoch` did
        (one log_metric per entry, in order, then next_step), so its files match an uninterrupted run's."""
        for metrics in self.restored_history:
            for name, value in metrics.items():
                live.log_metric(name, value)
            live.next_step()

    def clear(self) -> None:
        """Remove the checkpoint folder, then the stage's folder and data/resume/ if that left them empty."""
        shutil.rmtree(self.directory, ignore_errors=True)
        for parent in (self.directory.parent, self.directory.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break


# ----------------------------------------------------------------------------------------------------
# The stages' key


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_digests(stage: str) -> dict[str, str]:
    """sha256 of every source file of the stage's code deps (no bytecode caches, like .dvcignore)."""
    out = {}
    for dep in CODE_DEPS[stage]:
        root = PACKAGE / dep
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" not in path.parts and path.suffix != ".pyc":
                out[path.relative_to(PACKAGE).as_posix()] = sha256_file(path)
    return out


def key_material(
    stage: str, params, device: torch.device, inputs: Iterable[str | Path] = (), extra: dict | None = None
) -> dict[str, Any]:
    """Everything that determines the training of `stage` ("baseline" or "finetune") under `params`; `extra`:
    what else tells this run from its siblings (a baseline replicate's seed)."""
    if stage not in CODE_DEPS:
        raise ValueError(f"stage: '{stage}' is not a training stage; choose one of: {', '.join(CODE_DEPS)}")
    prepared = params.prepared_dir()
    files = [prepared / "dataset.json", prepared / "images.csv", *map(Path, inputs)]
    device = torch.device(device)
    return {
        "format": FORMAT,
        "stage": stage,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dataset": params.dataset,
        "data": dataclasses.asdict(params.data),
        "backbone": params.backbone,
        "model": dataclasses.asdict(params.model),
        "seed": params.seed,
        "params": dataclasses.asdict(getattr(params, stage)),
        "lr": params.baseline_lr if stage == "baseline" else params.finetune_lr,
        "inputs": {str(p): sha256_file(p) if p.is_file() else None for p in files},
        "code": code_digests(stage),
        "extra": extra or {},
    }


def for_stage(
    stage: str,
    params,
    device: torch.device,
    inputs: Iterable[str | Path] = (),
    root: str | Path = RESUME_ROOT,
    extra: dict | None = None,
) -> EpochCheckpoints:
    """The checkpoints of `stage` for this configuration; prints one line when a checkpoint is found."""
    material = key_material(stage, params, device, inputs, extra)
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    checkpoints = EpochCheckpoints(Path(root) / stage / key[:16], key, label=stage, describe=material)
    done, total = checkpoints.epochs_done, getattr(params, stage).epochs
    if done:
        where = f"{'epoch 1' if done == 1 else f'epochs 1-{done}'} restored from {checkpoints.directory}"
        if done < total:
            print(f"{stage}: resuming from epoch {done + 1} of {total} ({where})", flush=True)
        else:
            print(f"{stage}: all {total} epochs done, resuming after training ({where})", flush=True)
    return checkpoints
