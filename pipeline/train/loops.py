"""Training and inference loops: the softmax baseline (cross-entropy) and the sigmoid-branch fine-tune.

Plain functions taking a model, a DataLoader and numbers; per-epoch figures go to an optional
`on_epoch(epoch, metrics)` callback (the stage scripts hand DVCLive's logger in), so the library knows
nothing of DVC.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.dist import ddp, rank_device, reduce_sums, set_epoch
from pipeline.models.dual import DualBranchNet, freeze_all_but_sigmoid_head, restore_eval_mode, set_finetune_mode
from pipeline.train.losses import balanced_bce
from pipeline.train.optim import apply_lr, make_sgd
from pipeline.train.resume import EpochCheckpoints

EpochCallback = Callable[[int, dict[str, float]], None]


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda`/`cuda:N` must exist. A distributed rank gets
    cuda:LOCAL_RANK for any CUDA device (pipeline/dist.py)."""
    if name == "auto":
        return rank_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: '{name}' asked for, but CUDA is not available here; use auto or cpu")
    return rank_device(device)


# Channels-last (NHWC) memory layout for the model and its inputs, on every device (PIPELINE_CHANNELS_LAST=0
# turns it off). On CUDA cuDNN's convolutions are faster in it (benchmarks/bench_train.py). On the CPU it is
# faster too, and more portable: measured here on resnet10t at 96 px, output stride 8, a batch of 32, a
# no-grad forward 1.2-1.45x and a training step 1.11x faster, max_pool2d 13x (PyTorch's NCHW CPU kernel is
# slow); and the logits and feature maps of a checkpoint came out bit-identical with oneDNN limited to AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2) and with AVX-512, where the NCHW ones differed.
CHANNELS_LAST = os.environ.get("PIPELINE_CHANNELS_LAST", "1") != "0"


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move `model` to `device`, channels-last (`CHANNELS_LAST`); returns it."""
    model.to(device)
    if CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    return model


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images on `device`, asynchronously from pinned memory, channels-last (`CHANNELS_LAST`)."""
    if CHANNELS_LAST and images.dim() == 4:
        return images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images.to(device, non_blocking=True)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Predictions:
    logits: torch.Tensor  # (N, K) float32, softmax branch
    logits2: torch.Tensor | None  # (N, K) float32, sigmoid branch
    labels: torch.Tensor  # (N,) int64
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, K) of each of `predict`'s extra heads

    def top1(self, branch: int | str = 1) -> float:
        """Top-1 accuracy in percent of the softmax (1) or sigmoid (2) branch, or of an extra head (its name)."""
        scores = self.extra[branch] if isinstance(branch, str) else self.logits if branch == 1 else self.logits2
        return 100.0 * (scores.argmax(1) == self.labels).double().mean().item()


@torch.no_grad()
def predict(
    model: DualBranchNet,
    loader: DataLoader,
    device: torch.device,
    *,
    desc: str = "predict",
    extra_heads: dict[str, torch.nn.Module] | None = None,
) -> Predictions:
    """Eval-mode float32 logits of both branches over `loader` (in loader order).

    `extra_heads` (name -> head module) are run on what the model's own heads read (`model.pre_head` of the
    trunk output, e.g. for the sigmoid head as it was before fine-tuning), so they cost no further forward.
    """
    model.eval()
    extra_heads = extra_heads or {}
    for head in extra_heads.values():
        head.eval()
    logits, logits2, labels = [], [], []
    extra: dict[str, list[torch.Tensor]] = {name: [] for name in extra_heads}
    for images, targets in tqdm(loader, desc=desc, leave=False):
        out = model(to_device(images, device))
        logits.append(out.logits.float().cpu())
        if out.logits2 is not None:
            logits2.append(out.logits2.float().cpu())
        head_in = model.pre_head(out.features) if extra_heads else None
        for name, head in extra_heads.items():
            extra[name].append(head(head_in).float().cpu())
        labels.append(targets)
    return Predictions(
        torch.cat(logits),
        torch.cat(logits2) if logits2 else None,
        torch.cat(labels),
        {name: torch.cat(parts) for name, parts in extra.items()},
    )


def classifier_parameter_names(model: DualBranchNet) -> set[str]:
    """Parameters in the official code's "classifier" group (METHOD.md 2.2), which gets
    lr * lr_classifier_ratio: the heads, plus the trunk parameters the backbone's registry entry puts there
    (`Backbone.in_classifier_group`: conv6 for VGG16, the SPG layers for Inception, layer4 for ResNet50;
    none for timm backbones)."""
    names = set()
    for name, _ in model.named_parameters():
        if not name.startswith("trunk.") or model.arch.in_classifier_group(name.removeprefix("trunk."), model.spec):
            names.add(name)
    return names


