"""Several processes through torchrun (pipeline/dist.py), on the CPU: gloo, 2 processes, smoke params.

cams and evaluate on 2 processes must write the same bytes as on 1; baseline and finetune must run under DDP
and give a loadable model (not the same bytes: the ranks' shuffle, BatchNorm batches and gradient sums
differ from one process). The single-process stages run once, in one Python process, for every test.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import dist
from pipeline.params import ParamsError, validate
from tests.project import copy_project, digests

ROOT = Path(__file__).resolve().parents[1]
# Several batches per split, a ragged last one, an odd batch count and shards that straddle batches and ranks.
# The driver runs several stages in one process, so torch is loaded before the training stages could pin their
# CPU kernels (pipeline/train/cpu_repro.py): they run with the machine's own (cpu.kernels: native).
OVERRIDES = {
    "baseline": {"epochs": 1, "replicates": [0]},
    "finetune": {"epochs": 1, "replicates": [0]},
    "cams": {"batch_size": 6, "shard_size": 5},
    "cpu": {"kernels": "native"},
}
# dvc.yaml's arguments of each stage for the first model (baseline@0, <stage>@0-0)
ARGS = {"baseline": ["0"], "clone_head": ["0", "0"], "finetune": ["0", "0"], "cams": ["0", "0"]}
DRIVER = (
    "import runpy, sys\nARGS = " + repr(ARGS) + "\nfor s in sys.argv[1:]:\n    sys.argv = [s] + ARGS.get(s, [])\n"
    "    runpy.run_module(f'pipeline.stages.{s}', run_name='__main__')"
)
EVALUATE_OUTPUTS = ("reports/metrics.json", "reports/evaluation.json", "reports/plots")


def env() -> dict[str, str]:
    # One intra-op thread in every process, one process or two: CPU float results depend on the thread count.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stage(repo: Path, name: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", f"pipeline.stages.{name}", *ARGS.get(name, [])], repo, check)


def set_params(repo: Path, **sections) -> None:
    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        data[section].update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def validate_params(repo: Path) -> None:
    """What the `validate` stage does: the stages read the validated params from data/params.json."""
    run([sys.executable, "-m", "pipeline.params", "validate"], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project on the smoke params, every stage up to evaluate run once on 1 process."""
    dest = tmp_path_factory.mktemp("dist") / "repo"
    copy_project(dest)
    run([sys.executable, "-m", "pipeline.params", "apply", "configs/smoke.yaml"], dest)
    set_params(dest, **OVERRIDES)
    validate_params(dest)
    run(
        [
            sys.executable,
            "-c",
            DRIVER,
            "download",
            "preprocess",
            "baseline",
            "clone_head",
            "finetune",
            "cams",
            "evaluate",
        ],
        dest,
    )
    set_params(dest, distributed={"nproc": 2, "backend": "auto"})
    validate_params(dest)
    return dest


def test_cams_and_evaluate_on_two_processes_write_the_same_bytes(repo, tmp_path):
    one = digests(repo, "data/cams", *EVALUATE_OUTPUTS)
    assert len([k for k in one if "/shard_" in k]) == 2 + 4  # val: 8 images, test: 16, 5 per shard
    work = tmp_path / "repo"  # the training test below reuses `repo`'s single-process models
    shutil.copytree(repo, work)
    for rel in ("data/cams", *EVALUATE_OUTPUTS):
        (shutil.rmtree if (work / rel).is_dir() else os.unlink)(work / rel)
    out = stage(work, "cams").stdout
    assert "cams: 2 processes (gloo) through torchrun" in out
    assert out.count("cams: test: 16 images") == 1  # rank 0 alone writes and reports
    stage(work, "evaluate")
    two = digests(work, "data/cams", *EVALUATE_OUTPUTS)
    metrics = {r: json.loads((r / "reports/metrics.json").read_text()) for r in (repo, work)}
    # the params digest names distributed.nproc (a declared key: training differs under DDP); all else is the same
    assert metrics[repo].pop("params_digest") != metrics[work].pop("params_digest")
    assert metrics[repo] == metrics[work]
    assert {k: v for k, v in two.items() if k != "reports/metrics.json"} == {
        k: v for k, v in one.items() if k != "reports/metrics.json"
    }


