"""SynthBirds: a deterministic, procedurally drawn weakly-supervised-localization benchmark.

Every image shows one bird drawn from a shared body plan -- body ellipse, head circle, beak
triangle, wing ellipse on the body, tail -- over a smooth multi-hue background with class-agnostic
distractor shapes. Body colour, body aspect, scale, position, rotation and horizontal flip are
random per image and carry no class information. A class is a fixed conjunction of three *local*
parts: head colour, beak (length and colour) and wing pattern (plain, or stripes / spots in a
pattern colour). For four or more classes no part value belongs to a single class, so a classifier
must combine parts, and a class activation map tends to fire on those small parts rather than on
the whole bird -- the difficulty that weakly supervised localization is about.

The bird is drawn on a transparent layer at ``supersample`` times the output resolution,
composited over the background and box-downsampled. Its mask is the downsampled alpha ``>= 128``
and its box the tight bounding box of that mask, so both are exact by construction.

Everything is a pure function of :class:`SynthBirdsSpec`: an image depends only on
``numpy.random.default_rng([seed, split_index, class_index, image_index])`` and the class design
on ``numpy.random.default_rng([seed, 1000])``, so output files are byte-identical for equal specs
and any number of workers.

**The same bytes on every machine.** Equal specs give equal files not only on one machine but on any
x86-64 or ARM CPU, whatever SIMD extensions numpy dispatches to (SSE, AVX2, AVX-512) and whatever BLAS
kernel it loads. numpy's ``exp``, ``sin``, ``cos`` (and ``log``, ``power``, ``tanh``, ...) on arrays run
CPU-specific SIMD code that is accurate to a few ulp but not correctly rounded, so their last bits differ
between CPU generations, and ``@`` (BLAS) sums and fuses products in a kernel-specific order; a last-bit
change moves a polygon vertex across a pixel's rounding boundary now and then (3 of 1,200 default images
differed between AVX-512 and AVX2 dispatch). glibc's scalar ``math.sin``/``exp`` are no remedy: glibc
picks an FMA build of them on CPUs that have FMA, and they differ between glibc versions. So the
generator uses only:

* IEEE-754 basic operations (``+ - * /``, comparisons, ``min``/``max``, float-to-int casts), elementwise
  on numpy arrays or on Python floats: these are correctly rounded, so every CPU, SIMD width and numpy
  build gives the same bits (numpy never fuses two ufunc calls into one FMA);
* :func:`_cos_sin` and :func:`_exp`, computed by mpmath in integer arithmetic (pure Python, the same
  result everywhere) and rounded to the nearest float; the 48-gon's unit circle is such a table;
* no matrix products, reductions or ``np.arange``/``linspace`` on floats (rotations are written out,
  sums are explicit elementwise additions in a fixed order);
* numpy's random ``Generator`` (PCG64 integers turned into floats with basic operations; the normal
  sampler compares with ``exp`` only in its rare wedge case, where a last-bit difference would change
  the outcome with probability about 2**-52);
* Pillow (pinned in requirements/run.txt) for drawing, resampling and PNG encoding: its polygon fill and
  8-bit resampling are integer / fixed-point C code, compiled for the baseline ISA in the PyPI wheels.

``tests/data/test_synthbirds.py`` renders images in subprocesses with numpy's AVX-512 and AVX2 dispatch
switched off and OpenBLAS forced to other kernels, compares the bytes and pins their digest.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import product
from pathlib import Path

import numpy as np
from mpmath.libmp import from_float, mpf_cos_sin, mpf_exp, round_nearest, to_float
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from pipeline.data.wsol import SplitMetadata, write_split
from pipeline.progress import bar_disabled
from pipeline.schema import DatasetParams, Field, Float, Int, params_class

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names in the order of their ``split_index`` in the per-image random seed."""

PNG_COMPRESS_LEVEL = 6
"""zlib level of every PNG written, fixed so that the bytes do not depend on Pillow's default."""

Colour = tuple[int, int, int]

