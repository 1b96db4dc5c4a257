"""Import and export checkpoints in the key layout of the official code and wsolevaluation.

The official Beyond-Softmax code (`wsol_cam/`) and wsolevaluation save `torch.save({'architecture': ...,
'epoch': ..., 'state_dict': model.state_dict(), 'optimizer': ...})`, usually from a DataParallel model, so
the keys may start with `module.` (METHOD.md 2.5). Their CAM networks (METHOD.md 1.3) have these keys; on
the right, where each goes in our `DualBranchNet` (`trunk.*`, softmax head `head.*`, sigmoid head
`head2.*`):

VGG16 (`VggCam`)
    features.<i>.{weight,bias}      -> trunk.features.<i>.*      13 convs; the same Sequential indices as
                                                                 ours, with and without large_feature_map
    conv6.{weight,bias}             -> trunk.conv6.*
    fc.{weight,bias}    (K, 1024)   -> head.*                    `conv.*` (K, 1024, 1, 1) with
    fc2.{weight,bias}               -> head2.*                   last_layer=conv: reshaped; conv2 -> head2
ResNet50 (`ResNetCam`, also the grad family's `wsol/resnet.py`)
    conv1.*, bn1.*, layer1..4.*     -> trunk.<same>              torchvision Bottleneck names
    fc.* (K, 2048), fc2.*           -> head.*, head2.*
InceptionV3 (`InceptionCam`, SPG style)
    Conv2d_1a_3x3..Conv2d_4a_3x3.*, Mixed_5b..Mixed_6e.*  -> trunk.<same>   torchvision BasicConv2d /
                                                                          InceptionA/B/C names
    SPG_A3_1b.0.*, SPG_A3_2b.0.*    -> trunk.SPG_A3_1b.*, trunk.SPG_A3_2b.*  (their Sequential(conv, ReLU))
    SPG_A4.weight (K, 1024, 1, 1)   -> head.weight (K, 1024)     a 1x1 conv then GAP = GAP then linear
    SPG_A4_2.*                      -> head2.*

`num_batches_tracked` buffers are optional on both sides. Grad-family VGG16 / InceptionV3 checkpoints
(`wsol/`: a `classifier` MLP on 7x7 pooled features, or torchvision's Inception3 with Mixed_7*) are other
networks and are refused with a message saying so.

`torchvision_trunk_state` maps torchvision ImageNet weights (`vgg16-397923af.pth`, `resnet50-0676ba61.pth`,
`inception_v3_google-0cc3c7bd.pth`) onto our WSOL trunks the way the official `load_pretrained_model`
does: VGG convs by order (classifier dropped), ResNet by name (fc kept only for a 1000-class head), Inception
by name (Mixed_7*, AuxLogits and fc dropped). New layers (conv6, SPG_A3_*) keep their init.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.models.dual import (CHECKPOINT_FORMAT, CheckpointError, DualBranchNet, ModelSpec,
                                  load_checkpoint)
from pipeline.models.names import ALIASES

# the official `--architecture` values
OFFICIAL_ARCH_NAMES = {"vgg16": "vgg16", "resnet50": "resnet50", "inception_v3": "inception", "inception": "inception"}
HEAD_KEYS = {  # official name of (softmax head, sigmoid head) per backbone
    "vgg16": (("fc", "conv"), ("fc2", "conv2")),
    "resnet50": (("fc",), ("fc2",)),
    "inception": (("SPG_A4",), ("SPG_A4_2",)),
}
_SPG_CONVS = ("SPG_A3_1b", "SPG_A3_2b")
_NBT = "num_batches_tracked"


@dataclass
class ImportInfo:
    """What an import did: where from, which layout, and what was left out."""

    source: str
    layout: str                                     # "ours" | "official <arch>"
    head2: bool = False                             # the checkpoint's sigmoid head was loaded
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
        raise CheckpointError(f"{path}: not a readable torch checkpoint with weights_only=True ({exc}); "
                              f"re-save just the weights: torch.save({{'state_dict': sd}}, path)") from exc


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
        raise CheckpointError(f"{source}: not a state dict (entries that are not tensors: {_short_list(bad)}); "
                              f"expected torch.save({{'state_dict': model.state_dict(), ...}})")
    return strip_module_prefix(sd), meta


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Which WSOL backbone a state dict in the official layout belongs to (None when none fits)."""
    keys = set(state_dict)
    if any(k.startswith(("Mixed_", "SPG_A3_", "Conv2d_1a_3x3.")) for k in keys):
        return "inception"
    if any(k.startswith("layer4.") for k in keys):
        return "resnet50"
    if "conv6.weight" in keys or any(k.startswith("features.") for k in keys):
        return "vgg16"
    return None


