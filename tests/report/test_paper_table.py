"""`make paper-table` (pipeline.report.paper_table) on a throw-away git + DVC repository with real experiments.

One fake stage writes reports/metrics.json from the params (numbers below), and `dvc exp run -S ...` runs it
for CAM- and gradient-family settings on ilsvrc, openimages and synthbirds. main's params.yaml has no
`family` (it means `cam`). The expected tables are written out by hand from STAGE's formula:

    base = backbone's base + 5 (family grad) + 1 (head_init fresh) + 100 * finetune.lr + classes
    top1_cls = 50 + base; for variant i (cam 0, gradcam 1, gradcampp 2, xgradcam 3, layercam 4), branch j
    (softmax 0, sigmoid 1): top1_loc = base + i + 2j, gt_known_loc + 0.5, maxboxacc_v2 + 0.25, pxap + 0.75;
    openimages has PxAP only; a grad run has no "cam" entry (head_init clone) or one marked not applicable.

The stage records the data's size as the evaluate stage does (`dataset_block`): the full dataset, or with the
fake param `classes` a subset of that many classes and 50 test images per class. It records no params digest
(the fake params.yaml is not the project's), like reports made before the digest: the workspace is left out.
The workspace check itself, on the project's params.yaml, is tested below on exp-show JSON and in
tests/report/test_exp_table.py with real `dvc exp run`s.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.report import paper_numbers, paper_table
from tests.project import make_dvc_repo
from tests.report.test_compare import BIN, ROOT, VENV, git, sh

PARAMS = """\
dataset: ilsvrc
backbone: vgg16
finetune:
  head_init: clone
  bn_mode: eval
  lr: 0.01
"""
STAGE = """\
import json, yaml
from pipeline.stages.evaluate import dataset_block  # the copied pipeline/
p = yaml.safe_load(open("params.yaml"))
family = p.get("family", "cam")
ft = p["finetune"]
classes = p.get("classes")
base = {"vgg16": 30, "inception_v3": 35, "resnet10t": 20}[p["backbone"]]
base += (5 if family == "grad" else 0) + (1 if ft["head_init"] == "fresh" else 0) + round(100 * ft["lr"])
base += classes or 0
full = {"ilsvrc": (1000, 50000), "openimages": (100, 5000), "synthbirds": (10, 1000)}[p["dataset"]]
size = (classes, 50 * classes) if classes else full
metrics = {"top1_cls": 50 + base, "dataset": dataset_block(p["dataset"], *size)}
for i, variant in enumerate(["cam", "gradcam", "gradcampp", "xgradcam", "layercam"]):
    if variant == "cam" and family == "grad":
        if ft["head_init"] == "fresh":
            metrics["cam"] = {"not_applicable": "CAM is defined for the CAM family only"}
        continue
    metrics[variant] = {}
    for j, branch in enumerate(["softmax", "sigmoid"]):
        loc = base + i + 2 * j
        m = {"pxap": loc + 0.75}
        if p["dataset"] != "openimages":
            m.update(top1_loc=loc, gt_known_loc=loc + 0.5, maxboxacc_v2=loc + 0.25)
        metrics[variant][branch] = m
import os; os.makedirs("reports", exist_ok=True)
json.dump(metrics, open("reports/metrics.json", "w"), indent=2, sort_keys=True)
"""
# name: -S overrides on main's params, run in this order (the last one stays applied in the workspace)
EXPERIMENTS = {
    "vgg-grad": ["++family=grad"],
    "vgg-grad-fresh": ["++family=grad", "finetune.head_init=fresh"],
    "vgg-lr": ["finetune.lr=0.1"],
    "vgg-sub": ["++classes=4"],  # main's setting on a subset: 4 classes, 200 test images
    "inc-oi": ["dataset=openimages", "backbone=inception_v3"],
    "inc-grad-bn": ["backbone=inception_v3", "++family=grad", "finetune.bn_mode=train"],
    "tiny": ["dataset=synthbirds", "backbone=resnet10t"],
}

HEADER = (
    "| Backbone | Method | Setting | Top-1 Cls | Top-1 Loc softmax | Top-1 Loc sigmoid | GT-known Loc softmax "
    "| GT-known Loc sigmoid | MaxBoxAccV2 softmax | MaxBoxAccV2 sigmoid | PxAP softmax | PxAP sigmoid "
    "| Experiment |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
EXPECTED = f"""\
# This repository's experiments in the layout of the paper's Table 2