HEAD_COLOURS: dict[str, Colour] = {
    "red": (225, 30, 30),
    "yellow": (255, 215, 0),
    "blue": (30, 80, 235),
    "white": (250, 250, 250),
}
BEAK_COLOURS: dict[str, Colour] = {"orange": (255, 135, 0), "black": (20, 20, 20)}
PATTERN_COLOURS: dict[str, Colour] = {"white": (250, 250, 250), "black": (15, 15, 15)}
BEAK_LENGTHS: dict[str, float] = {"short": 0.09, "long": 0.26}
"""Beak length beyond the head, in bird-length units."""
WING_PATTERNS: tuple[str, ...] = ("plain", "striped", "spotted")

BEAKS: tuple[tuple[str, str], ...] = tuple(product(BEAK_LENGTHS, BEAK_COLOURS))
"""The beak values ``(length, colour)``."""
WINGS: tuple[tuple[str, str | None], ...] = (("plain", None),) + tuple(product(WING_PATTERNS[1:], PATTERN_COLOURS))
"""The wing values ``(pattern, pattern colour)``; a plain wing has no pattern colour."""

MAX_CLASSES = len(HEAD_COLOURS) * len(BEAKS) * len(WINGS)
"""The number of distinct part combinations, i.e. the largest supported ``num_classes`` (80)."""

# Class-agnostic colours: bird bodies (mid tones, so that white and black patterns both show),
# background hues and distractor fills.
BODY_COLOURS: tuple[Colour, ...] = (
    (150, 110, 70),
    (135, 135, 130),
    (120, 120, 70),
    (175, 140, 95),
    (100, 110, 130),
    (150, 125, 115),
)
BACKGROUND_COLOURS: tuple[Colour, ...] = (
    (95, 150, 70),
    (60, 110, 60),
    (150, 190, 225),
    (105, 150, 200),
    (200, 185, 140),
    (165, 150, 120),
    (120, 120, 120),
    (180, 200, 160),
    (90, 85, 110),
)
DISTRACTOR_COLOURS: tuple[Colour, ...] = (
    (70, 130, 45),
    (40, 90, 40),
    (110, 75, 45),
    (85, 60, 40),
    (160, 160, 155),
    (95, 145, 190),
    (140, 100, 160),
    (40, 140, 140),
    (215, 150, 170),
    (210, 190, 135),
)
CONFUSER_COLOURS: tuple[Colour, ...] = tuple(
    dict.fromkeys([*HEAD_COLOURS.values(), *BEAK_COLOURS.values(), *PATTERN_COLOURS.values()])
)
"""Every part colour of any class; a confuser distractor takes one of them."""


