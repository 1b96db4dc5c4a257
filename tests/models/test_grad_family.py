"""The gradient family (METHOD.md 1.3, `wsol/`): parity with the official forward, checkpoint import/export,
feature shapes, sigmoid-branch construction.

The reference networks are our own re-statement of the official `wsol/vgg.py` (VggCam of the 14x14 /
28x28 config, `classifier` / `classifier_2` MLPs on the 7x7 adaptive-average-pooled features) and
`wsol/inception.py` (Inception3 without aux head, transform_input=False: stem with two 3x3/2 max-pools,
Mixed_5b..7c, GAP, dropout, `fc` / `fc2`), written from the reading of those files with THEIR module names.
The Inception blocks (InceptionA..E, BasicConv2d) are torchvision's: the official file is a verbatim copy of
them; what is restated here is the network around them. Reference weights are random (BatchNorm statistics
included), imported through the key maps, and both branches' logits must agree to float rounding.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from pipeline.models import archs
from pipeline.models.convert import (
    import_checkpoint,
    load_official_state_dict,
    official_to_ours,
    ours_to_official,
    save_official_checkpoint,
)
from pipeline.models.dual import CheckpointError, DualBranchNet, freeze_all_but_sigmoid_head
from pipeline.models.heads import PoolMlpHead
from pipeline.models.spec import ModelSpec
from pipeline.train.loops import classifier_parameter_names
from tests.models.test_convert import randomise_ as randomise_all_

K = 5


def _mlp(k):
    return nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(4096, k),
    )


class RefVggGrad(nn.Module):
    """wsol/vgg.py VggCam, model_structure b2."""

    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]

    def __init__(self, k, large_feature_map=False):
        super().__init__()
        cfg = list(self.CFG)
        if large_feature_map:
            del cfg[13]  # the 4th "M"
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier, self.classifier_2 = _mlp(k), _mlp(k)

    def forward(self, x):
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.features(x), (7, 7)), 1)
        return self.classifier(pooled), self.classifier_2(pooled)


class RefInceptionGrad(nn.Module):
    """wsol/inception.py Inception3, model_structure b2."""

    def __init__(self, k):
        super().__init__()
        conv = tv_inception.BasicConv2d
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = tv_inception.InceptionA(192, pool_features=32)
        self.Mixed_5c = tv_inception.InceptionA(256, pool_features=64)
        self.Mixed_5d = tv_inception.InceptionA(288, pool_features=64)
        self.Mixed_6a = tv_inception.InceptionB(288)
        self.Mixed_6b = tv_inception.InceptionC(768, channels_7x7=128)
        self.Mixed_6c = tv_inception.InceptionC(768, channels_7x7=160)
        self.Mixed_6d = tv_inception.InceptionC(768, channels_7x7=160)
        self.Mixed_6e = tv_inception.InceptionC(768, channels_7x7=192)
        self.Mixed_7a = tv_inception.InceptionD(768)
        self.Mixed_7b = tv_inception.InceptionE(1280)
        self.Mixed_7c = tv_inception.InceptionE(2048)
        self.dropout = nn.Dropout(0.5)
        self.fc, self.fc2 = nn.Linear(2048, k), nn.Linear(2048, k)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        x = torch.flatten(self.dropout(F.adaptive_avg_pool2d(x, (1, 1))), 1)
        return self.fc(x), self.fc2(x)


def randomise_(module, seed=0):
    """Random BatchNorm statistics / affine terms, biases and linear weights, so every tensor matters."""
    return randomise_all_(module, seed, fan_in_scaled=True)


@pytest.fixture(scope="module")
def built():
    """Our two big grad-family models with the references' weights imported (sigmoid head included), and
    the references; built once (VGG16's two 4096-wide MLPs take seconds), tests do not modify them."""
    torch.manual_seed(0)
    out = {}
    for arch, size, ref in (("vgg16", 32, RefVggGrad(K)), ("inception", 96, RefInceptionGrad(K))):
        model = DualBranchNet(ModelSpec(arch, K, size, family="grad"))
        ref = randomise_(ref)
        info = load_official_state_dict(model, ref.state_dict(), source="ref", include_head2=True)
        out[arch] = (model.eval(), ref, info)
    return out


def _assert_same_logits(model, ref, size, seed=1, batch=2):
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out, (want, want2) = model(x), ref(x)
        # the head contract: in eval mode the heads on the feature map give the model's logits exactly
        assert torch.equal(model.head(out.features), out.logits)
        assert torch.equal(model.head2(out.features), out.logits2)
    assert want.abs().max() > 0.05 and not torch.allclose(want, want2)
    for got, ref_logits in ((out.logits, want), (out.logits2, want2)):
        scale = ref_logits.abs().max().item()
        assert (got - ref_logits).abs().max().item() <= 1e-5 * max(scale, 1.0)
    return out


@pytest.mark.parametrize("arch,size", [("vgg16", 32), ("vgg16", 48), ("inception", 96), ("inception", 224)])
def test_logits_match_the_official_forward(built, arch, size):
    model, ref, info = built[arch]
    assert info.head2 and info.layout == f"official {arch}"
    out = _assert_same_logits(model, ref, size, batch=1 if size == 224 else 2)
    if (arch, size) == ("inception", 224):
        assert out.features.shape == (1, 2048, 5, 5)


def test_vgg16_head_is_the_official_mlp(built):
    model = built["vgg16"][0]
    assert isinstance(model.head, PoolMlpHead) and model.head.gap_linear() is None
    assert [tuple(m.weight.shape) for m in model.head.linear_layers()] == [(4096, 25088), (4096, 4096), (K, 4096)]
    assert model.trunk.target_layer == "features[-1] (last ReLU)" and isinstance(model.trunk.features[-1], nn.ReLU)


@pytest.mark.parametrize("arch", ["vgg16", "inception"])
def test_official_keys_round_trip(built, arch):
    model, ref, _ = built[arch]
    theirs = ours_to_official(model)
    assert set(theirs) == set(ref.state_dict())  # exactly the official key set
    assert all(torch.equal(theirs[k], v) for k, v in ref.state_dict().items())
    back, unknown = official_to_ours(theirs, arch, family="grad")
    assert not unknown and set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_official_file_imports_and_exports(tmp_path, built):
    """The file path (generic for every layout; Inception3 keeps the file small): written as the official
    Trainer does, with DataParallel's prefix; the baseline import leaves `fc2` out (clone_head makes its own)."""
    model, ref, _ = built["inception"]
    save_official_checkpoint(model, tmp_path / "last_checkpoint.pth.tar")
    payload = torch.load(tmp_path / "last_checkpoint.pth.tar", weights_only=True)
    assert payload["architecture"] == "inception_v3" and set(payload["state_dict"]) == set(ref.state_dict())
    payload["state_dict"] = {f"module.{k}": v for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "dp.pth.tar")
    base, info = import_checkpoint(tmp_path / "dp.pth.tar", ModelSpec("inception", K, 96, family="grad"))
    assert base.head2 is None and info.ignored == ["fc2.bias", "fc2.weight"]
    got = base.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items() if not k.startswith("head2."))