def train_baseline(
    model: DualBranchNet,
    loader: DataLoader,
    device: torch.device,
    *,
    epochs: int,
    lr: float,
    lr_classifier_ratio: float,
    lr_decay_every: int,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    label_smoothing: float = 0.0,
    on_epoch: EpochCallback | None = None,
    checkpoints: EpochCheckpoints | None = None,
) -> None:
    """Train the whole softmax classifier with cross-entropy (SGD, Nesterov, step decay).

    With `checkpoints`, resume after the last epoch saved there and save the state after every epoch.
    """
    place(model, device)
    head_names = classifier_parameter_names(model)
    named = list(model.named_parameters())
    optimizer = make_sgd(
        [
            ([p for n, p in named if n not in head_names], lr),
            ([p for n, p in named if n in head_names], lr * lr_classifier_ratio),
        ],
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )
    first = checkpoints.restore(model, optimizer, loader) if checkpoints is not None else 1
    net = ddp(model, device)  # distributed: DDP (gradients averaged over the ranks); else the model itself
    for epoch in range(first, epochs + 1):
        factor = apply_lr(optimizer, epoch, lr_decay_every)
        set_epoch(loader, epoch)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for images, targets in tqdm(loader, desc=f"baseline epoch {epoch}/{epochs}", leave=False):
            images, targets = to_device(images, device), targets.to(device, non_blocking=True)
            with autocast(device):
                logits = net(images).logits
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        loss_sum, correct, seen = reduce_sums(loss_sum, correct, seen)  # over the ranks
        metrics = {"train/loss": loss_sum.item() / seen, "train/acc": 100.0 * correct.item() / seen, "lr": lr * factor}
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if checkpoints is not None:
            checkpoints.save(epoch, model, optimizer, loader, metrics)


def finetune_sigmoid_head(
    model: DualBranchNet,
    loader: DataLoader,
    device: torch.device,
    *,
    epochs: int,
    lr: float,
    lr_decay_every: int,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    bn_mode: str,
    pos_weight: float | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoints: EpochCheckpoints | None = None,
) -> list[str]:
    """Train only the sigmoid head with class-balanced BCE; return the names of the trained parameters.

    The trunk and the softmax head are frozen (requires_grad=False) and run without autograd; BatchNorm
    follows `bn_mode` (see `set_finetune_mode`). The cross-entropy of the frozen softmax head is logged,
    as in the official code, but gives no gradient. With `checkpoints`, resume after the last epoch saved
    there and save the state after every epoch.
    """
    place(model, device)
    trainable = freeze_all_but_sigmoid_head(model)
    optimizer = make_sgd(
        [(list(model.head2.parameters()), lr)], momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )
    try:
        first = checkpoints.restore(model, optimizer, loader) if checkpoints is not None else 1
        head2 = ddp(model.head2, device)  # distributed: DDP over the only module that trains
        for epoch in range(first, epochs + 1):
            factor = apply_lr(optimizer, epoch, lr_decay_every)
            set_epoch(loader, epoch)
            set_finetune_mode(model, bn_mode)
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # bce, ce, correct (sigmoid)
            seen = 0
            for images, targets in tqdm(loader, desc=f"finetune epoch {epoch}/{epochs}", leave=False):
                images, targets = to_device(images, device), targets.to(device, non_blocking=True)
                with torch.no_grad(), autocast(device):
                    _, head_in = model.embed(images)  # the map (or, in train mode, its pre-head op: one
                    logits = model.head(head_in)  # dropout mask shared by both heads, METHOD.md 2.4)
                head_in = head_in.float()
                logits2 = head2(head_in)
                loss = balanced_bce(logits2, targets, pos_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ce = F.cross_entropy(logits.float(), targets)
                sums += torch.stack(
                    [
                        loss.detach().double() * len(targets),
                        ce.double() * len(targets),
                        (logits2.argmax(1) == targets).sum().double(),
                    ]
                )
                seen += len(targets)
            sums, seen = reduce_sums(sums, seen)  # over the ranks
            bce, ce, correct = (sums / seen).tolist()
            metrics = {"train/bce": bce, "train/ce_frozen": ce, "train/acc_sigmoid": 100.0 * correct, "lr": lr * factor}
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if checkpoints is not None:
                checkpoints.save(epoch, model, optimizer, loader, metrics)
    finally:
        restore_eval_mode(model)
        for p in model.parameters():
            p.requires_grad_(True)
    return trainable