Values in %; softmax = the vanilla map, sigmoid = the sigmoid branch's map; Top-1 Cls is the softmax branch's. \
A cell `ours (paper)` gives the paper's number beside ours, from {paper_numbers.SOURCE}, for a run on the full \
dataset only; each table's heading gives the classes and test images its runs used.

## ilsvrc: 1,000 classes, 50,000 test images (the full dataset)

{HEADER}
| vgg16 | CAM | head_init=clone, bn_mode=eval | 81.00 (66.56) | 31.00 (43.11) | 33.00 (43.13) | 31.50 (59.53) \
| 33.50 (59.56) | 31.25 (60.00) | 33.25 (60.25) | 31.75 | 33.75 | main |
| vgg16 | CAM | head_init=clone, bn_mode=eval | 90.00 (66.56) | 40.00 (43.11) | 42.00 (43.13) | 40.50 (59.53) \
| 42.50 (59.56) | 40.25 (60.00) | 42.25 (60.25) | 40.75 | 42.75 | vgg-lr |
| vgg16 | Grad-CAM | head_init=clone, bn_mode=eval | 86.00 (69.62) | 37.00 (37.01) | 39.00 (44.69) | 37.50 (48.99) \
| 39.50 (59.44) | 37.25 (52.50) | 39.25 (60.17) | 37.75 | 39.75 | vgg-grad |
| vgg16 | Grad-CAM++ | head_init=clone, bn_mode=eval | 86.00 | 38.00 | 40.00 | 38.50 | 40.50 | 38.25 | 40.25 | 38.75 \
| 40.75 | vgg-grad |
| vgg16 | XGrad-CAM | head_init=clone, bn_mode=eval | 86.00 | 39.00 | 41.00 | 39.50 | 41.50 | 39.25 | 41.25 | 39.75 \
| 41.75 | vgg-grad |
| vgg16 | LayerCAM | head_init=clone, bn_mode=eval | 86.00 | 40.00 | 42.00 | 40.50 | 42.50 | 40.25 | 42.25 | 40.75 \
| 42.75 | vgg-grad |
| vgg16 | Grad-CAM | head_init=fresh, bn_mode=eval | 87.00 (69.62) | 38.00 (37.01) | 40.00 (44.69) | 38.50 (48.99) \
| 40.50 (59.44) | 38.25 (52.50) | 40.25 (60.17) | 38.75 | 40.75 | vgg-grad-fresh |
| vgg16 | Grad-CAM++ | head_init=fresh, bn_mode=eval | 87.00 | 39.00 | 41.00 | 39.50 | 41.50 | 39.25 | 41.25 | 39.75 \
| 41.75 | vgg-grad-fresh |
| vgg16 | XGrad-CAM | head_init=fresh, bn_mode=eval | 87.00 | 40.00 | 42.00 | 40.50 | 42.50 | 40.25 | 42.25 | 40.75 \
| 42.75 | vgg-grad-fresh |
| vgg16 | LayerCAM | head_init=fresh, bn_mode=eval | 87.00 | 41.00 | 43.00 | 41.50 | 43.50 | 41.25 | 43.25 | 41.75 \
| 43.75 | vgg-grad-fresh |
| inception | Grad-CAM | head_init=clone, bn_mode=train | 91.00 (67.79) | 42.00 (34.57) | 44.00 (33.72) \
| 42.50 (46.35) | 44.50 (45.18) | 42.25 (52.30) | 44.25 (53.06) | 42.75 | 44.75 | inc-grad-bn |
| inception | Grad-CAM++ | head_init=clone, bn_mode=train | 91.00 | 43.00 | 45.00 | 43.50 | 45.50 | 43.25 | 45.25 \
| 43.75 | 45.75 | inc-grad-bn |
| inception | XGrad-CAM | head_init=clone, bn_mode=train | 91.00 | 44.00 | 46.00 | 44.50 | 46.50 | 44.25 | 46.25 \
| 44.75 | 46.75 | inc-grad-bn |
| inception | LayerCAM | head_init=clone, bn_mode=train | 91.00 | 45.00 | 47.00 | 45.50 | 47.50 | 45.25 | 47.25 \
| 45.75 | 47.75 | inc-grad-bn |