@dataclass(frozen=True)
class SynthBirdsSpec:
    """Size and randomness of a SynthBirds dataset.

    Attributes:
        num_classes: number of classes, 2 to :data:`MAX_CLASSES`.
        image_size: side of the square output images in pixels (>= 16).
        train_per_class, val_per_class, test_per_class: images per class in each split (>= 0).
        seed: seed of the class design and of every image.
        min_distractors, max_distractors: inclusive range of distractor shapes per image.
        confuser_prob: probability that a distractor takes a part colour instead of a
            class-agnostic one.
        supersample: drawing resolution factor before box downsampling, 1 to 4.
    """

    num_classes: int = 10
    image_size: int = 96
    train_per_class: int = 80
    val_per_class: int = 10
    test_per_class: int = 30
    seed: int = 0
    min_distractors: int = 3
    max_distractors: int = 8
    confuser_prob: float = 0.3
    supersample: int = 4

    def __post_init__(self) -> None:
        """Reject values the generator does not support, with a message naming the limit."""
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(
                f"num_classes={self.num_classes} is not supported: SynthBirds has "
                f"{MAX_CLASSES} distinct part combinations, so num_classes must be in "
                f"2..{MAX_CLASSES}"
            )
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size} is too small; it must be >= 16")
        for name in ("train_per_class", "val_per_class", "test_per_class", "min_distractors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.max_distractors < self.min_distractors:
            raise ValueError(
                f"max_distractors={self.max_distractors} must be >= min_distractors={self.min_distractors}"
            )
        if not 0.0 <= self.confuser_prob <= 1.0:
            raise ValueError(f"confuser_prob={self.confuser_prob} must be in [0, 1]")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample={self.supersample} must be in 1..4")

    def per_split(self, split: str) -> int:
        """Return the number of images per class in ``split``."""
        return {
            "train": self.train_per_class,
            "val": self.val_per_class,
            "test": self.test_per_class,
        }[_check_split(split)]


@dataclass(frozen=True)
class BirdClass:
    """The part combination that defines one class.

    Attributes:
        head: key of :data:`HEAD_COLOURS`.
        beak_length: key of :data:`BEAK_LENGTHS`.
        beak_colour: key of :data:`BEAK_COLOURS`.
        wing_pattern: one of :data:`WING_PATTERNS`.
        pattern_colour: key of :data:`PATTERN_COLOURS`, ``None`` for a plain wing.
    """

    head: str
    beak_length: str
    beak_colour: str
    wing_pattern: str
    pattern_colour: str | None

    @property
    def name(self) -> str:
        """A readable unique name, e.g. ``red_head_long_black_beak_white_striped_wing``."""
        wing = self.wing_pattern if self.pattern_colour is None else (f"{self.pattern_colour}_{self.wing_pattern}")
        return f"{self.head}_head_{self.beak_length}_{self.beak_colour}_beak_{wing}_wing"

    def part_values(self) -> tuple[str, tuple[str, str], tuple[str, str | None]]:
        """Return the class's value on each part axis: head, beak, wing."""
        return (
            self.head,
            (self.beak_length, self.beak_colour),
            (self.wing_pattern, self.pattern_colour),
        )


def class_attributes(spec: SynthBirdsSpec) -> list[BirdClass]:
    """Return the part combination of every class, indexed by label.

    The combinations are distinct and chosen deterministically from ``spec.seed``. Each part axis
    (head, beak, wing) uses at most ``max(2, num_classes // 2)`` of its values, spread evenly over
    the classes, so for ``num_classes >= 4`` every value that occurs is shared by at least two
    classes and only conjunctions of parts identify a class. Among balanced designs, those whose
    closest classes differ in more parts are preferred (the default 10 classes differ pairwise in
    at least two parts).
    """
    return list(_design(spec.num_classes, spec.seed))


def class_names(spec: SynthBirdsSpec) -> list[str]:
    """Return the unique readable class names, indexed by label."""
    return [bird.name for bird in class_attributes(spec)]


@lru_cache(maxsize=32)
def _design(num_classes: int, seed: int) -> tuple[BirdClass, ...]:
    """Choose ``num_classes`` distinct, balanced part combinations (see :func:`class_attributes`).

    Greedy: each step takes the free combination whose values are least over-used on their axes,
    then the one farthest from the chosen ones. The greedy runs on 16 random candidate orders (more
    if none is valid) and keeps the valid design whose closest pair of classes differs in the most
    parts (then: fewest such pairs); valid means every used value is shared by two classes when
    ``num_classes >= 4``.
    """
    rng = np.random.default_rng([seed, 1000])
    axes = (tuple(HEAD_COLOURS), BEAKS, WINGS)
    used = [
        sorted(rng.choice(len(values), min(len(values), max(2, num_classes // 2)), replace=False)) for values in axes
    ]
    full_grid = np.array(list(product(*used)))
    best: tuple[tuple[bool, int, int], np.ndarray] | None = None
    attempt = 0
    while attempt < 16 or not best[0][0]:
        chosen = _greedy_design(full_grid[rng.permutation(len(full_grid))], used, num_classes)
        counts = [np.bincount(chosen[:, axis])[used[axis]] for axis in range(len(axes))]
        valid = num_classes < 4 or all(c.min() >= 2 for c in counts)
        pair_distance = (chosen[:, None, :] != chosen[None, :, :]).sum(axis=2)
        closest = pair_distance[np.triu_indices(num_classes, 1)].min()
        score = (valid, int(closest), -int((pair_distance == closest).sum()))
        if best is None or score > best[0]:
            best = (score, chosen)
        attempt += 1
    return tuple(BirdClass(axes[0][h], *axes[1][b], *axes[2][w]) for h, b, w in best[1].tolist())


def _greedy_design(grid: np.ndarray, used: list[list[int]], num_classes: int) -> np.ndarray:
    """Pick ``num_classes`` rows of ``grid`` (value indices per axis) as described in _design."""
    usage = [np.zeros(max(values) + 1, dtype=int) for values in used]
    distance = np.full(len(grid), grid.shape[1])  # fewest differing parts to any chosen row
    free = np.ones(len(grid), dtype=bool)
    picks = []
    for _ in range(num_classes):
        excess = np.stack([usage[axis][grid[:, axis]] - usage[axis][vals].min() for axis, vals in enumerate(used)])
        # lexsort sorts by the last key first: free, least over-used, farthest, then grid order
        order = np.lexsort((np.arange(len(grid)), excess.sum(axis=0), -distance, excess.max(axis=0), ~free))
        pick = grid[order[0]]
        free[order[0]] = False
        picks.append(pick)
        for axis, value in enumerate(pick):
            usage[axis][value] += 1
        distance = np.minimum(distance, (grid != pick).sum(axis=1))
    return np.array(picks)


def _check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise ValueError."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


# --- machine-independent float functions (see the module docstring) ------------------------------

_FLOAT_BITS = 53
"""Precision of the mpmath evaluations: a binary64 mantissa, rounded to nearest."""


def _cos_sin(angle: float) -> tuple[float, float]:
    """Return ``(cos(angle), sin(angle))`` rounded to the nearest float, identically on every machine.

    mpmath's integer-arithmetic evaluation at an explicit precision (its global context is neither
    read nor changed), instead of libm or numpy, whose results depend on the CPU.
    """
    c, s = mpf_cos_sin(from_float(float(angle)), _FLOAT_BITS, round_nearest)
    return to_float(c, rnd=round_nearest), to_float(s, rnd=round_nearest)


def _exp(x: float) -> float:
    """Return ``exp(x)`` rounded to the nearest float, identically on every machine (as _cos_sin)."""
    return to_float(mpf_exp(from_float(float(x)), _FLOAT_BITS, round_nearest), rnd=round_nearest)


def _rotate(points: np.ndarray, c: float, s: float) -> np.ndarray:
    """Rotate ``(n, 2)`` points by the angle with cosine ``c`` and sine ``s`` (y down: clockwise on
    screen), written out elementwise instead of as a BLAS matrix product (see the module docstring)."""
    x, y = points[:, 0], points[:, 1]
    return np.stack([x * c - y * s, x * s + y * c], axis=1)


def _steps(start: float, stop: float, step: float) -> list[float]:
    """Return ``start, start + step, ...`` below ``stop`` (``np.arange`` in basic float operations)."""
    return [start + i * step for i in range(max(0, math.ceil((stop - start) / step)))]


_CIRCLE = np.array([_cos_sin(2.0 * math.pi * k / 48) for k in range(48)])
"""``(cos t, sin t)`` at the 48 vertices ``t = 2 pi k / 48`` of the polygon that draws ellipses."""


# --- drawing --------------------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Return a 48-gon approximating an ellipse (local units, rotated by ``angle`` radians)."""
    x, y = rx * _CIRCLE[:, 0], ry * _CIRCLE[:, 1]
    c, s = _cos_sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _shade(colour: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """Return ``colour`` scaled by ``factor`` and clipped to 0..255."""
    return tuple(int(v) for v in np.clip(np.asarray(colour, dtype=float) * factor, 0, 255))


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> tuple[int, ...]:
    """Return ``colour`` with a random brightness change of up to ``amount`` (relative)."""
    return _shade(colour, 1.0 + rng.uniform(-amount, amount))


def _polygon(points: np.ndarray) -> list[tuple[float, float]]:
    """Convert an ``(n, 2)`` array to the point list ImageDraw expects."""
    return [(float(x), float(y)) for x, y in points]


def _background(rng: np.random.Generator, size: int, side: int) -> Image.Image:
    """Draw a smooth random field over 2-4 background hues plus a finer brightness texture.

    The field is computed at the output ``size`` (it has no detail finer than that) and
    upsampled to the ``side`` x ``side`` drawing canvas.
    """
    hues = np.asarray(BACKGROUND_COLOURS, dtype=float)[
        rng.choice(len(BACKGROUND_COLOURS), int(rng.integers(2, 5)), replace=False)
    ]
    grid = int(rng.integers(3, 6))
    logits = rng.normal(0.0, 2.5, size=(grid, grid, len(hues)))
    shifted = logits - logits.max(axis=2, keepdims=True)
    weights = np.array([_exp(v) for v in shifted.ravel().tolist()]).reshape(shifted.shape)
    total = weights[..., 0]
    for k in range(1, len(hues)):  # softmax and colour mix as elementwise sums in a fixed order
        total = total + weights[..., k]
    mix = (weights[..., 0] / total)[..., None] * hues[0]
    for k in range(1, len(hues)):
        mix = mix + (weights[..., k] / total)[..., None] * hues[k]
    coarse = Image.fromarray(np.uint8(mix)).resize((size, size), Image.BICUBIC)
    fine_grid = int(rng.integers(8, 15))
    fine = rng.normal(0.0, 14.0, size=(fine_grid, fine_grid)).astype(np.float32)
    texture = np.asarray(Image.fromarray(fine, "F").resize((size, size), Image.BICUBIC))
    pixels = np.asarray(coarse, dtype=np.float32) + texture[..., None]
    field = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    return field if side == size else field.resize((side, side), Image.BICUBIC)


def _draw_distractors(rng: np.random.Generator, spec: SynthBirdsSpec, canvas: Image.Image) -> None:
    """Draw ``min_distractors..max_distractors`` ellipses, rectangles and branches on ``canvas``."""
    draw = ImageDraw.Draw(canvas)
    side = canvas.width
    for _ in range(int(rng.integers(spec.min_distractors, spec.max_distractors + 1))):
        if rng.random() < spec.confuser_prob:
            colour = CONFUSER_COLOURS[int(rng.integers(len(CONFUSER_COLOURS)))]
        else:
            base = DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))]
            colour = _jitter(rng, base, 0.1)
        kind = int(rng.integers(3))
        centre = rng.uniform(0.0, 1.0, size=2) * side
        angle = rng.uniform(0.0, math.pi)
        if kind == 0:
            radii = rng.uniform(0.03, 0.13, size=2) * side
            draw.polygon(_polygon(_ellipse(*centre, *radii, angle)), fill=colour)
        elif kind == 1:
            half = rng.uniform(0.03, 0.12, size=2) * side
            corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
            draw.polygon(_polygon(_rotate(corners, *_cos_sin(angle)) + centre), fill=colour)
        else:
            half_length = rng.uniform(0.25, 0.6) * side
            direction = np.array(_cos_sin(angle))
            width = max(1, round(rng.uniform(0.015, 0.04) * side))
            ends = [centre - half_length * direction, centre + half_length * direction]
            draw.line(_polygon(np.array(ends)), fill=colour, width=width)
            fork = ends[0] + rng.uniform(0.3, 0.8) * (ends[1] - ends[0])
            twig_angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.9)
            twig = fork + 0.4 * half_length * np.array(_cos_sin(twig_angle))
            draw.line(_polygon(np.array([fork, twig])), fill=colour, width=max(1, width * 2 // 3))


@dataclass(frozen=True)
class _Pose:
    """Where a bird is drawn: canvas centre and length in pixels, rotation and mirroring."""

    centre: tuple[float, float]
    length: float
    angle: float
    flip: bool

    @cached_property
    def cos_sin(self) -> tuple[float, float]:
        """``(cos, sin)`` of ``angle``, computed once (see :func:`_cos_sin`)."""
        return _cos_sin(self.angle)

    def transform(self, points: np.ndarray) -> list[tuple[float, float]]:
        """Map local bird coordinates (x forward, y down, length 1) to canvas pixels."""
        local = points * np.array([-1.0 if self.flip else 1.0, 1.0])
        rotated = _rotate(local, *self.cos_sin)
        return _polygon(rotated * self.length + np.asarray(self.centre))


def _sample_pose(rng: np.random.Generator, side: int) -> _Pose:
    """Draw a class-agnostic pose: length 30-55 % of the side, +-25 deg, random flip and place.

    The body centre keeps 0.3 bird lengths from the border, so tails and bodies may be clipped.
    """
    length = rng.uniform(0.30, 0.55) * side
    margin = 0.3 * length
    centre = rng.uniform(margin, side - margin, size=2)
    angle = math.radians(rng.uniform(-25.0, 25.0))
    flip = bool(rng.random() < 0.5)
    return _Pose((float(centre[0]), float(centre[1])), float(length), angle, flip)


@dataclass(frozen=True)
class _Shape:
    """The local geometry of one bird (x forward, y down, length 1 from tail tip to head front).

    Attributes:
        tail, body, beak, head, eye, wing: outline polygons as ``(n, 2)`` arrays.
        wing_centre, wing_half_axes, wing_tilt: the wing ellipse, for placing its pattern.
    """

    tail: np.ndarray
    body: np.ndarray
    beak: np.ndarray
    head: np.ndarray
    eye: np.ndarray
    wing: np.ndarray
    wing_centre: tuple[float, float]
    wing_half_axes: tuple[float, float]
    wing_tilt: float


def _shape(bird: BirdClass, aspect: float) -> _Shape:
    """Lay out the body plan for ``bird``: a body ellipse with half-length 0.33 and half-height
    ``0.33 / aspect``, a head of radius 0.13 in front of and above it, the class's beak beyond the
    head, a tail behind the body and a wing ellipse on the body."""
    a = 0.33
    b = a / aspect
    head_r = 0.13
    head = np.array([a * 0.78 + head_r * 0.3, -b * 0.8])
    beak_len = BEAK_LENGTHS[bird.beak_length]
    wing_centre, wing_half_axes, wing_tilt = (-0.06, -b * 0.1), (0.24, b * 0.72), -0.12
    return _Shape(
        tail=np.array([[-a * 0.7, -b * 0.35], [-a - 0.2, -b * 0.55 - 0.04], [-a - 0.2, b * 0.15], [-a * 0.7, b * 0.4]]),
        body=_ellipse(0.0, 0.0, a, b),
        beak=head
        + np.array([[head_r * 0.6, -head_r * 0.5], [head_r + beak_len, head_r * 0.15], [head_r * 0.6, head_r * 0.5]]),
        head=_ellipse(*head, head_r, head_r),
        eye=_ellipse(*(head + np.array([head_r * 0.35, -head_r * 0.2])), 0.03, 0.03),
        wing=_ellipse(*wing_centre, *wing_half_axes, wing_tilt),
        wing_centre=wing_centre,
        wing_half_axes=wing_half_axes,
        wing_tilt=wing_tilt,
    )


def _draw_bird(bird: BirdClass, shape: _Shape, pose: _Pose, body: tuple[int, ...], side: int) -> Image.Image:
    """Draw one bird on a transparent ``side`` x ``side`` RGBA layer: tail, body, beak, head, eye,
    wing (a darker body shade) and the class's wing pattern clipped to the wing."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    opaque = (255,)
    draw.polygon(pose.transform(shape.tail), fill=_shade(body, 0.7) + opaque)
    draw.polygon(pose.transform(shape.body), fill=body + opaque)
    draw.polygon(pose.transform(shape.beak), fill=BEAK_COLOURS[bird.beak_colour] + opaque)
    draw.polygon(pose.transform(shape.head), fill=HEAD_COLOURS[bird.head] + opaque)
    draw.polygon(pose.transform(shape.eye), fill=(10, 10, 10, 255))
    wing = pose.transform(shape.wing)
    draw.polygon(wing, fill=_shade(body, 0.8) + opaque)
    if bird.pattern_colour is None:
        return layer

    pattern = Image.new("L", (side, side), 0)
    pattern_draw = ImageDraw.Draw(pattern)
    tilt = _cos_sin(shape.wing_tilt)
    wing_a, wing_b = shape.wing_half_axes
    if bird.wing_pattern == "striped":
        for u in _steps(-wing_a + 0.05, wing_a, 0.11):
            band = np.array([[u, -wing_b], [u + 0.055, -wing_b], [u + 0.055, wing_b], [u, wing_b]])
            pattern_draw.polygon(pose.transform(_rotate(band, *tilt) + shape.wing_centre), fill=255)
    else:
        for row, v in enumerate(_steps(-wing_b * 0.5, wing_b * 0.9, 0.1)):
            for u in _steps(-wing_a + 0.06 + 0.05 * (row % 2), wing_a - 0.03, 0.1):
                spot = _rotate(_ellipse(u, v, 0.035, 0.035), *tilt) + shape.wing_centre
                pattern_draw.polygon(pose.transform(spot), fill=255)
    wing_mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(wing_mask).polygon(wing, fill=255)
    pattern = ImageChops.darker(pattern, wing_mask)  # clip the pattern to the wing
    layer.paste(PATTERN_COLOURS[bird.pattern_colour] + opaque, mask=pattern)
    return layer


def _inside(points: list[tuple[float, float]], side: int) -> bool:
    """Whether all canvas ``points`` lie within the ``side`` x ``side`` canvas."""
    return all(0.0 <= x <= side and 0.0 <= y <= side for x, y in points)


def render_image(
    spec: SynthBirdsSpec, split: str, class_index: int, image_index: int
) -> tuple[Image.Image, np.ndarray]:
    """Render one image and its foreground mask.

    Returns the RGB image (``image_size`` square) and a boolean ``(H, W)`` mask that is ``True``
    where the box-downsampled bird alpha is >= 128. The pose is re-drawn until the head and beak
    (the class-defining parts) lie fully inside the image and the mask is non-empty, so clipping
    may cut off tails and bodies but never hides the class. Depends only on the arguments.
    """
    if not 0 <= class_index < spec.num_classes:
        raise ValueError(f"class_index={class_index} is outside 0..{spec.num_classes - 1}")
    split_index = SPLITS.index(_check_split(split))
    rng = np.random.default_rng([spec.seed, split_index, class_index, image_index])
    bird = class_attributes(spec)[class_index]
    size = spec.image_size
    side = size * spec.supersample

    canvas = _background(rng, size, side)
    _draw_distractors(rng, spec, canvas)
    body = _jitter(rng, BODY_COLOURS[int(rng.integers(len(BODY_COLOURS)))], 0.12)
    aspect = rng.uniform(1.5, 2.1)
    shape = _shape(bird, aspect)
    while True:
        pose = _sample_pose(rng, side)
        if not all(_inside(pose.transform(part), side) for part in (shape.head, shape.beak)):
            continue
        layer = _draw_bird(bird, shape, pose, body, side)
        alpha = layer.getchannel("A").resize((size, size), Image.BOX)
        mask = np.asarray(alpha) >= 128
        if mask.any():
            break
    canvas.paste(layer, mask=layer.getchannel("A"))
    return canvas.resize((size, size), Image.BOX), mask


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Return the inclusive bounding box ``(x0, y0, x1, y1)`` of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("tight_box needs a non-empty mask")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


# --- dataset generation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """One image to render and write below ``root``."""

    spec: SynthBirdsSpec
    root: str
    split: str
    class_index: int
    image_index: int
    class_dir: str

    @property
    def image_id(self) -> str:
        """The image path relative to ``images/`` (and mask path relative to ``masks/``)."""
        return f"{self.split}/{self.class_dir}/{self.image_index:05d}.png"


@dataclass(frozen=True)
class _Record:
    """What :func:`_render_task` reports back about one written image."""

    split: str
    image_id: str
    label: int
    box: tuple[int, int, int, int]
    mask_fraction: float


def _render_task(task: _Task) -> _Record:
    """Render one image and write its image, mask and (all-zero) ignore PNGs."""
    image, mask = render_image(task.spec, task.split, task.class_index, task.image_index)
    root = Path(task.root)
    mask_path = root / "masks" / task.image_id
    image.save(root / "images" / task.image_id, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    Image.fromarray(mask).save(mask_path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    Image.new("L", image.size, 0).save(
        mask_path.with_name(f"{mask_path.stem}_ignore.png"),
        format="PNG",
        compress_level=PNG_COMPRESS_LEVEL,
    )
    return _Record(task.split, task.image_id, task.class_index, tight_box(mask), float(mask.mean()))


def generate(spec: SynthBirdsSpec, out_dir: Path | str, *, workers: int = 1, progress: bool = True) -> dict:
    """Generate the whole dataset under ``out_dir`` (replacing it) and return a summary.

    Layout (``<split>`` in train/val/test, ``<class_dir>`` = ``NNN.<class name>`` with ``NNN``
    the 0-based label):

    * ``images/<split>/<class_dir>/<NNNNN>.png`` -- RGB images
    * ``masks/<split>/<class_dir>/<NNNNN>.png`` (mode "1") and ``<NNNNN>_ignore.png`` (mode "L",
      all zeros)
    * ``metadata/<split>/*.txt`` -- box-format wsolevaluation metadata, ids relative to ``images/``
    * ``metadata_mask/<split>/*.txt`` -- the same images in mask format, mask paths relative to
      ``masks/``
    * ``classes.txt`` -- ``<label>,<class name>`` per line

    The dataset is written into a temporary sibling folder that replaces ``out_dir`` only once
    complete. ``workers > 1`` renders in a process pool; the files are byte-identical for any
    ``workers``. Returns ``{"num_classes", "image_size", "counts": {split: images},
    "mean_box_area_fraction", "mean_mask_area_fraction"}`` (means over all images).
    """
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left over by a killed run with the same pid
    tmp.mkdir(parents=True)
    try:
        names = class_names(spec)
        class_dirs = [f"{label:03d}.{name}" for label, name in enumerate(names)]
        tasks = []
        for split in SPLITS:
            for label, class_dir in enumerate(class_dirs):
                for kind in ("images", "masks"):
                    (tmp / kind / split / class_dir).mkdir(parents=True)
                tasks += [
                    _Task(spec, str(tmp), split, label, index, class_dir) for index in range(spec.per_split(split))
                ]
        records = _run_tasks(tasks, workers, progress)
        _write_metadata(tmp, spec, records)
        (tmp / "classes.txt").write_bytes("".join(f"{label},{name}\n" for label, name in enumerate(names)).encode())
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    box_areas = [(x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in (r.box for r in records)]
    images = max(1, len(records))
    return {
        "num_classes": spec.num_classes,
        "image_size": spec.image_size,
        "counts": {split: sum(r.split == split for r in records) for split in SPLITS},
        "mean_box_area_fraction": sum(box_areas) / spec.image_size**2 / images,
        "mean_mask_area_fraction": sum(r.mask_fraction for r in records) / images,
    }


def _run_tasks(tasks: list[_Task], workers: int, progress: bool) -> list[_Record]:
    """Render ``tasks`` in order, in this process or in a pool of ``workers`` processes.

    The pool forks where the platform can (no ``if __name__ == "__main__"`` guard needed in the
    calling script, fast start) and spawns elsewhere.
    """
    bar = dict(total=len(tasks), desc="synthbirds", unit="img", disable=bar_disabled(progress))
    if workers == 1:
        return [_render_task(task) for task in tqdm(tasks, **bar)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return list(tqdm(pool.imap(_render_task, tasks, chunksize=8), **bar))


def _write_metadata(root: Path, spec: SynthBirdsSpec, records: list[_Record]) -> None:
    """Write the box-format and mask-format metadata of every split below ``root``."""
    size = (spec.image_size, spec.image_size)
    for split in SPLITS:
        rows = [r for r in records if r.split == split]
        ids = tuple(r.image_id for r in rows)
        labels = {r.image_id: r.label for r in rows}
        sizes = dict.fromkeys(ids, size)
        write_split(
            root / "metadata" / split,
            SplitMetadata(ids, labels, sizes, boxes={r.image_id: (r.box,) for r in rows}),
        )
        masks = {i: ((i,), i.removesuffix(".png") + "_ignore.png") for i in ids}
        write_split(root / "metadata_mask" / split, SplitMetadata(ids, labels, sizes, masks=masks))


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``, replacing whatever ``target`` was."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    else:
        if target.exists() or target.is_symlink():
            target.unlink()
        os.replace(new, target)


@params_class
class SynthBirdsParams(DatasetParams):
    """`datasets.synthbirds`: the embedded procedural birds (classes differ in head colour, beak and wing
    pattern), generated offline from the top-level `seed` by `generate` (the `download` stage)."""

    num_classes: Int = Field(ge=2, le=64, description="number of bird species")
    image_size: Int = Field(ge=16, le=512, description="side of the square images, pixels")
    train_per_class: Int = Field(ge=1, le=100000, description="train images per class")
    val_per_class: Int = Field(ge=0, le=100000, description="val images per class")
    test_per_class: Int = Field(ge=1, le=100000, description="test images per class")
    min_distractors: Int = Field(ge=0, le=50, description="fewest distractor shapes per image")
    max_distractors: Int = Field(ge=0, le=50, description="most distractor shapes per image")
    confuser_prob: Float = Field(ge=0.0, le=1.0, description="chance that a distractor takes a part colour")
    supersample: Int = Field(ge=1, le=4, description="rendering supersampling factor (anti-aliasing)")
