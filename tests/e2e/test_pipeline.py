"""End to end: the real `dvc repro` on the smoke configuration, in a temporary copy of the repository."""

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import project

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
# The slow group (`make test-slow`): tests that retrain or run whole experiments beyond the one shared repro.
slow = pytest.mark.slow


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return project.run(cmd, cwd, check, timeout=600)


def digest_tree(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def repo(smoke_copy) -> Path:
    """A fresh copy of the tracked project files, as a git repository, switched to the smoke params and
    reproduced (`dvc repro` once per session, tests/e2e/conftest.py; this module's own copy of it)."""
    return smoke_copy


def test_repro_writes_every_stage_output(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    synth = params["datasets"]["synthbirds"]
    raw = repo / "data/raw/synthbirds"
    for split, per_class in (("train", synth["train_per_class"]), ("test", synth["test_per_class"])):
        ids = (raw / "metadata" / split / "image_ids.txt").read_text().split()
        assert len(ids) == synth["num_classes"] * per_class
    prepared = repo / "data/prepared/synthbirds"
    info = json.loads((prepared / "dataset.json").read_text())
    assert info["eval_size"] == params["backbones"][params["backbone"]]["input_size"]
    assert info["counts"]["test"] == synth["num_classes"] * synth["test_per_class"]
    with open(prepared / "boxes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(info["counts"].values())  # one exact box per SynthBirds image
    assert all(0 <= int(r["ex0"]) <= int(r["ex1"]) < info["eval_size"] for r in rows)
    for name in ("baseline_0/baseline", "baseline_0/replicate_0/dual", "baseline_0/replicate_0/finetuned"):
        assert (repo / f"data/models/{name}.pt").stat().st_size > 1000
    cls = json.loads((repo / "reports/finetune/baseline_0/replicate_0/classification.json").read_text())
    assert cls["softmax_branch_unchanged"] is True
    assert cls["trained_parameters"] == ["head2.weight", "head2.bias"]
    baseline = json.loads((repo / "reports/baseline/baseline_0/metrics.json").read_text())
    assert baseline["test"]["top1_cls"] == pytest.approx(cls["top1_cls_softmax"])
    assert (repo / "reports/finetune/baseline_0/replicate_0/plots/metrics/train/bce.tsv").is_file()
    assert (repo / "dvc.lock").is_file()
    assert sorted(p.name for p in (repo / "data/cams/baseline_0/replicate_0").iterdir()) == ["test", "val"]
    manifest = json.loads((repo / "data/cams/baseline_0/replicate_0/test/manifest.json").read_text())
    assert manifest["images"] == info["counts"]["test"]
    assert manifest["variants"] == ["cam", "gradcam", "gradcampp", "xgradcam", "layercam"]
    assert manifest["branches"] == ["softmax", "sigmoid"]
    assert sum(s["images"] for s in manifest["shards"]) == manifest["images"]
    assert len(list((repo / "data/cams/baseline_0/replicate_0/test").glob("shard_*.npy"))) == len(manifest["shards"])
    assert manifest["targets"] == ["gt", "pred"]
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["top1_cls"] == pytest.approx(cls["top1_cls_softmax"])
    for variant in manifest["variants"]:
        for branch in manifest["branches"]:
            m = metrics[variant][branch]
            for key in ("maxboxacc_v2", "maxboxacc", "gt_known_loc", "top1_loc", "pxap", "avg_drop", "inc_conf"):
                assert 0.0 <= m[key] <= 100.0, (variant, branch, key)
            assert m["top1_loc"] <= m["gt_known_loc"]
    assert len(list((repo / "reports/plots/box_accuracy").glob("*.csv"))) == 10


def test_report_has_the_table_figures_and_sign_diagnostics(repo):
    readme = (repo / "reports/README.md").read_text()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for label in ("CAM", "Grad-CAM", "Grad-CAM++", "XGrad-CAM", "LayerCAM"):
        assert readme.count(f"| resnet10t | {label} |") == 3, label  # three tables, every variant in each
    cam = metrics["cam"]
    row = next(line for line in readme.splitlines() if line.startswith("| resnet10t | CAM | "))
    assert f"{cam['softmax']['top1_loc']:.2f}" in row and f"{cam['sigmoid']['top1_loc']:.2f}" in row
    with open(repo / "reports/results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["cam", "gradcam", "gradcampp", "xgradcam", "layercam"]
    assert float(rows[0]["maxboxacc_v2_delta"]) == pytest.approx(
        cam["sigmoid"]["maxboxacc_v2"] - cam["softmax"]["maxboxacc_v2"], abs=1e-3
    )
    summary = (repo / "reports/summary.md").read_text()  # the answer the project README renders
    first = next(line for line in summary.splitlines() if line.startswith("| CAM"))
    assert first.startswith("| CAM = Grad-CAM") and "XGrad-CAM" in first  # one map set: GAP-linear heads
    assert "2 model(s) (2 baseline(s))" in summary
    assert "| `official_symmetric` | " in summary
    assert "**Where the width comes from**" in readme  # then the levels table, one row per map set and metric
    assert "| CAM = Grad-CAM = XGrad-CAM | MaxBoxAccV2 | " in readme.split("**Where the width comes from**", 1)[1]
    sign = json.loads((repo / "reports/sign.json").read_text())
    assert set(sign) == set(manifest_variants(repo)) and set(sign["cam"]) == {"softmax", "sigmoid"}
    assert sign["layercam"]["softmax"]["neg_share_inside"] == 0.0  # LayerCAM has no negative part
    figures = sorted(p.name for p in (repo / "reports/figures").glob("*.png"))
    assert figures == sorted(
        [
            "forest.png",
            "threshold_curves.png",
            "pr_curves.png",
            "sign_diagnostics.png",
            *(f"gallery_{v}.png" for v in manifest_variants(repo)),
        ]
    )
    for name in figures:
        assert f"figures/{name}" in readme
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert {
        "reports/metrics.json",
        "reports/sign.json",
        "reports/finetune/baseline_0/replicate_0/classification.json",
    } <= set(files)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert {
        "box_accuracy_iou30",
        "box_accuracy_iou50",
        "box_accuracy_iou70",
        "pixel_precision_recall",
        "reports/figures/threshold_curves.png",
    } <= set(plots)


def manifest_variants(repo: Path) -> list[str]:
    return json.loads((repo / "data/cams/baseline_0/replicate_0/test/manifest.json").read_text())["variants"]


def test_second_repro_is_up_to_date_and_changes_no_byte(repo):
    before = digest_tree(repo / "data", repo / "reports")
    lock = (repo / "dvc.lock").read_text()
    proc = run(["dvc", "repro"], repo)
    # only the always_changed stages run (validate checks params.yaml, source fingerprints a real dataset's
    # files), to the same bytes
    assert proc.stdout.count("Running stage") == 2
    assert "Running stage 'validate'" in proc.stdout and "Running stage 'source'" in proc.stdout
    assert "Stage 'report' didn't change, skipping" in proc.stdout
    assert digest_tree(repo / "data", repo / "reports") == before
    assert (repo / "dvc.lock").read_text() == lock


def test_evaluation_option_reruns_only_evaluate_and_report(repo):
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    try:
        data = yaml.safe_load(original)
        data["evaluate"]["postprocess"] = "official"
        params_file.write_text(yaml.safe_dump(data, sort_keys=False))
        run(["dvc", "repro", "validate"], repo)  # the stages are keyed on the params it writes
        status = run(["dvc", "status", "--json"], repo).stdout
        # validate and source: always changed
        assert sorted(json.loads(status)) == ["evaluate", "report", "source", "validate"]
    finally:
        params_file.write_text(original)
        run(["dvc", "repro", "validate"], repo)


def test_bad_param_fails_fast_with_message(repo):
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    try:
        data = yaml.safe_load(original)
        data["finetune"]["lr"] = -1
        params_file.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = run(["dvc", "repro", "finetune"], repo, check=False)
        assert proc.returncode != 0
        assert "finetune.lr: -1.0 is out of range; valid: (0.0, 10.0]" in proc.stderr + proc.stdout
    finally:
        params_file.write_text(original)
    # validate failed before any other stage ran: nothing was removed, nothing reruns.
    assert "Running stage 'validate'" in proc.stdout and "Running stage 'finetune" not in proc.stdout
    restored = run(["dvc", "repro"], repo)
    assert "Stage 'finetune@0-0' didn't change, skipping" in restored.stdout
    assert restored.stdout.count("Running stage") == 2 and "Running stage 'validate'" in restored.stdout


@slow  # retrains both baselines and everything after them (a second full repro)
def test_going_back_to_a_configuration_restores_from_the_run_cache(repo):
    """Change baseline.epochs, reproduce, change it back: the training stages and cams come back from DVC's
    run-cache instead of retraining. evaluate and report rerun (DVC keeps no run-cache for a stage with an
    uncached output that is not a metric or plot, such as reports/README.md), to the same bytes."""
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    before = digest_tree(repo / "data", repo / "reports")
    try:
        data = yaml.safe_load(original)
        data["baseline"]["epochs"] = 1
        params_file.write_text(yaml.safe_dump(data, sort_keys=False))
        changed = run(["dvc", "repro"], repo)
        assert "Running stage 'baseline@0'" in changed.stdout and "Running stage 'baseline@1'" in changed.stdout
        assert digest_tree(repo / "data/models") != {k: v for k, v in before.items() if "/data/models/" in k}
    finally:
        params_file.write_text(original)
    back = run(["dvc", "repro"], repo)
    for stage in ("baseline@0", "baseline@1", "clone_head@0-0", "finetune@1-0", "cams@1-0"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
        assert f"Running stage '{stage}'" not in back.stdout
    assert digest_tree(repo / "data", repo / "reports") == before


def test_backbone_grid_queues_one_experiment_per_backbone(repo):
    """The README's one-liner queues vgg16, resnet50 and inception (removed again without running)."""
    run(["dvc", "exp", "run", "--queue", "-S", "backbone=vgg16,resnet50,inception"], repo)
    try:
        status = run(["dvc", "queue", "status"], repo).stdout
        assert status.count("Queued") == 3, status
        queued = run(["dvc", "exp", "show", "--json", "--param-deps"], repo).stdout
        for name in ("vgg16", "resnet50", "inception"):
            assert f'"backbone": "{name}"' in queued or f'"{name}"' in queued, name
    finally:
        run(["dvc", "queue", "remove", "--queued"], repo)
    assert "Queued" not in run(["dvc", "queue", "status"], repo).stdout


@slow  # two queued experiments, each evaluate + report, through two celery workers
def test_two_queue_workers_each_pinned_to_its_own_gpu(repo):
    """README's recipe: `CUDA_VISIBLE_DEVICES=<g> dvc queue start -j <g + 1>` per GPU g (-j N makes sure
    workers 1..N exist, so each call adds one worker, with that shell's GPU). Every stage prints the
    CUDA_VISIBLE_DEVICES it got, so each experiment's log names its worker's GPU."""
    import time

    run(["dvc", "exp", "run", "--queue", "-S", "evaluate.loc_threshold=0.25,0.3"], repo)

    def status() -> list[tuple[str, str]]:
        lines = run(["dvc", "queue", "status"], repo).stdout.splitlines()
        return [
            (line.split()[1], line.split()[-1])
            for line in lines[1:]
            if line.strip() and len(line.split()) >= 4 and not line.startswith("Worker")
        ]

    def start_worker(gpu: str, workers: int) -> None:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            "DVC_NO_ANALYTICS": "1",
            "CUDA_VISIBLE_DEVICES": gpu,
        }
        # no pipes: the worker it spawns would keep them open and block subprocess.run until it exits
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(workers)],
            cwd=repo,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    start_worker("0", 1)
    deadline = time.time() + 300
    while not any(s == "Running" for _, s in status()):  # worker 0 holds the first experiment...
        assert time.time() < deadline, status()
        time.sleep(1)
    start_worker("1", 2)  # ...so worker 2 takes the second
    while any(s in ("Queued", "Running") for _, s in status()):
        assert time.time() < deadline, status()
        time.sleep(2)
    tasks = status()
    assert len(tasks) == 2 and all(s == "Success" for _, s in tasks), tasks
    seen = set()
    for name, _ in tasks:
        log = run(["dvc", "queue", "logs", name], repo).stdout
        gpus = {
            line.rsplit("CUDA_VISIBLE_DEVICES=", 1)[1].strip()
            for line in log.splitlines()
            if "CUDA_VISIBLE_DEVICES=" in line
        }
        assert len(gpus) == 1, log  # every stage of one experiment ran on its worker's GPU
        seen |= gpus
    assert seen == {"0", "1"}
