"""The boxes of every contour of `U > c` at every cut level c = 0..255, all levels at once (the fast path
behind `pipeline.metrics.boxes`), exact by construction and checked against a literal transcription of the
official two sweeps (tests/metrics/reference_boxes.py, tests/metrics/test_box_levels_random.py).

Written by hand: no library returns what is needed here. scikit-image's `max_tree` and OpenCV's
`connectedComponentsWithStats` give the component tree / one level's components, but not the hole contours
(RETR_TREE) nor `contourArea` of the outer contours at every level; per-level OpenCV calls cost as much as
or more than this whole path (measured side by side by benchmarks/bench_metrics.py, which prints each route).

How:

1. A threshold only matters through its cut level c = int(tau * max(U)) in 0..max(U), so boxes are found
   once per level (at most 256) and every threshold looks its level up; level max(U) has no contour.
2. The outer contours of `U > c` are the borders of its 8-connected components, and a border's
   boundingRect is the component's pixel extent. The hole contours are the bounded 4-connected components of
   `U <= c` (OpenCV pads the image with background, so the image border is outside), and a hole contour's
   boundingRect is the hole's pixel extent grown by one pixel on every side.
3. Both families are computed for all levels at once from a basin partition: every pixel is attached to a
   regional maximum (of U, 8-connected, for the foreground; of -U inside a frame of "outside", 4-connected,
   for the background) by a path that never goes below the pixel (pointer jumping over "highest neighbour"
   pointers). At threshold t a component is then the union of the parts >= t of whole basins, and two basins
   are in one component exactly when a chain of adjacent basin pairs has pass values (the best min over
   adjacent pixel pairs across the two basins) >= t: a union-find over basin pairs in decreasing pass order,
   with time-stamped links, gives each (basin, t) its component. Extents per (basin, value) come from
   ufunc.at minima/maxima and cumulative minima/maxima over values.
4. The largest contour is an outer one (a hole contour lies inside its parent's outer contour and comes
   after it in OpenCV's order). `contourArea` of the outer contour of a component K is
   W(K) + the areas of its hole contours, where W(K) = #(2x2 windows with 4 pixels in K) + #(with 3) / 2,
   and a hole contour's area is at most the area of its points' bounding rectangle. The component with the
   largest W is taken when that is certain: it is alone, or its W beats every other by more than the summed
   hole bounds of the level. Otherwise (ties, close calls with holes) `findContours` runs at that level.
5. Maps are processed as mosaics of several images (separator rows for the foreground, a shared "outside"
   frame for the background), so numpy's per-call overhead is paid once per mosaic.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

_LOW = np.iinfo(np.int16).min
_FORWARD = {8: ((0, 1), (1, -1), (1, 0), (1, 1)), 4: ((0, 1), (1, 0))}
_KERNELS = {8: np.ones((3, 3), np.uint8), 4: cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))}
_NEVER = np.iinfo(np.intp).min


@dataclass(frozen=True, eq=False)
class LevelBoxes:
    """The boxes of a batch of quantised maps U (n, H, W) at every cut level c = 0..255 (binary = U > c).

    Levels c >= max(U_i) have no contour: their box is [0, 0, 0, 0]; the multi-contour list holds that box at
    level max(U_i) only (higher levels are never cut by a threshold <= 1).
    """

    tops: np.ndarray          # (n,) max(U_i)
    multi_image: np.ndarray   # (m,) image of each multi-contour box
    multi_level: np.ndarray   # (m,) its level
    multi_boxes: np.ndarray   # (m, 4) every contour's box (outer and hole contours), x0, y0, x1, y1
    single_boxes: np.ndarray  # (n, 256, 4) the largest contour's box at each level


def _contours(u: np.ndarray, level: int) -> Sequence[np.ndarray]:
    return cv2.findContours((u > level).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]


def _largest_contour_box(u: np.ndarray, level: int) -> np.ndarray:
    """The box of the largest-`contourArea` contour of U > level (first on ties), by `findContours` itself."""
    x, y, w, h = cv2.boundingRect(max(_contours(u, level), key=cv2.contourArea))
    return np.array([x, y, min(x + w, u.shape[1] - 1), min(y + h, u.shape[0] - 1)])



@dataclass(frozen=True)
class _Grid:
    """Per-shape constants (intp): flat index, x and y of every pixel, 16 * ((y % 3) * 3 + x % 3) (`code16`, and
    the same code unscaled as int16 `code`), and `steps[16 * i + j]`, the flat step from a pixel with code i to
    its neighbour with code j (neighbours are told apart by the codes)."""

    idx: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    code: np.ndarray
    code16: np.ndarray
    steps: np.ndarray


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> _Grid:
    idx = np.arange(height * width, dtype=np.intp)
    xs, ys = idx % width, idx // width
    code = (ys % 3) * 3 + xs % 3
    steps = np.zeros(9 * 16, np.intp)
    for i in range(9):
        for j in range(9):
            steps[16 * i + j] = ((j // 3 - i // 3 + 1) % 3 - 1) * width + (j % 3 - i % 3 + 1) % 3 - 1
    return _Grid(idx, xs, ys, code.astype(np.int16).reshape(height, width), code * 16, steps)


def _take(a: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """a[indices] for in-range intp indices (np.take's "wrap" mode skips the bounds checks' slow path)."""
    return np.take(a, indices, mode="wrap")


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, v) with lo[i] <= v <= hi[i]."""
    counts = np.maximum(hi - lo + 1, 0)
    index = np.repeat(np.arange(len(lo)), counts)
    return index, lo[index] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


