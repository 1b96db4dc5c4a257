"""Training loops on a tiny random dataset: baseline learns, fine-tuning touches only the sigmoid head
and leaves the softmax logits bit-identical.

The model is timm's `test_resnet` (0.37 M parameters): the same timm ResNet class, BasicBlocks, BatchNorm and
trunk/head code path (pipeline/models/archs/timm_any.py) as resnet18 or the default resnet10t, about 25x
faster to train here than resnet18 was. The official layouts of classifier_parameter_names still use
resnet50, vgg16 and inception (their parameter names are what is checked)."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.models.dual import DualBranchNet, FrozenCheck, ModelSpec, frozen_state_digest
from pipeline.train.loops import classifier_parameter_names, finetune_sigmoid_head, predict, train_baseline

K = 3
CPU = torch.device("cpu")
TINY = "test_resnet"  # timm's smallest ResNet (see the docstring)
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: intra-op threads only cost here


def toy_loader(n=24, size=32, seed=0, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += (y == 0).float()[:, None, None]  # a learnable colour cue per class
    x[:, 1] += (y == 1).float()[:, None, None]
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def test_baseline_learns_and_reports_each_epoch():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(TINY, K, 32))
    log = []
    train_baseline(
        model,
        toy_loader(shuffle=True),
        CPU,
        epochs=4,
        lr=0.05,
        lr_classifier_ratio=1.0,
        lr_decay_every=10,
        momentum=0.9,
        nesterov=True,
        weight_decay=0.0,
        on_epoch=lambda e, m: log.append((e, m)),
    )
    assert [e for e, _ in log] == [1, 2, 3, 4]
    assert log[-1][1]["train/loss"] < log[0][1]["train/loss"]
    assert predict(model, toy_loader(), CPU).top1() > 100 / K


@pytest.mark.parametrize("bn_mode", ["eval", "batch_stats"])
def test_finetune_changes_only_sigmoid_head_and_keeps_softmax_logits(bn_mode):
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(TINY, K, 32))
    train_baseline(
        model,
        toy_loader(shuffle=True),
        CPU,
        epochs=1,
        lr=0.05,
        lr_classifier_ratio=1.0,
        lr_decay_every=10,
        momentum=0.9,
        nesterov=True,
        weight_decay=0.0,
    )
    model.add_sigmoid_head("clone")
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    digest_before = frozen_state_digest(model)
    before = predict(model, toy_loader(seed=1), CPU)
    trained = finetune_sigmoid_head(
        model,
        toy_loader(shuffle=True),
        CPU,
        epochs=2,
        lr=0.1,
        lr_decay_every=10,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        bn_mode=bn_mode,
    )
    after = predict(model, toy_loader(seed=1), CPU)
    assert trained == ["head2.weight", "head2.bias"]
    assert torch.equal(before.logits, after.logits)  # bit-identical, not merely close
    assert not torch.equal(before.logits2, after.logits2)
    for key, value in model.state_dict().items():
        if key.startswith("head2."):
            assert not torch.equal(value, before_state[key]), key
        else:
            assert torch.equal(value, before_state[key]), key
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards
    assert not model.training
    assert frozen_state_digest(model) == digest_before  # the finetune stage's check agrees


def test_frozen_state_digest_sees_every_tensor_outside_the_sigmoid_head():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(TINY, K, 32))
    model.add_sigmoid_head("clone")
    digest = frozen_state_digest(model)
    with torch.no_grad():
        model.head2.weight.add_(1.0)
    assert frozen_state_digest(model) == digest  # the sigmoid head is free to train
    for key, tensor in model.state_dict().items():  # the state dict's tensors share the model's storage
        if key.startswith("head2."):
            continue
        flat = tensor.view(-1)
        kept = flat[0].clone()
        with torch.no_grad():  # one element, by the smallest step of its type
            flat[0] = torch.nextafter(kept, kept + 1) if tensor.is_floating_point() else kept + 1
        assert frozen_state_digest(model) != digest, key
        with torch.no_grad():
            flat[0] = kept
    assert frozen_state_digest(model) == digest


def test_predict_runs_extra_heads_on_the_same_trunk_output():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(TINY, K, 32))
    model.add_sigmoid_head("clone")
    other = copy.deepcopy(model.head2)
    with torch.no_grad():
        other.weight.mul_(-1.0)
    plain = predict(model, toy_loader(seed=2), CPU)
    both = predict(model, toy_loader(seed=2), CPU, extra_heads={"other": other})
    assert torch.equal(plain.logits, both.logits) and torch.equal(plain.logits2, both.logits2)
    with torch.no_grad():
        model.eval()
        features = torch.cat([model.trunk(x) for x, _ in toy_loader(seed=2)])
        expected = other(features)
    torch.testing.assert_close(both.extra["other"], expected, rtol=1e-6, atol=1e-6)
    assert both.top1("other") == 100.0 * float((expected.argmax(1) == both.labels).double().mean())


def test_classifier_group_matches_official_substrings():
    """Parameter names only: the models are built on the meta device (the same modules and names, no weight
    initialisation, which took seconds for vgg16 and inception)."""
    with torch.device("meta"):
        names = classifier_parameter_names(DualBranchNet(ModelSpec("resnet50", K, 32)))
        vgg = classifier_parameter_names(DualBranchNet(ModelSpec("vgg16", K, 32)))
        inc = classifier_parameter_names(DualBranchNet(ModelSpec("inception", K, 96)))
    assert "head.weight" in names and "trunk.layer4.0.conv1.weight" in names
    assert "trunk.layer3.0.conv1.weight" not in names
    assert vgg == {"trunk.conv6.weight", "trunk.conv6.bias", "head.weight", "head.bias"}
    assert inc == {
        "trunk.SPG_A3_1b.weight",
        "trunk.SPG_A3_1b.bias",
        "trunk.SPG_A3_2b.weight",
        "trunk.SPG_A3_2b.bias",
        "head.weight",
        "head.bias",
    }


@pytest.mark.parametrize("bn_mode", ["eval", "batch_stats"])
def test_grad_family_finetune_trains_only_the_sigmoid_mlp_and_keeps_softmax_logits(bn_mode):
    """The gradient family (a timm trunk with the small PoolMlpHead, dropout inside both MLPs): only the
    sigmoid MLP trains; in batch_stats mode dropout and batch statistics are active during training, yet the
    eval-mode softmax logits stay bit-identical."""
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(TINY, K, 32, family="grad", grad_grid=2, grad_hidden=32))
    train_baseline(
        model,
        toy_loader(shuffle=True),
        CPU,
        epochs=1,
        lr=0.05,
        lr_classifier_ratio=1.0,
        lr_decay_every=10,
        momentum=0.9,
        nesterov=True,
        weight_decay=0.0,
    )
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = predict(model, toy_loader(seed=1), CPU)
    trained = finetune_sigmoid_head(
        model,
        toy_loader(shuffle=True),
        CPU,
        epochs=2,
        lr=0.1,
        lr_decay_every=10,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        bn_mode=bn_mode,
    )
    after = predict(model, toy_loader(seed=1), CPU)
    assert trained == [f"head2.classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert torch.equal(before.logits, after.logits)
    assert not torch.equal(before.logits2, after.logits2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]) != key.startswith("head2."), key
    assert not model.training


def test_frozen_check_names_what_changed():
    """The finetune stage's check: nothing changed -> None; a trunk weight -> the state; a module attribute
    outside the state dict (BatchNorm's eps) -> the probe logits."""
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec(TINY, K, 32))
    model.add_sigmoid_head("clone")
    probe = next(iter(toy_loader(seed=3)))[0]
    check = FrozenCheck(model, probe)
    assert check.change(model) is None
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.eps = 0.5  # not a parameter or buffer
    assert check.change(model).startswith("its eval-mode logits (max |diff| = ")
    bn.eps = 1e-5
    assert check.change(model) is None
    with torch.no_grad():
        next(model.trunk.parameters()).view(-1)[0] += 1e-3
    assert check.change(model) == "its frozen parameters or buffers"
