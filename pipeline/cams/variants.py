"""The CAM variant registry: every CAM variant is one `CamVariant` entry of `REGISTRY` (METHOD.md 3).

A variant says, in one place, everything the rest of the pipeline needs to know about it:

- `name` (the key in shards, metrics, curve files) and `label` (what the report prints);
- its weights, from the target-layer feature map A, the gradient g = dS/dA of the branch's raw target logit S
  and the head (`CamInputs`): `channel` weights alpha (B, H, C), combined as M = sum_c alpha_c A_c, or
  `pixel` weights w (B, H, C, hw), combined as M = sum_c w_c A_c per pixel (H = number of heads, i.e. branches)
  (a weight function reduces over (x, y) only through `CamInputs.sum_xy` / `mean_xy` / `sum_xy_ga`: the
  gradient arrives per pixel, per cell of a pooling head, or as the GAP-linear constant);
- whether those weights are non-negative by construction (then the stored `neg` part is zero);
- its official post-processing rule (`OfficialRule`; the sigmoid branch's weight clamp is common to all);
- the model families it is defined for, and the footnote the report prints where it is not.

The engine (`pipeline.cams.engine`) computes the variants the model's family has, in registry order; the
CAM shards list them by name in their manifest; post-processing, evaluation, the report and the comparison
read the names, labels and rules from here. Adding a variant is one entry below plus a test of its formula.
No other module switches on a variant name (`tests/cams/test_variants.py` checks this).

This module imports neither torch nor numpy (the comparison tool reads it without torch): the weight
functions only call tensor methods of their inputs.

Formulas (pytorch-grad-cam 1.5.7, as the official code uses it; eps as there):

- `cam`:       alpha_c = W[k, c] / C (W: the GAP-linear head's weight; the mean over channels; the official
               Inception code sums instead, METHOD.md 1.6: the scale vanishes in the min-max normalisation)
- `gradcam`:   alpha_c = mean_xy g_c
- `gradcampp`: a = g^2 / (2 g^2 + (sum_xy A_c) g^3 + 1e-6), a = 0 where g = 0;  alpha_c = sum_xy relu(g_c) a
               (computed as sum over g > 0 of g^3 / (g^2 (2 + g sum_xy A_c) + 1e-6), the same expression)
- `xgradcam`:  alpha_c = sum_xy (g_c A_c) / (sum_xy A_c + 1e-7)
- `layercam`:  pixel weights relu(g_c): M = sum_c relu(g_c) A_c
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.concepts import FAMILIES  # re-exported

DEFAULT_FAMILY = "cam"  # a model whose spec names no family

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam GradCAMPlusPlus
XGRADCAM_EPS = 1e-7  # pytorch-grad-cam XGradCAM


@dataclass(frozen=True)
class OfficialRule:
    """The official code's post-processing of a variant (METHOD.md 3.2-3.3), apart from the weight clamp."""

    relu: bool
    upsample: str  # "bilinear" | "bicubic"
    official_grad_scaling: bool  # pytorch-grad-cam's scale_cam_image path


class GradCells:
    """The cells of the map on which a head's gradient is constant (a pooling head, `Head.pooled()`).

    `index` (hw,): each pixel's cell; `counts` (P,): pixels per cell; `sum_a` (B, C, P): sum of A over each
    cell. With the cells, a gradient is given by its value per cell, (B, H, C, P).
    """

    def __init__(self, index, counts, sum_a):
        self.index, self.counts, self.sum_a = index, counts, sum_a

    def __getitem__(self, rows):
        """The same cells for a subset of the images."""
        return GradCells(self.index, self.counts, self.sum_a[rows])


class CamInputs:
    """What a variant's weights are computed from, for one batch and every head.

    `features` A: (B, C, hw) float32; `sum_a`: (B, 1, C) = sum_xy A. The gradient `grads` comes in one of three
    forms:

    - per pixel, (B, H, C, hw): the real dS/dA through the head (the general case);
    - per cell, (B, H, C, P) with `cells` (`GradCells`): a pooling head's gradient, constant on each cell;
    - constant over the map, (B, H, C, 1) = W[k] / hw, for a GAP-linear head (`constant_grad` is then True).

    `head_rows` (B, H, C) is the target row W[k] of each GAP-linear head (None for any other head). The methods
    below give the spatial reductions in the form that fits each case, so one formula per variant serves all.
    """

    def __init__(self, features, sum_a, grads, *, constant_grad: bool = False, head_rows=None, cells=None):
        self.features, self.sum_a, self.grads = features, sum_a, grads
        self.constant_grad = constant_grad
        self.cells = cells
        self.hw = features.shape[-1]
        self.channels = features.shape[1]
        self._head_rows = head_rows

    @property
    def head_rows(self):
        if self._head_rows is None:
            raise ValueError("this CAM variant needs the head to be exactly GAP -> linear (head.gap_linear())")
        return self._head_rows

    def sum_xy(self, values):
        """sum over (x, y) of an elementwise function of g, given as its values (B, H, C, hw or P or 1)."""
        if self.constant_grad:
            return values[..., 0] * self.hw
        if self.cells is not None:
            return (values * self.cells.counts).sum(dim=-1)
        return values.sum(dim=-1)

    def mean_xy(self, values):
        """mean over (x, y) of an elementwise function of g (as `sum_xy`)."""
        if self.constant_grad:
            return values[..., 0]
        if self.cells is not None:
            return self.sum_xy(values) / self.hw
        return values.mean(dim=-1)

    def sum_xy_ga(self):
        """sum_xy g_c A_c, (B, H, C)."""
        if self.constant_grad:
            return self.grads[..., 0] * self.sum_a
        if self.cells is not None:
            return (self.grads * self.cells.sum_a[:, None]).sum(dim=-1)
        return (self.grads * self.features[:, None]).sum(dim=-1)


