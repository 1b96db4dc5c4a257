"""The dual-branch classifier: one trunk, a softmax head and (after cloning) a parallel sigmoid head.

Both heads read the same globally average-pooled target-layer features (METHOD.md 1.2, 1.6). One forward
pass returns the softmax logits, the sigmoid-branch logits (None before the head is added) and the
target-layer feature map, which is what every CAM variant needs.
"""
from __future__ import annotations

import copy
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.io import write_bytes
from pipeline.models.backbones import Trunk, build_trunk, check_feature_map

CHECKPOINT_FORMAT = 1
HEAD_INITS = ("clone", "random")


class DualOutput(NamedTuple):
    logits: torch.Tensor                 # (B, K) softmax-branch logits
    logits2: torch.Tensor | None         # (B, K) sigmoid-branch logits (pre-sigmoid), None if no head2
    features: torch.Tensor               # (B, C, h, w) target-layer feature map


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    backbone: str
    num_classes: int
    input_size: int
    large_feature_map: bool = False
    output_stride: int | None = None


class DualBranchNet(nn.Module):
    """Trunk -> GAP -> softmax head `head`, plus sigmoid head `head2` once `add_sigmoid_head` ran."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.trunk: Trunk = build_trunk(spec.backbone, large_feature_map=spec.large_feature_map,
                                        output_stride=spec.output_stride)
        self.head = nn.Linear(self.trunk.channels, spec.num_classes)
        self.head2: nn.Linear | None = None
        self.feature_size = check_feature_map(self.trunk, spec.input_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the target-layer feature map (B, C, h, w) and the pooled vector (B, C) both heads read."""
        features = self.trunk(x)
        # SPG Inception: dropout on the feature map before the 1x1-conv heads (one mask for both heads);
        # GAP then linear equals the official 1x1 conv then GAP.
        head_in = self.trunk.dropout(features) if self.trunk.arch == "inception" else features
        return features, head_in.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> DualOutput:
        features, pooled = self.embed(x)
        logits2 = self.head2(pooled) if self.head2 is not None else None
        return DualOutput(self.head(pooled), logits2, features)

    def add_sigmoid_head(self, init: str, generator: torch.Generator | None = None) -> None:
        """Add the sigmoid branch: an exact copy of the softmax head (`clone`, the paper's text) or a
        fresh head initialised as the official code does (`random`, METHOD.md 1.4)."""
        if init not in HEAD_INITS:
            raise ValueError(f"head_init: '{init}' is not valid; choose one of: {', '.join(HEAD_INITS)}")
        head2 = copy.deepcopy(self.head)
        if init == "random":
            with torch.no_grad():
                if self.trunk.arch == "inception":  # SPG_A4_2: xavier_uniform, zero bias
                    bound = (6.0 / (head2.in_features + head2.out_features)) ** 0.5
                    head2.weight.uniform_(-bound, bound, generator=generator)
                else:  # fc2 / classifier_2: N(0, 0.01), zero bias
                    head2.weight.normal_(0.0, 0.01, generator=generator)
                head2.bias.zero_()
        self.head2 = head2


class BranchClassifier(nn.Module):
    """One branch of a DualBranchNet as a plain classifier returning logits only (`softmax` or `sigmoid`),
    the interface third-party CAM libraries such as pytorch-grad-cam expect."""

    def __init__(self, model: DualBranchNet, branch: str):
        super().__init__()
        if branch not in ("softmax", "sigmoid"):
            raise ValueError(f"branch: '{branch}' is not valid; choose one of: softmax, sigmoid")
        self.model, self.branch = model, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.logits if self.branch == "softmax" else out.logits2


# ----------------------------------------------------------------------------------------------------
# Freezing and BatchNorm modes


def freeze_all_but_sigmoid_head(model: DualBranchNet) -> list[str]:
    """Set requires_grad=False everywhere except `head2`; return the trainable parameter names."""
    if model.head2 is None:
        raise ValueError("the model has no sigmoid head yet; run the clone_head stage first")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head2."))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def set_finetune_mode(model: DualBranchNet, bn_mode: str) -> None:
    """Put the frozen model in the mode the sigmoid head is trained in.

    `eval`: the whole network in eval mode (BatchNorm uses its running statistics, no dropout).
    `batch_stats`: the official code's behaviour (METHOD.md 2.4): train mode, BatchNorm normalises with
    batch statistics but never updates its running statistics, dropout active.
    """
    if bn_mode == "eval":
        model.eval()
    elif bn_mode == "batch_stats":
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False  # training + no tracking: batch stats, buffers untouched
    else:
        raise ValueError(f"bn_mode: '{bn_mode}' is not valid; choose one of: eval, batch_stats")


def restore_eval_mode(model: DualBranchNet) -> None:
    """Undo `set_finetune_mode`: eval mode with running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = True
    model.eval()


# ----------------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(ValueError):
    pass


def save_checkpoint(model: DualBranchNet, path: str | Path, **extra) -> None:
    """Write model spec + state dict atomically and byte-deterministically."""
    payload = {"format": CHECKPOINT_FORMAT, "spec": asdict(model.spec), "has_head2": model.head2 is not None,
               "state_dict": model.state_dict(), "extra": extra}
    buf = io.BytesIO()  # in memory: torch.save names the archive after the file, which would vary
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, expect: ModelSpec | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[DualBranchNet, dict]:
    """Rebuild a model from a checkpoint written by `save_checkpoint`.

    With `expect`, the checkpoint's backbone, class count and feature settings must match it; otherwise
    the error names the file, what it holds and what the params ask for.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure means a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this project (format {CHECKPOINT_FORMAT}); "
                              f"official or wsolevaluation checkpoints are imported by the baseline stage")
    spec = ModelSpec(**payload["spec"])
    if expect is not None:
        mismatch = [f"{k}: checkpoint has {getattr(spec, k)!r}, params ask for {getattr(expect, k)!r}"
                    for k in ("backbone", "num_classes", "large_feature_map", "output_stride")
                    if getattr(spec, k) != getattr(expect, k)]
        if mismatch:
            raise CheckpointError(f"{path} does not fit the params: " + "; ".join(mismatch))
        spec = expect  # input_size may differ: it does not change the weights
    model = DualBranchNet(spec)
    if payload["has_head2"]:
        model.add_sigmoid_head("clone")
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: state dict does not fit backbone '{spec.backbone}': {exc}") from exc
    model.eval()
    return model, payload.get("extra", {})
