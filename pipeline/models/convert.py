"""Import and export checkpoints in the key layouts of the official code, wsolevaluation and timm.

The official Beyond-Softmax code (`wsol_cam/` for the CAM family, `wsol/` for the gradient family) and
wsolevaluation save `torch.save({'architecture': ..., 'epoch': ..., 'state_dict': model.state_dict(),
'optimizer': ...})`, usually from a DataParallel model, so the keys may start with `module.` (METHOD.md 2.5).
The key maps themselves belong to each architecture (`pipeline/models/archs/<arch>.py`, `official_rules`:
ordered prefix renames, used for import, export and for recognising what a file holds):

- vgg16/cam `features.*`, `conv6.*`, `fc.*` / `fc2.*` (or `conv.*` / `conv2.*` 1x1 convs);
  vgg16/grad `features.*`, `classifier.{0,3,6}.*` / `classifier_2.*`
- resnet50 (both families) `conv1.*`, `bn1.*`, `layer1..4.*`, `fc.*` / `fc2.*`
- inception/cam `Conv2d_*`, `Mixed_5*`, `Mixed_6*`, `SPG_A3_{1b,2b}.0.*`, `SPG_A4.*` / `SPG_A4_2.*` (1x1 convs);
  inception/grad (torchvision Inception3) `Conv2d_*`, `Mixed_*`, `fc.*` / `fc2.*`
- any timm model: timm's own state dict; its classifier (`pretrained_cfg['classifier']`) is the cam
  family's softmax head.

On our side the keys are `trunk.*`, softmax head `head.*`, sigmoid head `head2.*`. `num_batches_tracked`
buffers are optional. A file that does not fit the params is recognised when it can be (every registered
architecture and family, and a list of common timm models, compared key by key and shape by shape on the
meta device): the error names what it holds and what to set, or says it cannot tell.

`torchvision_trunk_state` maps torchvision ImageNet weights onto the WSOL trunks the way the official
`load_pretrained_model` does (each architecture's `map_torchvision`); new layers keep their init.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.models import archs
from pipeline.models.archs.base import NBT, Found
from pipeline.models.dual import CheckpointError, DualBranchNet, is_own_checkpoint, load_checkpoint, normalize_spec
from pipeline.models.spec import ModelSpec

_NBT = NBT


@dataclass
class ImportInfo:
    """What an import did: where from, which layout, and what was left out."""

    source: str
    layout: str  # "ours" | "official <arch>" | "timm <name>"
    head2: bool = False  # the checkpoint's sigmoid head was loaded
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately not loaded

    def __str__(self) -> str:
        text = f"imported {self.source} ({self.layout} layout)"
        if self.head2:
            text += ", sigmoid head included"
        if self.ignored:
            text += f"; not loaded: {_short_list(self.ignored)}"
        return text


def _short_list(keys: list[str], limit: int = 8) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel's `module.` prefix (the official loaders do the same)."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def read_torch_file(path: str | Path) -> object:
    """torch.load with weights_only=True (tensors, optimizer state and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure means an unusable file
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint with weights_only=True ({exc}); "
            f"re-save just the weights: torch.save({{'state_dict': sd}}, path)"
        ) from exc


