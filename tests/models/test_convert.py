"""Official / wsolevaluation checkpoints -> DualBranchNet (pipeline/models/convert.py).

The reference networks below are written with THEIR module names and structure (wsol_cam/vgg.py VggCam,
wsol_cam/resnet.py ResNetCam, wsol_cam/inception.py InceptionCam, b2 heads), saved the way their
Trainer saves (`{'architecture', 'epoch', 'state_dict' (DataParallel: 'module.'), 'optimizer'}`), imported,
and must give the same logits as the reference forward.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception
from torchvision.models.resnet import Bottleneck

from pipeline.models.convert import (
    import_checkpoint,
    load_official_state_dict,
    official_to_ours,
    ours_to_official,
    read_torch_file,
    save_official_checkpoint,
    unwrap_state_dict,
)
from pipeline.models.dual import CheckpointError, DualBranchNet, save_checkpoint
from pipeline.models.spec import ModelSpec

K = 5


# ----------------------------------------------------------------------------------------------------
# Reference networks with the official names


class RefVggCam(nn.Module):
    CFG = {
        False: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
        True: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, 512, 512, 512],
    }

    def __init__(self, num_classes, large_feature_map=False, last_layer="fc"):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG[large_feature_map]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, 3, padding=1)
        self.last_layer = last_layer
        if last_layer == "fc":
            self.fc, self.fc2 = nn.Linear(1024, num_classes), nn.Linear(1024, num_classes)
        else:
            self.conv = nn.Conv2d(1024, num_classes, 1)
            self.conv2 = nn.Conv2d(1024, num_classes, 1)

    def forward(self, x):
        pre = F.relu(self.conv6(self.features(x))).mean((2, 3))
        if self.last_layer == "fc":
            return self.fc(pre), self.fc2(pre)
        return (
            F.conv2d(pre[..., None, None], self.conv.weight, self.conv.bias).flatten(1),
            F.conv2d(pre[..., None, None], self.conv2.weight, self.conv2.bias).flatten(1),
        )


class RefResNetCam(nn.Module):
    def __init__(self, num_classes, large_feature_map=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3, 1)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 1 if large_feature_map else 2)
        self.layer4 = self._make_layer(512, 3, 1)
        self.fc, self.fc2 = nn.Linear(2048, num_classes), nn.Linear(2048, num_classes)

    def _make_layer(self, planes, blocks, stride):
        out = planes * 4
        down = None
        if not (stride == 1 and self.inplanes == out):
            down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        pre = self.layer4(self.layer3(self.layer2(self.layer1(x)))).mean((2, 3))
        return self.fc(pre), self.fc2(pre)


class RefInceptionB(nn.Module):  # wsol_cam/inception.py InceptionB(kernel_size, stride, padding)
    def __init__(self, cin, kernel_size=3, stride=2, padding=0):
        super().__init__()
        conv = tv_inception.BasicConv2d
        self.branch3x3 = conv(cin, 384, kernel_size=kernel_size, stride=stride, padding=padding)
        self.branch3x3dbl_1 = conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, kernel_size=3, stride=stride, padding=padding)
        self.stride = stride

    def forward(self, x):
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, 3, stride=self.stride, padding=1)], 1)


class RefInceptionCam(nn.Module):
    def __init__(self, num_classes, large_feature_map=False):
        super().__init__()
        conv = tv_inception.BasicConv2d
        self.large_feature_map = large_feature_map
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3, stride=1, padding=0)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, stride=1, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1, stride=1, padding=0)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3, stride=1, padding=0)
        self.Mixed_5b = tv_inception.InceptionA(192, pool_features=32)
        self.Mixed_5c = tv_inception.InceptionA(256, pool_features=64)
        self.Mixed_5d = tv_inception.InceptionA(288, pool_features=64)
        self.Mixed_6a = RefInceptionB(288, kernel_size=3, stride=1, padding=1)
        self.Mixed_6b = tv_inception.InceptionC(768, channels_7x7=128)
        self.Mixed_6c = tv_inception.InceptionC(768, channels_7x7=160)
        self.Mixed_6d = tv_inception.InceptionC(768, channels_7x7=160)
        self.Mixed_6e = tv_inception.InceptionC(768, channels_7x7=192)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1, padding=0)
        self.SPG_A4_2 = nn.Conv2d(1024, num_classes, 1, padding=0)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = self.SPG_A3_2b(self.SPG_A3_1b(x))
        return self.SPG_A4(x).mean((2, 3)), self.SPG_A4_2(x).mean((2, 3))


REFS = {"vgg16": RefVggCam, "resnet50": RefResNetCam, "inception": RefInceptionCam}
SIZES = {"vgg16": 32, "resnet50": 32, "inception": 80}
ARCH_NAMES = {"vgg16": "vgg16", "resnet50": "resnet50", "inception": "inception_v3"}


def randomise_(module: nn.Module, seed: int = 0, fan_in_scaled: bool = False) -> nn.Module:
    """Random BatchNorm statistics and affine terms and random biases, so that every tensor matters; the head
    weights (linear layers, K-channel convs) N(0, 0.05), or N(0, 1/fan_in) with `fan_in_scaled` (deep MLPs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, (nn.Linear,)) or (isinstance(m, nn.Conv2d) and m.out_channels == K):
                std = m.weight[0].numel() ** -0.5 if fan_in_scaled else 0.05
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
    return module.eval()


