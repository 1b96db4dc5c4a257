"""End to end: miniature CUB and ILSVRC copies, kept the way labs keep them (extracted folders, the localization
challenge's CSV layout), through the real `dvc repro` with only params changed; user values win over the cub
preset; changing a file in the dataset's folder reruns `download`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.data.test_layouts import cub_members, ilsvrc_layouts, ilsvrc_members, listing, write_tree
from tests.e2e.test_pipeline import run
from tests.project import copy_project

# slow group (`make test-slow`): two more whole pipelines (resnet50 among them); the layouts themselves are
# read by the unit tests of tests/data/test_layouts.py and test_real_datasets.py
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMMON = {  # small and quick; every value here is a user value (none may be replaced by a preset)
    "baseline": {"epochs": 1, "replicates": [0], "pretrained": "none"},
    "finetune": {"epochs": 1, "replicates": [0]},
    "evaluate": {"bootstrap_resamples": 200, "protocols": "none"},
    "report": {"gallery_images": 2},
    "cpu": {"kernels": "native"},
}


def make_repo(tmp_path_factory, name: str, overrides: dict) -> Path:
    dest = tmp_path_factory.mktemp(name)
    copy_project(dest)
    run(["git", "init", "-q"], dest)
    (dest / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    run([sys.executable, "-m", "pipeline.params", "apply", "overrides.yaml"], dest)
    (dest / "overrides.yaml").unlink()
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", name], dest)
    return dest


def test_cub_extracted_folders_resnet50_user_values_win(tmp_path_factory):
    """CUB as extracted folders (CUB_200_2011/ + segmentations/), with verify: content, resnet50 on cub (a preset
    of 224 px and 50 + 50 epochs): `finetune.epochs: 1` and `model.input_size: 32` set by the user win."""
    members, seg = cub_members()
    lab = tmp_path_factory.mktemp("lab")
    src = write_tree(lab / "CUB", {**members, **seg})
    before = listing(src)
    repo = make_repo(
        tmp_path_factory,
        "cub",
        {
            **COMMON,
            "dataset": "cub",
            "backbone": "resnet50",
            "model": {"input_size": 32, "batch_size": 4},
            "datasets": {
                "cub": {
                    "num_classes": 3,
                    "val_per_class": 1,
                    "segmentations": True,
                    "source_dir": str(src),
                    "verify": "content",
                }
            },
        },
    )
    proc = run(["dvc", "repro"], repo)
    assert "preset cub/resnet50" in proc.stdout + proc.stderr
    resolved = json.loads((repo / "data/params.json").read_text())
    assert resolved["finetune"]["epochs"] == 1 and resolved["model"]["input_size"] == 32
    assert resolved["model"]["large_feature_map"] is True  # not set by the user: the preset fills it
    with open(repo / "reports/finetune/baseline_0/replicate_0/plots/metrics/train/bce.tsv") as fh:
        assert len(list(csv.DictReader(fh, delimiter="\t"))) == 1  # one fine-tuning epoch was trained
    source = json.loads((repo / "data/raw/cub/source.json").read_text())
    assert source["sources"]["CUB_200_2011"]["kind"] == "folder"
    assert source["counts"] == {"train": 3, "val": 3, "test": 3}
    assert json.loads((repo / "data/prepared/cub/dataset.json").read_text())["mask_splits"] == ["test", "val"]
    assert listing(src) == before  # nothing written into the lab's folder
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["dataset"]["full"] is False and metrics["dataset"]["num_classes"] == 3

    # a file of the lab's copy changes: download reruns (and the data after it, since the bytes differ)
    image = next(src.rglob("Laysan_Albatross_0001_4.jpg"))
    image.write_bytes(image.read_bytes()[:-2] + b"\x00\xd9")
    again = run(["dvc", "repro", "preprocess"], repo)
    assert "Running stage 'download'" in again.stdout


def test_ilsvrc_localization_challenge_layout(tmp_path_factory):
    """ImageNet as the localization challenge ships it (LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/{train,val}),
    train_per_class 2: all nine stages."""
    lab = tmp_path_factory.mktemp("lab")
    src = write_tree(lab, ilsvrc_layouts(ilsvrc_members())["localization challenge"]) / "challenge"
    repo = make_repo(
        tmp_path_factory,
        "ilsvrc",
        {
            **COMMON,
            "dataset": "ilsvrc",
            "backbones": {"resnet10t": {"input_size": 32, "batch_size": 4}},
            "datasets": {
                "ilsvrc": {
                    "num_classes": 3,
                    "val_per_class": 1,
                    "train_per_class": 2,
                    "source_dir": str(src),
                    "verify": "content",
                }
            },
        },
    )
    run(["dvc", "repro"], repo)
    source = json.loads((repo / "data/raw/ilsvrc/source.json").read_text())
    assert {s["kind"] for s in source["sources"].values()} == {"folder"}
    assert source["counts"] == {"train": 6, "val": 3, "test": 5}
    assert source["sources"]["train"]["files_read"] == 6
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["dataset"]["test_images"] == 5 and metrics["dataset"]["full"] is False
    assert (repo / "reports/summary.md").is_file()
