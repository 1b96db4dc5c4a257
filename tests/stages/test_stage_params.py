"""pipeline/stages/common.py: a stage reads data/params.json only through the keys its dvc.yaml entry declares
(pipeline/params.py `StageParams`), its errors start on a line of their own, and its throughput line counts only
this run's work."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.params import StageParams, UndeclaredParamError, load_params, resolved, resolved_json
from pipeline.stages import common

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """dvc.yaml and data/params.json (as the validate stage writes it) in a temporary folder."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/params.json").write_text(resolved_json(load_params(ROOT / "params.yaml")))
    monkeypatch.setenv("DVC_STAGE", "finetune@0-0")
    return tmp_path


def view(keys: list[str], stage: str = "demo") -> StageParams:
    return StageParams(resolved(load_params(ROOT / "params.yaml")), keys, stage)


def test_stage_name_and_keys_come_from_dvc_stage_and_dvc_yaml(project, monkeypatch):
    assert common.stage_name() == "finetune"  # a matrix stage's name without its @0-0
    keys = common.stage_keys("finetune")
    assert "finetune.epochs" in keys and "model.input_size" in keys and "evaluate" not in keys
    assert common.stage_keys("validate") is None and common.stage_keys("nope") is None
    monkeypatch.delenv("DVC_STAGE")
    monkeypatch.setattr(sys, "argv", ["/x/pipeline/stages/cams.py", "0", "0"])
    assert common.stage_name() == "cams"


def test_an_undeclared_key_fails_naming_the_stage_the_key_and_dvc_yaml(project):
    params = common.load_stage_params()
    assert params.finetune.epochs == 3 and params.model.input_size == 96
    with pytest.raises(UndeclaredParamError) as info:
        params.evaluate.loc_threshold  # noqa: B018
    message = str(info.value)
    assert "stage 'finetune'" in message and "'evaluate.loc_threshold'" in message
    assert (
        "add `evaluate.loc_threshold` (or its group) to the stage's `params: - data/params.json:` list in dvc.yaml"
        in message
    )
    with pytest.raises(UndeclaredParamError, match="'baseline.epochs'"):
        params.baseline.epochs  # noqa: B018  (a group with no declared key inside)
    with pytest.raises(UndeclaredParamError, match="'seed'"):
        params.seed  # noqa: B018


def test_a_declared_group_allows_every_key_inside(project):
    params = view(["evaluate", "cams.batch_size"])
    values = json.loads((project / "data/params.json").read_text())
    for key, value in values["evaluate"].items():
        assert getattr(params.evaluate, key) == value
    assert params.cams.batch_size == 32
    with pytest.raises(UndeclaredParamError, match="'cams.splits'"):
        params.cams.splits  # noqa: B018
    assert params.declares("evaluate.relu") and not params.declares("cams")


def test_properties_and_methods_read_through_the_view():
    assert view(["data.num_classes"]).num_classes == 10
    with pytest.raises(UndeclaredParamError, match="'data.num_classes'"):
        view(["dataset"]).num_classes  # noqa: B018
    assert view(["baseline.seed"]).baseline_seed(2) == 44
    with pytest.raises(UndeclaredParamError, match="'baseline.seed'"):
        view(["baseline.replicates"]).baseline_seed(0)
    assert view(["dataset"]).prepared_dir() == Path("data/prepared/synthbirds")  # a runtime key: a location
    with pytest.raises(UndeclaredParamError, match="'dataset'"):
        view(["preprocess"]).prepared_dir()
    assert view(["finetune.lr"]).finetune_lr == 0.05 and view(["preprocess.eval_size"]).eval_size == 96


def test_the_view_is_read_only_and_returns_copies():
    params = view(["baseline.replicates"])
    params.baseline.replicates.append(7)
    assert params.baseline.replicates == [0, 1, 2]
    with pytest.raises(AttributeError):
        params.seed = 3
    with pytest.raises(AttributeError, match="no key 'baseline.nope'"):
        params.baseline.nope  # noqa: B018


def test_declared_values_hold_only_the_declared_keys():
    values = view(["dataset", "baseline.replicates", "evaluate"]).declared_values()
    assert set(values) == {"dataset", "baseline", "evaluate"} and values["baseline"] == {"replicates": [0, 1, 2]}
    assert values["evaluate"]["loc_threshold"] == 0.2


def test_runtime_keys_are_readable_undeclared_and_nothing_else():
    params = view(["cams"], stage="cams")
    assert params.runtime("distributed").nproc == 1 and params.runtime("download.workers") == 2
    with pytest.raises(UndeclaredParamError, match="'distributed.nproc'"):
        params.distributed.nproc  # noqa: B018
    for key in ("baseline", "download", "finetune.epochs"):
        with pytest.raises(UndeclaredParamError, match=f"'{key}'"):
            params.runtime(key)