def official_file(tmp_path, arch, ref, data_parallel=True, name="last_checkpoint.pth.tar"):
    sd = ref.state_dict()
    if data_parallel:
        sd = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / name
    torch.save(
        {
            "architecture": ARCH_NAMES[arch],
            "epoch": 3,
            "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def refs():
    torch.manual_seed(0)
    return {arch: randomise_(REFS[arch](K)) for arch in REFS}


@pytest.fixture(scope="module")
def ours():
    """One model of each backbone, built once (VGG16 and Inception take seconds to build); tests copy them."""
    torch.manual_seed(1)
    models = {}
    for arch in ("vgg16", "resnet50", "inception"):
        models[arch] = DualBranchNet(ModelSpec(arch, K, SIZES[arch]))
    models["vgg16-lfm"] = DualBranchNet(ModelSpec("vgg16", K, 32, large_feature_map=True))
    return models


def fresh(ours, name):
    return copy.deepcopy(ours[name]).eval()


def logits_of(model, ref, size, seed=1):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x), ref(x)


# ----------------------------------------------------------------------------------------------------


def test_official_checkpoint_file_gives_identical_logits(tmp_path, refs):
    """The whole path: file with 'module.' keys and an optimizer entry -> import_checkpoint -> same logits."""
    ref = refs["resnet50"]
    path = official_file(tmp_path, "resnet50", ref)
    model, info = import_checkpoint(path, ModelSpec("resnet50", K, 32), include_head2=True)
    assert info.layout == "official resnet50" and info.head2 and not info.ignored
    out, (want, want2) = logits_of(model, ref, 32)
    assert want.abs().max() > 0.1  # the logits are not trivially small
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits2, want2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg16", "inception"])
def test_official_state_dict_gives_identical_logits(tmp_path, refs, ours, arch):
    ref, size = refs[arch], SIZES[arch]
    payload = read_torch_file(official_file(tmp_path, arch, ref))
    state_dict, meta = unwrap_state_dict(payload, "file")
    assert meta["architecture"] == ARCH_NAMES[arch]
    model = fresh(ours, arch)
    info = load_official_state_dict(model, state_dict, include_head2=True)
    assert info.head2
    out, (want, want2) = logits_of(model.eval(), ref, size)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits2, want2, rtol=1e-4, atol=1e-5)


def test_vgg16_large_feature_map_and_conv_head(ours):
    torch.manual_seed(0)
    ref = randomise_(RefVggCam(K, large_feature_map=True, last_layer="conv"))
    model = fresh(ours, "vgg16-lfm")
    load_official_state_dict(model, ref.state_dict(), include_head2=True)
    out, (want, want2) = logits_of(model.eval(), ref, 32)
    assert out.features.shape[-1] == 4  # stride 8
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits2, want2, rtol=1e-4, atol=1e-5)
    # the same checkpoint does not fit the 4-pool network: the error says why
    with pytest.raises(CheckpointError, match="large_feature_map"):
        load_official_state_dict(fresh(ours, "vgg16"), ref.state_dict())


