"""reports/metrics.json's `params_digest` and `dataset` block (pipeline/stages/evaluate.py), which let the tables
(make paper-table, make exp-table) tell whether reports/ were made from params.yaml and on the full dataset."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pipeline.params import load_params, resolved
from pipeline.stages.common import stage_keys
from pipeline.stages.evaluate import DIGEST_SKIPPED, dataset_block, digest_keys, params_digest

ROOT = Path(__file__).resolve().parents[2]
DVC_FILE = ROOT / "dvc.yaml"


def covered(key: str, by: list[str]) -> bool:
    return any(key == group or key.startswith(f"{group}.") for group in by)


def test_evaluate_declares_every_key_of_the_digest():
    """A key declared by any stage from download to cams must be evaluate's too: DVC then reruns evaluate when
    it changes, and the digest that evaluate records stays the digest of the params the reports were made from.
    Adding a key to an upstream stage without adding it to evaluate fails here."""
    evaluate = stage_keys("evaluate", DVC_FILE)
    missing = [key for key in digest_keys(DVC_FILE) if not covered(key, evaluate)]
    assert missing == [], f"dvc.yaml: add {', '.join(missing)} to the evaluate stage's data/params.json params"


def test_the_digest_keys_are_every_stage_but_validate_source_and_report():
    import yaml

    stages = yaml.safe_load(DVC_FILE.read_text())["stages"]
    keys = digest_keys(DVC_FILE)
    for name in stages:
        if name not in DIGEST_SKIPPED:
            assert all(covered(k, keys) for k in stage_keys(name, DVC_FILE) or []), name
    # one from each kind of stage: foreach (baseline), matrix (finetune, cams), plain (download, preprocess)
    assert {
        "baseline.label_smoothing",
        "finetune.pos_weight",
        "cams",
        "data",
        "preprocess.eval_size",
        "evaluate",
        "distributed",
        "cpu",
    } <= set(keys)
    assert "cams.batch_size" not in keys  # inside `cams`, which the cams stage declares whole
    for undeclared in ("report", "download", "download.workers", "download.archive_dir", "finetune.workers"):
        assert not covered(undeclared, keys), undeclared


def test_digest_keys_read_foreach_and_matrix_stages_and_merge_groups(tmp_path):
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text("""\
stages:
  validate: {cmd: v, params: [params.yaml:]}
  source: {cmd: s, params: [{data/params.json: [dataset, download.archive_dir]}]}
  download: {cmd: d, params: [{data/params.json: [dataset, seed]}, other.yaml: [x]]}
  baseline:
    foreach: [0, 1]
    do: {cmd: b, params: [{data/params.json: [baseline.epochs, cams.batch_size]}]}
  cams:
    matrix: {baseline: [0, 1]}
    cmd: c
    params: [{data/params.json: [cams]}]
  plain: {cmd: p}
  report: {cmd: r, params: [{data/params.json: [report]}]}
""")
    assert digest_keys(dvc_file) == ["baseline.epochs", "cams", "dataset", "seed"]


@pytest.fixture(scope="module")
def values() -> dict:
    """The project's params.yaml, resolved as the stages use them (data/params.json's content)."""
    return resolved(load_params(ROOT / "params.yaml"))


@pytest.fixture(scope="module")
def keys() -> list[str]:
    return digest_keys(DVC_FILE)


def test_the_same_params_give_the_same_digest(values, keys):
    digest = params_digest(values, keys)
    assert len(digest) == 16 and int(digest, 16) >= 0
    again = json.loads(json.dumps(values))
    reordered = {k: again[k] for k in reversed(list(again))}  # key order does not count
    assert params_digest(reordered, list(reversed(keys))) == digest
    assert params_digest(values, [*keys, "cams.batch_size", "data.num_classes"]) == digest  # inside a listed group
    assert params_digest(resolved(load_params(ROOT / "params.yaml")), keys) == digest


@pytest.mark.parametrize(
    "group, key, value",
    [
        ("finetune", "epochs", 99),
        ("baseline", "label_smoothing", 0.3),
        ("data", "num_classes", 3),
        ("cams", "amp", True),
        ("evaluate", "loc_threshold", 0.35),
        ("model", "input_size", 128),
        ("cpu", "kernels", "portable"),
        ("distributed", "nproc", 2),
        ("preprocess", "eval_size", 77),
    ],
)
def test_a_declared_key_changes_the_digest(values, keys, group, key, value):
    changed = copy.deepcopy(values)
    assert changed[group][key] != value
    changed[group][key] = value
    assert params_digest(changed, keys) != params_digest(values, keys)


@pytest.mark.parametrize(
    "group, key, value",
    [
        ("report", "dpi", 300),
        ("report", "gallery_images", 2),
        ("download", "workers", 16),
        ("download", "archive_dir", "/elsewhere"),
        ("finetune", "workers", 4),
    ],
)
def test_an_undeclared_key_leaves_the_digest(values, keys, group, key, value):
    changed = copy.deepcopy(values)
    assert changed[group][key] != value
    changed[group][key] = value
    assert params_digest(changed, keys) == params_digest(values, keys)


def test_a_missing_key_is_left_out_not_an_error():
    assert params_digest({"a": 1}, ["a", "b.c"]) == params_digest({"a": 1}, ["a"])
    assert params_digest({"a": 1}, ["a"]) != params_digest({"a": 2}, ["a"])


@pytest.mark.parametrize(
    "name, classes, images, full",
    [
        ("ilsvrc", 1000, 50000, True),
        ("ilsvrc", 4, 200, False),
        ("ilsvrc", 1000, 200, False),
        ("openimages", 100, 5000, True),
        ("cub", 200, 5794, True),
        ("cub", 3, 3, False),
        ("cars", 196, 8041, True),
        ("synthbirds", 10, 1000, None),
    ],
)
def test_the_dataset_block_says_whether_the_run_used_the_full_dataset(name, classes, images, full):
    block = dataset_block(name, classes, images)
    assert block == {"name": name, "num_classes": classes, "test_images": images, "full": full}
    assert block["full"] is full
