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

The statistics are computed a batch of images at a time (`SignAccumulator.accumulate`: the GT-box masks of
the batch at once, then one compiled pass per image, `region_sums`), with the float64 bits of the per-image
definition (`sign_diagnostics_reference`): each region sum is numpy's own summation order of that image's
values (`pairwise_sum` in blocks of `np.getbufsize()`), and the per-image shares are kept (8 bytes an image)
and averaged with the same `np.mean` call at the end. (A pure-numpy formulation with the same bits, by
`np.add.reduceat` over zero-padded buffers, was measured no faster than the per-image loop at 224 px: that loop
is bound by its array passes, not by Python.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numba
import numpy as np
from numba.core.errors import NumbaWarning

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


def _slice_bound(index: np.ndarray, size: int) -> np.ndarray:
    """Where a Python slice bound `index` lands on an axis of length `size` (negative counts from the end)."""
    return np.clip(np.where(index < 0, index + size, index), 0, size)


def box_unions(boxes: Sequence[np.ndarray], size: int) -> np.ndarray:
    """(n, size, size) bool: `box_union(boxes[i], size)` for every image i, built for the batch at once (the
    k-th boxes of all images that have one together, for k up to the most boxes an image has)."""
    n = len(boxes)
    arrays = [np.asarray(b, dtype=np.int64).reshape(-1, 4) for b in boxes]
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros((0, 4), np.int64)
    owner = np.repeat(np.arange(n), counts)
    rank = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)  # k: the image's k-th box
    axis = np.arange(size)
    cols = (axis >= _slice_bound(flat[:, 0:1], size)) & (axis < _slice_bound(flat[:, 2:3] + 1, size))
    rows = (axis >= _slice_bound(flat[:, 1:2], size)) & (axis < _slice_bound(flat[:, 3:4] + 1, size))
    mask = np.zeros((n, size, size), dtype=bool)
    for k in range(int(counts.max()) if n else 0):
        pick = rank == k
        mask[owner[pick]] |= rows[pick, :, None] & cols[pick, None, :]
    return mask


def _compiled(function):
    """`numba.njit(cache=True, nogil=True)`, or compiled in memory (once per process, with a NumbaWarning)
    where numba finds no writable cache directory (as pipeline/metrics/box_levels.py)."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError as error:
        warnings.warn(f"{error}; compiling {function.__name__} in memory, once per process", NumbaWarning, stacklevel=2)
        return numba.njit(nogil=True)(function)


PW_BLOCK = 128  # numpy's PW_BLOCKSIZE: blocks up to this long are summed with 8 accumulators


@_compiled
def _block_sums(a, lo, n):
    """numpy's `pairwise_sum` of a block a[lo:lo+n] (n <= PW_BLOCK) and of its absolute values."""
    if n < 8:
        res = -0.0
        ares = -0.0
        for i in range(lo, lo + n):
            res += a[i]
            ares += abs(a[i])
        return res, ares
    r0, r1, r2, r3, r4, r5, r6, r7 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3], a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    q0, q1, q2, q3, q4, q5, q6, q7 = abs(r0), abs(r1), abs(r2), abs(r3), abs(r4), abs(r5), abs(r6), abs(r7)
    i = lo + 8
    end = lo + n - n % 8
    while i < end:
        x0, x1, x2, x3, x4, x5, x6, x7 = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]
        r0 += x0
        r1 += x1
        r2 += x2
        r3 += x3
        r4 += x4
        r5 += x5
        r6 += x6
        r7 += x7
        q0 += abs(x0)
        q1 += abs(x1)
        q2 += abs(x2)
        q3 += abs(x3)
        q4 += abs(x4)
        q5 += abs(x5)
        q6 += abs(x6)
        q7 += abs(x7)
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    ares = ((q0 + q1) + (q2 + q3)) + ((q4 + q5) + (q6 + q7))
    while i < lo + n:
        res += a[i]
        ares += abs(a[i])
        i += 1
    return res, ares