@dataclass(frozen=True)
class _Basins:
    """A partition of an image into basins: pixel p belongs to a basin whose marker (a regional maximum) it
    reaches by a path, in the given connectivity, on which every value is >= values[p]."""

    labels: np.ndarray  # (H * W,) intp basin ids 0..count-1
    roots: np.ndarray   # (count,) flat index of each basin's marker
    peaks: np.ndarray   # (count,) intp value of each basin's regional maximum
    count: int


def _basins(values: np.ndarray, connectivity: int) -> _Basins:
    """Basins of an int16 image with values in [-256, 255]. Each pixel points to its highest neighbour if that
    one is strictly higher (a dilation of value * 16 + position code finds it). The other pixels form plateau
    pieces of equal value; a piece with a same-valued neighbour that has a higher neighbour points there as a
    whole, any other piece is a regional maximum and points to one of its pixels, the basin's marker. Every
    pointer goes to a neighbour (or along the piece) that is >= the pixel, so pointer jumping gives a marker
    joined to the pixel by a path that never goes below it."""
    height, width = values.shape
    grid = _grid(height, width)
    kernel = _KERNELS[connectivity]
    flat = values.ravel()
    encoded = values * 16 + grid.code
    best = cv2.dilate(encoded, kernel).ravel()  # the default border value never wins a dilation
    marker = (best >> 4) <= flat
    pointer = grid.idx + _take(grid.steps, grid.code16 + (best & 15))  # markers are redirected below
    n_pieces, pieces = cv2.connectedComponents(marker.view(np.uint8).reshape(height, width),
                                               connectivity=connectivity, ltype=cv2.CV_32S)
    pieces = pieces.ravel()
    # a marker has no higher neighbour, so a non-marker neighbour of equal value is its highest non-marker one
    exit_best = cv2.dilate(np.where(marker.reshape(height, width), _LOW, encoded), kernel).ravel()
    exits = np.flatnonzero(((exit_best >> 4) == flat) & marker)
    members = np.flatnonzero(marker)
    member_pieces, exit_pieces = pieces[members], pieces[exits]
    target = np.zeros(n_pieces, np.intp)
    target[member_pieces] = members  # one pixel of each piece (any one)
    regional = np.ones(n_pieces, bool)
    regional[0] = False
    regional[exit_pieces] = False
    roots = target[regional]
    target[exit_pieces] = exits + _take(grid.steps, grid.code16[exits] + (exit_best[exits] & 15))
    pointer[members] = target[member_pieces]
    while True:  # two jumps per convergence check
        pointer = _take(pointer, pointer)
        jumped = _take(pointer, pointer)
        if np.array_equal(jumped, pointer):
            break
        pointer = jumped
    lookup = np.zeros(height * width, np.intp)
    lookup[roots] = np.arange(len(roots))
    return _Basins(_take(lookup, pointer), roots, flat[roots].astype(np.intp), len(roots))


def _extent_tables(basins: _Basins, values: np.ndarray, low: int) -> np.ndarray:
    """(4, count, n_values) extents x0, y0, x1, y1 of {p in basin b : values[p] >= low + v} (empty: x0 = y0 =
    a large number, x1 = y1 = -1), n_values = max(values) - low + 1."""
    grid = _grid(*values.shape)
    n_values = int(values.max()) - low + 1
    key = basins.labels * n_values + (values.ravel() - low)
    tables = np.empty((4, basins.count * n_values), np.intp)
    tables[:2] = np.iinfo(np.int32).max
    tables[2:] = -1
    np.minimum.at(tables[0], key, grid.xs)  # table, index and values of one dtype: ufunc.at's fast path
    np.minimum.at(tables[1], key, grid.ys)
    np.maximum.at(tables[2], key, grid.xs)
    np.maximum.at(tables[3], key, grid.ys)
    tables = tables.reshape(4, basins.count, n_values)[..., ::-1]
    np.minimum.accumulate(tables[:2], axis=2, out=tables[:2])
    np.maximum.accumulate(tables[2:], axis=2, out=tables[2:])
    return tables[..., ::-1]


