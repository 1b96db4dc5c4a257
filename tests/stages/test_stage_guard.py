"""pipeline/stages/common.py: a stage fails rather than let dvc.lock record params it did not use, and its
throughput line counts only this run's work."""
import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.params import load_params, resolved_json
from pipeline.stages import common

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """params.yaml, dvc.yaml and data/params.json (as the validate stage writes it) in a temporary folder."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/params.json").write_text(resolved_json(load_params()))
    monkeypatch.setenv("DVC_STAGE", "finetune")
    monkeypatch.setattr(common, "_GUARD", {})
    return tmp_path


def edit(path: Path, **changes: object) -> None:
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def exit_message(capsys, call) -> str:
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    return capsys.readouterr().err


def test_stage_keys_are_read_from_dvc_yaml(project):
    keys = common.stage_keys("finetune")
    assert "finetune.lr" in keys and "model.finetune_weight_decay" in keys and "report" not in keys
    assert common.stage_keys("validate") is None and common.stage_keys("nope") is None


def test_unchanged_params_pass_both_checks(project, capsys):
    common.start()
    common.check_params()
    assert "error" not in capsys.readouterr().err


def test_an_edit_of_this_stages_param_during_the_run_fails_it(project, capsys):
    common.start()
    lr = json.loads((project / "data/params.json").read_text())["finetune"]["lr"]
    edit(project / "params.yaml", **{"finetune.lr": 0.01})
    err = exit_message(capsys, common.check_params)
    assert err == (f"error: params.yaml changed while stage 'finetune' ran: finetune.lr: {lr!r} -> 0.01; its outputs "
                   f"were made with the values read at start, so they are not recorded; run `dvc repro` again\n")


def test_a_group_key_names_the_changed_keys_inside(project, capsys, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "evaluate")  # declares the whole `evaluate` group
    common.start()
    edit(project / "params.yaml", **{"evaluate.loc_threshold": 0.3, "evaluate.relu": True})
    err = exit_message(capsys, common.check_params)
    assert err.startswith("error: params.yaml changed while stage 'evaluate' ran: evaluate.loc_threshold: 0.2 -> 0.3; "
                          "evaluate.relu: None -> True; its outputs")


def test_an_edit_through_the_backbone_table_is_seen(project, capsys):
    """backbones.<entry> is read through `model`: the resolved values are compared, not the raw keys."""
    common.start()
    edit(project / "params.yaml", **{"backbones.resnet10t.finetune_weight_decay": 0.5})
    assert "model.finetune_weight_decay: 0.0001 -> 0.5" in exit_message(capsys, common.check_params)


def test_an_edit_of_the_users_model_settings_or_a_preset_filled_key_is_seen(project, capsys):
    """`model:` (the user's choice over the table) and the keys a preset can fill are compared resolved: null and
    the default it stands for are the same value, another value is a change."""
    common.start()
    edit(project / "params.yaml", **{"finetune.epochs": 3, "model.finetune_weight_decay": 0.0001})  # the defaults
    common.check_params()
    assert capsys.readouterr().err == ""
    edit(project / "params.yaml", **{"model.input_size": 64})
    assert "model.input_size: 96 -> 64" in exit_message(capsys, common.check_params)


def test_an_edit_of_another_stages_param_or_a_comment_keeps_this_ones_work(project, capsys):
    common.start()
    edit(project / "params.yaml", **{"report.dpi": 99, "backbones.vgg16.finetune_lr": 0.5,
                                     "datasets.cub.presets.resnet10t": {"finetune_lr": 0.5}})
    with open(project / "params.yaml", "a") as fh:
        fh.write("# a comment\n")
    common.check_params()
    assert capsys.readouterr().err == ""


def test_params_made_invalid_during_the_run_fail_it(project, capsys):
    common.start()
    with open(project / "params.yaml", "a") as fh:
        fh.write("finetun: {lr: 0.1}\n")
    err = exit_message(capsys, common.check_params)
    assert err.startswith("error: params.yaml changed while stage 'finetune' ran and is no longer valid (")
    assert "finetun: unknown key (did you mean 'finetune'?)" in err


def test_params_edited_after_validate_ran_stop_the_stage_at_start(project, capsys):
    """DVC records data/params.json (written by validate); a stage whose values differ does not start."""
    edit(project / "params.yaml", **{"finetune.epochs": 7})
    err = exit_message(capsys, common.start)
    assert err.startswith("error: params.yaml changed after the validate stage ran: finetune.epochs: 3 -> 7 "
                          "(data/params.json -> params.yaml); stage 'finetune' did not start")
    common._GUARD.clear()
    edit(project / "params.yaml", **{"finetune.epochs": 3, "report.dpi": 99})  # not a finetune key: it starts
    common.start()
    (project / "data/params.json").unlink()
    common._GUARD.clear()
    assert "data/params.json: cannot be read" in exit_message(capsys, common.start)


def test_outside_dvc_only_the_end_check_runs(project, monkeypatch, capsys):
    monkeypatch.delenv("DVC_STAGE")
    monkeypatch.setattr("sys.argv", ["/x/pipeline/stages/finetune.py"])
    edit(project / "params.yaml", **{"finetune.epochs": 7})  # data/params.json is stale: not consulted
    params = common.start()
    assert params.finetune.epochs == 7 and common.stage_name() == "finetune"
    edit(project / "params.yaml", **{"finetune.epochs": 8})
    assert "finetune.epochs: 7 -> 8" in exit_message(capsys, common.check_params)


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


def test_params_json_compares_as_dvc_sees_it(project):
    """The start check compares JSON values read back from the file: floats survive exactly."""
    data = copy.deepcopy(yaml.safe_load((project / "params.yaml").read_text()))
    data["finetune"]["lr"] = 1.268269e-05
    (project / "params.yaml").write_text(yaml.safe_dump(data))
    (project / "data/params.json").write_text(resolved_json(load_params()))
    common.start()