def test_baseline_import_leaves_the_sigmoid_head_out(refs, ours):
    model = fresh(ours, "resnet50")
    info = load_official_state_dict(model, refs["resnet50"].state_dict(), source="ckpt", include_head2=False)
    assert model.head2 is None
    assert info.ignored == ["fc2.bias", "fc2.weight"]
    assert "not loaded: fc2.bias, fc2.weight" in str(info)
    assert torch.equal(model.head.weight, refs["resnet50"].fc.weight)


@pytest.mark.parametrize("arch", ["vgg16", "vgg16-lfm", "resnet50", "inception"])
def test_round_trip_ours_theirs_ours(ours, arch):
    size = SIZES[arch.split("-")[0]]
    model = randomise_(fresh(ours, arch), seed=2)
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(3))
    theirs = ours_to_official(model)
    if arch == "inception":
        assert theirs["SPG_A4.weight"].shape == (K, 1024, 1, 1) and "SPG_A3_1b.0.weight" in theirs
    else:
        assert theirs["fc2.weight"].shape[0] == K
    back, unknown = official_to_ours(theirs, arch.split("-")[0])
    assert not unknown and set(back) == set(model.state_dict())
    again = fresh(ours, arch)  # other weights, no sigmoid head yet
    load_official_state_dict(again, theirs, include_head2=True)
    got = again.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(got[key], value), key
    a, b = logits_of(model, again.eval(), size)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.logits2, b.logits2)


def test_round_trip_through_a_file(tmp_path, ours):
    model = randomise_(fresh(ours, "resnet50"), seed=4)
    model.add_sigmoid_head("clone")
    save_official_checkpoint(model, tmp_path / "theirs.pth.tar")
    payload = torch.load(tmp_path / "theirs.pth.tar", weights_only=True)
    assert payload["architecture"] == "resnet50" and "fc2.weight" in payload["state_dict"]
    again, _ = import_checkpoint(tmp_path / "theirs.pth.tar", model.spec, include_head2=True)
    got = again.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_reference_keys_match_our_export_for_every_arch(refs, ours):
    for arch, ref in refs.items():
        model = fresh(ours, arch)
        model.add_sigmoid_head("clone")
        assert set(ours_to_official(model)) == set(ref.state_dict()), arch


def test_wrong_backbone_is_a_clear_error(tmp_path, refs):
    path = official_file(tmp_path, "resnet50", refs["resnet50"])
    with pytest.raises(
        CheckpointError,
        match=r"architecture 'resnet50', but the params ask for backbone 'vgg16'; "
        r"set backbone: resnet50",
    ):
        import_checkpoint(path, ModelSpec("vgg16", K, 64))
    # without the 'architecture' entry the keys tell
    bare = tmp_path / "bare.pth"
    torch.save(refs["resnet50"].state_dict(), bare)
    with pytest.raises(
        CheckpointError,
        match=r"holds a resnet50 network \(cam family, 5 classes\) \(the same keys fit families cam "
        r"and grad\), but the params ask for backbone 'inception', family 'cam', 5 classes; "
        r"set backbone: resnet50$",
    ):
        import_checkpoint(bare, ModelSpec("inception", K, 96))
    with pytest.raises(
        CheckpointError, match=r"holds a resnet50 network .* backbone 'resnet18'.*; set backbone: resnet50"
    ):
        load_official_state_dict(DualBranchNet(ModelSpec("resnet18", K, 64)), refs["resnet50"].state_dict())