def _grad_family_problem(state_dict: Mapping[str, torch.Tensor], arch: str) -> str | None:
    keys = set(state_dict)
    if arch == "vgg16" and "classifier.0.weight" in keys and "conv6.weight" not in keys:
        return ("a grad-family VGG16 (wsol/vgg.py: a 3-layer `classifier` MLP on 7x7 pooled features), not the "
                "CAM network (conv6 + GAP + fc) this project builds; train that model with --method cam")
    if arch == "inception" and any(k.startswith("Mixed_7") for k in keys) and not any(
            k.startswith("SPG_A3_") for k in keys):
        return ("a grad-family / torchvision InceptionV3 (Mixed_7*, fc on 2048 channels), not the SPG-style CAM "
                "network (SPG_A3_*, SPG_A4) this project builds; train that model with --method cam")
    return None


# ----------------------------------------------------------------------------------------------------
# Key maps


def _official_to_ours_key(key: str, arch: str) -> str | None:
    """Our key for an official key (None when the key is not part of the CAM network)."""
    prefix, _, rest = key.partition(".")
    (head_names, head2_names) = HEAD_KEYS[arch]
    if prefix in head_names and rest in ("weight", "bias"):
        return f"head.{rest}"
    if prefix in head2_names and rest in ("weight", "bias"):
        return f"head2.{rest}"
    if arch == "vgg16":
        if prefix in ("features", "conv6"):
            return f"trunk.{key}"
    elif arch == "resnet50":
        if prefix in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"):
            return f"trunk.{key}"
    elif arch == "inception":
        if prefix in _SPG_CONVS:
            m = re.fullmatch(r"0\.(weight|bias)", rest)
            return f"trunk.{prefix}.{m.group(1)}" if m else None
        if prefix.startswith(("Conv2d_", "Mixed_5", "Mixed_6")):
            return f"trunk.{key}"
    return None


def _ours_to_official_key(key: str, arch: str) -> str:
    if key.startswith(("head.", "head2.")):
        which, _, rest = key.partition(".")
        names = HEAD_KEYS[arch][0 if which == "head" else 1]
        return f"{names[0]}.{rest}"
    inner = key.removeprefix("trunk.")
    if arch == "inception":
        prefix, _, rest = inner.partition(".")
        if prefix in _SPG_CONVS:
            return f"{prefix}.0.{rest}"
    return inner


def _canonical_arch(name: str) -> str:
    return ALIASES.get(name, name)