def test_family_mismatch_names_what_the_file_holds(built):
    _, ref, _ = built["vgg16"]
    cam = DualBranchNet(ModelSpec("vgg16", K, 32))
    with pytest.raises(
        CheckpointError,
        match=r"holds a vgg16 network \(grad family, 5 classes\), but the params "
        r"ask for backbone 'vgg16', family 'cam'.*; set family: grad",
    ):
        load_official_state_dict(cam, ref.state_dict())


def _meta_features(spec):
    backbone = archs.get(spec.backbone)
    spec = backbone.normalize_spec(spec)
    with torch.device("meta"):
        trunk = backbone.build_trunk(spec)
        return tuple(trunk(torch.empty(1, 3, 224, 224)).shape[1:])


@pytest.mark.parametrize(
    "arch,lfm,shape",
    [
        ("vgg16", False, (512, 14, 14)),
        ("vgg16", True, (512, 28, 28)),
        ("inception", False, (2048, 5, 5)),
        ("inception", True, (2048, 5, 5)),  # LFM ignored, as officially
        ("resnet50", False, (2048, 14, 14)),
        ("resnet50", True, (2048, 28, 28)),
    ],
)
def test_feature_shapes_at_224(arch, lfm, shape):
    assert _meta_features(ModelSpec(arch, K, 224, large_feature_map=lfm, family="grad")) == shape