## ilsvrc (subset: 4 of 1,000 classes, 200 of 50,000 test images; the paper's numbers are on the full dataset, \
not shown)

{HEADER}
| vgg16 | CAM | head_init=clone, bn_mode=eval | 85.00 | 35.00 | 37.00 | 35.50 | 37.50 | 35.25 | 37.25 | 35.75 \
| 37.75 | vgg-sub |

## openimages: 100 classes, 5,000 test images (the full dataset)

{HEADER}
| inception | CAM | head_init=clone, bn_mode=eval | 86.00 (56.22) | n/a | n/a | n/a | n/a | n/a | n/a \
| 36.75 (62.25) | 38.75 (63.65) | inc-oi |

## synthbirds: 10 classes, 1,000 test images (the paper reports no numbers for this dataset)

{HEADER}
| resnet10t | CAM | head_init=clone, bn_mode=eval | 71.00 | 21.00 | 23.00 | 21.50 | 23.50 | 21.25 | 23.25 | 21.75 \
| 23.75 | tiny |
"""
NO_DIGEST = (
    "workspace: reports/metrics.json records no params_digest (it was made before the evaluate stage "
    "recorded one), so it cannot be matched to params.yaml; run `dvc repro` to include it\n"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_dvc_repo(tmp_path_factory, "paper_table")
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "stage.py").write_text(STAGE)
    # `params.yaml: []`: the stage depends on every param, `family` included once an experiment adds it
    (repo / "dvc.yaml").write_text(
        f"stages:\n  evaluate:\n    cmd: {sys.executable} stage.py\n"
        "    deps: [stage.py]\n    params:\n      - params.yaml: []\n"
        "    metrics:\n      - reports/metrics.json:\n          cache: false\n"
    )
    (repo / ".gitignore").write_text("/build/\n__pycache__/\n")
    sh([str(BIN / "dvc"), "repro", "-q"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "vgg16 CAM on ilsvrc")
    for name, overrides in EXPERIMENTS.items():
        git(repo, "reset", "-q", "--hard")  # `dvc exp run` applied the last experiment to the workspace
        sh([str(BIN / "dvc"), "exp", "run", "-q", "-n", name, *(a for o in overrides for a in ("-S", o))], repo)
    return repo


@pytest.fixture(scope="module")
def exp_json(repo) -> list:
    return json.loads(sh([str(BIN / "dvc"), "exp", "show", "--json"], repo).stdout)


def test_make_paper_table_prints_the_expected_tables(repo):
    """The workspace (`dvc exp run` applied `tiny`) has the same numbers as `tiny`, but its reports/ record no
    params digest: it is left out, and stderr says why."""
    proc = sh(["make", "-s", "paper-table", f"VENV={VENV}"], repo)
    assert proc.stdout == EXPECTED
    assert proc.stderr == NO_DIGEST


def test_every_run_is_read_with_its_params(exp_json):
    runs = paper_table.runs_from_exp_show(exp_json)
    assert sorted(run.name for run in runs) == sorted(["workspace", "main", *EXPERIMENTS])
    by_name = {run.name: run for run in runs}
    assert "family" not in by_name["main"].params  # main has no family param: it counts as cam
    assert paper_table.setting_of(by_name["main"]).family == "cam"
    assert paper_table.setting_of(by_name["inc-oi"]).backbone == "inception"  # the alias inception_v3
    assert by_name["vgg-grad-fresh"].metrics["cam"] == {"not_applicable": "CAM is defined for the CAM family only"}


def test_csv_has_ours_and_the_papers_number_in_separate_columns(repo, exp_json, tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(exp_json))
    proc = sh([sys.executable, "-m", "pipeline.report.paper_table", "--csv", "--exp-json", str(path)], repo)
    lines = proc.stdout.splitlines()
    assert lines[0].split(",")[:12] == [
        "dataset",
        "num_classes",
        "test_images",
        "full",
        "backbone",
        "family",
        "head_init",
        "bn_mode",
        "method",
        "variant",
        "top1_cls",
        "top1_cls_paper",
    ]
    assert len(lines) == 1 + 17
    assert lines[1] == (
        "ilsvrc,1000,50000,true,vgg16,cam,clone,eval,CAM,cam,81,66.56,31,43.11,33,43.13,31.5,59.53,"
        "33.5,59.56,31.25,60,33.25,60.25,31.75,,33.75,,main"
    )
    assert lines[-4].startswith("ilsvrc,1000,50000,true,inception,grad,clone,train,LayerCAM,layercam,91,,45,,47,")
    assert lines[-3] == (
        "ilsvrc,4,200,false,vgg16,cam,clone,eval,CAM,cam,85,,35,,37,,35.5,,37.5,,35.25,,37.25,,35.75,,37.75,,vgg-sub"
    )
    assert lines[-2] == (
        "openimages,100,5000,true,inception,cam,clone,eval,CAM,cam,86,56.22,,,,,,,,,,,,,36.75,62.25,38.75,63.65,inc-oi"
    )
    assert (
        lines[-1]
        == "synthbirds,10,1000,,resnet10t,cam,clone,eval,CAM,cam,71,,21,,23,,21.5,,23.5,,21.25,,23.25,,21.75,,"
        "23.75,,tiny"
    )


def test_an_unknown_family_is_named_with_the_valid_ones():
    run = paper_table.Run("exp-x", {"dataset": "ilsvrc", "backbone": "vgg16", "family": "gard"}, {"top1_cls": 1})
    with pytest.raises(paper_table.UserError, match=r"exp-x: params.yaml `family: gard` .* valid: cam, grad"):
        paper_table.setting_of(run)


def test_outside_a_dvc_repository_it_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert paper_table.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "dvc repository" in captured.err.lower(), captured.err


@pytest.mark.parametrize("value", [None, "n/a", float("nan"), float("inf"), True])
def test_a_value_that_is_not_a_finite_number_reads_na(value):
    run = paper_table.Run(
        "r",
        {"dataset": "cub", "backbone": "resnet50"},
        {"top1_cls": 70.0, "cam": {"softmax": {"top1_loc": value}, "sigmoid": "n/a"}},
    )
    (row,) = paper_table.rows([run])
    assert row["cells"]["softmax.top1_loc"] == (None, None)
    assert row["cells"]["sigmoid.top1_loc"] == (None, None)
    assert row["cells"]["top1_cls"] == (70.0, None)


def test_paper_numbers_are_method_md_7_1():
    """Spot checks against METHOD.md 7.1's table, one per column kind."""
    assert paper_numbers.paper_value("ilsvrc", "vgg16", "gradcam", "sigmoid", "top1_loc") == 44.69
    assert paper_numbers.paper_value("ilsvrc", "resnet50", "cam", None, "top1_cls") == 73.87
    assert paper_numbers.paper_value("ilsvrc", "inception", "cam", "softmax", "maxboxacc_v2") == 63.51
    assert paper_numbers.paper_value("openimages", "inception", "gradcam", "sigmoid", "pxap") == 48.16
    assert paper_numbers.paper_value("openimages", "resnet50", "gradcam", None, "top1_cls") == 74.02
    assert paper_numbers.paper_value("openimages", "vgg16", "cam", "softmax", "top1_loc") is None
    assert paper_numbers.paper_value("ilsvrc", "vgg16", "gradcampp", "softmax", "top1_loc") is None
    assert len(paper_numbers.PAPER) == 12


