"""Evaluation-time post-processing of stored raw CAMs (the `pos`/`neg` maps of `pipeline.cams.engine`).

Everything that turns a raw signed feature-resolution map into the [0, 1] score map the evaluator reads is
an option of `PostProcess`, so changing it never recomputes the maps:

    M = pos                       if weight_clamp  (the official negative-weight clamp, sigmoid branch)
        pos + neg                 otherwise        (the raw signed map)
    M = max(M, 0)                 if relu
    official_grad_scaling off:  M = resize(M, size)
    official_grad_scaling on:   M = scale(resize(scale(M), size) clipped at 0)   (pytorch-grad-cam)
    S = normalize_scoremap(M)                      (wsolevaluation: exact min-max, NaN/constant -> 0)

with scale(M) = (M - min M) / (max(M - min M) + 1e-7) (pytorch-grad-cam's `scale_cam_image`) and resize =
`cv2.resize` with INTER_LINEAR ("bilinear") or INTER_CUBIC ("bicubic").

Two presets:
- `official_options(variant, branch, size)`: what the official code does (METHOD.md 3.2-3.3): the clamp for
  the sigmoid branch only, then the variant's own rule from the registry (`pipeline.cams.variants`). CAM: no
  ReLU, bicubic, exact min-max. Gradient variants: ReLU, pytorch-grad-cam's scaling with bilinear resizing,
  then exact min-max (the official code's bicubic resize of the already full-size map is a no-op and is
  skipped).
- `clean_options(size)`: one rule for every variant and branch: no clamp (the raw signed map), ReLU,
  bilinear, exact min-max.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipeline.cams import variants as registry
from pipeline.cams.engine import BRANCHES

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
SCALE_EPS = 1e-7  # pytorch-grad-cam scale_cam_image

MapArray = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class PostProcess:
    """How a raw map becomes a score map; see the module docstring for the order of the steps."""

    weight_clamp: bool  # use pos only (the official clamp, for the sigmoid branch) instead of pos + neg
    relu: bool  # ReLU on the combined map before scaling
    upsample: str  # "bilinear" | "bicubic"
    size: int  # output side (evaluation grid)
    official_grad_scaling: bool  # pytorch-grad-cam's scale_cam_image path (METHOD.md 3.3 steps 5-8)

    def __post_init__(self) -> None:
        if self.upsample not in INTERPOLATIONS:
            raise ValueError(f"upsample: '{self.upsample}' is not valid; choose one of: {', '.join(INTERPOLATIONS)}")
        if self.size < 1:
            raise ValueError(f"size: must be a positive integer, got {self.size}")


def official_options(variant: str, branch: str, size: int) -> PostProcess:
    """The official code's post-processing of `variant` for `branch` (METHOD.md 3.1-3.3)."""
    rule = registry.get(variant).official
    if branch not in BRANCHES:
        raise ValueError(f"branch: '{branch}' is not valid; choose one of: {', '.join(BRANCHES)}")
    return PostProcess(
        weight_clamp=branch == "sigmoid",
        relu=rule.relu,
        upsample=rule.upsample,
        size=size,
        official_grad_scaling=rule.official_grad_scaling,
    )


def clean_options(size: int) -> PostProcess:
    """The project's default for every variant and branch: raw signed map, ReLU, bilinear, exact min-max."""
    return PostProcess(weight_clamp=False, relu=True, upsample="bilinear", size=size, official_grad_scaling=False)


def _as_float32(maps: MapArray) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        return maps.detach().to("cpu", torch.float32).numpy()
    return np.asarray(maps, dtype=np.float32)


def normalize_scoremap(maps: MapArray) -> np.ndarray:
    """wsolevaluation's `normalize_scoremap`, per map over the last two axes of a (..., h, w) array.

    A map with any NaN, or a constant map, becomes all zeros; otherwise S = (M - min M) / max(M - min M),
    which is (M - min) / (max - min) in exact arithmetic. Returns a new float32 array.
    """
    m = _as_float32(maps)
    shifted = m - m.min(axis=(-2, -1), keepdims=True)
    top = shifted.max(axis=(-2, -1), keepdims=True)
    invalid = ~(top > 0)  # a NaN makes the min, so every shifted value and the top, NaN; a constant map: top 0
    shifted /= np.where(invalid, np.float32(1), top)
    if invalid.any():
        np.copyto(shifted, np.float32(0), where=invalid)
    return shifted


def scale_cam(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's per-map scaling without resizing: (M - min M) / (max(M - min M) + 1e-7)."""
    shifted = maps - maps.min(axis=(-2, -1), keepdims=True)
    return shifted / (SCALE_EPS + shifted.max(axis=(-2, -1), keepdims=True))


def resize_maps(maps: np.ndarray, height: int, width: int, kernel: str) -> np.ndarray:
    """Resize every map of a float32 (..., h, w) array to (..., height, width) with cv2.resize.

    cv2 takes dsize as (width, height); `kernel` is "bilinear" (INTER_LINEAR) or "bicubic" (INTER_CUBIC).
    """
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.empty((flat.shape[0], height, width), dtype=np.float32)
    for i, m in enumerate(flat):
        out[i] = cv2.resize(m, (width, height), interpolation=INTERPOLATIONS[kernel])
    return out.reshape(*maps.shape[:-2], height, width)


def postprocess(pos: MapArray, neg: MapArray | None, opts: PostProcess) -> np.ndarray:
    """Score maps (..., size, size) float32 in [0, 1] from raw maps pos, neg of shape (..., h, w).

    numpy arrays or torch tensors (any device, any float dtype) are accepted; the steps are those of the
    module docstring. `neg` may be None when `opts.weight_clamp` is set, since the clamp discards it.
    """
    m = _as_float32(pos)
    if not opts.weight_clamp:
        if neg is None:
            raise ValueError("postprocess: neg is needed unless weight_clamp is set")
        m = m + _as_float32(neg)
    if opts.relu:
        m = np.maximum(m, np.float32(0))
    if opts.official_grad_scaling:
        m = resize_maps(scale_cam(m), opts.size, opts.size, opts.upsample)
        m = scale_cam(np.maximum(m, np.float32(0)))
    else:
        m = resize_maps(m, opts.size, opts.size, opts.upsample)
    return normalize_scoremap(m)
