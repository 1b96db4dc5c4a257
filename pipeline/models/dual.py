"""The dual-branch classifier: one trunk, a softmax head and (after cloning) a parallel sigmoid head.

Everything architecture-specific comes from the backbone registry (`pipeline.models.archs`): the trunk,
the head form of the model family (`cam`: GAP -> linear; `grad`: the official gradient-family heads),
the shared pre-head op both heads read through (identity in eval mode) and how the sigmoid head is made.
One forward pass returns the softmax logits, the sigmoid-branch logits (None before the head is added) and
the target-layer feature map A; in eval mode `model.head(A)` and `model.head2(A)` are those logits exactly.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.concepts import BRANCHES, FAMILIES
from pipeline.io import write_bytes
from pipeline.models import archs
from pipeline.models.backbones import Trunk, check_feature_map
from pipeline.models.heads import Head
from pipeline.models.spec import SPEC_KEYS, ModelSpec

CHECKPOINT_FORMAT = 2  # 2: the spec has family / grad_grid / grad_hidden
READABLE_FORMATS = (1, 2)  # format 1 (before model families): read as the cam family
HEAD_INITS = ("clone", "random")


class DualOutput(NamedTuple):
    logits: torch.Tensor  # (B, K) softmax-branch logits
    logits2: torch.Tensor | None  # (B, K) sigmoid-branch logits (pre-sigmoid), None if no head2
    features: torch.Tensor  # (B, C, h, w) target-layer feature map


def normalize_spec(spec: ModelSpec) -> ModelSpec:
    """`spec` checked against its architecture (ValueError naming what to change) and without the settings
    that architecture ignores."""
    if spec.family not in FAMILIES:
        raise ValueError(f"family: '{spec.family}' is not valid; choose one of: {', '.join(FAMILIES)}")
    backbone = archs.get(spec.backbone)
    backbone.check_spec(spec)
    return backbone.normalize_spec(spec)


class DualBranchNet(nn.Module):
    """Trunk -> pre-head op -> softmax head `head`, plus sigmoid head `head2` once `add_sigmoid_head` ran."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec = normalize_spec(spec)
        self.spec = spec
        self.arch = archs.get(spec.backbone)
        self.trunk: Trunk = self.arch.build_trunk(spec)
        self.head: Head = self.arch.build_head(spec, self.trunk.channels)
        self.head2: Head | None = None
        self.pre_head: nn.Module = self.arch.build_pre_head(spec)
        self.feature_size = check_feature_map(self.trunk, spec.input_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the target-layer feature map (B, C, h, w) and what both heads read (the pre-head op of
        it: the map itself in eval mode)."""
        features = self.trunk(x)
        return features, self.pre_head(features)

    def forward(self, x: torch.Tensor) -> DualOutput:
        features, head_in = self.embed(x)
        logits2 = self.head2(head_in) if self.head2 is not None else None
        return DualOutput(self.head(head_in), logits2, features)

    def add_sigmoid_head(self, init: str, generator: torch.Generator | None = None) -> None:
        """Add the sigmoid branch: an exact copy of the softmax head (`clone`, the paper's text) or a
        fresh head of the same form initialised as the official code does (`random`, METHOD.md 1.4)."""
        if init not in HEAD_INITS:
            raise ValueError(f"head_init: '{init}' is not valid; choose one of: {', '.join(HEAD_INITS)}")
        self.head2 = self.arch.make_sigmoid_head(self.head, self.spec, init, generator)


class BranchClassifier(nn.Module):
    """One branch of a DualBranchNet as a plain classifier returning logits only (`softmax` or `sigmoid`),
    the interface third-party CAM libraries such as pytorch-grad-cam expect."""

    def __init__(self, model: DualBranchNet, branch: str):
        super().__init__()
        if branch not in BRANCHES:
            raise ValueError(f"branch: '{branch}' is not valid; choose one of: {', '.join(BRANCHES)}")
        self.model, self.branch = model, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.logits if self.branch == "softmax" else out.logits2


# ----------------------------------------------------------------------------------------------------
# Freezing and BatchNorm modes


def frozen_state_digest(model: DualBranchNet) -> str:
    """sha256 of everything fine-tuning must leave untouched: every parameter and buffer outside `head2`
    (trunk, softmax head, BatchNorm running statistics), with names, dtypes and shapes."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if name.startswith("head2."):
            continue
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FrozenCheck:
    """What fine-tuning must not change, taken before it: `frozen_state_digest` and the softmax branch's
    eval-mode logits of a probe batch. `change(model)` afterwards: None, or what changed (the logits also
    catch a change outside the state dict, e.g. a module attribute such as BatchNorm's eps)."""

    def __init__(self, model: DualBranchNet, probe: torch.Tensor):
        self.probe = probe
        self.digest = frozen_state_digest(model)
        self.logits = self._logits(model)

    def _logits(self, model: DualBranchNet) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model(self.probe).logits.float().cpu()

    def change(self, model: DualBranchNet) -> str | None:
        if frozen_state_digest(model) != self.digest:
            return "its frozen parameters or buffers"
        logits = self._logits(model)
        if not torch.equal(logits, self.logits):
            return (
                f"its eval-mode logits (max |diff| = {(logits - self.logits).abs().max().item():.3g} on the "
                f"probe batch)"
            )
        return None


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


def is_own_checkpoint(payload: object) -> bool:
    """A payload written by `save_checkpoint` (any readable format)."""
    return isinstance(payload, dict) and payload.get("format") in READABLE_FORMATS and "spec" in payload


PARAM_OF = {
    "backbone": "backbone",
    "family": "family",
    "num_classes": "datasets.<dataset>.num_classes",
    "large_feature_map": "backbones.<backbone>.large_feature_map",
    "output_stride": "backbones.<backbone>.output_stride",
    "feature_stage": "backbones.<backbone>.feature_stage",
    "grad_grid": "grad_head.grid",
    "grad_hidden": "grad_head.hidden",
}


def spec_mismatch(have: ModelSpec, want: ModelSpec) -> list[str]:
    """One line per weight-shaping field that differs, naming the param to set."""
    return [
        f"{k}: checkpoint has {getattr(have, k)!r}, params ask for {getattr(want, k)!r} "
        f"(set {PARAM_OF[k]}: {getattr(have, k)} to use this file)"
        for k in SPEC_KEYS
        if getattr(have, k) != getattr(want, k)
    ]


def save_checkpoint(model: DualBranchNet, path: str | Path, **extra) -> None:
    """Write model spec + state dict atomically and byte-deterministically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": asdict(model.spec),
        "has_head2": model.head2 is not None,
        "state_dict": model.state_dict(),
        "extra": extra,
    }
    buf = io.BytesIO()  # in memory: torch.save names the archive after the file, which would vary
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(
    path: str | Path, expect: ModelSpec | None = None, map_location: str | torch.device = "cpu"
) -> tuple[DualBranchNet, dict]:
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
    if not is_own_checkpoint(payload):
        raise CheckpointError(
            f"{path}: not a checkpoint of this project (format {CHECKPOINT_FORMAT}); "
            f"official or wsolevaluation checkpoints are imported by the baseline stage"
        )
    spec = ModelSpec(**payload["spec"])  # format 1 has no family: the cam family (ModelSpec's default)
    if expect is not None:
        try:
            expect = normalize_spec(expect)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        mismatch = spec_mismatch(spec, expect)
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
