"""`baseline.checkpoint` through the real baseline stage (issue 14.3): the project's own baseline.pt under
`dvc repro` (DVC removes the stage's outputs before running it: the file is read from the DVC cache), a
timm state dict, the official layouts of both families, and a mismatch that names what the file holds.
Every import writes the stage's declared outputs (the checkpoint, DVCLive metrics and plots)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.models.convert import ours_to_official
from pipeline.models.dual import load_checkpoint
from tests.project import copy_project

ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "DVC_NO_ANALYTICS": "1",
    "OMP_NUM_THREADS": "1",
}


def run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(repo: Path, **changes) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = params
        for part in path:
            node = node[part]
        node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # what the `validate` stage does: the stages read the validated params from data/params.json
    run([sys.executable, "-m", "pipeline.params", "validate"], repo)


def stage(repo: Path, check=True):
    # dvc.yaml's command for baseline@0 (the replicate index, as `dvc repro` passes it)
    return run([sys.executable, "-m", "pipeline.stages.baseline", "0"], repo, check=check)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dest = copy_project(tmp_path_factory.mktemp("repo"))
    run(["git", "init", "-q"], dest)
    run([sys.executable, "-m", "pipeline.params", "apply", "configs/smoke.yaml"], dest)
    set_params(dest, **{"baseline.epochs": 1, "baseline.replicates": [0]})
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], dest)
    run(["dvc", "repro", "baseline"], dest)
    return dest


def state_of(path: Path) -> dict:
    return load_checkpoint(path)[0].state_dict()


def test_own_baseline_pt_under_dvc_repro(repo):
    ckpt = repo / "data/models/baseline_0/baseline.pt"
    trained = ckpt.read_bytes()
    set_params(repo, **{"baseline.checkpoint": "data/models/baseline_0/baseline.pt"})
    proc = run(["dvc", "repro", "baseline"], repo)
    assert "read from the DVC cache" in proc.stdout
    assert ckpt.read_bytes() == trained  # the same model, the same test Top-1: the same bytes
    assert (repo / "reports/baseline/baseline_0/plots/metrics/test/top1_cls.tsv").is_file()
    assert '"imported": 1' in (repo / "reports/baseline/baseline_0/metrics.json").read_text()
    set_params(repo, **{"baseline.checkpoint": None})
    run(["dvc", "repro", "baseline"], repo)  # back: restored from the run-cache
    assert ckpt.read_bytes() == trained


def test_timm_state_dict_and_a_mismatch(repo, tmp_path):
    model, _ = load_checkpoint(repo / "data/models/baseline_0/baseline.pt")
    timm_sd = ours_to_official(model)  # timm's own keys: body.* -> conv1.0.weight ..., head -> fc
    assert "fc.weight" in timm_sd and "conv1.0.weight" in timm_sd
    torch.save(timm_sd, tmp_path / "resnet10t.pth")
    set_params(repo, **{"baseline.checkpoint": str(tmp_path / "resnet10t.pth")})
    proc = stage(repo)
    assert "timm resnet10t layout" in proc.stdout
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in state_of(repo / "data/models/baseline_0/baseline.pt").items())

    import timm

    torch.save(timm.create_model("resnet18", num_classes=4).state_dict(), tmp_path / "resnet18.pth")
    set_params(repo, **{"baseline.checkpoint": str(tmp_path / "resnet18.pth")})
    proc = stage(repo, check=False)
    assert proc.returncode == 1
    assert (
        "holds a resnet18 network (cam family, 4 classes), but the params ask for backbone 'resnet10t'" in proc.stderr
    )
    assert proc.stderr.strip().endswith("set backbone: resnet18")


@pytest.mark.parametrize("family", ["cam", "grad"])
def test_official_resnet50_checkpoint_of_either_family(repo, tmp_path, family):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(num_classes=4)  # the official ResNet50 keys (both families): conv1 ... layer4, fc; plus fc2
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    sd["module.fc2.weight"], sd["module.fc2.bias"] = torch.zeros(4, 2048), torch.zeros(4)
    torch.save({"architecture": "resnet50", "epoch": 3, "state_dict": sd}, tmp_path / "last_checkpoint.pth.tar")
    set_params(
        repo,
        **{
            "baseline.checkpoint": str(tmp_path / "last_checkpoint.pth.tar"),
            "backbone": "resnet50",
            "family": family,
            "backbones.resnet50.input_size": 48,
        },
    )
    try:
        proc = stage(repo)
    finally:
        set_params(repo, **{"backbone": "resnet10t", "family": "cam", "baseline.checkpoint": None})
    assert "official resnet50 layout" in proc.stdout and "not loaded: fc2.bias, fc2.weight" in proc.stdout
    got = state_of(repo / "data/models/baseline_0/baseline.pt")
    assert torch.equal(got["head.weight"], net.fc.weight) and torch.equal(
        got["trunk.layer4.2.conv3.weight"], net.layer4[2].conv3.weight
    )
    assert load_checkpoint(repo / "data/models/baseline_0/baseline.pt")[0].spec.family == family