@dataclass(frozen=True)
class CamVariant:
    name: str
    label: str
    kind: str  # "channel" | "pixel"
    weights: Callable[[CamInputs], object]  # channel: (B, H, C); pixel: (B, H, C, hw or P or 1)
    nonnegative: bool  # the weights are >= 0 by construction (no negative part)
    official: OfficialRule
    families: tuple[str, ...] = FAMILIES
    not_applicable: str = ""  # the report's footnote for a family it is not defined for
    closed_form_alias: str = ""  # GAP-linear heads: a variant whose map this one's is a positive
    # multiple of (`map_source`)

    def applies_to(self, family: str) -> bool:
        return family in self.families


def _cam(x: CamInputs):
    return x.head_rows / x.channels


def _gradcam(x: CamInputs):
    return x.mean_xy(x.grads)


def _gradcampp(x: CamInputs):
    gp = x.grads.clamp(min=0)
    g2 = gp * gp
    den = gp * x.sum_a[..., None]
    den.add_(2).mul_(g2).add_(GRADCAMPP_EPS)
    return x.sum_xy(g2.mul_(gp).div_(den))


def _xgradcam(x: CamInputs):
    return x.sum_xy_ga() / (x.sum_a + XGRADCAM_EPS)


def _layercam(x: CamInputs):
    return x.grads.clamp(min=0)


CAM_RULE = OfficialRule(relu=False, upsample="bicubic", official_grad_scaling=False)
GRAD_RULE = OfficialRule(relu=True, upsample="bilinear", official_grad_scaling=True)

REGISTRY: dict[str, CamVariant] = {
    v.name: v
    for v in (
        CamVariant(
            "cam",
            "CAM",
            "channel",
            _cam,
            False,
            CAM_RULE,
            families=("cam",),
            not_applicable="CAM is defined for the CAM family only (conv features, GAP, one linear layer); "
            "the official code evaluates it there only, so a gradient-family run has no CAM.",
        ),
        CamVariant("gradcam", "Grad-CAM", "channel", _gradcam, False, GRAD_RULE, closed_form_alias="cam"),
        CamVariant("gradcampp", "Grad-CAM++", "channel", _gradcampp, True, GRAD_RULE),
        CamVariant("xgradcam", "XGrad-CAM", "channel", _xgradcam, False, GRAD_RULE, closed_form_alias="cam"),
        CamVariant("layercam", "LayerCAM", "pixel", _layercam, True, GRAD_RULE),
    )
}


def map_source(name: str, closed_form: bool) -> str:
    """The variant whose stored maps stand for `name`'s when a set is scored.

    With a GAP-linear head (`closed_form`: the gradient is the constant W[k] / hw) Grad-CAM's weights are
    W[k] / hw, a positive multiple of CAM's W[k] / C, and XGrad-CAM's are W[k] / hw times
    sum_xy A_c / (sum_xy A_c + 1e-7), which moves a channel's contribution W[k, c] A_c(x) / hw by at most
    1e-7 |W[k, c]| / hw (A_c(x) <= sum_xy A_c). Every post-processing step (weight clamp, ReLU, up-sampling,
    min-max) is invariant to a positive scale, so under one rule the three give the same score maps up to float
    rounding, and evaluation scores CAM's stored maps once for all three (`closed_form_alias`). Any other
    head: the variant itself.
    """
    variant = get(name)
    return variant.closed_form_alias if closed_form and variant.closed_form_alias else variant.name


def names() -> tuple[str, ...]:
    """Every registered variant name, in registry (report) order."""
    return tuple(REGISTRY)


def get(name: str) -> CamVariant:
    """The registered variant `name`; ValueError naming the valid ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"variant: '{name}' is not valid; choose one of: {', '.join(REGISTRY)}") from None


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family: '{family}' is not valid; choose one of: {', '.join(FAMILIES)}")
    return family


def for_family(family: str) -> tuple[CamVariant, ...]:
    """The variants a model of `family` has, in registry order."""
    check_family(family)
    return tuple(v for v in REGISTRY.values() if v.applies_to(family))


def label(name: str) -> str:
    return get(name).label


def by_label(text: str) -> str:
    """The variant name whose report label is `text`."""
    for v in REGISTRY.values():
        if v.label == text:
            return v.name
    raise ValueError(f"no CAM variant has the label '{text}'")
