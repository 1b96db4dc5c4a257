"""`make exp-table`: the curated experiment comparison (issue 14.6), on a throw-away git + DVC repository.

The repository has the project's params.yaml, its committed metrics files (the same ones dvc.yaml declares),
the project's `validate` stage (data/params.json) and one fake stage that rewrites the metrics from the params
(Top-1 Cls from the backbone) and records the data's size and the params digest as the evaluate stage does
(pipeline/stages/evaluate.py), so `dvc exp show` has the project's real set of columns; two experiments run
with `dvc exp run -S ...`, one of them on a 4-class ILSVRC subset. Last, a `dvc exp run` fails in a fake
training stage before evaluate: its params stay in params.yaml, reports/ do not change, and both tables leave
the workspace out.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cams import variants
from pipeline.report.paper_table import STALE
from tests.project import make_dvc_repo
from tests.report.test_compare import BIN, ROOT, VENV, git, sh, table_rows

METRICS = (
    "reports/metrics.json",
    "reports/sign.json",
    "reports/finetune/baseline_0/replicate_0/classification.json",
    "reports/baseline/baseline_0/metrics.json",
    "reports/finetune/baseline_0/replicate_0/metrics.json",
)
STAGE = """\
import json, shutil, yaml
from pathlib import Path
from pipeline.params import load_params, resolved  # the copied pipeline/
from pipeline.stages.evaluate import dataset_block, digest_keys, params_digest
params = load_params()
for rel in @METRICS@:
    Path(rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path("committed") / rel, rel)
metrics = json.load(open("reports/metrics.json"))
metrics["top1_cls"] = float(len(yaml.safe_load(open("params.yaml"))["backbone"]))
metrics["dataset"] = dataset_block(params.dataset, params.num_classes, 50 * params.num_classes)
metrics["params_digest"] = params_digest(resolved(params), digest_keys())
json.dump(metrics, open("reports/metrics.json", "w"), indent=2, sort_keys=True)
""".replace("@METRICS@", repr(METRICS))
TRAIN = """\
import json, sys
from pathlib import Path
finetune = json.load(open("data/params.json"))["finetune"]
if finetune["epochs"] == 99:
    sys.exit("train.py: fails on purpose (a failed experiment)")