def test_the_module_needs_neither_torch_nor_dvcs_python_api():
    """Not even to check the workspace (params.yaml validated and resolved, dvc.yaml read) or head a subset's
    table (the full sizes of pipeline.data.real)."""
    code = (
        "import sys, pipeline.report.paper_table as t; "
        "t.workspace_problem({'params_digest': 'x'}); t.heading('ilsvrc', t.Size(4, 200, False)); "
        "print(sorted(m for m in ('torch', 'dvc', 'timm') if m in sys.modules))"
    )
    assert sh([sys.executable, "-c", code], ROOT).stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------
# The data's size and the workspace check, on `dvc exp show --json` written here


def rev(name: str, params: dict, metrics: dict, experiments: list | None = None) -> dict:
    """One revision of `dvc exp show --json` (only the fields paper_table reads)."""
    entry = {
        "rev": name if name == "workspace" else f"{abs(hash(name)):040x}"[:40],
        "name": None if name == "workspace" else name,
        "data": {"params": {"params.yaml": {"data": params}}, "metrics": {"reports/metrics.json": {"data": metrics}}},
    }
    if experiments:
        entry["experiments"] = [{"revs": [child]} for child in experiments]
    return entry


def resnet50_cam(top1_cls: float, dataset: dict | None, **extra) -> dict:
    branch = {"top1_loc": 40.0, "gt_known_loc": 50.0, "maxboxacc_v2": 55.0, "pxap": 60.0}
    return {
        "top1_cls": top1_cls,
        "cam": {"softmax": branch, "sigmoid": branch},
        **({"dataset": dataset} if dataset is not None else {}),
        **extra,
    }


