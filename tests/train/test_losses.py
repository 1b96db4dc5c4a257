"""The class-balanced BCE against a hand computation, and the official step decay."""

import math

import pytest
import torch

from pipeline.train.losses import balanced_bce
from pipeline.train.optim import apply_lr, lr_factor, make_sgd


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_balanced_bce_matches_hand_computation():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([0, 2])
    k = 3
    # (1/(B*K)) * sum_i [(K-1) * softplus(-s[i, y_i]) + sum_{j != y_i} softplus(s[i, j])]
    by_hand = (
        (k - 1) * softplus(-2.0)
        + softplus(-1.0)
        + softplus(0.5)
        + (k - 1) * softplus(2.0)
        + softplus(0.0)
        + softplus(3.0)
    ) / (2 * k)
    assert balanced_bce(s, y).item() == pytest.approx(by_hand, rel=1e-6)


def test_balanced_bce_explicit_pos_weight():
    s = torch.tensor([[1.0, -1.0]])
    y = torch.tensor([1])
    by_hand = (softplus(1.0) + 5.0 * softplus(1.0)) / 2
    assert balanced_bce(s, y, pos_weight=5.0).item() == pytest.approx(by_hand, rel=1e-6)


def test_balanced_bce_gradient_balances_positive_and_negatives():
    # At s = 0 the positive's gradient magnitude equals the negatives' summed magnitude.
    s = torch.zeros(1, 10, requires_grad=True)
    balanced_bce(s, torch.tensor([3])).backward()
    g = s.grad[0]
    assert g[3].item() == pytest.approx(-(g.sum() - g[3]).item(), rel=1e-6)


@pytest.mark.parametrize(
    "epochs,every,expected",
    [
        (3, 3, [1, 1, 0.1]),
        (10, 3, [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001]),
    ],
)
def test_step_decay_follows_official_schedule(epochs, every, expected):
    assert [lr_factor(e, every) for e in range(1, epochs + 1)] == pytest.approx(expected)


def test_step_decay_decays_before_epochs_15_30_45():
    factors = [lr_factor(e, 15) for e in range(1, 51)]
    drops = [e for e in range(2, 51) if factors[e - 1] < factors[e - 2]]
    assert drops == [15, 30, 45]


def test_apply_lr_sets_each_group_from_its_base():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = make_sgd([([a], 0.1), ([b], 1.0)], momentum=0.9, nesterov=True, weight_decay=0.0)
    apply_lr(opt, 3, 3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
    assert opt.defaults["nesterov"] is True