def official_to_ours(state_dict: Mapping[str, torch.Tensor], arch: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official-layout state dict to ours: (renamed dict, keys that have no place in our model)."""
    arch = _canonical_arch(arch)
    if arch not in HEAD_KEYS:
        raise CheckpointError(f"official checkpoints exist for vgg16, resnet50 and inception, not '{arch}'")
    out, unknown = {}, []
    for key, value in state_dict.items():
        ours = _official_to_ours_key(key, arch)
        if ours is None:
            unknown.append(key)
            continue
        if ours.startswith(("head.", "head2.")) and ours.endswith(".weight") and value.ndim == 4:
            value = value.reshape(value.shape[0], -1)  # 1x1 conv head (K, C, 1, 1) -> linear (K, C)
        out[ours] = value
    return out, unknown


def ours_to_official(model_or_state: DualBranchNet | Mapping[str, torch.Tensor],
                     arch: str | None = None) -> dict[str, torch.Tensor]:
    """Our state dict in the official key layout (what `official_to_ours` reads back exactly)."""
    if isinstance(model_or_state, DualBranchNet):
        arch = _canonical_arch(model_or_state.spec.backbone)
        state = model_or_state.state_dict()
    else:
        state = model_or_state
    arch = _canonical_arch(arch or "")
    if arch not in HEAD_KEYS:
        raise CheckpointError(f"the official layout exists for vgg16, resnet50 and inception, not '{arch}'")
    out = {}
    for key, value in state.items():
        if arch == "inception" and key.startswith(("head.", "head2.")) and key.endswith(".weight"):
            value = value.reshape(*value.shape, 1, 1)  # SPG_A4 is a 1x1 conv
        out[_ours_to_official_key(key, arch)] = value.detach().clone()
    return out


# ----------------------------------------------------------------------------------------------------
# Loading


def _check_and_fill(model: DualBranchNet, renamed: Mapping[str, torch.Tensor], unknown: list[str],
                    source: str, arch: str, *, allow_missing: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Our full state dict from `renamed`, or CheckpointError listing unmatched / missing keys and shapes."""
    target = model.state_dict()
    problems = []
    if unknown:
        problems.append(f"checkpoint keys with no place in our {arch} network: {_short_list(sorted(unknown))}")
    unmatched = sorted(k for k in renamed if k not in target)
    if unmatched:
        problems.append("checkpoint keys not in our model (official name -> ours): "
                        + _short_list([f"{_ours_to_official_key(k, arch)} -> {k}" for k in unmatched]))
    missing = sorted(k for k in target if k not in renamed and not k.endswith(_NBT)
                     and not k.startswith(allow_missing))
    if missing:
        problems.append("our keys missing from the checkpoint (ours <- official name): "
                        + _short_list([f"{k} <- {_ours_to_official_key(k, arch)}" for k in missing]))
    shapes = [f"{_ours_to_official_key(k, arch)} {tuple(v.shape)} vs ours {k} {tuple(target[k].shape)}"
              for k, v in renamed.items() if k in target and v.shape != target[k].shape]
    if shapes:
        problems.append("shape mismatches: " + _short_list(shapes))
    if problems:
        hint = ""
        if arch == "vgg16" and (unmatched or missing):
            hint = (" (VGG16 feature indices differ with large_feature_map: check that "
                    f"backbones.vgg16.large_feature_map={model.spec.large_feature_map} matches the checkpoint)")
        if any(k.startswith("head") for k in (*missing, *unmatched)) or any("head" in s for s in shapes):
            hint += f" (the params ask for {model.spec.num_classes} classes)"
        raise CheckpointError(f"{source}: does not fit our {arch} network:\n  - " + "\n  - ".join(problems) + hint)
    full = dict(target)
    full.update({k: v.to(target[k].dtype) for k, v in renamed.items()})
    return full


def load_official_state_dict(model: DualBranchNet, state_dict: Mapping[str, torch.Tensor], *,
                             source: str = "checkpoint", include_head2: bool = True) -> ImportInfo:
    """Load an official-layout state dict (trunk + softmax head, and the sigmoid head when present and
    `include_head2`) into `model`; CheckpointError with every unmatched / missing key and shape otherwise."""
    arch = _canonical_arch(model.spec.backbone)
    if arch not in HEAD_KEYS:
        raise CheckpointError(f"{source}: official checkpoints exist for vgg16, resnet50 and inception; the params "
                              f"ask for the timm backbone '{arch}'")
    state_dict = strip_module_prefix(state_dict)
    found = detect_arch(state_dict)
    if found is not None and found != arch:
        raise CheckpointError(f"{source}: holds a {found} network (its keys: {_short_list(sorted(state_dict), 4)}), "
                              f"but the params ask for backbone '{arch}'; set backbone: {found}")
    grad = _grad_family_problem(state_dict, arch)
    if grad:
        raise CheckpointError(f"{source}: is {grad}")
    renamed, unknown = official_to_ours(state_dict, arch)
    ignored = []
    has_head2 = any(k.startswith("head2.") for k in renamed)
    if has_head2 and not include_head2:
        ignored = sorted(_ours_to_official_key(k, arch) for k in renamed if k.startswith("head2."))
        renamed = {k: v for k, v in renamed.items() if not k.startswith("head2.")}
        has_head2 = False
    if has_head2 and model.head2 is None:
        model.add_sigmoid_head("clone")
    full = _check_and_fill(model, renamed, unknown, source, arch)
    model.load_state_dict(full, strict=True)
    return ImportInfo(source=source, layout=f"official {arch}", head2=has_head2, ignored=ignored)


def import_checkpoint(path: str | Path, spec: ModelSpec, *,
                      include_head2: bool = False) -> tuple[DualBranchNet, ImportInfo]:
    """A model from a checkpoint of this project (`save_checkpoint`) or of the official code / wsolevaluation.

    For an official checkpoint the model is built from `spec`, and its 'architecture' entry (when present)
    must agree with `spec.backbone`. `include_head2`: also load an official b2 checkpoint's sigmoid head
    (`fc2` / `SPG_A4_2`); the baseline stage leaves it out, since clone_head adds the sigmoid branch.
    """
    path = Path(path)
    payload = read_torch_file(path)
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT and "spec" in payload:
        model, _ = load_checkpoint(path, expect=spec)
        return model, ImportInfo(source=str(path), layout="ours", head2=model.head2 is not None)
    state_dict, meta = unwrap_state_dict(payload, str(path))
    declared = meta.get("architecture")
    wanted = _canonical_arch(spec.backbone)
    if isinstance(declared, str):
        arch = OFFICIAL_ARCH_NAMES.get(declared, declared)
        if arch != wanted:
            raise CheckpointError(f"{path}: is a checkpoint of architecture '{declared}', but the params ask for "
                                  f"backbone '{spec.backbone}'; set backbone: {arch}")
    found = detect_arch(state_dict)
    if found is not None and found != wanted:  # checked again on load; here it saves building the model
        raise CheckpointError(f"{path}: holds a {found} network (its keys: {_short_list(sorted(state_dict), 4)}), "
                              f"but the params ask for backbone '{spec.backbone}'; set backbone: {found}")
    model = DualBranchNet(spec)
    info = load_official_state_dict(model, state_dict, source=str(path), include_head2=include_head2)
    model.eval()
    return model, info


def save_official_checkpoint(model: DualBranchNet, path: str | Path, *, epoch: int = 0) -> None:
    """Write `model` as the official code does (`torch.save({'architecture', 'epoch', 'state_dict'})`)."""
    names = {"vgg16": "vgg16", "resnet50": "resnet50", "inception": "inception_v3"}
    torch.save({"architecture": names[_canonical_arch(model.spec.backbone)], "epoch": epoch,
                "state_dict": ours_to_official(model)}, path)


# ----------------------------------------------------------------------------------------------------
# torchvision ImageNet weights onto the WSOL trunks


def _conv_indices(keys, prefix: str = "features.") -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", k))}
    return sorted(found)


def torchvision_trunk_state(model: DualBranchNet, state_dict: Mapping[str, torch.Tensor], *,
                            source: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map torchvision-format ImageNet weights (or an official checkpoint's trunk) onto our WSOL model.

    Returns (our keys -> tensors to load, file keys dropped, our parameter names that keep their init).
    The softmax head is loaded only when its shape fits (a 1000-class ResNet50 `fc`). CheckpointError when
    a trunk tensor is missing, unknown or of the wrong shape.
    """
    arch = _canonical_arch(model.spec.backbone)
    sd = strip_module_prefix(state_dict)
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    if arch == "vgg16":
        ours = [i for i, m in enumerate(model.trunk.features) if isinstance(m, torch.nn.Conv2d)]
        theirs = [i for i in _conv_indices(sd) if sd[f"features.{i}.weight"].ndim == 4]
        if len(theirs) != len(ours):
            raise CheckpointError(f"{source}: has {len(theirs)} VGG convolutions under features.*, our VGG16 trunk "
                                  f"has {len(ours)}; expected torchvision's vgg16 (13 convs)")
        index = dict(zip(theirs, ours))
        for key, value in sd.items():
            m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
            if m and int(m.group(1)) in index:
                out[f"trunk.features.{index[int(m.group(1))]}.{m.group(2)}"] = value
            elif key.startswith(("classifier.", "conv6.", "fc.", "fc2.", "conv.", "conv2.")):
                dropped.append(key)
            else:
                unknown.append(key)
        new_layers = ("trunk.conv6.",)
    elif arch == "resnet50":
        for key, value in sd.items():
            if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")):
                out[f"trunk.{key}"] = value
            elif key in ("fc.weight", "fc.bias") and value.shape == target[f"head.{key[3:]}"].shape:
                out[f"head.{key[3:]}"] = value
            elif key.startswith(("fc.", "fc2.")):
                dropped.append(key)
            else:
                unknown.append(key)
        new_layers = ()
    elif arch == "inception":
        for key, value in sd.items():
            prefix = key.partition(".")[0]
            if prefix.startswith(("Conv2d_", "Mixed_5", "Mixed_6")):
                out[f"trunk.{key}"] = value
            elif prefix.startswith(("Mixed_7", "AuxLogits", "fc", "SPG_A")):
                dropped.append(key)
            else:
                unknown.append(key)
        new_layers = ("trunk.SPG_A3_1b.", "trunk.SPG_A3_2b.")
    else:
        raise CheckpointError(f"{source}: torchvision weights are mapped onto vgg16, resnet50 and inception, "
                              f"not '{arch}'")
    problems = []
    if unknown:
        problems.append(f"unknown keys: {_short_list(sorted(unknown))}")
    missing = sorted(k for k in target if k.startswith("trunk.") and k not in out and not k.endswith(_NBT)
                     and not k.startswith(new_layers))
    if missing:
        problems.append(f"trunk tensors missing from the file: {_short_list(missing)}")
    shapes = [f"{k}: file {tuple(v.shape)}, ours {tuple(target[k].shape)}" for k, v in out.items()
              if k in target and v.shape != target[k].shape]
    extra = sorted(k for k in out if k not in target)
    if extra:
        problems.append(f"keys with no place in our trunk: {_short_list(extra)}")
    if shapes:
        problems.append(f"shape mismatches: {_short_list(shapes)}")
    if problems:
        raise CheckpointError(f"{source}: is not torchvision-format {arch} ImageNet weights:\n  - "
                              + "\n  - ".join(problems))
    kept = sorted(n for n, _ in model.named_parameters() if n not in out)
    return out, sorted(dropped), kept