def unwrap_state_dict(payload: object, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict without `module.`, the other top-level entries) of a loaded checkpoint: a dict holding
    'state_dict' (official / wsolevaluation) or 'model', or a bare state dict."""
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{source}: expected a dict with 'state_dict', got {type(payload).__name__}")
    meta: dict = {}
    if "state_dict" in payload and isinstance(payload["state_dict"], Mapping):
        sd, meta = payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}
    elif "model" in payload and isinstance(payload["model"], Mapping):
        sd, meta = payload["model"], {k: v for k, v in payload.items() if k != "model"}
    else:
        sd = payload
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source}: not a state dict (entries that are not tensors: {_short_list(bad)}); "
            f"expected torch.save({{'state_dict': model.state_dict(), ...}})"
        )
    return strip_module_prefix(sd), meta


# ----------------------------------------------------------------------------------------------------
# What a state dict holds


def identify(state_dict: Mapping[str, torch.Tensor], hint: str | None = None) -> list[Found]:
    """Every (architecture, family) whose layout the state dict holds exactly: the registered architectures
    first, then timm models (`hint`, the params' backbone, and timm_any.IDENTIFY_CANDIDATES)."""
    from pipeline.models.archs.timm_any import identify_timm

    sd = strip_module_prefix(state_dict)
    found = [f for b in archs.registered() for f in b.identify(sd)]
    if not found:
        extra = (archs.canonical(hint),) if hint and not archs.is_registered(hint) else ()
        found = identify_timm(sd, extra)
    return found


def _setting(found: Found, spec: ModelSpec) -> str:
    """What to set in params.yaml so that the params ask for what `found` holds."""
    parts = []
    if archs.canonical(found.backbone) != archs.canonical(spec.backbone):
        parts.append(f"backbone: {found.backbone}")
    if found.family != spec.family:
        parts.append(f"family: {found.family}")
    if found.large_feature_map != spec.large_feature_map:
        parts.append(f"backbones.{found.backbone}.large_feature_map: {str(found.large_feature_map).lower()}")
    if found.num_classes is not None and found.num_classes != spec.num_classes:
        parts.append(f"datasets.<dataset>.num_classes: {found.num_classes}")
    return ", ".join(parts)


def _mismatch_message(source: str, found: list[Found], spec: ModelSpec) -> str:
    asked = f"backbone '{spec.backbone}', family '{spec.family}', {spec.num_classes} classes" + (
        ", large_feature_map" if spec.large_feature_map else ""
    )
    # the closest reading: same backbone, then same family, then same large_feature_map
    best = max(
        found,
        key=lambda f: (
            archs.canonical(f.backbone) == archs.canonical(spec.backbone),
            f.family == spec.family,
            f.large_feature_map == spec.large_feature_map,
        ),
    )
    families = sorted({f.family for f in found if f.backbone == best.backbone})
    also = f" (the same keys fit families {' and '.join(families)})" if len(families) > 1 else ""
    return f"{source}: holds {best.describe()}{also}, but the params ask for {asked}; set {_setting(best, spec)}"


# ----------------------------------------------------------------------------------------------------
# Key maps


def official_to_ours(
    state_dict: Mapping[str, torch.Tensor], arch: str, family: str = "cam"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official-layout state dict to ours: (renamed dict, keys that have no place in our model)."""
    spec = ModelSpec(arch, 2, 224, family=family)
    backbone = archs.get(arch)
    if not backbone.official_rules(spec):
        raise CheckpointError(f"no official {family}-family layout exists for '{arch}'")
    return backbone.official_to_ours(state_dict, spec)


def ours_to_official(
    model_or_state: DualBranchNet | Mapping[str, torch.Tensor], arch: str | None = None, family: str = "cam"
) -> dict[str, torch.Tensor]:
    """Our state dict in the official key layout (what `official_to_ours` reads back exactly)."""
    if isinstance(model_or_state, DualBranchNet):
        spec, state = model_or_state.spec, model_or_state.state_dict()
    else:
        spec, state = ModelSpec(arch or "", 2, 224, family=family), model_or_state
    backbone = archs.get(spec.backbone)
    if not backbone.official_rules(spec):
        raise CheckpointError(f"no official {spec.family}-family layout exists for '{spec.backbone}'")
    try:
        return backbone.ours_to_official(state, spec)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------
# Loading


def _problems(model: DualBranchNet, renamed: Mapping[str, torch.Tensor], unknown: list[str]) -> list[str]:
    """Unmatched / missing keys and shape mismatches of `renamed` against `model` (empty when it fits)."""
    spec, backbone = model.spec, model.arch
    name = lambda k: backbone.ours_to_official_key(k, spec)  # noqa: E731
    target = model.state_dict()
    problems = []
    if unknown:
        problems.append(f"checkpoint keys with no place in our {spec.backbone} network: {_short_list(sorted(unknown))}")
    unmatched = sorted(k for k in renamed if k not in target)
    if unmatched:
        problems.append(
            "checkpoint keys not in our model (official name -> ours): "
            + _short_list([f"{name(k)} -> {k}" for k in unmatched])
            + (
                f" (our trunk stops at feature stage {spec.feature_stage}: set "
                f"backbones.<backbone>.feature_stage: null for the whole network)"
                if spec.feature_stage is not None
                else ""
            )
        )
    missing = sorted(k for k in target if k not in renamed and not k.endswith(_NBT))
    if missing:
        problems.append(
            "our keys missing from the checkpoint (ours <- official name): "
            + _short_list([f"{k} <- {name(k)}" for k in missing])
        )
    shapes = [
        f"{name(k)} {tuple(v.shape)} vs ours {k} {tuple(target[k].shape)}"
        for k, v in renamed.items()
        if k in target and v.shape != target[k].shape
    ]
    if shapes:
        problems.append("shape mismatches: " + _short_list(shapes))
    return problems


def load_official_state_dict(
    model: DualBranchNet,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    include_head2: bool = True,
) -> ImportInfo:
    """Load an official-layout state dict (trunk + softmax head, and the sigmoid head when present and
    `include_head2`) into `model`. CheckpointError otherwise: naming what the file holds and what to set
    when that can be recognised, else every unmatched / missing key and shape."""
    spec, backbone = model.spec, model.arch
    if not backbone.official_rules(spec):
        raise CheckpointError(
            f"{source}: no official {spec.family}-family layout exists for backbone "
            f"'{spec.backbone}' (the params ask for it)"
        )
    state_dict = strip_module_prefix(state_dict)
    renamed, unknown = backbone.official_to_ours(state_dict, spec)
    ignored = []
    if not include_head2:
        ignored = sorted(backbone.ours_to_official_key(k, spec) for k in renamed if k.startswith("head2."))
        renamed = {k: v for k, v in renamed.items() if not k.startswith("head2.")}
    has_head2 = any(k.startswith("head2.") for k in renamed)
    if has_head2 and model.head2 is None:
        model.add_sigmoid_head("clone")
    problems = _problems(model, renamed, unknown)
    if problems:
        if has_head2 and include_head2:
            model.head2 = None
        found = identify(state_dict, hint=spec.backbone)
        if found and not any(_setting(f, spec) == "" for f in found):
            raise CheckpointError(_mismatch_message(source, found, spec))
        hint = (
            ""
            if found
            else "; it is none of the layouts this project knows, so it cannot tell which architecture the file holds"
        )
        if any("head" in p for p in problems):
            hint += f" (the params ask for {spec.num_classes} classes)"
        raise CheckpointError(
            f"{source}: does not fit our {spec.backbone} network ({spec.family} family):\n  - "
            + "\n  - ".join(problems)
            + hint
        )
    target = model.state_dict()
    full = dict(target)
    full.update({k: v.to(target[k].dtype) for k, v in renamed.items()})
    model.load_state_dict(full, strict=True)
    layout = f"official {spec.backbone}" if backbone.official_name else f"timm {spec.backbone}"
    return ImportInfo(source=source, layout=layout, head2=has_head2, ignored=ignored)


def import_checkpoint(
    path: str | Path, spec: ModelSpec, *, include_head2: bool = False
) -> tuple[DualBranchNet, ImportInfo]:
    """A model from a checkpoint of this project (`save_checkpoint`), of the official code /
    wsolevaluation (either family), or a timm state dict.

    For an official checkpoint the model is built from `spec`, and its 'architecture' entry (when present)
    must agree with `spec.backbone`. `include_head2`: also load an official b2 checkpoint's sigmoid head
    (`fc2` / `classifier_2` / `SPG_A4_2`); the baseline stage leaves it out, since clone_head adds the
    sigmoid branch.
    """
    path = Path(path)
    payload = read_torch_file(path)
    if is_own_checkpoint(payload):
        model, _ = load_checkpoint(path, expect=spec)
        return model, ImportInfo(source=str(path), layout="ours", head2=model.head2 is not None)
    try:
        spec = normalize_spec(spec)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    state_dict, meta = unwrap_state_dict(payload, str(path))
    declared = meta.get("architecture")
    if isinstance(declared, str):
        names = {b.official_name: b.name for b in archs.registered() if b.official_name}
        arch = names.get(declared, archs.canonical(declared))
        if arch != archs.canonical(spec.backbone):
            raise CheckpointError(
                f"{path}: is a checkpoint of architecture '{declared}', but the params ask for "
                f"backbone '{spec.backbone}'; set backbone: {arch}"
            )
    model = DualBranchNet(spec)
    info = load_official_state_dict(model, state_dict, source=str(path), include_head2=include_head2)
    model.eval()
    return model, info


def save_official_checkpoint(model: DualBranchNet, path: str | Path, *, epoch: int = 0) -> None:
    """Write `model` as the official code does (`torch.save({'architecture', 'epoch', 'state_dict'})`)."""
    name = model.arch.official_name or model.spec.backbone
    torch.save({"architecture": name, "epoch": epoch, "state_dict": ours_to_official(model)}, path)


# ----------------------------------------------------------------------------------------------------
# torchvision ImageNet weights onto the WSOL trunks


def torchvision_trunk_state(
    model: DualBranchNet, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map torchvision-format ImageNet weights (or an official checkpoint's trunk) onto our WSOL model.

    Returns (our keys -> tensors to load, file keys dropped, our parameter names that keep their init).
    The softmax head is loaded only when its shape fits (1000 classes). CheckpointError when a trunk tensor
    is missing, unknown or of the wrong shape.
    """
    if model.arch.pretrained_layout != "torchvision":
        raise CheckpointError(
            f"{source}: torchvision weights are mapped onto vgg16, resnet50 and inception, not '{model.spec.backbone}'"
        )
    sd = strip_module_prefix(state_dict)
    target = model.state_dict()
    try:
        out, dropped, unknown, new_layers = model.arch.map_torchvision(model, sd)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    problems = []
    if unknown:
        problems.append(f"unknown keys: {_short_list(sorted(unknown))}")
    missing = sorted(
        k
        for k in target
        if k.startswith("trunk.") and k not in out and not k.endswith(_NBT) and not k.startswith(new_layers)
    )
    if missing:
        problems.append(f"trunk tensors missing from the file: {_short_list(missing)}")
    shapes = [
        f"{k}: file {tuple(v.shape)}, ours {tuple(target[k].shape)}"
        for k, v in out.items()
        if k in target and v.shape != target[k].shape
    ]
    extra = sorted(k for k in out if k not in target)
    if extra:
        problems.append(f"keys with no place in our trunk: {_short_list(extra)}")
    if shapes:
        problems.append(f"shape mismatches: {_short_list(shapes)}")
    if problems:
        raise CheckpointError(
            f"{source}: is not torchvision-format {model.spec.backbone} ImageNet weights:\n  - "
            + "\n  - ".join(problems)
        )
    kept = sorted(n for n, _ in model.named_parameters() if n not in out)
    return out, sorted(dropped), kept