RESNET50 = {
    "dataset": "ilsvrc",
    "backbone": "resnet50",
    "family": "cam",
    "finetune": {"head_init": "clone", "bn_mode": "eval"},
}
FULL = {"name": "ilsvrc", "num_classes": 1000, "test_images": 50000, "full": True}
SUBSET = {"name": "ilsvrc", "num_classes": 4, "test_images": 200, "full": False}


def test_a_subset_run_is_marked_and_has_no_paper_value_the_full_run_has_them():
    """The user's case: a 4-class ILSVRC run printed `82.50 (73.87)` against the paper's 1,000-class figures."""
    entries = [rev("main", RESNET50, resnet50_cam(76.0, FULL), [rev("exp-sub", RESNET50, resnet50_cam(82.5, SUBSET))])]
    table_rows = paper_table.rows(paper_table.runs_from_exp_show(entries))
    by_name = {row["experiments"][0]: row for row in table_rows}
    assert by_name["main"]["cells"]["top1_cls"] == (76.0, 73.87)
    assert by_name["main"]["cells"]["softmax.maxboxacc_v2"] == (55.0, 63.52)
    assert by_name["exp-sub"]["cells"]["top1_cls"] == (82.5, None)
    assert all(paper is None for _, paper in by_name["exp-sub"]["cells"].values())
    text = paper_table.markdown(table_rows)
    full, subset = text.split("## ")[1:]
    assert full.startswith("ilsvrc: 1,000 classes, 50,000 test images (the full dataset)\n")
    assert "| resnet50 | CAM | head_init=clone, bn_mode=eval | 76.00 (73.87) | 40.00 (47.67) |" in full
    assert subset.startswith(
        "ilsvrc (subset: 4 of 1,000 classes, 200 of 50,000 test images; the paper's numbers "
        "are on the full dataset, not shown)\n"
    )
    assert (
        "| resnet50 | CAM | head_init=clone, bn_mode=eval | 82.50 | 40.00 | 40.00 | 50.00 | 50.00 | 55.00 | "
        "55.00 | 60.00 | 60.00 | exp-sub |"
    ) in subset
    assert "(" not in subset.split("\n", 1)[1]  # no paper value anywhere in the subset's table


