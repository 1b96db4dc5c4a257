"""Sign diagnostics: how much of a branch's raw CAM is negative, inside and outside the ground-truth box.

The paper's argument is about signs: a softmax head's logits are only defined up to an additive shift, so
the channel weights of the ground-truth class can be negative where the object is ("sign collapse"), and
the usual ReLU then throws that evidence away. The sigmoid branch is trained per class and should give
maps whose object region is positive. These numbers measure that directly on the raw signed maps
(pos + neg, before ReLU, clamp or normalisation), for the ground-truth class.

For one map M (upsampled bilinearly to the evaluation grid) and the union B of the image's GT boxes:

- negative share inside  = sum(-M over B where M < 0) / sum(|M| over B)
- negative share outside = the same over the pixels outside B
- net negative inside    = whether sum(M over B) < 0 (the box region is, on balance, negative evidence)

Each share is averaged over the images where its denominator is positive, and reported in %.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.cams.postprocess import resize_maps

KEYS = ("neg_share_inside", "neg_share_outside", "net_negative_inside")


def signed_maps(pos: np.ndarray, neg: np.ndarray, size: int) -> np.ndarray:
    """The raw signed maps pos + neg of an (n, h, w) batch, bilinearly resized to (n, size, size), float32."""
    m = np.asarray(pos, dtype=np.float32) + np.asarray(neg, dtype=np.float32)
    return resize_maps(m, size, size, "bilinear")


def box_union(boxes: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool mask of the union of inclusive x0, y0, x1, y1 boxes."""
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


class SignAccumulator:
    """Accumulates the per-image sign statistics of one (variant, branch); `compute()` gives % values."""

    def __init__(self) -> None:
        self._inside: list[float] = []
        self._outside: list[float] = []
        self._net_negative = 0
        self._with_box = 0

    def accumulate(self, maps: np.ndarray, boxes: Sequence[np.ndarray]) -> None:
        """`maps` (n, S, S) signed maps on the evaluation grid; `boxes[i]` the (k, 4) GT boxes of image i."""
        if len(maps) != len(boxes):
            raise ValueError(f"sign diagnostics: {len(maps)} maps but {len(boxes)} box lists")
        for m, b in zip(maps, boxes):
            inside = box_union(b, m.shape[-1])
            for region, out in ((inside, self._inside), (~inside, self._outside)):
                values = m[region].astype(np.float64)
                total = np.abs(values).sum()
                if total > 0:
                    out.append(float(-values[values < 0].sum() / total))
            if inside.any():
                self._with_box += 1
                self._net_negative += int(m[inside].astype(np.float64).sum() < 0)

    def compute(self) -> dict[str, float]:
        def mean(values: list[float]) -> float:
            return 100.0 * float(np.mean(values)) if values else 0.0

        return {
            "neg_share_inside": mean(self._inside),
            "neg_share_outside": mean(self._outside),
            "net_negative_inside": 100.0 * self._net_negative / self._with_box if self._with_box else 0.0,
        }


def sign_diagnostics(
    pos: np.ndarray, neg: np.ndarray, boxes: Sequence[np.ndarray], size: int, chunk: int = 256
) -> dict[str, float]:
    """Sign statistics (%) of the raw maps pos + neg (n, h, w) against the GT boxes, on a size x size grid."""
    acc = SignAccumulator()
    for start in range(0, len(pos), chunk):
        sl = slice(start, start + chunk)
        acc.accumulate(signed_maps(pos[sl], neg[sl], size), boxes[sl])
    return acc.compute()