def test_vgg16_sigmoid_branch_is_a_whole_mlp_and_alone_trainable(built):
    model = built["vgg16"][0]
    backbone = archs.get("vgg16")
    fresh = backbone.make_sigmoid_head(model.head, model.spec, "random", torch.Generator().manual_seed(3))
    assert isinstance(fresh, PoolMlpHead)
    for layer in fresh.linear_layers():  # official classifier_2 init: N(0, 0.01), zero bias
        assert abs(layer.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(layer.bias) == 0
    clone = backbone.make_sigmoid_head(model.head, model.spec, "clone")
    assert clone is not model.head
    assert all(torch.equal(a, b) for a, b in zip(model.head.state_dict().values(), clone.state_dict().values()))
    try:
        trainable = freeze_all_but_sigmoid_head(model)
        assert trainable == [f"head2.classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    finally:
        model.requires_grad_(True)


def test_inception_fc2_fresh_init_and_shared_dropout(built):
    model = built["inception"][0]
    fresh = archs.get("inception").make_sigmoid_head(model.head, model.spec, "random", torch.Generator().manual_seed(3))
    w, b = fresh.weight, fresh.bias
    assert abs(w.std().item() - 0.1) < 0.005 and w.abs().max() <= 2.0  # truncated normal, std 0.1
    assert 0 < b.abs().max() <= 1 / 2048**0.5 and not torch.equal(b, model.head.bias)  # PyTorch default bias
    # train mode: fc and fc2 read one dropped-out pooled vector (one mask), METHOD.md 2.4
    head2 = model.head2
    try:
        model.head2 = copy.deepcopy(model.head)
        model.pre_head.train()  # the pre-head op alone (BatchNorm keeps its running statistics)
        torch.manual_seed(5)
        with torch.no_grad():
            out = model(torch.randn(2, 3, 80, 80))
            dropped = model.pre_head(out.features)
        assert dropped.shape == (2, 2048, 1, 1)
        assert torch.equal(out.logits, out.logits2)  # one mask for both heads
        assert not torch.allclose(out.logits, model.head(out.features))  # dropout was active
    finally:
        model.head2 = head2
        model.eval()


def test_lr_groups_follow_the_official_substring_rules(built):
    vgg = built["vgg16"][0]
    names = classifier_parameter_names(vgg)
    assert names == {n for n, _ in vgg.named_parameters() if n.startswith(("head.", "head2."))}
    inc = classifier_parameter_names(built["inception"][0])
    assert inc == {"head.weight", "head.bias", "head2.weight", "head2.bias"}  # Mixed_* and Conv2d_* stay at lr


def test_timm_grad_head_size_comes_from_the_spec():
    model = DualBranchNet(ModelSpec("resnet10t", 3, 64, output_stride=16, family="grad", grad_grid=2, grad_hidden=16))
    assert isinstance(model.head, PoolMlpHead) and (model.head.grid, model.head.hidden) == (2, 16)
    assert model.head.linear_layers()[0].in_features == model.trunk.channels * 4
    # settings a backbone ignores are dropped from its spec, so they never make checkpoints differ
    assert DualBranchNet(ModelSpec("resnet10t", 3, 64, grad_grid=2, grad_hidden=16)).spec.grad_hidden is None


def test_checkpoints_store_the_family_and_format_1_loads_as_cam(tmp_path):
    from pipeline.models.dual import load_checkpoint, save_checkpoint

    grad = DualBranchNet(ModelSpec("resnet10t", 3, 32, family="grad", grad_grid=2, grad_hidden=8))
    save_checkpoint(grad, tmp_path / "grad.pt")
    payload = torch.load(tmp_path / "grad.pt", weights_only=True)
    assert payload["format"] == 2 and payload["spec"]["family"] == "grad" and payload["spec"]["grad_hidden"] == 8
    with pytest.raises(
        CheckpointError, match=r"family: checkpoint has 'grad', params ask for 'cam' \(set family: grad"
    ):
        load_checkpoint(tmp_path / "grad.pt", expect=ModelSpec("resnet10t", 3, 32))
    cam = DualBranchNet(ModelSpec("resnet10t", 3, 32))
    spec = {k: v for k, v in payload["spec"].items() if k not in ("family", "grad_grid", "grad_hidden")}
    torch.save(
        {"format": 1, "spec": spec, "has_head2": False, "state_dict": cam.state_dict(), "extra": {}},
        tmp_path / "old.pt",
    )  # a checkpoint written before model families existed
    model, _ = load_checkpoint(tmp_path / "old.pt", expect=ModelSpec("resnet10t", 3, 32))
    assert model.spec.family == "cam"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in cam.state_dict().items())