@_compiled
def _pairwise_sums(a, lo, n, stack, values):
    """numpy's `pairwise_sum` of a[lo:lo+n] and of its absolute values: a block longer than PW_BLOCK is split
    into two halves (the first n // 2 rounded down to a multiple of 8) summed left + right. Depth first with
    an explicit stack (`stack`: (k, 2) int64 of lo, n, with n = -1 for "add the two values on top of
    `values`"; `values`: (k, 2) float64), not recursion."""
    top = 1
    stack[0, 0], stack[0, 1] = lo, n
    vtop = 0
    while top > 0:
        top -= 1
        start, m = stack[top, 0], stack[top, 1]
        if m < 0:
            vtop -= 1
            values[vtop - 1, 0] = values[vtop - 1, 0] + values[vtop, 0]
            values[vtop - 1, 1] = values[vtop - 1, 1] + values[vtop, 1]
        elif m <= PW_BLOCK:
            values[vtop, 0], values[vtop, 1] = _block_sums(a, start, m)
            vtop += 1
        else:
            half = m // 2
            half -= half % 8
            stack[top, 1] = -1
            stack[top + 1, 0], stack[top + 1, 1] = start + half, m - half
            stack[top + 2, 0], stack[top + 2, 1] = start, half
            top += 3
    return values[0, 0], values[0, 1]


@_compiled
def _np_sums(a, n, bufsize, stack, values):
    """(`np.sum(a[:n])`, `np.abs(a[:n]).sum()`) of a float64 array, bit for bit: numpy reduces a contiguous
    array `bufsize` (`np.getbufsize()`) values at a time, pairwise within each, adding each to the running sum
    that starts at 0."""
    total = 0.0
    absolute = 0.0
    start = 0
    while start < n:
        s, t = _pairwise_sums(a, start, min(bufsize, n - start), stack, values)
        total += s
        absolute += t
        start += bufsize
    return total, absolute


@_compiled
def _sign_sums(maps, inside, bufsize, out):
    """Per image i of (n, P) `maps` and `inside` masks, with each region's values in row-major order and
    float64: out[i] = sum |M| inside, sum of M < 0 inside, sum M inside, sum |M| outside, sum of M < 0 outside,
    each as numpy sums that sequence (`_np_sums`)."""
    n, p = maps.shape
    vin = np.empty(p)
    vout = np.empty(p)
    nin = np.empty(p)
    nout = np.empty(p)
    stack = np.empty((64, 2), np.int64)
    values = np.empty((64, 2))
    for i in range(n):
        a = b = c = d = 0
        for k in range(p):
            v = np.float64(maps[i, k])
            if inside[i, k]:
                vin[a] = v
                a += 1
                if v < 0:
                    nin[c] = v
                    c += 1
            else:
                vout[b] = v
                b += 1
                if v < 0:
                    nout[d] = v
                    d += 1
        out[i, 2], out[i, 0] = _np_sums(vin, a, bufsize, stack, values)
        out[i, 1] = _np_sums(nin, c, bufsize, stack, values)[0]
        out[i, 3] = _np_sums(vout, b, bufsize, stack, values)[1]
        out[i, 4] = _np_sums(nout, d, bufsize, stack, values)[0]