def test_unmatched_missing_and_shape_problems_are_listed(refs, ours):
    sd = dict(refs["vgg16"].state_dict())
    sd["features.28.kernel"] = sd.pop("features.28.weight")  # a renamed key
    del sd["conv6.bias"]  # a missing one
    sd["fc.weight"] = torch.zeros(7, 1024)  # 7 classes, the params ask for 5
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(fresh(ours, "vgg16"), sd, source="ckpt.pth")
    msg = str(info.value)
    assert "ckpt.pth: does not fit our vgg16 network" in msg
    assert "features.28.kernel" in msg  # unmatched
    assert "trunk.features.28.weight <- features.28.weight" in msg  # missing, with both names
    assert "trunk.conv6.bias <- conv6.bias" in msg
    assert "fc.weight (7, 1024) vs ours head.weight (5, 1024)" in msg  # shapes
    assert "the params ask for 5 classes" in msg


def test_a_partial_state_dict_cannot_be_told(ours):
    sd = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(4096, 25088)}
    with pytest.raises(CheckpointError, match="cannot tell which architecture the file holds"):
        load_official_state_dict(fresh(ours, "vgg16"), sd)


# ----------------------------------------------------------------------------------------------------
# timm state dicts (issue 14.3): imported as they are, and recognised when they do not fit


def _timm_file(tmp_path, name, num_classes, seed=0):
    import timm

    torch.manual_seed(seed)
    net = randomise_(timm.create_model(name, num_classes=num_classes), seed=seed)
    torch.save(net.state_dict(), tmp_path / f"{name}.pth")
    return tmp_path / f"{name}.pth", net


def test_a_timm_state_dict_imports_with_its_classifier(tmp_path):
    path, net = _timm_file(tmp_path, "resnet10t", 10)
    model, info = import_checkpoint(path, ModelSpec("resnet10t", 10, 64))
    assert info.layout == "timm resnet10t"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, net(x), rtol=1e-4, atol=1e-5)


def test_a_timm_state_dict_that_does_not_fit_names_what_it_holds(tmp_path):
    path, _ = _timm_file(tmp_path, "resnet18", K)
    with pytest.raises(
        CheckpointError,
        match=r"holds a resnet18 network \(cam family, 5 classes\), but the params "
        r"ask for backbone 'resnet10t'.*; set backbone: resnet18$",
    ):
        import_checkpoint(path, ModelSpec("resnet10t", K, 64))
    path, _ = _timm_file(tmp_path, "resnet10t", 10)
    with pytest.raises(
        CheckpointError,
        match=r"holds a resnet10t network \(cam family, 10 classes\).*"
        r"5 classes; set datasets.<dataset>.num_classes: 10$",
    ):
        import_checkpoint(path, ModelSpec("resnet10t", K, 64))
    with pytest.raises(CheckpointError, match=r"holds a resnet10t network .*; set family: cam$"):
        import_checkpoint(path, ModelSpec("resnet10t", 10, 64, family="grad"))
    with pytest.raises(CheckpointError, match=r"holds a resnet10t network .*; set backbone: resnet10t$"):
        import_checkpoint(path, ModelSpec("vgg16", 10, 64))


def test_unknown_layout_says_it_cannot_tell(tmp_path):
    torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "odd.pth")
    with pytest.raises(
        CheckpointError,
        match=r"(?s)odd.pth: does not fit our resnet10t network \(cam family\).*"
        r"cannot tell which architecture the file holds",
    ):
        import_checkpoint(tmp_path / "odd.pth", ModelSpec("resnet10t", K, 64))


def test_our_own_checkpoints_still_import(tmp_path):
    model = DualBranchNet(ModelSpec("resnet18", K, 32))
    save_checkpoint(model, tmp_path / "ours.pt")
    again, info = import_checkpoint(tmp_path / "ours.pt", ModelSpec("resnet18", K, 32))
    assert info.layout == "ours"
    got = again.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="backbone: checkpoint has 'resnet18', params ask for 'resnet10t'"):
        import_checkpoint(tmp_path / "ours.pt", ModelSpec("resnet10t", K, 32))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch checkpoint"):
        import_checkpoint(tmp_path / "junk.pth", ModelSpec("vgg16", K, 64))
    torch.save({"state_dict": {"a": 1}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        import_checkpoint(tmp_path / "odd.pth", ModelSpec("vgg16", K, 64))
