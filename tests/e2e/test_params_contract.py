"""End to end, with the real `dvc repro`: params.yaml is validated on every run (the `validate` stage), stages
rerun only for the values they use, and a stage reads only the params its dvc.yaml entry declares."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.project import digests

pytestmark = pytest.mark.e2e
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "DVC_NO_ANALYTICS": "1",
}
STAGES = ("download", "preprocess", "baseline", "clone_head", "finetune", "cams", "evaluate", "report")


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    # a per-model stage runs as '<stage>@<j>-<k>' (dvc.yaml's matrix), a baseline as 'baseline@<j>'
    return [
        s
        for s in ("validate", *STAGES)
        if f"Running stage '{s}'" in proc.stdout or f"Running stage '{s}@" in proc.stdout
    ]


@pytest.fixture(scope="module")
def repo(smoke_repro, smoke_copy) -> Path:
    """This module's copy of the session's reproduced smoke project (tests/e2e/conftest.py)."""
    assert ran(smoke_repro[1]) == ["validate", *STAGES]
    return smoke_copy


@pytest.fixture
def params(repo):
    """params.yaml of the repo, restored after the test."""
    path = repo / "params.yaml"
    original = path.read_text()
    yield path
    path.write_text(original)


def edited(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def state(repo: Path) -> dict:
    return digests(repo, "data/raw", "data/prepared", "data/models", "data/cams", "reports")


def status_of(repo: Path) -> dict:
    """`dvc status --json` without the stages other than validate that run on every repro (`always_changed`,
    e.g. source), checking that those report nothing else."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    for name in [s for s, spec in stages.items() if spec.get("always_changed") and s != "validate"]:
        assert status.pop(name) == ["always changed"], name
    return status


def test_unchanged_params_rerun_only_validate(repo):
    before, lock = state(repo), (repo / "dvc.lock").read_text()
    proc = run(["dvc", "repro"], repo)
    assert ran(proc) == ["validate"]
    p = yaml.safe_load((repo / "params.yaml").read_text())
    bases, reps = p["baseline"]["replicates"], p["finetune"]["replicates"]
    per_model = ("clone_head", "finetune", "cams")  # dvc.yaml's matrix: '<stage>@<j>-<k>'
    for stage in (
        [s for s in STAGES if s not in per_model + ("baseline",)]
        + [f"baseline@{j}" for j in bases]
        + [f"{s}@{j}-{k}" for s in per_model for j in bases for k in reps]
    ):
        assert f"Stage '{stage}' didn't change, skipping" in proc.stdout
    assert state(repo) == before and (repo / "dvc.lock").read_text() == lock
    assert status_of(repo) == {"validate": ["always changed"]}


@pytest.mark.parametrize(
    "text,messages",
    [
        (
            "finetun:\n  lr: 0.1\n",
            ["finetun: unknown key (did you mean 'finetune'?); valid keys here: dataset, backbone"],
        ),
        (
            None,
            [
                "finetune.epoch: unknown key (did you mean 'epochs'?)",
                "finetune.lr: must be a finite number, got nan",
                "evaluate.loc_threshold: must be a finite number, got inf",
                "backbones.vgg16.finetune_lr: must be a number, got '0.1' (str)",
            ],
        ),
    ],
)
def test_a_bad_param_anywhere_fails_in_validate_before_any_stage(repo, params, text, messages):
    lock = (repo / "dvc.lock").read_text()
    if text is None:  # one run lists every problem
        edited(
            params,
            **{
                "finetune.epoch": 5,
                "finetune.lr": "NAN",
                "evaluate.loc_threshold": "INF",
                "backbones.vgg16.finetune_lr": "0.1",
            },
        )
        params.write_text(params.read_text().replace("NAN", ".nan").replace("INF", ".inf"))
    else:
        params.write_text(params.read_text() + text)
    began = time.monotonic()
    proc = run(["dvc", "repro"], repo, check=False)
    seconds = time.monotonic() - began
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and ran(proc) == ["validate"], out
    for message in messages:
        assert message in out
    assert f"{len(messages)} problem(s)" in out
    assert seconds < 60, seconds  # validation alone: a few seconds on an idle machine
    assert (repo / "dvc.lock").read_text() == lock


