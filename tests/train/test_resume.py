"""Resumable training (pipeline/train/resume.py): a run interrupted mid-epoch and resumed from its last
end-of-epoch checkpoint ends bit-identical to an uninterrupted one, in the loops and in the real stages.

The interruptions use torch's global optimizer step hook, so no test-only code lives in the pipeline: in
process it raises after N optimizer steps; in the end-to-end test a small driver (DRIVER below) registers
a hook that SIGKILLs its own process after N steps of the stage named `stage@N`.
"""

import os
import random
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import Dataset

from pipeline.data.images import make_loader
from pipeline.models.dual import DualBranchNet, ModelSpec
from pipeline.params import deep_merge, validate
from pipeline.train.loops import finetune_sigmoid_head, train_baseline
from pipeline.train.resume import EpochCheckpoints, for_stage
from tests.project import copy_project, digests

ROOT = Path(__file__).resolve().parents[2]
K = 3
N = 24
BATCH = 8
STEPS_PER_EPOCH = N // BATCH
CPU = torch.device("cpu")


class Augmented(Dataset):
    """Toy images with augmentation drawn from torch's, numpy's and Python's global generators (in the main
    process without workers, from the worker's generators seeded by the loader otherwise)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(N) % K
        self.x = torch.randn(N, 3, 32, 32, generator=g) * 0.5
        self.x[:, 0] += (self.y == 0).float()[:, None, None]

    def __len__(self):
        return N

    def __getitem__(self, i):
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        x = x * float(1 + 0.1 * np.random.rand()) + 0.1 * random.random()
        return x, self.y[i]


class Interrupted(Exception):
    pass


@contextmanager
def interrupt_after(steps: int):
    """Raise Interrupted from the optimizer step number `steps` (a kill in the middle of an epoch)."""
    count = 0

    def hook(optimizer, args, kwargs):
        nonlocal count
        count += 1
        if count == steps:
            raise Interrupted

    handle = register_optimizer_step_post_hook(hook)
    try:
        with pytest.raises(Interrupted):
            yield
    finally:
        handle.remove()


def seed(value: int) -> None:
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def model(init_seed: int, head2: bool = False) -> DualBranchNet:
    torch.manual_seed(init_seed)
    net = DualBranchNet(ModelSpec("resnet10t", K, 32))
    if head2:
        net.add_sigmoid_head("random", generator=torch.Generator().manual_seed(init_seed))
    return net


def loader(workers: int = 0):
    return make_loader(Augmented(), batch_size=BATCH, train=True, seed=7, workers=workers)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def train_b(net, checkpoints=None, log=None, workers=0):
    train_baseline(
        net,
        loader(workers),
        CPU,
        epochs=3,
        lr=0.05,
        lr_classifier_ratio=2.0,
        lr_decay_every=2,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        on_epoch=None if log is None else lambda e, m: log.append((e, m)),
        checkpoints=checkpoints,
    )


def train_f(net, bn_mode, checkpoints=None, log=None):
    finetune_sigmoid_head(
        net,
        loader(),
        CPU,
        epochs=3,
        lr=0.1,
        lr_decay_every=2,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        bn_mode=bn_mode,
        on_epoch=None if log is None else lambda e, m: log.append((e, m)),
        checkpoints=checkpoints,
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_baseline_resumed_after_two_epochs_is_bit_identical(tmp_path, single_thread, workers):
    seed(0)
    straight, straight_log = model(0), []
    train_b(straight, log=straight_log, workers=workers)

    seed(0)
    first = model(0)
    with interrupt_after(2 * STEPS_PER_EPOCH + 1):  # in epoch 3, after its first step
        train_b(first, EpochCheckpoints(tmp_path, "key"), workers=workers)

    seed(123)  # a new process: other global generator states, another init, a fresh loader
    resumed, resumed_log = model(1), []
    checkpoints = EpochCheckpoints(tmp_path, "key")
    assert checkpoints.epochs_done == 2
    train_b(resumed, checkpoints, resumed_log, workers=workers)
    assert_same_state(straight, resumed)
    assert [e for e, _ in resumed_log] == [3]
    assert checkpoints.restored_history == [m for _, m in straight_log[:2]]
    assert checkpoints.history == [m for _, m in straight_log]  # bit-equal floats, in the same order
    assert checkpoints.epochs_done == 2 and EpochCheckpoints(tmp_path, "key").epochs_done == 3


@pytest.mark.parametrize("bn_mode", ["eval", "batch_stats"])
def test_finetune_resumed_after_two_epochs_is_bit_identical(tmp_path, single_thread, bn_mode):
    seed(0)
    straight, straight_log = model(0, head2=True), []
    train_f(straight, bn_mode, log=straight_log)

    seed(0)
    first = model(0, head2=True)
    with interrupt_after(2 * STEPS_PER_EPOCH + 2):
        train_f(first, bn_mode, EpochCheckpoints(tmp_path, "key"))
    assert all(p.requires_grad for p in first.parameters())  # the loop's cleanup ran

    seed(5)
    resumed, resumed_log = model(0, head2=True), []  # the stage reloads dual.pt: same trunk, initial head2
    checkpoints = EpochCheckpoints(tmp_path, "key")
    train_f(resumed, bn_mode, checkpoints, resumed_log)
    assert_same_state(straight, resumed)
    assert checkpoints.history == [m for _, m in straight_log]


def test_resuming_after_the_last_epoch_runs_no_epoch(tmp_path, single_thread):
    seed(0)
    done = model(0)
    train_b(done, EpochCheckpoints(tmp_path, "key"))
    again, log = model(1), []
    train_b(again, EpochCheckpoints(tmp_path, "key"), log)
    assert log == []
    assert_same_state(done, again)


def test_checkpoint_of_another_key_or_unreadable_is_ignored(tmp_path, single_thread, capsys):
    seed(0)
    with interrupt_after(STEPS_PER_EPOCH + 1):
        train_b(model(0), EpochCheckpoints(tmp_path, "old"))
    assert EpochCheckpoints(tmp_path, "old").epochs_done == 1

    fresh = model(1)
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    stale = EpochCheckpoints(tmp_path, "new")  # same folder, another configuration
    assert stale.epochs_done == 0 and stale.restored_history == []
    assert "written for another configuration" in capsys.readouterr().err
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    assert stale.restore(fresh, optimizer, loader()) == 1
    assert all(torch.equal(v, initial[k]) for k, v in fresh.state_dict().items())

    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")
    assert EpochCheckpoints(tmp_path, "old").epochs_done == 0
    assert "unreadable resume checkpoint" in capsys.readouterr().err


def smoke_params(**changes):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = data
        for part in path:
            node = node[part]
        node[last] = value
    return validate(data)


def test_stage_key_covers_params_inputs_and_device_but_not_unrelated_params(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = smoke_params()
    prepared = params.prepared_dir()
    prepared.mkdir(parents=True)
    (prepared / "dataset.json").write_text("{}")
    (prepared / "images.csv").write_text("split,image_id,label,width,height\n")
    dual = Path("data/models/dual.pt")
    dual.parent.mkdir(parents=True)
    dual.write_bytes(b"weights")

    def folder(stage="baseline", p=params, device=CPU):
        return for_stage(stage, p, device, inputs=[dual] if stage == "finetune" else []).directory

    base = folder()
    assert base.parent == Path("data/resume/baseline") and len(base.name) == 16
    assert folder() == base
    assert folder(p=smoke_params(**{"evaluate.protocols": "none", "cams.dtype": "float16"})) == base
    assert folder(p=smoke_params(**{"baseline.lr": 0.123})) != base
    assert folder(p=smoke_params(**{"baseline.epochs": 4})) != base
    assert folder(p=smoke_params(seed=1)) != base
    assert folder(device=torch.device("meta")) != base
    (prepared / "images.csv").write_text("split,image_id,label,width,height\ntrain,a.png,0,4,4\n")
    assert folder() != base

    tuned = folder("finetune")
    assert folder("finetune", p=smoke_params(**{"baseline.lr": 0.123})) == tuned  # not a finetune param
    assert folder("finetune", p=smoke_params(**{"finetune.bn_mode": "batch_stats"})) != tuned
    dual.write_bytes(b"other weights")
    assert folder("finetune") != tuned

    # A checkpoint saved for one configuration is not found by another, and a found one is announced.
    seed(0)
    with interrupt_after(STEPS_PER_EPOCH + 1):
        train_b(model(0), for_stage("baseline", params, CPU))
    capsys.readouterr()
    assert for_stage("baseline", smoke_params(**{"baseline.lr": 0.123}), CPU).epochs_done == 0
    found = for_stage("baseline", params, CPU)
    assert found.epochs_done == 1
    epochs = params.baseline.epochs
    assert capsys.readouterr().out == (
        f"baseline: resuming from epoch 2 of {epochs} (epoch 1 restored from {found.directory})\n"
    )
    assert (found.directory / "key.json").is_file()
    found.clear()
    assert not Path("data/resume").exists()


# ----------------------------------------------------------------------------------------------------
# End to end: the real stage scripts, SIGKILLed mid-epoch and rerun

DRIVER = r"""
import os, runpy, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook

def kill_after(steps):
    count = 0
    def hook(optimizer, args, kwargs):
        nonlocal count
        count += 1
        if count == steps:
            os.kill(os.getpid(), signal.SIGKILL)
    register_optimizer_step_post_hook(hook)

for arg in sys.argv[1:]:  # stage or stage@N: SIGKILL this process after N optimizer steps of that stage
    stage, _, steps = arg.partition("@")
    if steps:
        kill_after(int(steps))
    # the stage's own command line, as dvc.yaml gives it for the first model (baseline@0, <stage>@0-0)
    sys.argv = [stage] + {"baseline": ["0"], "clone_head": ["0", "0"], "finetune": ["0", "0"]}.get(stage, [])
    runpy.run_module(f"pipeline.stages.{stage}", run_name="__main__")
"""


def stages(repo: Path, *names: str, killed: bool = False) -> str:
    # One thread: the smoke sizes gain nothing from more, and a busy machine loses much (the thread count is
    # part of the resume key, so every run of the test must use the same).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *names], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    expected = -9 if killed else 0
    assert proc.returncode == expected, f"{names}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


OUTPUTS = ("data/models", "reports/baseline", "reports/finetune")


def test_killed_stages_resume_to_the_uninterrupted_bytes(tmp_path):
    """download .. finetune uninterrupted (the reference), then again with baseline and finetune each
    SIGKILLed in the middle of epoch 2 of 3 and rerun: the models and DVCLive files are the same bytes."""
    repo = tmp_path / "repo"
    copy_project(repo)
    # `python -m pipeline.params apply configs/smoke.yaml`, then 3 epochs each, in process
    p = deep_merge(
        yaml.safe_load((repo / "params.yaml").read_text()), yaml.safe_load((repo / "configs/smoke.yaml").read_text())
    )
    # the driver runs the stages in one process, torch loaded before the training stages could pin their CPU
    # kernels: the machine's own (cpu.kernels: native; the pin is tested in tests/train/test_cpu_repro.py)
    p = deep_merge(
        p, {"baseline": {"epochs": 3, "replicates": [0]}, "finetune": {"epochs": 3}, "cpu": {"kernels": "native"}}
    )
    validate(p)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # what the `validate` stage does: the stages read the validated params from data/params.json
    subprocess.run([sys.executable, "-m", "pipeline.params", "validate"], cwd=repo, check=True, capture_output=True)
    synth, batch = p["datasets"]["synthbirds"], p["backbones"][p["backbone"]]["batch_size"]
    steps = -(-synth["num_classes"] * synth["train_per_class"] // batch)  # optimizer steps per epoch
    assert steps >= 2
    mid_epoch_2 = steps + 1

    stages(repo, "download", "preprocess", "baseline", "clone_head", "finetune")
    reference = digests(repo, *OUTPUTS)
    assert len(reference) > 10 and not (repo / "data/resume").exists()
    for rel in OUTPUTS:  # what DVC removes before rerunning the stages
        path = repo / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    stages(repo, f"baseline@{mid_epoch_2}", killed=True)
    assert len(list((repo / "data/resume/baseline").glob("*/checkpoint.pt"))) == 1
    assert not (repo / "data/models/baseline_0/baseline.pt").exists()
    assert (repo / "reports/baseline/baseline_0/plots/metrics/train/loss.tsv").read_text().count(
        "\n"
    ) == 2  # header, epoch 1

    out = stages(repo, "baseline", "clone_head", f"finetune@{mid_epoch_2}", killed=True)
    assert "baseline: resuming from epoch 2 of 3 (epoch 1 restored from data/resume/baseline/" in out
    assert "baseline epoch 1:" not in out and "baseline epoch 3:" in out
    train_images = synth["num_classes"] * synth["train_per_class"]
    assert f"baseline: {2 * train_images:,} images in " in out  # the throughput line counts epochs 2-3 only
    assert not (repo / "data/resume/baseline").exists()
    assert len(list((repo / "data/resume/finetune").glob("*/checkpoint.pt"))) == 1

    out = stages(repo, "finetune")
    assert "finetune: resuming from epoch 2 of 3 (epoch 1 restored from data/resume/finetune/" in out
    assert f"finetune: {2 * train_images:,} images in " in out
    assert not (repo / "data/resume").exists()
    assert digests(repo, *OUTPUTS) == reference
