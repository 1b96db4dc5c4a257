"""Training and inference loops: the softmax baseline (cross-entropy) and the sigmoid-branch fine-tune.

Plain functions taking a model, a DataLoader and numbers; per-epoch figures go to an optional
`on_epoch(epoch, metrics)` callback (the stage scripts hand DVCLive's logger in), so the library knows
nothing of DVC.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.models.dual import (DualBranchNet, freeze_all_but_sigmoid_head, restore_eval_mode,
                                  set_finetune_mode)
from pipeline.train.losses import balanced_bce
from pipeline.train.optim import apply_lr, make_sgd

EpochCallback = Callable[[int, dict[str, float]], None]


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda`/`cuda:N` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: '{name}' asked for, but CUDA is not available here; use auto or cpu")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Predictions:
    logits: torch.Tensor          # (N, K) float32, softmax branch
    logits2: torch.Tensor | None  # (N, K) float32, sigmoid branch
    labels: torch.Tensor          # (N,) int64

    def top1(self, branch: int = 1) -> float:
        """Top-1 accuracy in percent of the softmax (1) or sigmoid (2) branch."""
        scores = self.logits if branch == 1 else self.logits2
        return 100.0 * (scores.argmax(1) == self.labels).double().mean().item()


@torch.no_grad()
def predict(model: DualBranchNet, loader: DataLoader, device: torch.device, *, desc: str = "predict") -> Predictions:
    """Eval-mode float32 logits of both branches over `loader` (in loader order)."""
    model.eval()
    logits, logits2, labels = [], [], []
    for images, targets in tqdm(loader, desc=desc, leave=False):
        out = model(images.to(device))
        logits.append(out.logits.float().cpu())
        if out.logits2 is not None:
            logits2.append(out.logits2.float().cpu())
        labels.append(targets)
    return Predictions(torch.cat(logits), torch.cat(logits2) if logits2 else None, torch.cat(labels))


def classifier_parameter_names(model: DualBranchNet) -> set[str]:
    """Parameters in the official code's "classifier" group (METHOD.md 2.2), which gets
    lr * lr_classifier_ratio: the heads plus conv6 (VGG16), the SPG layers (Inception), layer4 (ResNet50);
    for timm backbones the heads alone."""
    arch = model.trunk.arch
    names = set()
    for name, _ in model.named_parameters():
        inner = name.removeprefix("trunk.")
        if not name.startswith("trunk."):
            names.add(name)
        elif arch == "vgg16" and not inner.startswith("features."):
            names.add(name)
        elif arch == "inception" and not inner.startswith(("Mixed", "Conv2d_")):
            names.add(name)
        elif arch == "resnet50" and inner.startswith("layer4."):
            names.add(name)
    return names


def train_baseline(model: DualBranchNet, loader: DataLoader, device: torch.device, *, epochs: int, lr: float,
                   lr_classifier_ratio: float, lr_decay_every: int, momentum: float, nesterov: bool,
                   weight_decay: float, label_smoothing: float = 0.0,
                   on_epoch: EpochCallback | None = None) -> None:
    """Train the whole softmax classifier with cross-entropy (SGD, Nesterov, step decay)."""
    model.to(device)
    head_names = classifier_parameter_names(model)
    named = list(model.named_parameters())
    optimizer = make_sgd([([p for n, p in named if n not in head_names], lr),
                          ([p for n, p in named if n in head_names], lr * lr_classifier_ratio)],
                         momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for epoch in range(1, epochs + 1):
        factor = apply_lr(optimizer, epoch, lr_decay_every)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for images, targets in tqdm(loader, desc=f"baseline epoch {epoch}/{epochs}", leave=False):
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast(device):
                logits = model(images).logits
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        if on_epoch is not None:
            on_epoch(epoch, {"train/loss": loss_sum.item() / seen,
                             "train/acc": 100.0 * correct.item() / seen, "lr": lr * factor})


def finetune_sigmoid_head(model: DualBranchNet, loader: DataLoader, device: torch.device, *, epochs: int,
                          lr: float, lr_decay_every: int, momentum: float, nesterov: bool, weight_decay: float,
                          bn_mode: str, pos_weight: float | None = None,
                          on_epoch: EpochCallback | None = None) -> list[str]:
    """Train only the sigmoid head with class-balanced BCE; return the names of the trained parameters.

    The trunk and the softmax head are frozen (requires_grad=False) and run without autograd; BatchNorm
    follows `bn_mode` (see `set_finetune_mode`). The cross-entropy of the frozen softmax head is logged,
    as in the official code, but gives no gradient.
    """
    model.to(device)
    trainable = freeze_all_but_sigmoid_head(model)
    optimizer = make_sgd([(list(model.head2.parameters()), lr)], momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay)
    try:
        for epoch in range(1, epochs + 1):
            factor = apply_lr(optimizer, epoch, lr_decay_every)
            set_finetune_mode(model, bn_mode)
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # bce, ce, correct (sigmoid)
            seen = 0
            for images, targets in tqdm(loader, desc=f"finetune epoch {epoch}/{epochs}", leave=False):
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                with torch.no_grad(), autocast(device):
                    _, pooled = model.embed(images)
                    logits = model.head(pooled)
                pooled = pooled.float()
                logits2 = model.head2(pooled)
                loss = balanced_bce(logits2, targets, pos_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ce = F.cross_entropy(logits.float(), targets)
                sums += torch.stack([loss.detach().double() * len(targets), ce.double() * len(targets),
                                     (logits2.argmax(1) == targets).sum().double()])
                seen += len(targets)
            bce, ce, correct = (sums / seen).tolist()
            if on_epoch is not None:
                on_epoch(epoch, {"train/bce": bce, "train/ce_frozen": ce, "train/acc_sigmoid": 100.0 * correct,
                                 "lr": lr * factor})
    finally:
        restore_eval_mode(model)
        for p in model.parameters():
            p.requires_grad_(True)
    return trainable