def test_another_datasets_preset_or_backbones_entry_reruns_nothing(repo, params):
    """...nor does writing out the value a null stands for (the default, the backbone's entry)."""
    before = state(repo)
    entry = yaml.safe_load(params.read_text())["backbones"]["resnet10t"]
    edited(
        params,
        **{
            "datasets.cub.presets.resnet10t": {"input_size": 224, "finetune_lr": 0.5},
            "datasets.cub.num_classes": 20,
            "backbones.vgg16.finetune_lr": 0.5,
            "backbones.any_timm.input_size": 64,
            "evaluate.loc_threshold": 0.2,
            "baseline.lr_decay_every": 7,
            "model.input_size": entry["input_size"],
        },
    )
    proc = run(["dvc", "repro"], repo)
    assert ran(proc) == ["validate"], proc.stdout
    assert state(repo) == before


def test_status_names_the_edit_and_after_validate_the_stages_it_reruns(repo, params):
    edited(params, **{"evaluate.postprocess": "official"})
    status = status_of(repo)
    assert list(status) == ["validate"] and status["validate"][1] == "always changed"
    assert status["validate"][0]["changed deps"]["params.yaml"]["evaluate"] == "modified"
    run(["dvc", "repro", "validate"], repo)
    status = status_of(repo)
    assert sorted(status) == ["evaluate", "report", "validate"]
    assert status["evaluate"] == [{"changed deps": {"data/params.json": {"evaluate": "modified"}}}]


def test_a_stage_reading_a_key_it_does_not_declare_fails_naming_it(repo, params):
    """Stages read data/params.json through the keys their dvc.yaml entry declares: with `report` taken out of the
    report stage's list, the stage fails naming the key and what to add, and dvc.lock records nothing new."""
    dvc_file = repo / "dvc.yaml"
    original = dvc_file.read_text()
    declared = "          - evaluate\n          - report\n    outs:"
    assert original.count(declared) == 1
    try:
        dvc_file.write_text(original.replace(declared, "          - evaluate\n    outs:"))
        lock = (repo / "dvc.lock").read_text()
        # a key taken out of a list is no change to DVC: force the stage, alone
        proc = run(["dvc", "repro", "--single-item", "--force", "report"], repo, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and ran(proc) == ["report"], out
        assert (
            "error: stage 'report' read the param 'report.gallery_images', which it does not declare: add "
            "`report.gallery_images` (or its group) to the stage's `params: - data/params.json:` list in "
            "dvc.yaml"
        ) in out
        assert (repo / "dvc.lock").read_text() == lock
    finally:
        dvc_file.write_text(original)
    assert ran(run(["dvc", "repro", "--single-item", "--force", "report"], repo)) == ["report"]


@pytest.mark.slow
def test_exp_run_validates_and_shows_params(repo):
    # DVC refuses `-S` for a key params.yaml lacks; `-S +key=value` adds it, and validate fails
    bad = run(["dvc", "exp", "run", "-S", "finetune.epoch=5"], repo, check=False)
    assert bad.returncode != 0 and "Could not override 'finetune.epoch'" in bad.stdout + bad.stderr
    bad = run(["dvc", "exp", "run", "-S", "+finetune.epoch=5"], repo, check=False)
    assert bad.returncode != 0 and ran(bad) == ["validate"]
    assert "finetune.epoch: unknown key (did you mean 'epochs'?)" in bad.stdout + bad.stderr
    run(["git", "checkout", "params.yaml"], repo)
    good = run(["dvc", "exp", "run", "-S", "evaluate.loc_threshold=0.25"], repo)
    assert ran(good) == ["validate", "evaluate", "report"], good.stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert '"loc_threshold": 0.25' in text and '"data/params.json"' in text
    diff = json.loads(run(["dvc", "params", "diff", "--json"], repo).stdout)
    assert diff["params.yaml"]["evaluate.loc_threshold"]["new"] == 0.25
    assert diff["data/params.json"]["evaluate.loc_threshold"]["new"] == 0.25
    run(["dvc", "metrics", "diff", "--json"], repo)