def region_sums(maps: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(n, 5) float64 per image of (n, S, S) `maps` and GT-box masks `inside`: sum |M| inside, sum of the
    negative M inside, sum M inside, sum |M| outside, sum of the negative M outside, with the bits of numpy's
    sums of each region's values (`m[region].astype(np.float64)`, row-major), as `sign_diagnostics_reference`
    computes them one image at a time."""
    n = len(maps)
    out = np.empty((n, 5))
    if n:
        flat = np.ascontiguousarray(maps).reshape(n, -1)
        _sign_sums(flat, np.ascontiguousarray(inside).reshape(n, -1), np.getbufsize(), out)
    return out


class SignAccumulator:
    """Accumulates the per-image sign statistics of one (variant, branch); `compute()` gives % values.

    Holds the per-image shares (float64, 8 bytes an image and region) and two counts, nothing of the maps."""

    def __init__(self) -> None:
        self._inside: list[np.ndarray] = []
        self._outside: list[np.ndarray] = []
        self._net_negative = 0
        self._with_box = 0

    def accumulate(
        self, maps: np.ndarray, boxes: Sequence[np.ndarray] | None = None, *, inside: np.ndarray | None = None
    ) -> None:
        """`maps` (n, S, S) signed maps on the evaluation grid; `boxes[i]` the (k, 4) GT boxes of image i, or
        `inside` their (n, S, S) union masks (`box_unions`), built once when several map sets share the images."""
        if inside is None:
            count = 0 if boxes is None else len(boxes)
            if count != len(maps):
                raise ValueError(f"sign diagnostics: {len(maps)} maps but {count} box lists")
            inside = box_unions(boxes, maps.shape[-1])
        elif inside.shape != maps.shape:
            raise ValueError(f"sign diagnostics: maps {maps.shape} but box masks {inside.shape}")
        sums = region_sums(maps, inside)
        for total, neg, out in ((sums[:, 0], sums[:, 1], self._inside), (sums[:, 3], sums[:, 4], self._outside)):
            keep = total > 0
            out.append(-neg[keep] / total[keep])
        boxed = inside.reshape(len(maps), -1).any(axis=1)
        self._with_box += int(boxed.sum())
        self._net_negative += int((sums[boxed, 2] < 0).sum())

    def compute(self) -> dict[str, float]:
        def mean(parts: list[np.ndarray]) -> float:
            values = np.concatenate(parts) if parts else np.zeros(0)
            return 100.0 * float(np.mean(values)) if len(values) else 0.0

        return {
            "neg_share_inside": mean(self._inside),
            "neg_share_outside": mean(self._outside),
            "net_negative_inside": 100.0 * self._net_negative / self._with_box if self._with_box else 0.0,
        }


def sign_diagnostics(
    pos: np.ndarray, neg: np.ndarray, boxes: Sequence[np.ndarray], size: int, chunk: int = 64
) -> dict[str, float]:
    """Sign statistics (%) of the raw maps pos + neg (n, h, w) against the GT boxes, on a size x size grid."""
    if len(pos) != len(boxes):
        raise ValueError(f"sign diagnostics: {len(pos)} maps but {len(boxes)} box lists")
    acc = SignAccumulator()
    for start in range(0, len(pos), chunk):
        sl = slice(start, start + chunk)
        acc.accumulate(signed_maps(pos[sl], neg[sl], size), boxes[sl])
    return acc.compute()


def sign_diagnostics_reference(
    pos: np.ndarray, neg: np.ndarray, boxes: Sequence[np.ndarray], size: int, chunk: int = 256
) -> dict[str, float]:
    """The per-image definition `sign_diagnostics` reproduces bit for bit (one image at a time, in Python):
    the oracle of tests/report/test_sign_vectorised.py and benchmarks/bench_sign.py."""
    if len(pos) != len(boxes):
        raise ValueError(f"sign diagnostics: {len(pos)} maps but {len(boxes)} box lists")
    inside_shares: list[float] = []
    outside_shares: list[float] = []
    net_negative = with_box = 0
    for start in range(0, len(pos), chunk):
        sl = slice(start, start + chunk)
        for m, b in zip(signed_maps(pos[sl], neg[sl], size), boxes[sl]):
            inside = box_union(b, m.shape[-1])
            for region, out in ((inside, inside_shares), (~inside, outside_shares)):
                values = m[region].astype(np.float64)
                total = np.abs(values).sum()
                if total > 0:
                    out.append(float(-values[values < 0].sum() / total))
            if inside.any():
                with_box += 1
                net_negative += int(m[inside].astype(np.float64).sum() < 0)

    def mean(values: list[float]) -> float:
        return 100.0 * float(np.mean(values)) if values else 0.0

    return {
        "neg_share_inside": mean(inside_shares),
        "neg_share_outside": mean(outside_shares),
        "net_negative_inside": 100.0 * net_negative / with_box if with_box else 0.0,
    }