def test_without_data_params_json_a_stage_says_how_to_make_it(project, capsys):
    (project / "data/params.json").unlink()
    with pytest.raises(SystemExit) as info:
        common.load_stage_params()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "data/params.json: not found" in err and "`dvc repro`" in err
    assert "`python -m pipeline.params validate`" in err


def test_a_hand_run_after_an_edit_of_params_yaml_is_warned(project, monkeypatch, capsys):
    import os

    monkeypatch.delenv("DVC_STAGE")
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    written = (project / "data/params.json").stat().st_mtime
    os.utime(project / "params.yaml", (written + 10, written + 10))
    common.load_stage_params("finetune")
    assert "warning: params.yaml changed after data/params.json was written" in capsys.readouterr().err
    os.utime(project / "params.yaml", (written - 10, written - 10))
    common.load_stage_params("finetune")
    assert capsys.readouterr().err == ""


def test_a_stage_without_a_params_list_is_named(project, capsys):
    with pytest.raises(SystemExit):
        common.load_stage_params("validate")
    assert "stage 'validate': no `params: - data/params.json:` list in dvc.yaml" in capsys.readouterr().err


def test_every_stage_key_list_reads_what_the_stage_helpers_need(project):
    """The helpers every per-model stage calls (paths, seeds, model spec, loaders' inputs) read only declared keys
    under each stage's own list (the stage scripts themselves run under the view in tests/e2e)."""
    values = json.loads((project / "data/params.json").read_text())
    for stage in ("clone_head", "finetune", "cams"):
        params = StageParams(values, common.stage_keys(stage), stage)
        rep = common.replicate(params, 0, 0)
        assert rep.dual_ckpt == Path("data/models/baseline_0/replicate_0/dual.pt")
        assert rep.seed == params.finetune_seed(0, 0)
        common.model_spec(params)
    for stage in ("finetune", "cams", "evaluate", "report", "baseline"):
        params = StageParams(values, common.stage_keys(stage), stage)
        params.prepared_dir()
    evaluate = StageParams(values, common.stage_keys("evaluate"), "evaluate")
    assert [r.name for r in common.replicates(evaluate)] == ["0-0", "1-0", "2-0"]
    common.eval_options(evaluate)
    report = StageParams(values, common.stage_keys("report"), "report")
    assert common.replicate(report).name == "0-0"
    common.eval_options(report)
    baseline = StageParams(values, common.stage_keys("baseline"), "baseline")
    assert common.baseline(baseline, 1).seed == 43
    resume = common.resume_params(baseline, "baseline")
    assert resume.baseline.epochs == 10 and resume.data.num_classes == 10 and resume.baseline_lr == 0.05


def test_an_error_starts_on_a_line_of_its_own_after_a_progress_bar(capsys):
    """user_errors never glues its message to the end of an open progress bar's line."""
    from tqdm import tqdm

    bar = tqdm(total=10, file=sys.stderr, disable=False, desc="work")
    bar.update(3)
    with pytest.raises(SystemExit) as info, common.user_errors():
        raise ValueError("the thing is broken")
    assert info.value.code == 1
    err = capsys.readouterr().err
    before = err[: err.index("error: the thing is broken")]
    assert "work" in before and before[-1] in "\r\n", repr(err)
    bar.close()


class Restored:
    def __init__(self, done: int):
        self.epochs_done = done


def test_epochs_to_run_excludes_restored_epochs():
    assert common.epochs_to_run(10) == 10
    assert common.epochs_to_run(10, Restored(0)) == 10
    assert common.epochs_to_run(10, Restored(9)) == 1
    assert common.epochs_to_run(10, Restored(10)) == 0


def test_throughput_line_counts_this_runs_images(capsys):
    import torch

    device = torch.device("cpu")
    with common.throughput("baseline", 800 * common.epochs_to_run(10, Restored(9)), device):
        sum(range(10000))
    line = capsys.readouterr().out
    assert line.startswith("baseline: 800 images in ") and " images/s on cpu (" in line
    with common.throughput("baseline", 800 * common.epochs_to_run(10, Restored(10)), device):
        pass
    assert capsys.readouterr().out == ""  # nothing trained: no line


def test_an_undeclared_read_outside_user_errors_ends_the_stage_with_its_message(project):
    import subprocess

    code = (
        "from pipeline.stages.common import load_stage_params\n"
        "params = load_stage_params('cams')\n"
        "params.finetune.epochs\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "", "TQDM_DISABLE": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: stage 'cams' read the param 'finetune.epochs'"), proc.stderr
    assert "Traceback" not in proc.stderr