@dataclass(frozen=True)
class _Forest:
    """Union-find over basins with time-stamped links: `parent[b]` joined b's tree at threshold `since[b]`
    (roots: themselves, never). The group of b at threshold t is found by following links with since >= t."""

    parent: np.ndarray
    since: np.ndarray

    def find(self, basin: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        while True:
            move = self.since[basin] >= threshold
            if not move.any():
                return basin
            basin = np.where(move, self.parent[basin], basin)


def _merges(basins: _Basins, values: np.ndarray, connectivity: int, lowest: int) -> _Forest:
    """Kruskal over adjacent basin pairs in decreasing pass value (the highest min(values[p], values[q]) over
    adjacent p, q across the pair; passes below `lowest` are never needed), union by size, each link stamped
    with its pass: at threshold t, basins are grouped exactly as the components of {values >= t}."""
    height, width = values.shape
    grid = _grid(height, width)
    count = basins.count
    square = basins.labels.astype(np.uint16 if count <= 2 ** 16 else np.float32).reshape(height, width)
    kernel = _KERNELS[connectivity]
    edge = np.flatnonzero(cv2.dilate(square, kernel) != cv2.erode(square, kernel))  # next to another basin
    dy, dx = np.array(_FORWARD[connectivity], np.intp).T[..., None]  # (2, k, 1): neighbours x edge pixels
    qx, qy = grid.xs[edge] + dx, grid.ys[edge] + dy
    valid = (qx >= 0) & (qx < width) & (qy < height)
    p = np.broadcast_to(edge, valid.shape)[valid]
    q = (edge + (dy * width + dx))[valid]
    lp, lq = basins.labels[p], basins.labels[q]
    flat = values.ravel()
    passes = np.minimum(flat[p], flat[q])
    keep = (lp != lq) & (passes >= lowest)
    span = 256  # passes - lowest <= 255: passes lie in [lowest, max(values)] within the 256 image values
    # sorted by pair, then by decreasing pass: the first entry of each pair holds its highest pass
    key = np.sort((np.minimum(lp, lq)[keep] * count + np.maximum(lp, lq)[keep]) * span
                  + (span - 1 - (passes[keep] - lowest)))
    key = key[np.flatnonzero(np.diff(key // span, prepend=-1))]
    key = key[np.argsort(key % span, kind="stable")]  # decreasing pass
    pair, passes = key // span, span - 1 - key % span + lowest
    parent, size = list(range(count)), [1] * count
    since = [_NEVER] * count
    for a, b, v in zip((pair // count).tolist(), (pair % count).tolist(), passes.tolist()):
        while parent[a] != a:
            a = parent[a]
        while parent[b] != b:
            b = parent[b]
        if a != b:
            if size[a] < size[b]:
                a, b = b, a
            parent[b], since[b] = a, v
            size[a] += size[b]
    return _Forest(np.array(parent, np.intp), np.array(since, np.intp))


def _components(basins: _Basins, values: np.ndarray, forest: _Forest, basin: np.ndarray, threshold: np.ndarray,
                low: int, extra: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """The components of {values >= t} holding the (basin, t) pairs given (alive basins; low <= min(values)):
    (threshold, group root, extent x0, y0, x1, y1 [, the sum of `extra[basin, t]` over the component's basins])."""
    tables = _extent_tables(basins, values, low)
    group = forest.find(basin, threshold)
    key = (threshold - low) * basins.count + group
    order = np.argsort(key)
    key, basin, threshold = key[order], basin[order], threshold[order]
    column = threshold - low
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    out = [key[starts] // basins.count + low, key[starts] % basins.count,
           np.minimum.reduceat(tables[0][basin, column], starts),
           np.minimum.reduceat(tables[1][basin, column], starts),
           np.maximum.reduceat(tables[2][basin, column], starts),
           np.maximum.reduceat(tables[3][basin, column], starts)]
    if extra is not None:
        out.append(np.add.reduceat(extra[basin, threshold], starts))
    return tuple(out)


def _double_areas(u: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """(count, 256) table at [b, t] for a uint8 image: #(2x2 windows with all 4 pixels >= t) + #(windows with
    >= 3 pixels >= t), over the windows whose larger top pixel is in basin b (a pixel >= the window's second
    smallest value, so in the window's component whenever the window counts): twice the summed `contourArea`
    contributions of the windows."""
    a, b, c, d = u[:-1, :-1], u[:-1, 1:], u[1:, :-1], u[1:, 1:]
    lo1, hi1, lo2, hi2 = np.minimum(a, b), np.maximum(a, b), np.minimum(c, d), np.maximum(c, d)
    fourth = np.minimum(lo1, lo2)                                 # smallest value of the window
    third = np.minimum(np.maximum(lo1, lo2), np.minimum(hi1, hi2))  # second smallest
    square = labels.reshape(u.shape)
    owner = np.where(a >= b, square[:-1, :-1], square[:-1, 1:]) * 256
    counts = (np.bincount((owner + fourth).ravel(), minlength=count * 256)
              + np.bincount((owner + third).ravel(), minlength=count * 256)).reshape(count, 256)
    return np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]


def level_boxes(maps: np.ndarray) -> LevelBoxes:
    """`LevelBoxes` of a batch of uint8 maps (n, H, W) by the basin method of the module docstring.

    The maps are laid out as one mosaic: for the foreground, images stacked with a separator row of value -1
    (never foreground, and a 1-pixel gap breaks 8-connectivity; 0 in the uint8 copy used for areas, where a
    window across it has at most 2 pixels above 0); for the background (-U), every image framed by value +1,
    the outside, which is in every background level set. Components never span two images.
    """
    if maps.ndim != 3 or maps.dtype != np.uint8 or 0 in maps.shape:
        raise ValueError(f"maps: expected a non-empty (n, H, W) uint8 array, got {maps.dtype} {maps.shape}")
    n, height, width = maps.shape
    tops = maps.reshape(n, -1).max(1).astype(np.intp)
    stride = height + 1
    mosaic = np.zeros((n, stride, width), np.uint8)
    mosaic[:, :height] = maps
    mosaic = mosaic.reshape(n * stride, width)
    values = mosaic.astype(np.int16)
    values[height::stride] = -1
    background = np.ones((n * stride + 1, width + 2), np.int16)
    background[1:].reshape(n, stride, width + 2)[:, :height, 1:-1] = -maps.astype(np.int16)
    # outer contours: 8-connected components of U >= t = c + 1, t in 1..max(U_i)
    fg = _basins(values, 8)
    fg_image = fg.roots // width // stride
    basin, threshold = _expand(np.ones(fg.count, np.intp), fg.peaks)
    areas = _double_areas(mosaic, fg.labels, fg.count)  # separator rows of 0 only count at t <= 0
    t, group, x0, y0, x1, y1, o_area = _components(fg, values, _merges(fg, values, 8, 1), basin, threshold, -1,
                                                   areas)
    o_image, o_level = fg_image[group], t - 1
    y_off = o_image * stride
    outer = np.stack([x0, y0 - y_off, np.minimum(x1 + 1, width - 1), np.minimum(y1 - y_off + 1, height - 1)], 1)
    # hole contours: 4-connected components of -U >= t = -c, c in 0..max(U_i) - 1, without the frame
    bg = _basins(background, 4)
    frame = int(bg.labels[0])
    bg_image = (bg.roots // (width + 2) - 1) // stride
    in_image = np.flatnonzero(np.arange(bg.count) != frame)
    lo = 1 - tops[bg_image[in_image]]
    basin, threshold = _expand(lo, np.minimum(bg.peaks[in_image], 0))
    basin = in_image[basin]
    forest = _merges(bg, background, 4, -254)
    inside = forest.find(basin, threshold) != forest.find(np.full_like(basin, frame), threshold)
    t, group, x0, y0, x1, y1 = _components(bg, background, forest, basin[inside], threshold[inside], -255)
    h_image, h_level = bg_image[group], -t
    y_off = h_image * stride + 1
    # the hole's extent (padded coordinates) grown by one pixel, one past the end, clipped like every box
    holes = np.stack([x0 - 2, y0 - y_off - 1, np.minimum(x1 + 1, width - 1),
                      np.minimum(y1 - y_off + 2, height - 1)], 1)
    # largest contour: an outer one; certain when alone, or when its double area beats the runner-up's by more
    # than twice the level's summed hole-polygon bounds (a hole contour's area <= its points' bounding rect)
    slot = o_image * 256 + o_level
    hole_slack = 2 * np.bincount(h_image * 256 + h_level, weights=(x1 - x0 + 2) * (y1 - y0 + 2),
                                 minlength=n * 256)[slot]
    order = np.lexsort((-o_area, slot))
    first = np.flatnonzero(np.diff(slot[order], prepend=-1))
    n_comp = np.diff(np.r_[first, len(order)])
    best = order[first]
    runner_up = o_area[order[np.minimum(first + 1, len(order) - 1)]]
    certain = (n_comp == 1) | (o_area[best] > runner_up + hole_slack[best])
    single = np.zeros((n, 256, 4), np.intp)
    single[o_image[best], o_level[best]] = outer[best]
    for k in best[~certain]:
        single[o_image[k], o_level[k]] = _largest_contour_box(maps[o_image[k]], int(o_level[k]))
    images = np.arange(n)
    return LevelBoxes(tops, np.concatenate([o_image, h_image, images]), np.concatenate([o_level, h_level, tops]),
                      np.concatenate([outer, holes, np.zeros((n, 4), np.intp)]), single)

