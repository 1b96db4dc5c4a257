"""`make exp-table`: the curated experiment comparison (issue 14.6), on a throw-away git + DVC repository.

The repository has the project's params.yaml, its committed metrics files (the same ones dvc.yaml declares)
and one fake stage that rewrites them from the params (Top-1 Cls from the backbone), so `dvc exp show` has
the project's real set of columns; two experiments run with `dvc exp run -S ...`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.project import make_dvc_repo
from tests.report.test_compare import BIN, ROOT, VENV, git, sh, table_rows

METRICS = ("reports/metrics.json", "reports/sign.json", "reports/finetune/baseline_0/replicate_0/classification.json",
           "reports/baseline/baseline_0/metrics.json", "reports/finetune/baseline_0/replicate_0/metrics.json")
STAGE = """\
import json, shutil, yaml
from pathlib import Path
params = yaml.safe_load(open("params.yaml"))
for rel in %r:
    Path(rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path("committed") / rel, rel)
metrics = json.load(open("reports/metrics.json"))
metrics["top1_cls"] = float(len(params["backbone"]))
json.dump(metrics, open("reports/metrics.json", "w"), indent=2)
""" % (METRICS,)

CURATED = ["Experiment",
           "cam.sigmoid.maxboxacc_v2", "cam.sigmoid.pxap", "cam.sigmoid.top1_loc",
           "cam.softmax.maxboxacc_v2", "cam.softmax.pxap", "cam.softmax.top1_loc",
           "gradcam.sigmoid.maxboxacc_v2", "gradcam.softmax.maxboxacc_v2",
           "gradcampp.sigmoid.maxboxacc_v2", "gradcampp.softmax.maxboxacc_v2",
           "layercam.sigmoid.maxboxacc_v2", "layercam.softmax.maxboxacc_v2",
           "top1_cls",
           "xgradcam.sigmoid.maxboxacc_v2", "xgradcam.softmax.maxboxacc_v2",
           "params.yaml:dataset", "params.yaml:backbone", "params.yaml:family", "seed", "baseline.epochs",
           "finetune.head_init", "finetune.bn_mode", "finetune.epochs", "finetune.lr"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_dvc_repo(tmp_path_factory, "exp_table")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if "family" not in params:  # the model-family param (issue 11), after `backbone`, whether or not main has it yet
        params = {k: v for key, value in params.items()
                  for k, v in ([(key, value), ("family", "cam")] if key == "backbone" else [(key, value)])}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for rel in METRICS:
        (repo / "committed" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / "committed" / rel)
    (repo / "stage.py").write_text(STAGE)
    metrics = "".join(f"      - {rel}:\n          cache: false\n" for rel in METRICS)
    (repo / "dvc.yaml").write_text(f"stages:\n  evaluate:\n    cmd: {sys.executable} stage.py\n    deps: [stage.py]\n"
                                   "    params: [backbone, family]\n    metrics:\n" + metrics)
    (repo / ".gitignore").write_text("/build/\n")
    sh([str(BIN / "dvc"), "repro", "-q"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the project's params and metrics")
    for backbone, family in (("vgg16", "grad"), ("inception", "cam")):
        sh([str(BIN / "dvc"), "exp", "run", "-q", "-S", f"backbone={backbone}", "-S", f"family={family}"], repo)
    os.utime(repo / "requirements.txt", (0, 0))  # older than the venv's stamp: make installs nothing
    return repo


def test_the_full_comparison_is_unreadable(repo):
    header = table_rows(sh([str(BIN / "dvc"), "exp", "show", "--md"], repo).stdout)[0]
    assert len(header) > 400  # the number this target exists for (about 520 in the project)


def test_make_exp_table_prints_25_named_columns(repo):
    proc = sh(["make", "-s", "exp-table", f"VENV={VENV}"], repo)
    rows = table_rows(proc.stdout)
    assert rows[0] == CURATED
    assert len(rows) == 2 + 4  # header, rule, workspace, main, two experiments
    body = {row[0].split("[")[-1].rstrip("]").strip(): row for row in rows[2:]}
    col = CURATED.index
    assert body["workspace"][col("params.yaml:backbone")] == "inception"  # `dvc exp run` applied the last one
    backbones = sorted(row[col("params.yaml:backbone")] for row in rows[2:])
    assert backbones == ["inception", "inception", "resnet10t", "vgg16"]
    by_backbone = {row[col("params.yaml:backbone")]: row for row in rows[3:]}
    assert by_backbone["vgg16"][col("top1_cls")] == "5" and by_backbone["vgg16"][col("params.yaml:family")] == "grad"
    committed = json.loads((ROOT / "reports/metrics.json").read_text())
    assert float(by_backbone["vgg16"][col("cam.softmax.pxap")]) == pytest.approx(
        committed["cam"]["softmax"]["pxap"], abs=5e-4)