def test_baseline_and_finetune_train_with_ddp_on_two_processes(repo):
    from pipeline.models.dual import load_checkpoint

    out = stage(repo, "baseline").stdout
    assert "baseline: 2 processes (gloo) through torchrun" in out
    assert out.count("baseline epoch 1:") == 1 and out.count("Top-1 Cls on test") == 1
    model, extra = load_checkpoint(repo / "data/models/baseline_0/baseline.pt")
    assert extra["stage"] == "baseline" and model.head2 is None
    assert (repo / "reports/baseline/baseline_0/plots/metrics/train/loss.tsv").read_text().count(
        "\n"
    ) == 2  # header, epoch 1
    run([sys.executable, "-c", DRIVER, "clone_head"], repo)
    out = stage(repo, "finetune").stdout
    assert "finetune: 2 processes (gloo) through torchrun" in out
    model, extra = load_checkpoint(repo / "data/models/baseline_0/replicate_0/finetuned.pt")
    assert extra["stage"] == "finetune" and model.head2 is not None
    cls = yaml.safe_load((repo / "reports/finetune/baseline_0/replicate_0/classification.json").read_text())
    assert cls["softmax_branch_unchanged"] is True  # only the sigmoid head trained under DDP
    assert cls["trained_parameters"] == ["head2.weight", "head2.bias"]
    assert not (repo / "data/resume").exists() or not any((repo / "data/resume").rglob("*.pt"))


def test_a_failing_rank_fails_the_run(tmp_path):
    """Rank 1 exits 3 while rank 0 waits at a barrier: torchrun stops rank 0 and exits non-zero. (Both print
    first and meet at a barrier, so rank 0's line is out before rank 1 fails, however loaded the machine.)"""
    (tmp_path / "two_ranks.py").write_text(
        "from pipeline import dist\n"
        "dist.setup(2, 'auto', 'cpu')\n"
        "print(f'rank {dist.rank()} of {dist.world_size()}', flush=True)\n"
        "dist.barrier()\n"
        "if dist.rank() == 1:\n"
        "    raise SystemExit(3)\n"
        "dist.barrier()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "two_ranks"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env(), "PYTHONPATH": f"{tmp_path}:{ROOT}"},
    )
    assert "rank 1 of 2" in proc.stdout and "rank 0 of 2" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode != 0


def test_nproc_above_one_relaunches_under_torchrun_with_the_threads(monkeypatch):
    launched = {}

    class FakeTorchrun:
        def __init__(self, cmd, env):
            launched.update(cmd=cmd, env=env)

        def wait(self):
            return 5

    for name in ("LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dist.subprocess, "Popen", FakeTorchrun)
    monkeypatch.setattr(sys, "argv", ["cams.py", "1"])  # the stage's arguments (a replicate index) go along
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        dist.setup(3, "auto", "cpu", module="pipeline.stages.cams")
    assert exit_info.value.code == 5  # torchrun's status
    assert launched["cmd"] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=3",
        "-m",
        "pipeline.stages.cams",
        "1",
    ]
    assert launched["env"]["OMP_NUM_THREADS"] == str(torch.get_num_threads())
    assert signal.getsignal(signal.SIGTERM) == handler  # the forwarding handler is removed again
    dist.setup(1, "auto", "cpu", module="pipeline.stages.cams")  # one process: nothing happens
    assert not dist.active()


def test_single_process_helpers_are_the_identity():
    assert dist.gather_to({"a": 1}, 0) == [{"a": 1}]
    loader = torch.utils.data.DataLoader(list(range(7)), batch_size=3)
    assert list(
        dist.map_ordered(loader, list("abcdefg"), lambda ld, ids: zip(ids, (int(v) for b in ld for v in b)))
    ) == list(zip("abcdefg", range(7)))
    t = torch.ones(2)
    assert dist.reduce_sums(t, 3) == (t, 3)
    assert dist.batch_indices(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert dist.local_batch(32) == 32 and dist.is_main() and dist.world_size() == 1


def test_distributed_params_are_validated():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert validate(data).distributed.nproc == 1
    data["distributed"] = {"nproc": 0, "backend": "auto"}
    with pytest.raises(ParamsError, match="distributed.nproc: 0 is out of range"):
        validate(data)
    data["device"] = "cpu"
    data["distributed"] = {"nproc": 2, "backend": "nccl"}
    with pytest.raises(ParamsError, match="distributed.backend: 'nccl' needs CUDA"):
        validate(data)