Path("data/model.txt").write_text(json.dumps(finetune))
"""

# `make exp-table` (pipeline.report.exp_table): the params the rows shown differ in (the two experiments change
# backbone, family and the dataset with its class count), then the headline numbers with the registry's labels;
# `full dataset` comes with the first run that has it (DVC drops SynthBirds' null).
LABELS = [variants.get(v).label for v in variants.names()]
HEAD = [
    "Experiment",
    "backbone",
    "dataset",
    "datasets.ilsvrc.num_classes",
    "family",
    "Top-1 Cls",
    "classes",
    "test images",
    "full dataset",
    *(f"{label} MaxBoxAccV2 {b}" for label in LABELS for b in ("softmax", "sigmoid")),
    f"{LABELS[0]} Top-1 Loc softmax",
    f"{LABELS[0]} Top-1 Loc sigmoid",
    f"{LABELS[0]} PxAP softmax",
    f"{LABELS[0]} PxAP sigmoid",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_dvc_repo(tmp_path_factory, "exp_table")
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if "family" not in params:  # the model-family param (issue 11), after `backbone`, whether or not main has it yet
        params = {
            k: v
            for key, value in params.items()
            for k, v in ([(key, value), ("family", "cam")] if key == "backbone" else [(key, value)])
        }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for rel in METRICS:
        (repo / "committed" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / "committed" / rel)
    (repo / "stage.py").write_text(STAGE)
    (repo / "train.py").write_text(TRAIN)
    metrics = "".join(f"      - {rel}:\n          cache: false\n" for rel in METRICS)
    (repo / "dvc.yaml").write_text(
        f"stages:\n  validate:\n    cmd: {sys.executable} -m pipeline.params validate\n    always_changed: true\n"
        "    params:\n      - params.yaml:\n    outs:\n      - data/params.json\n"
        f"  train:\n    cmd: {sys.executable} train.py\n    deps: [train.py]\n"
        "    params:\n      - data/params.json: [finetune]\n    outs:\n      - data/model.txt\n"
        f"  evaluate:\n    cmd: {sys.executable} stage.py\n    deps: [stage.py, data/model.txt]\n"
        "    params:\n      - data/params.json: [dataset, data, backbone, family, finetune]\n"
        "    metrics:\n" + metrics
    )
    (repo / ".gitignore").write_text("/build/\n__pycache__/\n")
    sh([str(BIN / "dvc"), "repro", "-q"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the project's params and metrics")
    for overrides in (
        ["backbone=vgg16", "family=grad", "dataset=ilsvrc", "datasets.ilsvrc.num_classes=4"],
        ["backbone=inception", "family=cam"],
    ):
        git(repo, "reset", "-q", "--hard")  # each from main's params (`dvc exp run` applied the last one)
        sh([str(BIN / "dvc"), "exp", "run", "-q", *(a for o in overrides for a in ("-S", o))], repo)
    return repo


def test_the_full_comparison_is_unreadable(repo):
    header = table_rows(sh([str(BIN / "dvc"), "exp", "show", "--md"], repo).stdout)[0]
    assert len(header) > 400  # the number this target exists for (about 520 in the project)


def test_make_exp_table_shows_the_params_that_differ_and_the_headline_numbers(repo):
    proc = sh(["make", "-s", "exp-table", f"VENV={VENV}"], repo)
    rows = table_rows(proc.stdout)
    assert rows[0] == HEAD
    assert len(rows) == 2 + 4  # header, rule, workspace, main, two experiments
    col = HEAD.index
    assert rows[2][0] == "workspace" and rows[2][col("backbone")] == "inception"  # `dvc exp run` applied the last one
    backbones = sorted(row[col("backbone")] for row in rows[2:])
    assert backbones == ["inception", "inception", "resnet10t", "vgg16"]
    by_backbone = {row[col("backbone")]: row for row in rows[3:]}
    assert by_backbone["vgg16"][col("Top-1 Cls")] == "5.00" and by_backbone["vgg16"][col("family")] == "grad"
    # the data each run used: a 4-class ILSVRC subset (not the full dataset), SynthBirds (no full size: -)
    sizes = {
        row[col("backbone")]: [row[col(k)] for k in ("classes", "test images", "full dataset")] for row in rows[2:]
    }
    assert sizes == {"vgg16": ["4", "200", "false"], "inception": ["10", "500", "-"], "resnet10t": ["10", "500", "-"]}
    assert proc.stderr == ""  # the workspace's reports/ were made from its params.yaml: it is shown
    committed = json.loads((ROOT / "reports/metrics.json").read_text())
    first = variants.names()[0]
    assert float(by_backbone["vgg16"][col(f"{LABELS[0]} PxAP softmax")]) == pytest.approx(
        committed[first]["softmax"]["pxap"], abs=5e-3
    )


def test_a_failed_experiment_leaves_the_workspace_out_of_both_tables(repo):
    """The user's case: `dvc exp run -S ...` fails, params.yaml keeps the new values, reports/ the old ones."""
    params = repo / "params.yaml"
    before = params.read_bytes()
    try:
        proc = sh([str(BIN / "dvc"), "exp", "run", "-q", "-S", "finetune.epochs=99"], repo, check=False)
        assert proc.returncode != 0 and "fails on purpose" in proc.stdout + proc.stderr
        assert (repo / "reports/metrics.json").is_file()  # evaluate did not run: the last experiment's reports
        assert yaml.safe_load(params.read_text())["finetune"]["epochs"] == 99  # left applied
        table = sh(["make", "-s", "exp-table", f"VENV={VENV}"], repo)
        rows = table_rows(table.stdout)
        assert rows[0] == HEAD and len(rows) == 2 + 3  # main and the two experiments, no workspace
        assert not any("workspace" in row[0] for row in rows)
        assert table.stderr == STALE + "\n"
        paper = sh(["make", "-s", "paper-table", f"VENV={VENV}"], repo)
        assert "workspace" not in paper.stdout and paper.stderr == STALE + "\n"
        assert "## ilsvrc (subset: 4 of 1,000 classes, 200 of 50,000 test images; " in paper.stdout
    finally:
        params.write_bytes(before)
    assert "workspace" in table_rows(sh(["make", "-s", "exp-table", f"VENV={VENV}"], repo).stdout)[2][0]
