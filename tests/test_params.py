"""params.yaml validation: every problem is reported, with the key and what is valid."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, deep_merge, load_params, validate

ROOT = Path(__file__).resolve().parents[1]


def fallback(dotted: str):
    """The schema's default of a key a preset can fill (its `fallback`, declared once in pipeline/params.py)."""
    from pipeline.params import fallback_of

    return fallback_of(dotted)


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(ParamsError) as info:
        validate(data)
    return info.value.problems


def test_committed_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.dataset == "synthbirds"
    assert p.model == p.backbones[p.backbone]
    assert p.eval_size == p.model.input_size


def test_smoke_overrides_are_valid(base):
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    p = validate(deep_merge(base, smoke))
    assert p.data.train_per_class < base["datasets"]["synthbirds"]["train_per_class"]
    assert (p.baseline.epochs, p.finetune.epochs, p.model.input_size) == (2, 2, 48)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_config_applies_and_validates(tmp_path, config):
    """`python -m pipeline.params apply configs/<name>.yaml` writes a params.yaml that validates."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.params", "apply", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    load_params(tmp_path / "params.yaml")


def test_params_are_frozen(base):
    p = validate(base)
    with pytest.raises(AttributeError):
        p.finetune.lr = 1.0


@pytest.mark.parametrize(
    "alias,canonical",
    [("inception", "inception"), ("inception_v3", "inception"), ("vgg16", "vgg16"), ("resnet50", "resnet50")],
)
def test_backbone_switch_resolves_table(base, alias, canonical):
    p = validate({**base, "backbone": alias})
    assert p.backbone == canonical
    assert p.model == p.backbones[canonical]
    assert p.finetune_lr == p.backbones[canonical].finetune_lr


def test_any_timm_model_uses_fallback_entry(base):
    p = validate({**base, "backbone": "efficientnet_b0"})
    assert p.backbone == "efficientnet_b0"
    assert p.model == p.backbones["any_timm"]


def test_unknown_backbone_lists_choices(base):
    [msg] = problems({**base, "backbone": "resnet5"})
    assert msg.startswith("backbone: unknown backbone 'resnet5'")
    for name in ("inception", "resnet10t", "resnet18", "resnet50", "vgg16", "inception_v3"):
        assert name in msg
    assert "Did you mean: resnet50" in msg


def test_negative_lr_names_key_and_range(base):
    data = copy.deepcopy(base)
    data["finetune"]["lr"] = -1
    [msg] = problems(data)
    assert msg == "finetune.lr: -1.0 is out of range; valid: (0.0, 10.0]"


def test_explicit_lr_overrides_table(base):
    data = copy.deepcopy(base)
    data["finetune"]["lr"] = 0.123
    assert validate(data).finetune_lr == 0.123


def test_every_problem_reported_at_once(base):
    data = copy.deepcopy(base)
    data["backbone"] = "nope_net"
    data["dataset"] = "mnist"
    data["seed"] = "seven"
    data["finetune"]["head_init"] = "copy"
    data["finetune"]["bn_mode"] = 3
    data["baseline"]["epochs"] = 2.5
    data["baseline"]["lrr"] = 0.1
    del data["finetune"]["momentum"]
    data["datasets"]["synthbirds"]["num_classes"] = 1
    data["backbones"]["vgg16"]["input_size"] = True
    data["device"] = "tpu"
    msgs = problems(data)
    expected = [
        "backbone: unknown backbone 'nope_net'",
        "dataset: 'mnist' is not valid; choose one of: synthbirds",
        "seed: must be an integer, got 'seven' (str)",
        "finetune.head_init: 'copy' is not valid; choose one of: clone, random",
        "finetune.bn_mode: must be a string, got 3 (int)",
        "baseline.epochs: must be an integer or null, got 2.5 (float)",
        "baseline.lrr: unknown key (did you mean 'lr'?)",
        "finetune.momentum: missing",
        "datasets.synthbirds.num_classes: 1 is out of range; valid: [2, 64]",
        "backbones.vgg16.input_size: must be an integer, got True (bool)",
    ]
    for start in expected:
        assert any(m.startswith(start) for m in msgs), (start, msgs)
    assert len(msgs) == len(expected)


def test_cross_field_checks(base):
    data = copy.deepcopy(base)
    data["device"] = "tpu"
    data["datasets"]["synthbirds"]["min_distractors"] = 9
    data["backbones"]["vgg16"]["output_stride"] = 16
    data["baseline"]["epochs"] = 0
    msgs = problems(data)
    assert "device: 'tpu' is not valid; choose one of: auto, cpu, cuda, cuda:N" in msgs
    assert any(m.startswith("datasets.synthbirds.min_distractors: 9 is above max_distractors") for m in msgs)
    assert any(m.startswith("backbones.vgg16.output_stride: must be null") for m in msgs)
    assert any(m.startswith("baseline.epochs: 0 needs baseline.checkpoint") for m in msgs)


def test_choice_of_output_stride(base):
    data = copy.deepcopy(base)
    data["backbones"]["resnet10t"]["output_stride"] = 12
    assert problems(data) == ["backbones.resnet10t.output_stride: 12 is not valid; choose one of: null, 8, 16, 32"]


def test_feature_stage_range_and_wsol_backbones(base):
    data = copy.deepcopy(base)
    data["backbones"]["resnet50"]["feature_stage"] = 3
    assert any(
        m.startswith("backbones.resnet50.feature_stage: must be null for the WSOL backbone 'resnet50'")
        for m in problems(data)
    )
    data["backbones"]["resnet10t"]["feature_stage"] = -1
    assert "backbones.resnet10t.feature_stage: -1 is out of range; valid: [0, 16]" in problems(data)
    del data["backbones"]["vgg16"]["feature_stage"]
    assert any(m.startswith("backbones.vgg16.feature_stage: missing (timm backbones only") for m in problems(data))


def test_not_a_mapping():
    assert problems([1, 2]) == ["params: must be a mapping of keys, got list"]


def test_stage_exits_nonzero_with_message(tmp_path, base):
    data = copy.deepcopy(base)
    data["backbone"] = "resnet5"
    data["finetune"]["lr"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.params", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "finetune.lr: -1.0 is out of range" in proc.stderr
    assert "backbone: unknown backbone 'resnet5'" in proc.stderr


def test_dataset_preset_sets_the_papers_hyperparameters(base):
    data = copy.deepcopy(base)
    data["dataset"], data["backbone"] = "cub", "inception_v3"  # alias of the `inception` entry
    p = validate(data)
    assert p.preset == "cub/inception"
    assert (p.model.input_size, p.model.large_feature_map, p.model.batch_size) == (224, True, 32)
    assert p.baseline_lr == pytest.approx(2.24844746e-3) and p.finetune_lr == pytest.approx(1e-3)
    assert (p.baseline.epochs, p.baseline.lr_decay_every, p.finetune.epochs, p.finetune.lr_decay_every) == (
        50,
        15,
        50,
        15,
    )
    assert p.baseline.pretrained == "imagenet" and p.baseline.lr_classifier_ratio == 10.0
    assert p.evaluate.loc_threshold == 0.05  # the precursor's CUB InceptionV3 setting
    # other params are untouched
    assert p.finetune.head_init == base["finetune"]["head_init"]
    assert p.eval_size == 224


def test_preset_values_are_changed_in_the_preset_and_absent_keys_leave_params_alone(base):
    data = copy.deepcopy(base)
    data["dataset"], data["backbone"] = "ilsvrc", "vgg16"
    data["datasets"]["ilsvrc"]["presets"] = {"vgg16": {"baseline_epochs": 1}}
    p = validate(data)
    assert p.baseline.epochs == 1 and p.preset_values == {"baseline.epochs": 1}
    assert p.model == p.backbones["vgg16"] and p.finetune.epochs == fallback("finetune.epochs")


def test_a_presets_shared_values_apply_to_the_backbones_listed_and_their_own_values_win(base):
    data = copy.deepcopy(base)
    data["dataset"], data["backbone"] = "ilsvrc", "vgg16"
    data["datasets"]["ilsvrc"]["presets"] = {
        "shared": {"baseline_epochs": 4, "finetune_epochs": 5},
        "vgg16": {"baseline_epochs": 1},
        "resnet50": {},
    }
    p = validate(data)
    assert p.preset == "ilsvrc/vgg16" and p.preset_values == {"baseline.epochs": 1, "finetune.epochs": 5}
    p = validate({**data, "backbone": "resnet50"})
    assert p.preset_values == {"baseline.epochs": 4, "finetune.epochs": 5}
    p = validate({**data, "backbone": "inception"})  # not listed: no preset, not even the shared values
    assert p.preset is None and p.preset_values == {} and p.baseline.epochs == fallback("baseline.epochs")


def test_the_committed_presets_write_each_value_once(base):
    """Per dataset one shared block and the per-backbone differences: no value repeated in every backbone."""
    for name in ("cub", "cars", "ilsvrc", "openimages"):
        presets = base["datasets"][name]["presets"]
        backbones = [b for b in presets if b != "shared"]
        assert set(backbones) == {"vgg16", "resnet50", "inception"}
        for key, value in presets[backbones[0]].items():
            assert not all(presets[b].get(key) == value for b in backbones), (name, key)
            assert key not in presets["shared"], (name, key)


def test_no_preset_for_a_backbone_without_one_and_a_checkpoint_is_not_overridden(base):
    data = copy.deepcopy(base)
    data["dataset"], data["backbone"] = "cars", "resnet10t"
    p = validate(data)
    assert p.preset is None and p.baseline.epochs == fallback("baseline.epochs") and p.preset_values == {}
    data["backbone"] = "resnet50"
    data["baseline"]["checkpoint"] = "vanilla.pth.tar"
    data["baseline"]["replicates"] = [0]  # an imported checkpoint is one fixed model
    p = validate(data)
    assert p.preset == "cars/resnet50" and p.baseline.pretrained == "none" and p.baseline.epochs == 10
    assert "baseline.pretrained" not in p.preset_values and p.preset_values["baseline.epochs"] == 10
    data["baseline"]["pretrained"] = "imagenet"  # set by the user: the cross-check still applies
    assert any(
        m.startswith("baseline.pretrained: 'imagenet' has no effect when baseline.checkpoint") for m in problems(data)
    )


# ----------------------------------------------------------------------------------------------------
# Presets fill only what params.yaml leaves null; a value the user sets always wins

CUB_RESNET50 = {
    "model.input_size": 224,
    "model.large_feature_map": True,
    "model.batch_size": 32,
    "model.baseline_weight_decay": 0.0001,
    "model.finetune_weight_decay": 0.0001,
    "baseline.pretrained": "imagenet",
    "baseline.epochs": 50,
    "baseline.lr": 0.00023222617,
    "baseline.lr_classifier_ratio": 10.0,
    "baseline.lr_decay_every": 15,
    "finetune.epochs": 50,
    "finetune.lr": 0.0001,
    "finetune.lr_decay_every": 15,
}
PRESET_KEYS = {
    "baseline.epochs": 10,
    "baseline.lr_decay_every": 7,
    "baseline.lr_classifier_ratio": 1.0,
    "baseline.pretrained": "none",
    "finetune.epochs": 3,
    "finetune.lr_decay_every": 3,
    "evaluate.loc_threshold": 0.2,
}


def cub_resnet50(base: dict, **changes) -> dict:
    data = {**copy.deepcopy(base), "dataset": "cub", "backbone": "resnet50"}
    for dotted, value in changes.items():
        data = set_key(data, dotted, value)
    return data


def test_committed_params_leave_the_preset_keys_null_and_the_schema_declares_their_defaults(base):
    for dotted, default in PRESET_KEYS.items():
        group, name = dotted.split(".")
        assert base[group][name] is None, dotted
        assert fallback(dotted) == default, dotted
    assert set(base["model"]) == {
        "input_size",
        "large_feature_map",
        "batch_size",
        "baseline_weight_decay",
        "finetune_weight_decay",
    } and not any(base["model"].values())
    for name in ("cub", "cars", "ilsvrc", "openimages"):
        assert base["datasets"][name]["verify"] == "published"


def test_fallbacks_are_valid_values_of_their_own_keys(base):
    """A default that its own key would reject is caught here, not in a stage."""
    for dotted in PRESET_KEYS:
        data = set_key(base, dotted, fallback(dotted))
        assert resolved_of(data) == resolved_of(base), dotted  # the default written out: the same bytes


def test_preset_targets_cover_every_preset_field():
    import dataclasses
    import typing

    from pipeline.params import PRESET_TARGETS, ParamsFile, PresetParams

    assert set(PRESET_TARGETS) == {f.name for f in dataclasses.fields(PresetParams)}
    hints = typing.get_type_hints(ParamsFile)
    for target in PRESET_TARGETS.values():
        group, name = target.split(".")
        assert type(None) in typing.get_args(typing.get_type_hints(hints[group])[name]), target  # nullable


def test_without_a_preset_null_means_the_schema_default_and_the_backbone_table(base):
    for dataset, backbone in (("synthbirds", "resnet50"), ("cars", "resnet10t")):
        p = validate({**base, "dataset": dataset, "backbone": backbone})
        assert p.preset is None and p.preset_values == {}
        assert (
            p.baseline.epochs,
            p.baseline.lr_decay_every,
            p.baseline.lr_classifier_ratio,
            p.baseline.pretrained,
            p.finetune.epochs,
            p.finetune.lr_decay_every,
            p.evaluate.loc_threshold,
        ) == tuple(PRESET_KEYS.values())
        assert p.model == p.backbones[backbone] and p.baseline_lr == p.backbones[backbone].baseline_lr
    # model: set by the user wins over the table, and the keys that follow it (eval grid, cams batch) too
    p = validate(set_key(set_key(base, "model.input_size", 64), "model.batch_size", 8))
    assert p.model.input_size == 64 and p.eval_size == 64 and p.model.batch_size == 8
    r = json.loads(resolved_of(set_key(set_key(base, "model.input_size", 64), "model.batch_size", 8)))
    assert r["model"]["input_size"] == 64 and r["preprocess"]["eval_size"] == 64 and r["cams"]["batch_size"] == 8


def test_a_preset_fills_the_nulls(base):
    p = validate(cub_resnet50(base))
    assert p.preset == "cub/resnet50" and dict(p.preset_values) == CUB_RESNET50
    assert (p.model.input_size, p.model.large_feature_map, p.model.batch_size) == (224, True, 32)
    assert (p.baseline.epochs, p.finetune.epochs, p.baseline.lr_decay_every) == (50, 50, 15)
    assert p.baseline_lr == 0.00023222617 and p.finetune_lr == 0.0001 and p.eval_size == 224
    assert p.evaluate.loc_threshold == 0.2  # not in this preset: the schema default
    r = json.loads(resolved_of(cub_resnet50(base)))
    assert r["preset_values"] == CUB_RESNET50 and r["preset"] == "cub/resnet50"
    assert r["baseline"]["epochs"] == 50 and r["model"]["input_size"] == 224 and r["baseline"]["lr"] == 0.00023222617


def test_a_value_the_user_sets_wins_over_the_preset(base):
    data = cub_resnet50(
        base,
        **{
            "finetune.epochs": 1,
            "model.input_size": 64,
            "baseline.lr": 0.0123,
            "model.large_feature_map": False,
            "evaluate.loc_threshold": 0.3,
        },
    )
    p = validate(data)
    assert p.finetune.epochs == 1 and p.model.input_size == 64 and p.baseline_lr == 0.0123
    assert p.model.large_feature_map is False and p.evaluate.loc_threshold == 0.3 and p.eval_size == 64
    # the rest still comes from the preset, and only that is listed as filled
    assert p.baseline.epochs == 50 and p.finetune_lr == 0.0001 and p.model.batch_size == 32
    assert dict(p.preset_values) == {
        k: v
        for k, v in CUB_RESNET50.items()
        if k not in ("finetune.epochs", "model.input_size", "baseline.lr", "model.large_feature_map")
    }
    r = json.loads(resolved_of(data))
    assert (r["finetune"]["epochs"], r["model"]["input_size"], r["baseline"]["lr"]) == (1, 64, 0.0123)
    assert "finetune.epochs" not in r["preset_values"]
    # a value equal to the preset's gives the same resolved bytes but for the list of filled keys
    same = json.loads(resolved_of(cub_resnet50(base, **{"finetune.epochs": 50})))
    filled = json.loads(resolved_of(cub_resnet50(base)))
    assert same.pop("preset_values") != filled.pop("preset_values") and same == filled


def test_the_stage_keys_a_preset_sets_keep_their_cross_checks(base):
    data = cub_resnet50(base)
    data["datasets"]["cub"]["presets"]["resnet50"]["baseline_epochs"] = 0
    assert any(m.startswith("baseline.epochs: 0 needs baseline.checkpoint") for m in problems(data))
    data = set_key(data, "baseline.epochs", 2)  # the user's value wins: no problem
    assert validate(data).baseline.epochs == 2


def test_bad_values_of_the_new_keys_name_the_key_and_what_is_valid(base):
    data = copy.deepcopy(base)
    data["model"]["input_size"] = 8
    data["model"]["large_feature_map"] = "yes"
    data["model"]["batch_sise"] = 4
    data["baseline"]["pretrained"] = "random"
    data["finetune"]["epochs"] = 0
    data["evaluate"]["loc_threshold"] = 2
    data["datasets"]["cub"]["verify"] = "sha256"
    del data["datasets"]["ilsvrc"]["verify"]
    assert sorted(problems(data)) == sorted(
        [
            "model.input_size: 8 is out of range; valid: [32, 1024]",
            "model.large_feature_map: must be true or false or null, got 'yes' (str)",
            "model.batch_sise: unknown key (did you mean 'batch_size'?); valid keys here: input_size, "
            "large_feature_map, batch_size, baseline_weight_decay, finetune_weight_decay",
            "baseline.pretrained: 'random' is not valid; choose one of: none, imagenet",
            "finetune.epochs: 0 is out of range; valid: [1, 10000]",
            "evaluate.loc_threshold: 2.0 is out of range; valid: [0.0, 1.0]",
            "datasets.cub.verify: 'sha256' is not valid; choose one of: published, content",
            "datasets.ilsvrc.verify: missing (published | content: which copies of the files are accepted)",
        ]
    )
    data = copy.deepcopy(base)
    del data["model"]
    assert problems(data) == [
        "model: missing (this run's backbone settings (null = the dataset's preset, else backbones.<backbone>))"
    ]


def test_verify_is_resolved_into_the_dataset_settings(base):
    data = {**copy.deepcopy(base), "dataset": "cars"}
    data["datasets"]["cars"]["verify"] = "content"
    p = validate(data)
    assert p.data.verify == "content" and json.loads(resolved_of(data))["data"]["verify"] == "content"


@pytest.mark.parametrize("command", ["validate", "check"])
def test_validate_and_check_print_what_the_preset_filled(tmp_path, base, command):
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    data = cub_resnet50(base, **{"finetune.epochs": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.params", command], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    prefix = "validate: " if command == "validate" else ""
    filled = (
        "model.input_size=224, model.large_feature_map=true, model.batch_size=32, "
        "model.baseline_weight_decay=0.0001, model.finetune_weight_decay=0.0001, baseline.pretrained=imagenet, "
        "baseline.epochs=50, baseline.lr=0.00023222617, baseline.lr_classifier_ratio=10.0, "
        "baseline.lr_decay_every=15, finetune.lr=0.0001, finetune.lr_decay_every=15"
    )
    assert proc.stdout.splitlines()[1] == (
        f"{prefix}preset cub/resnet50 filled: {filled}; params.yaml's values kept: finetune.epochs=1 (preset: 50)"
    )
    if command == "validate":
        assert json.loads((tmp_path / "data/params.json").read_text())["preset_values"] == {
            k: v for k, v in CUB_RESNET50.items() if k != "finetune.epochs"
        }


def test_bad_preset_keys_are_named(base):
    data = copy.deepcopy(base)
    data["datasets"]["cub"]["presets"]["vgg16"]["baseline_epoch"] = 3
    data["datasets"]["cub"]["presets"]["vgg16"]["pretrained"] = "yes"
    found = problems(data)
    assert any(
        m.startswith("datasets.cub.presets.vgg16.baseline_epoch: unknown key (did you mean 'baseline_epochs'?)")
        for m in found
    ), found
    assert any(m.startswith("datasets.cub.presets.vgg16.pretrained:") and "imagenet" in m for m in found), found


def test_family_and_grad_head_are_validated(base):
    assert validate(base).family == "cam" and validate(base).grad_head.grid == 3
    data = copy.deepcopy(base)
    data["family"] = "gradcam"
    data["grad_head"]["hidden"] = 0
    data["grad_head"]["gird"] = 2
    assert sorted(problems(data)) == [
        "family: 'gradcam' is not valid; choose one of: cam, grad",
        "grad_head.gird: unknown key (did you mean 'grid'?); valid keys here: grid, hidden",
        "grad_head.hidden: 0 is out of range; valid: [1, 8192]",
    ]
    data = copy.deepcopy(base)
    del data["family"]
    assert problems(data)[0].startswith("family: missing (model family: cam")
    data = copy.deepcopy(base)
    data["family"] = "grad"
    assert validate(data).family == "grad"


# ----------------------------------------------------------------------------------------------------
# NaN, infinity, empty and duplicated keys; the resolved params the DVC stages are keyed on


def float_leaves(data, loc=()):
    """The dotted key of every number-typed param in a params mapping (by the schema: a null key included)."""
    from pipeline.params import schema_at

    for key, value in data.items():
        here = (*loc, key)
        if isinstance(value, dict):
            yield from float_leaves(value, here)
        elif schema_at(here)[1] is float:
            yield ".".join(here)


def set_key(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


def test_every_float_in_params_yaml_rejects_nan_and_infinity(base):
    keys = list(float_leaves(base))
    assert "evaluate.loc_threshold" in keys and "datasets.cub.presets.vgg16.baseline_lr" in keys and len(keys) > 40
    assert "model.baseline_weight_decay" in keys and "baseline.lr_classifier_ratio" in keys
    for key in keys:
        for bad in (float("nan"), float("inf"), float("-inf")):
            assert problems(set_key(base, key, bad)) == [f"{key}: must be a finite number, got {bad!r}"], key


@pytest.mark.parametrize("key", ["finetune.lr", "baseline.lr", "finetune.pos_weight", "evaluate.loc_threshold"])
def test_nan_from_yaml_is_named(tmp_path, base, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(set_key(base, key, "NAN")).replace("NAN", ".nan"))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert info.value.problems == [f"{key}: must be a finite number, got nan"]


def test_typos_anywhere_are_named_with_the_valid_keys(base):
    data = copy.deepcopy(base)
    data["finetun"] = {"lr": 0.1}
    data["finetune"]["epoch"] = 5
    data["datasets"]["cub"]["segmentation"] = True
    found = problems(data)
    assert any(m.startswith("datasets.cub.segmentation: unknown key (did you mean 'segmentations'?)") for m in found)
    assert any(
        m.startswith("finetun: unknown key (did you mean 'finetune'?); valid keys here: dataset, backbone")
        for m in found
    ), found
    assert any(
        m.startswith("finetune.epoch: unknown key (did you mean 'epochs'?); valid keys here: head_init") for m in found
    ), found
    assert len(found) == 3


def test_empty_missing_and_duplicated_files(tmp_path, base):
    path = tmp_path / "params.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(
        ParamsError, match="the file is empty; it must map the keys dataset, backbone, family, grad_head, seed"
    ):
        load_params(path)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")
    text = yaml.safe_dump(base, sort_keys=False)
    path.write_text(text + "seed: 7\n")
    with pytest.raises(ParamsError, match=r"found duplicate key 'seed' \(first given on line \d+\)"):
        load_params(path)


def resolved_of(data: dict) -> str:
    from pipeline.params import resolved_json

    return resolved_json(validate(data))


def test_resolved_params_ignore_other_datasets_backbones_and_presets(base):
    same = resolved_of(base)
    other = copy.deepcopy(base)
    other["datasets"]["cub"]["presets"]["resnet10t"] = {"input_size": 224, "finetune_lr": 0.5}
    other["datasets"]["cub"]["num_classes"] = 7
    other["backbones"]["vgg16"]["finetune_lr"] = 0.5
    other["backbones"]["any_timm"]["input_size"] = 64
    assert resolved_of(other) == same
    # on cub with resnet50, the vgg16 preset is another backbone's; resnet50's own is applied
    cub = {**copy.deepcopy(base), "dataset": "cub", "backbone": "resnet50"}
    before = json.loads(resolved_of(cub))
    cub["datasets"]["cub"]["presets"]["vgg16"]["finetune_lr"] = 0.5
    assert json.loads(resolved_of(cub)) == before
    cub["datasets"]["cub"]["presets"]["resnet50"]["finetune_lr"] = 0.5
    after = json.loads(resolved_of(cub))
    assert after["model"]["finetune_lr"] == 0.5 and after["finetune"]["lr"] == 0.5
    assert {k for k in after if after[k] != before[k]} == {"model", "finetune", "preset_values"}
    assert after["preset_values"]["finetune.lr"] == 0.5
    assert before["preset"] == "cub/resnet50" and "presets" not in before["data"]


def test_resolved_params_fill_in_the_table_defaults(base):
    r = json.loads(resolved_of(base))
    entry = base["backbones"][base["backbone"]]
    assert r["model"] == entry and r["data"] == base["datasets"]["synthbirds"]
    assert r["baseline"]["lr"] == entry["baseline_lr"] and r["finetune"]["lr"] == entry["finetune_lr"]
    assert r["cams"]["batch_size"] == entry["batch_size"] and r["preprocess"]["eval_size"] == entry["input_size"]
    # the same network under another name, and a timm name without an entry of its own
    assert json.loads(resolved_of({**base, "backbone": "inception_v3"}))["model"] == base["backbones"]["inception"]
    timm = json.loads(resolved_of({**base, "backbone": "efficientnet_b0"}))
    assert timm["backbone"] == "efficientnet_b0" and timm["model"] == base["backbones"]["any_timm"]
    # an explicit value equal to the table's gives the same bytes: nothing reruns
    assert resolved_of(set_key(base, "finetune.lr", entry["finetune_lr"])) == resolved_of(base)
    # floats are written exactly (pipeline.io's canonical JSON keeps 6 decimals)
    assert json.loads(resolved_of(set_key(base, "finetune.lr", 1.268269e-05)))["finetune"]["lr"] == 1.268269e-05


DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize(
    "dataset,backbone",
    [
        ("synthbirds", "resnet10t"),
        ("synthbirds", "inception_v3"),
        ("synthbirds", "efficientnet_b0"),
        ("cub", "resnet50"),
        ("openimages", "mobilenetv2"),
        ("ilsvrc", "vgg16"),
    ],
)
def test_every_key_a_stage_declares_exists_in_the_resolved_params(base, dataset, backbone):
    """dvc.yaml keys stages on data/params.json: every declared key must be there for every kind of backbone
    (own entry, alias, any_timm) and dataset, else DVC fails the stage with 'missing params'."""
    from pipeline.params import RESOLVED_FILE, resolved

    r = resolved(validate({**base, "dataset": dataset, "backbone": backbone}))
    declared = 0
    for name, stage in DVC_STAGES.items():
        for entry in stage.get("do", stage).get("params", []):  # a foreach stage's definition is under `do`
            if isinstance(entry, dict) and RESOLVED_FILE.as_posix() in entry:
                for key in entry[RESOLVED_FILE.as_posix()]:
                    node = r
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, (name, key)
                        node = node[part]
                    declared += 1
            else:  # only validate reads params.yaml itself
                assert name == "validate" and entry == {"params.yaml": None}, (name, entry)
    assert declared > 50


def test_validate_command_writes_the_resolved_file_or_fails_naming_the_key(tmp_path, base):
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    cmd = [sys.executable, "-m", "pipeline.params", "validate"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "validate: params.yaml is valid: dataset=synthbirds backbone=resnet10t -> data/params.json\n"
    assert (tmp_path / "data/params.json").read_text() == resolved_of(base)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base) + "finetun: {lr: 0.1}\n")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "finetun: unknown key (did you mean 'finetune'?); valid keys here: dataset, backbone" in proc.stderr


def test_fine_tuning_replicates_and_seeds(base):
    p = validate(base)
    assert p.finetune.replicates == [0] and p.baseline.replicates == [0, 1, 2]
    assert p.finetune_seed(2) == p.finetune.seed + 2 and p.finetune_seed(2, baseline=1) == p.finetune.seed + 1002
    assert p.baseline_seed(2) == p.baseline.seed + 2
    bad = copy.deepcopy(base)
    bad["finetune"]["replicates"] = [0, 1, 1, -1, "a"]
    bad["finetune"]["seed"] = 2**32 - 1
    got = problems(bad)
    assert "finetune.replicates[3]: -1 is out of range; valid: [0, 999]" in got
    assert "finetune.replicates[4]: must be an integer, got 'a' (str)" in got
    bad["finetune"]["replicates"] = [0, 1, 1]
    got = problems(bad)
    assert "finetune.replicates: [0, 1, 1] has repeats; give each replicate index once, e.g. [0, 1, 2]" in got
    assert (
        "finetune.seed: 4294967295 + 1000 x the largest baseline replicate 2 + the largest fine-tuning "
        "replicate 1 is above 2**32 - 1"
    ) in got
    bad["finetune"]["replicates"] = []
    assert problems(bad) == ["finetune.replicates: must be a non-empty list, got []"]
    bad = copy.deepcopy(base)
    bad["baseline"]["replicates"] = [1, 1]
    assert problems(bad) == ["baseline.replicates: [1, 1] has repeats; give each replicate index once, e.g. [0, 1, 2]"]
    bad["baseline"]["replicates"] = []
    assert problems(bad) == ["baseline.replicates: must be a non-empty list, got []"]
    bad["baseline"]["replicates"] = [0, 1]
    bad["baseline"]["checkpoint"] = "data/imports/model.pt"
    assert problems(bad) == [
        "baseline.replicates: [0, 1] asks for 2 baselines, but baseline.checkpoint imports one "
        "fixed model; set baseline.replicates: [0]"
    ]


def test_bootstrap_resamples_has_a_floor(base):
    from pipeline.metrics.intervals import MIN_RESAMPLES

    for value in (1, MIN_RESAMPLES - 1):
        bad = copy.deepcopy(base)
        bad["evaluate"]["bootstrap_resamples"] = value
        got = problems(bad)
        assert len(got) == 1 and got[0].startswith(
            f"evaluate.bootstrap_resamples: {value} is out of range; valid: [{MIN_RESAMPLES}, 1000000]"
        ), got
    ok = copy.deepcopy(base)
    ok["evaluate"]["bootstrap_resamples"] = MIN_RESAMPLES
    assert validate(ok).evaluate.bootstrap_resamples == MIN_RESAMPLES


def test_cpu_kernels_avx2_needs_an_avx2_cpu(base, monkeypatch):
    import pipeline.params as params_module

    assert validate(base).cpu.kernels == "avx2" and validate(base).cpu.threads == 2
    monkeypatch.setattr(params_module, "cpu_supports_avx2", lambda: False)
    assert problems(base) == [
        "cpu.kernels: 'avx2' needs a CPU with AVX2 and FMA, which this one lacks; set "
        "cpu.kernels: portable (the same bytes on any x86-64 CPU, slower) or native"
    ]
    other = copy.deepcopy(base)
    other["cpu"]["kernels"] = "portable"
    assert validate(other).cpu.kernels == "portable"
    other["cpu"]["kernels"] = "sse"
    assert problems(other) == ["cpu.kernels: 'sse' is not valid; choose one of: avx2, portable, native"]


# ----------------------------------------------------------------------------------------------------
# Probes that used to fail late (in a stage) or with a traceback: validate names them in seconds


@pytest.mark.parametrize(
    "grid,value,used",
    [("wsol", 0.35, 0.35000000000000003), ("wsol", 0.2, 0.2), ("official", 0.35, 0.35), ("official", 1.0, 1.0)],
)
def test_loc_threshold_becomes_the_grids_value(base, grid, value, used):
    """evaluate finds loc_threshold on the threshold grid by float equality (pipeline/metrics/boxes.py): 0.35 is
    not np.arange(0, 1, 0.001)'s float for it, so validate uses the grid's value and says so."""
    from pipeline.metrics.boxes import threshold_grid

    data = set_key(set_key(base, "evaluate.threshold_grid", grid), "evaluate.loc_threshold", value)
    p = validate(data)
    assert p.evaluate.loc_threshold == used and used in threshold_grid(grid)
    assert json.loads(resolved_of(data))["evaluate"]["loc_threshold"] == used
    assert (p.snapped is None) == (used == value)
    if p.snapped:
        assert "evaluate.loc_threshold: 0.35 is the 'wsol' grid's value 0.35000000000000003" in p.snapped


def test_every_three_decimal_loc_threshold_lands_on_the_wsol_grid():
    from pipeline.metrics.boxes import threshold_grid
    from pipeline.params import snap_loc_threshold

    grid = set(threshold_grid("wsol").tolist())
    off = [i for i in range(1000) if round(i * 0.001, 3) not in grid]
    assert len(off) == 144  # as floats, 144 of the 1,000 values are not the grid's
    for i in range(1000):
        value, nearest = snap_loc_threshold(round(i * 0.001, 3), "wsol")
        assert value in grid and nearest == []


@pytest.mark.parametrize(
    "grid,value,nearest",
    [("wsol", 0.3504, "0.35 and 0.351"), ("official", 0.3504, "0.35 and 0.351"), ("wsol", 1.0, "0.999")],
)
def test_a_loc_threshold_off_the_grid_is_refused_naming_the_nearest(base, grid, value, nearest):
    data = set_key(set_key(base, "evaluate.threshold_grid", grid), "evaluate.loc_threshold", value)
    assert problems(data) == [
        f"evaluate.loc_threshold: {value!r} is not a CAM threshold of the '{grid}' grid "
        f"(steps of 0.001); the nearest are {nearest}"
    ]


def test_validate_prints_the_loc_threshold_it_uses(tmp_path, base, monkeypatch, capsys):
    from pipeline.params import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(set_key(base, "evaluate.loc_threshold", 0.35)))
    assert main(["validate"]) == 0
    assert (
        "validate: evaluate.loc_threshold: 0.35 is the 'wsol' grid's value 0.35000000000000003"
        in capsys.readouterr().out
    )
    assert json.loads((tmp_path / "data/params.json").read_text())["evaluate"]["loc_threshold"] == 0.35000000000000003


@pytest.mark.parametrize(
    "device,count,problem",
    [
        ("cuda", 0, "device: 'cuda' is not available: this machine has no CUDA device; choose one of: auto, cpu"),
        ("cuda:0", 0, "device: 'cuda:0' is not available: this machine has no CUDA device; choose one of: auto, cpu"),
        (
            "cuda:3",
            2,
            "device: 'cuda:3' is not available: this machine has 2 CUDA device(s); choose one of: auto, cpu, "
            "cuda, cuda:0, cuda:1",
        ),
        ("cuda:1", 2, None),
        ("cuda", 1, None),
        ("cpu", 0, None),
        ("auto", 0, None),
    ],
)
def test_a_cuda_device_this_machine_lacks_is_refused_naming_the_devices(base, monkeypatch, device, count, problem):
    import pipeline.params as params

    monkeypatch.setattr(params, "cuda_device_count", lambda: count)
    data = set_key(base, "device", device)
    if problem is None:
        validate(data)
    else:
        assert problems(data) == [problem]


def test_cuda_on_this_machine(base):
    """Without the stand-in: torch's own count (a CPU-only machine refuses cuda)."""
    import torch

    if torch.cuda.is_available():
        validate(set_key(base, "device", "cuda"))
        assert any("is not available" in m for m in problems(set_key(base, "device", "cuda:64")))
    else:
        assert problems(set_key(base, "device", "cuda"))[0].startswith("device: 'cuda' is not available")


def test_a_timm_model_without_spatial_feature_maps_is_refused_in_one_line(base):
    """A vision transformer gives tokens, not a feature map: one line from validate, not timm's traceback in the
    baseline stage. Checked on torch's meta device (no weights, no memory)."""
    [problem] = problems({**base, "backbone": "vit_small_patch16_224"})
    assert problem.startswith("backbone: timm model 'vit_small_patch16_224' ") and "\n" not in problem
    assert "choose a convolutional model" in problem
    assert validate({**base, "backbone": "efficientnet_b0"}).backbone == "efficientnet_b0"  # a CNN passes


def test_empty_replicates_and_an_empty_file_get_the_projects_message(tmp_path, base):
    assert problems(set_key(base, "finetune.replicates", [])) == [
        "finetune.replicates: must be a non-empty list, got []"
    ]
    assert problems(set_key(base, "baseline.replicates", [])) == [
        "baseline.replicates: must be a non-empty list, got []"
    ]
    path = tmp_path / "params.yaml"
    path.write_text("# nothing here\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.params", "validate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert proc.returncode == 2 and "params.yaml: the file is empty; it must map the keys dataset," in proc.stderr
