"""The boxes of every contour of `U > c` at every cut level c = 0..255, all levels at once (the fast path
behind `pipeline.metrics.boxes`), exact by construction and checked against a literal transcription of the
official two sweeps (tests/metrics/reference_boxes.py, tests/metrics/test_box_levels_random.py).

Written by hand: no library returns what is needed here. scikit-image's `max_tree` and OpenCV's
`connectedComponentsWithStats` give the component tree / one level's components, but not the hole contours
(RETR_TREE) nor `contourArea` of the outer contours at every level; per-level OpenCV calls cost as much as
or more than this whole path (measured side by side by benchmarks/bench_metrics.py, which prints each route).
The work is a union-find over pixels in value order, irregular and sequential, which numpy cannot vectorise
(an earlier numpy version spent its time in per-call overhead, `np.take` pointer jumping and `ufunc.at`), so
it is compiled with numba: `@njit(cache=True)`, single-threaded, integer arithmetic only (the same bytes on
every CPU); the evaluation parallelises one level up, over processes.

How:

1. A threshold only matters through its cut level c = int(tau * max(U)) in 0..max(U), so boxes are found
   once per level (at most 256) and every threshold looks its level up; level max(U) has no contour.
2. The outer contours of `U > c` are the borders of its 8-connected components, and a border's
   boundingRect is the component's pixel extent. The hole contours are the bounded 4-connected components of
   `U <= c` (OpenCV pads the image with background, so the image border is outside), and a hole contour's
   boundingRect is the hole's pixel extent grown by one pixel on every side.
3. Both families come from one sweep each over the pixels in value order (a counting sort on the 256 values,
   raster order within a value), which builds the component tree level by level, a union-find max-tree.
   Foreground: t = max(U) down to 1 (level c = t - 1), adding the pixels of value t, 8-connected; background:
   c = 0 up to max(U) - 1, adding the pixels of value c, 4-connected, inside a one-pixel frame of pre-added
   "outside" pixels (set 0, never the smaller set in a union). Once a level's pixels are in, the sets are
   exactly the components of `U >= t` (of `U <= c`, the outside's being no hole), and each root carries its
   set's pixel extent: one box per set alive at that level, kept in a list (swap-removal on merges), so a
   level costs its new pixels plus its number of components. A new pixel with no added neighbour opens a set;
   any other joins the sets of its added neighbours and stores the root it joined (`label`), so a later
   neighbour reaches the current root in one or two steps of the forest over set ids (union by size, path
   halving). Which neighbours are added already is a bit mask per pixel, computed beforehand in raster order
   (earlier neighbours >=, later ones >; <= and < for the background); added 8-neighbours that are adjacent
   to each other are in one set already, so one lookup per group of them suffices (`_mask_table`). The image
   is padded by one pixel, so no neighbour needs a bounds check.
4. The largest contour is an outer one (a hole contour lies inside its parent's outer contour and comes
   after it in OpenCV's order). `contourArea` of the outer contour of a component K is
   W(K) + the areas of its hole contours, where W(K) = #(2x2 windows with 4 pixels in K) + #(with 3) / 2,
   and a hole contour's area is at most the area of its points' bounding rectangle. 2 W is counted in the
   foreground sweep: a window's three or four pixels >= t are 8-adjacent, hence in one set, and the pixels
   that are a window's 3rd and 4th to be added each add 1 to their set (from their level down). The
   component with the largest W is taken when that is certain: it is alone, or its 2 W beats every other by
   more than twice the summed hole bounds of the level. Otherwise (ties, close calls with holes)
   `findContours` runs at that level (`_largest_contour_box`), in Python after the compiled sweeps.

Compilation: the two compiled functions (`_sweeps` and its `_find`) are cached by numba in `__pycache__/`
next to this file, so only the first call after a change of this file (or of numba) compiles them: about
4 s, against 0.3-0.4 s for a later process's first call, which is numba's own start-up (a trivial cached
function costs the same). Where that directory is not writable numba uses its user-wide cache directory
(or NUMBA_CACHE_DIR when set); where no cache directory is writable numba refuses `cache=True` outright, so
`_compiled` falls back to compiling in memory, once per process, with a NumbaWarning. Work arrays are
allocated by `level_boxes` and passed in, so the compiled code needs few of numba's numpy overloads.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numba
import numpy as np
from numba.core.errors import NumbaWarning


@dataclass(frozen=True, eq=False)
class LevelBoxes:
    """The boxes of a batch of quantised maps U (n, H, W) at every cut level c = 0..255 (binary = U > c).

    Levels c >= max(U_i) have no contour: their box is [0, 0, 0, 0]; the multi-contour list holds that box at
    level max(U_i) only (higher levels are never cut by a threshold <= 1). The multi-contour rows come image
    by image (each image's hole boxes, its outer boxes, then its level-max(U_i) row); the order of the rows of
    one (image, level) carries no meaning.
    """

    tops: np.ndarray  # (n,) max(U_i)
    multi_image: np.ndarray  # (m,) image of each multi-contour box
    multi_level: np.ndarray  # (m,) its level
    multi_boxes: np.ndarray  # (m, 4) every contour's box (outer and hole contours), x0, y0, x1, y1
    single_boxes: np.ndarray  # (n, 256, 4) the largest contour's box at each level


def _contours(u: np.ndarray, level: int) -> Sequence[np.ndarray]:
    return cv2.findContours((u > level).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]


def _largest_contour_box(u: np.ndarray, level: int) -> np.ndarray:
    """The box of the largest-`contourArea` contour of U > level (first on ties), by `findContours` itself."""
    x, y, w, h = cv2.boundingRect(max(_contours(u, level), key=cv2.contourArea))
    return np.array([x, y, min(x + w, u.shape[1] - 1), min(y + h, u.shape[0] - 1)])


def _compiled(function):
    """`numba.njit(cache=True, nogil=True)`, or without the on-disk cache where numba finds no writable cache
    directory (it raises then, when the function is decorated): a NumbaWarning, and compilation in memory."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError as error:
        warnings.warn(f"{error}; compiling {function.__name__} in memory, once per process", NumbaWarning, stacklevel=2)
        return numba.njit(nogil=True)(function)


# The neighbours of a pixel, as bits of its neighbour masks: the 4 edge ones (N, E, S, W: consecutive ones are
# 8-adjacent), then the 4 corners (NW, NE, SE, SW); the background sweep uses the 4 edge bits only.
_N, _E, _S, _W, _NW, _NE, _SE, _SW = range(8)
_BG = 256  # the background masks' rows in the tables below


def _mask_table() -> np.ndarray:
    """(_BG + 16, 6) int64, per mask of the already added neighbours of a new pixel p (rows 0..255: foreground,
    8 bits; rows _BG + 0..15: background, 4 bits): area, n_reps, reps[0..3].
    `area`: the 2x2 windows holding p in which p is the 3rd or 4th added pixel (2 or 3 of its others added),
    foreground only. `reps`: the added neighbours to join, one per group of added neighbours that are already
    in one set: in the foreground (8-connected) one per cyclic run of added edge neighbours and one per added
    corner with no added edge neighbour beside it, at most 4; in the background (4-connected) every one."""
    table = np.zeros((_BG + 16, 6), np.int64)
    for mask in range(256):
        on = [bool(mask >> k & 1) for k in range(8)]
        table[mask, 0] = sum(
            sum(on[k] for k in window) >= 2 for window in ((_NW, _N, _W), (_N, _NE, _E), (_E, _SE, _S), (_S, _SW, _W))
        )
        if on[_N] and on[_E] and on[_S] and on[_W]:
            chosen = [_N]
        else:
            chosen = [e for e, before in ((_N, _W), (_E, _N), (_S, _E), (_W, _S)) if on[e] and not on[before]]
        chosen += [
            c
            for c, a, b in ((_NW, _N, _W), (_NE, _N, _E), (_SE, _S, _E), (_SW, _S, _W))
            if on[c] and not (on[a] or on[b])
        ]
        table[mask, 1], table[mask, 2 : 2 + len(chosen)] = len(chosen), chosen
        if mask < 16:
            chosen = [e for e in (_N, _E, _S, _W) if on[e]]
            table[_BG + mask, 1], table[_BG + mask, 2 : 2 + len(chosen)] = len(chosen), chosen
    return table


_TABLE = _mask_table()


@_compiled
def _find(parent, b):
    while parent[b] != b:  # path halving
        parent[b] = parent[parent[b]]
        b = parent[b]
    return b


@_compiled
def _sweeps(maps, table, values, masks, ints, rec, rows, single, uncertain):
    """The compiled part of `level_boxes`: fills `rows` (m, 6: image, level, x0, y0, x1, y1 of every
    multi-contour box; a larger copy when it runs out of room), `single` (the largest contour's box where
    certain) and `uncertain` (the (image, level) pairs left to findContours); returns (rows, m, k).

    `maps`: C-contiguous uint8 (n, H, W), H, W < 2**15; `table`: `_mask_table()`; work arrays, allocated by
    the caller: `values` int16 (H + 2, W + 2) all -1, `masks` uint8 (2, H, W), `ints` int64 zeros (the 1-D
    work arrays below, end to end), `rec` int64 (H * W + 1, 8), per set root: x0, y0, x1, y1, 2 W, size,
    slot in `active`."""
    n, height, width = maps.shape
    wp = width + 2
    size = (height + 2) * wp
    count = height * width
    label = ints[:size]  # the root each added pixel joined; padding: 0, outside
    keys = ints[size : size + count]  # pixels by value, raster order: x | y << 16 | masks
    parent = ints[size + count : size + 2 * count + 1]  # union-find over set ids
    active = ints[size + 2 * count + 1 : size + 3 * count + 2]  # the roots alive at a level, but the outside's
    start = ints[size + 3 * count + 2 : size + 3 * count + 259]
    fill = ints[size + 3 * count + 259 : size + 3 * count + 515]
    slack = ints[size + 3 * count + 515 : size + 3 * count + 771]
    steps = ints[size + 3 * count + 771 : size + 3 * count + 779]  # flat step to each neighbour, by bit
    steps[0], steps[1], steps[2], steps[3] = -wp, 1, wp, -1
    steps[4], steps[5], steps[6], steps[7] = -wp - 1, -wp + 1, wp + 1, wp - 1
    m = 0
    k_unc = 0
    for i in range(n):
        u = maps[i]
        for y in range(height):
            line = values[y + 1]
            for x in range(width):
                line[x + 1] = u[y, x]
        # added before a pixel: earlier in raster order and >= (foreground) / <= (background), or later and
        # > / <; the padding (-1) is never in the foreground and always in the background
        for y in range(height):
            above, line, below = values[y], values[y + 1], values[y + 2]
            fg, bg = masks[0, y], masks[1, y]
            for x in range(width):
                v = line[x + 1]
                fg[x] = (
                    (above[x + 1] >= v) * 1
                    + (line[x + 2] > v) * 2
                    + (below[x + 1] > v) * 4
                    + (line[x] >= v) * 8
                    + (above[x] >= v) * 16
                    + (above[x + 2] >= v) * 32
                    + (below[x + 2] > v) * 64
                    + (below[x] > v) * 128
                )
                bg[x] = (above[x + 1] <= v) * 1 + (line[x + 2] < v) * 2 + (below[x + 1] < v) * 4 + (line[x] <= v) * 8
        # counting sort
        start[:] = 0
        top = 0
        for y in range(height):
            for x in range(width):
                v = np.int64(u[y, x])
                start[v + 1] += 1
                top = max(top, v)
        for v in range(256):
            start[v + 1] += start[v]
            fill[v] = start[v]
        for y in range(height):
            for x in range(width):
                v = np.int64(u[y, x])
                keys[fill[v]] = x | y << 16 | np.int64(masks[0, y, x]) << 32 | np.int64(masks[1, y, x]) << 40
                fill[v] += 1

        # sweep 0, background: c = 0..top-1, the holes of U > c are the sets of pixels <= c (4-connected)
        # but the outside's, set 0 (the padding), which never is the smaller one.
        # sweep 1, foreground: t = top..1, the outer contours of U > t - 1 are the sets of pixels >= t
        # (8-connected).
        for sweep in range(2):
            shift = 40 if sweep == 0 else 32  # the sweep's mask in the keys
            row0 = _BG if sweep == 0 else 0  # and its rows in the table
            parent[0] = 0
            rec[0, 5] = 1 << 40
            alive = 0
            n_sets = 1  # set ids in use (0: the outside)
            for j in range(top):
                level = j if sweep == 0 else top - j
                for k in range(start[level], start[level + 1]):
                    key = keys[k]
                    x = key & 0xFFFF
                    y = key >> 16 & 0xFFFF
                    mask = (key >> shift & 0xFF) + row0
                    p = (y + 1) * wp + x + 1
                    n_join = table[mask, 1]
                    if n_join == 0:  # no added neighbour: a new set
                        r = n_sets
                        n_sets += 1
                        label[p] = r
                        parent[r] = r
                        rec[r, 0] = rec[r, 2] = x
                        rec[r, 1] = rec[r, 3] = y
                        rec[r, 4] = 0
                        rec[r, 5] = 1
                        rec[r, 6] = alive
                        active[alive] = r
                        alive += 1
                        continue
                    first = label[p + steps[table[mask, 2]]]
                    r = _find(parent, first)
                    for rep in range(1, n_join):
                        b = label[p + steps[table[mask, 2 + rep]]]
                        if b == first or b == r:
                            continue
                        b = _find(parent, b)
                        if b == r:
                            continue
                        if rec[r, 5] < rec[b, 5]:  # union by size
                            r, b = b, r
                        parent[b] = r
                        rec[r, 0] = min(rec[r, 0], rec[b, 0])
                        rec[r, 1] = min(rec[r, 1], rec[b, 1])
                        rec[r, 2] = max(rec[r, 2], rec[b, 2])
                        rec[r, 3] = max(rec[r, 3], rec[b, 3])
                        rec[r, 4] += rec[b, 4]
                        rec[r, 5] += rec[b, 5]
                        alive -= 1  # b leaves the alive list (b is never the outside)
                        last = active[alive]
                        active[rec[b, 6]] = last
                        rec[last, 6] = rec[b, 6]
                    label[p] = r  # the root itself: a later neighbour of p finds it at once
                    if r == 0:  # the outside: nothing to count
                        continue
                    rec[r, 0] = min(rec[r, 0], x)
                    rec[r, 1] = min(rec[r, 1], y)
                    rec[r, 2] = max(rec[r, 2], x)
                    rec[r, 3] = max(rec[r, 3], y)
                    rec[r, 4] += table[mask, 0]
                    rec[r, 5] += 1
                if m + alive + 1 > rows.shape[0]:  # room for this level's rows and the image's last one
                    grown = np.empty((2 * (m + alive + 1), 6), np.int64)
                    for a in range(m):
                        for b in range(6):
                            grown[a, b] = rows[a, b]
                    rows = grown
                if sweep == 0:  # one hole box per set alive, and the level's bound on the hole areas
                    total = 0
                    for a in range(alive):
                        r = active[a]
                        x0, y0, x1, y1 = rec[r, 0], rec[r, 1], rec[r, 2], rec[r, 3]
                        rows[m, 0] = i
                        rows[m, 1] = level
                        rows[m, 2] = x0 - 1
                        rows[m, 3] = y0 - 1
                        rows[m, 4] = min(x1 + 2, width - 1)
                        rows[m, 5] = min(y1 + 2, height - 1)
                        m += 1
                        total += (x1 - x0 + 2) * (y1 - y0 + 2)
                    slack[level] = 2 * total
                    continue
                c = level - 1  # one outer box per set alive, and the largest contour where certain
                best = runner_up = -1
                winner = 0
                for a in range(alive):
                    r = active[a]
                    rows[m, 0] = i
                    rows[m, 1] = c
                    rows[m, 2] = rec[r, 0]
                    rows[m, 3] = rec[r, 1]
                    rows[m, 4] = min(rec[r, 2] + 1, width - 1)
                    rows[m, 5] = min(rec[r, 3] + 1, height - 1)
                    if rec[r, 4] > best:
                        runner_up = best
                        best = rec[r, 4]
                        winner = m
                    elif rec[r, 4] > runner_up:
                        runner_up = rec[r, 4]
                    m += 1
                if alive == 1 or best > runner_up + slack[c]:
                    for b in range(4):
                        single[i, c, b] = rows[winner, 2 + b]
                else:
                    uncertain[k_unc, 0] = i
                    uncertain[k_unc, 1] = c
                    k_unc += 1
        if m + 1 > rows.shape[0]:  # top == 0: no level was swept
            grown = np.empty((2 * (m + 1), 6), np.int64)
            for a in range(m):
                for b in range(6):
                    grown[a, b] = rows[a, b]
            rows = grown
        rows[m, 0] = i  # level max(U): no contour, the origin box
        rows[m, 1] = top
        rows[m, 2] = rows[m, 3] = rows[m, 4] = rows[m, 5] = 0
        m += 1
    return rows, m, k_unc


def level_boxes(maps: np.ndarray) -> LevelBoxes:
    """`LevelBoxes` of a batch of uint8 maps (n, H, W), H, W < 32768, by the sweeps of the module docstring."""
    if maps.ndim != 3 or maps.dtype != np.uint8 or 0 in maps.shape:
        raise ValueError(f"maps: expected a non-empty (n, H, W) uint8 array, got {maps.dtype} {maps.shape}")
    if max(maps.shape[1:]) >= 2**15:
        raise ValueError(f"maps: sides must be below 32768 pixels, got {maps.shape[1:]}")
    n, height, width = maps.shape
    wp, count = width + 2, height * width
    values = np.full((height + 2, wp), -1, np.int16)
    ints = np.zeros((height + 2) * wp + 3 * count + 779, np.int64)
    single = np.zeros((n, 256, 4), np.int64)
    uncertain = np.empty((256 * n, 2), np.int64)
    rows, m, k = _sweeps(
        np.ascontiguousarray(maps),
        _TABLE,
        values,
        np.empty((2, height, width), np.uint8),
        ints,
        np.empty((count + 1, 8), np.int64),
        np.empty((8 * n + 64, 6), np.int64),
        single,
        uncertain,
    )
    rows, uncertain = rows[:m], uncertain[:k]
    for i, c in uncertain.tolist():
        single[i, c] = _largest_contour_box(maps[i], c)
    tops = maps.reshape(len(maps), -1).max(1).astype(np.intp)
    return LevelBoxes(tops, rows[:, 0].copy(), rows[:, 1].copy(), np.ascontiguousarray(rows[:, 2:]), single)
