"""Backbones in WSOL form, the dual-branch model, head cloning, freezing and checkpoints."""

import pytest
import torch
from torch import nn

from pipeline.models.dual import (
    CheckpointError,
    DualBranchNet,
    freeze_all_but_sigmoid_head,
    load_checkpoint,
    restore_eval_mode,
    save_checkpoint,
    set_finetune_mode,
)
from pipeline.models.spec import ModelSpec

K = 5


@pytest.mark.parametrize(
    "backbone,size,lfm,stride,channels,fmap",
    [
        ("vgg16", 64, False, None, 1024, 4),  # 4 max-pools: stride 16
        ("vgg16", 64, True, None, 1024, 8),  # 3 max-pools: stride 8
        ("resnet50", 64, False, None, 2048, 4),  # layer4 stride 1: stride 16
        ("resnet50", 64, True, None, 2048, 8),  # layer3 stride 1 too: stride 8
        ("inception", 224, False, None, 1024, 14),  # SPG InceptionV3: 14x14 at 224 as in the paper
        ("inception_v3", 96, False, None, 1024, 6),
        ("inception", 96, True, None, 1024, 12),
        ("resnet18", 64, False, 16, 512, 4),  # any timm model: forward_features
        ("resnet18", 64, False, None, 512, 2),
    ],
)
def test_output_shapes(backbone, size, lfm, stride, channels, fmap):
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(backbone, K, size, lfm, stride)).eval()
    model.add_sigmoid_head("clone")
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, K)
    assert out.logits2.shape == (2, K)
    assert out.features.shape == (2, channels, fmap, fmap)
    assert model.feature_size == (fmap, fmap)


def test_no_sigmoid_head_before_clone():
    model = DualBranchNet(ModelSpec("resnet18", K, 32, False, None)).eval()
    assert model(torch.randn(1, 3, 32, 32)).logits2 is None


def test_heads_read_the_pooled_target_layer():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet18", K, 64, False, 16)).eval()
    model.add_sigmoid_head("random")
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    pooled = out.features.mean(dim=(2, 3))
    torch.testing.assert_close(out.logits, pooled @ model.head.weight.T + model.head.bias)
    torch.testing.assert_close(out.logits2, pooled @ model.head2.weight.T + model.head2.bias)


def test_vgg16_wsol_layout():
    model = DualBranchNet(ModelSpec("vgg16", K, 64))
    pools = [m for m in model.trunk.features if isinstance(m, nn.MaxPool2d)]
    convs = [m for m in model.trunk.features if isinstance(m, nn.Conv2d)]
    assert len(pools) == 4 and len(convs) == 13
    assert (model.trunk.conv6.in_channels, model.trunk.conv6.out_channels) == (512, 1024)


def test_resnet50_layer4_has_stride_one_without_dilation():
    trunk = DualBranchNet(ModelSpec("resnet50", K, 64)).trunk
    assert trunk.layer4[0].conv2.stride == (1, 1) and trunk.layer4[0].conv2.dilation == (1, 1)
    assert trunk.layer4[0].downsample[0].stride == (1, 1)
    assert trunk.layer3[0].conv2.stride == (2, 2)


def test_clone_is_exact_copy_and_independent():
    model = DualBranchNet(ModelSpec("resnet18", K, 32))
    model.add_sigmoid_head("clone")
    assert torch.equal(model.head2.weight, model.head.weight)
    assert torch.equal(model.head2.bias, model.head.bias)
    assert model.head2.weight.data_ptr() != model.head.weight.data_ptr()
    with torch.no_grad():
        model.head2.weight.add_(1.0)
    assert not torch.equal(model.head2.weight, model.head.weight)


@pytest.mark.parametrize("backbone,size", [("resnet18", 32), ("inception", 96)])
def test_random_init_follows_official_code(backbone, size):
    model = DualBranchNet(ModelSpec(backbone, 50, size))
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(0))
    w = model.head2.weight
    assert torch.count_nonzero(model.head2.bias) == 0
    assert not torch.equal(w, model.head.weight)
    if backbone == "inception":  # xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out))
        bound = (6 / (1024 + 50)) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    else:  # N(0, 0.01)
        assert abs(w.std().item() - 0.01) < 0.001


def test_bad_head_init_message():
    model = DualBranchNet(ModelSpec("resnet18", K, 32))
    with pytest.raises(ValueError, match="head_init: 'copy' is not valid; choose one of: clone, random"):
        model.add_sigmoid_head("copy")


def test_only_sigmoid_head_is_trainable():
    model = DualBranchNet(ModelSpec("resnet50", K, 32))
    with pytest.raises(ValueError, match="no sigmoid head"):
        freeze_all_but_sigmoid_head(model)
    model.add_sigmoid_head("clone")
    assert freeze_all_but_sigmoid_head(model) == ["head2.weight", "head2.bias"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head2.weight", "head2.bias"]


def test_batch_stats_mode_uses_batch_statistics_and_keeps_running_stats():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet18", K, 32)).eval()
    model.add_sigmoid_head("clone")
    bn = model.trunk.body.bn1
    with torch.no_grad():  # make running stats differ from any batch's statistics
        bn.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        eval_out = model(x).logits
        set_finetune_mode(model, "batch_stats")
        batch_out = model(x).logits
        restore_eval_mode(model)
        again = model(x).logits
    assert not torch.allclose(eval_out, batch_out)
    assert torch.equal(eval_out, again)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet18", K, 32)
    model = DualBranchNet(spec).eval()
    model.add_sigmoid_head("random")
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, note="x")
    loaded, extra = load_checkpoint(path, expect=spec)
    assert extra == {"note": "x"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.logits2, b.logits2)
    with pytest.raises(CheckpointError, match=r"backbone: checkpoint has 'resnet18', params ask for 'vgg16'"):
        load_checkpoint(path, expect=ModelSpec("vgg16", K, 32))
    with pytest.raises(CheckpointError, match=r"num_classes: checkpoint has 5, params ask for 7"):
        load_checkpoint(path, expect=ModelSpec("resnet18", 7, 32))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_checkpoint_bytes_are_deterministic(tmp_path):
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet18", K, 32))
    save_checkpoint(model, tmp_path / "a.pt")
    save_checkpoint(model, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_non_convolutional_timm_model_is_rejected():
    with pytest.raises(ValueError, match="not a \\(B, C, h, w\\) feature map"):
        DualBranchNet(ModelSpec("vit_tiny_patch16_224", K, 224))


def test_lfm_on_timm_model_is_rejected():
    with pytest.raises(ValueError, match="large_feature_map applies to vgg16, resnet50 and inception only"):
        DualBranchNet(ModelSpec("resnet18", K, 32, large_feature_map=True))