def test_a_run_without_the_dataset_block_shows_no_paper_value():
    (row,) = paper_table.rows([paper_table.Run("old", RESNET50, resnet50_cam(76.0, None))])
    assert row["cells"]["top1_cls"] == (76.0, None)
    assert (
        paper_table.markdown([row]).count("## ilsvrc (size not recorded: reports/metrics.json has no `dataset` block")
        == 1
    )


def test_a_run_whose_metrics_are_of_another_dataset_is_left_out():
    runs = [paper_table.Run("exp-x", {**RESNET50, "dataset": "openimages"}, resnet50_cam(76.0, FULL))]
    kept, notes = paper_table.screen(runs)
    assert kept == [] and notes == [
        "exp-x: reports/metrics.json is of dataset ilsvrc, its params.yaml says openimages; left out"
    ]


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A folder with the project's params.yaml and dvc.yaml, as the current directory."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def workspace_json(tmp_path: Path, digest: str | None) -> Path:
    import yaml

    params = yaml.safe_load(Path("params.yaml").read_text())
    extra = {} if digest is None else {"params_digest": digest}
    size = {"name": params["dataset"], "num_classes": 10, "test_images": 1000, "full": None}
    entries = [
        rev("workspace", params, resnet50_cam(76.0, size, **extra)),
        rev("main", params, resnet50_cam(70.0, size)),
    ]
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(entries))
    return path


def test_the_workspace_is_in_the_table_when_its_reports_are_of_params_yaml(checkout, capsys):
    path = workspace_json(checkout, paper_table.current_digest())
    assert paper_table.main(["--exp-json", str(path), "--csv"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [line.rsplit(",", 1)[-1] for line in captured.out.splitlines()[1:]] == ["workspace", "main"]


@pytest.mark.parametrize(
    "digest, reason",
    [
        ("0123456789abcdef", paper_table.STALE),
        (
            None,
            "workspace: reports/metrics.json records no params_digest (it was made before the evaluate stage "
            "recorded one), so it cannot be matched to params.yaml; run `dvc repro` to include it",
        ),
    ],
)
def test_a_workspace_whose_reports_are_of_other_params_is_left_out_with_the_reason(checkout, capsys, digest, reason):
    path = workspace_json(checkout, digest)
    assert paper_table.main(["--exp-json", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == reason + "\n"
    assert "| main |" in captured.out and "workspace" not in captured.out
    assert paper_table.STALE == (
        "workspace: reports/ were produced from other params than params.yaml (an "
        "experiment in progress, a failed `dvc exp run`, or `dvc repro` not run yet); "
        "run `dvc repro` to include it"
    )


def test_the_workspace_check_follows_params_yaml(checkout, capsys):
    """What `dvc exp run -S dataset=openimages` in progress leaves: params.yaml switched, reports/ not."""
    reports = checkout / "reports"
    reports.mkdir()
    metrics = resnet50_cam(76.0, None, params_digest=paper_table.current_digest())
    (reports / "metrics.json").write_text(json.dumps(metrics))
    assert paper_table.main(["--check-workspace"]) == 0
    params = checkout / "params.yaml"
    original = params.read_text()

    def edit(old: str, new: str) -> None:
        assert old in original, f"params.yaml's layout changed: {old!r}"
        params.write_text(original.replace(old, new, 1))

    edit("\ndataset: synthbirds ", "\ndataset: openimages ")
    assert paper_table.main(["--check-workspace"]) == 1
    assert capsys.readouterr().err == paper_table.STALE + "\n"
    edit("\n  kernels: avx2 ", "\n  kernels: portable ")
    assert paper_table.main(["--check-workspace"]) == 1  # a training key
    assert capsys.readouterr().err == paper_table.STALE + "\n"
    edit("\n  dpi: 110 ", "\n  dpi: 150 ")
    assert paper_table.main(["--check-workspace"]) == 0  # report.dpi: the numbers do not depend on it
    edit("\nbackbone: resnet10t ", "\nbackbone: [resnet10t ")
    assert paper_table.main(["--check-workspace"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("workspace: params.yaml is not valid (not valid YAML: ") and err.count("\n") == 1, err
