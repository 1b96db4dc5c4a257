"""Training loops on a tiny random dataset: baseline learns, fine-tuning touches only the sigmoid head
and leaves the softmax logits bit-identical."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.models.dual import DualBranchNet, ModelSpec
from pipeline.train.loops import classifier_parameter_names, finetune_sigmoid_head, predict, train_baseline

K = 3
CPU = torch.device("cpu")


def toy_loader(n=24, size=32, seed=0, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += (y == 0).float()[:, None, None]  # a learnable colour cue per class
    x[:, 1] += (y == 1).float()[:, None, None]
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def test_baseline_learns_and_reports_each_epoch():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet18", K, 32))
    log = []
    train_baseline(model, toy_loader(shuffle=True), CPU, epochs=4, lr=0.05, lr_classifier_ratio=1.0,
                   lr_decay_every=10, momentum=0.9, nesterov=True, weight_decay=0.0,
                   on_epoch=lambda e, m: log.append((e, m)))
    assert [e for e, _ in log] == [1, 2, 3, 4]
    assert log[-1][1]["train/loss"] < log[0][1]["train/loss"]
    assert predict(model, toy_loader(), CPU).top1() > 100 / K


@pytest.mark.parametrize("bn_mode", ["eval", "batch_stats"])
def test_finetune_changes_only_sigmoid_head_and_keeps_softmax_logits(bn_mode):
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet18", K, 32))
    train_baseline(model, toy_loader(shuffle=True), CPU, epochs=1, lr=0.05, lr_classifier_ratio=1.0,
                   lr_decay_every=10, momentum=0.9, nesterov=True, weight_decay=0.0)
    model.add_sigmoid_head("clone")
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = predict(model, toy_loader(seed=1), CPU)
    trained = finetune_sigmoid_head(model, toy_loader(shuffle=True), CPU, epochs=2, lr=0.1, lr_decay_every=10,
                                    momentum=0.9, nesterov=True, weight_decay=1e-4, bn_mode=bn_mode)
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


def test_classifier_group_matches_official_substrings():
    names = classifier_parameter_names(DualBranchNet(ModelSpec("resnet50", K, 32)))
    assert "head.weight" in names and "trunk.layer4.0.conv1.weight" in names
    assert "trunk.layer3.0.conv1.weight" not in names
    vgg = classifier_parameter_names(DualBranchNet(ModelSpec("vgg16", K, 32)))
    assert vgg == {"trunk.conv6.weight", "trunk.conv6.bias", "head.weight", "head.bias"}
    inc = classifier_parameter_names(DualBranchNet(ModelSpec("inception", K, 96)))
    assert inc == {"trunk.SPG_A3_1b.weight", "trunk.SPG_A3_1b.bias", "trunk.SPG_A3_2b.weight",
                   "trunk.SPG_A3_2b.bias", "head.weight", "head.bias"}


@pytest.mark.parametrize("bn_mode", ["eval", "batch_stats"])
def test_grad_family_finetune_trains_only_the_sigmoid_mlp_and_keeps_softmax_logits(bn_mode):
    """The gradient family (a timm trunk with the small PoolMlpHead, dropout inside both MLPs): only the
    sigmoid MLP trains; in batch_stats mode dropout and batch statistics are active during training, yet the
    eval-mode softmax logits stay bit-identical."""
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet18", K, 32, family="grad", grad_grid=2, grad_hidden=32))
    train_baseline(model, toy_loader(shuffle=True), CPU, epochs=1, lr=0.05, lr_classifier_ratio=1.0,
                   lr_decay_every=10, momentum=0.9, nesterov=True, weight_decay=0.0)
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = predict(model, toy_loader(seed=1), CPU)
    trained = finetune_sigmoid_head(model, toy_loader(shuffle=True), CPU, epochs=2, lr=0.1, lr_decay_every=10,
                                    momentum=0.9, nesterov=True, weight_decay=1e-4, bn_mode=bn_mode)
    after = predict(model, toy_loader(seed=1), CPU)
    assert trained == [f"head2.classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert torch.equal(before.logits, after.logits)
    assert not torch.equal(before.logits2, after.logits2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]) != key.startswith("head2."), key
    assert not model.training
