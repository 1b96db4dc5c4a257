"""The paper's reported WSOL numbers, the one home of them in this repository.

Source: METHOD.md 7.1, "[precursor] Table 2: WSOL, ImageNet-1K and OpenImages", read from the result-table
image `asset/wsol_result.png` of the precursor repository finallyupper/dual-cam (paper version "Dual-CAM",
Living Lab 2025) of Oh & Noh, "Beyond Softmax: Dual-Branch Sigmoid CAM", BMVC 2025. The camera-ready may
differ. Values are %. The baseline rows give the vanilla (softmax) map, "+Ours" the sigmoid-branch map;
classification is unchanged by the sigmoid branch, so Top-1 Cls is given once per model (softmax).

`PAPER[(dataset, backbone, variant)][branch][metric]`, with this repository's names: dataset as in
params.yaml (`ilsvrc`, `openimages`), backbone as in params.yaml `backbones` (`vgg16`, `resnet50`,
`inception`), variant as in reports/metrics.json (`cam`, `gradcam`), branch `softmax` / `sigmoid`, metric
keys of reports/metrics.json (`top1_cls`, `top1_loc`, `gt_known_loc`, `maxboxacc_v2`, `pxap`). The paper
reports ImageNet Top-1 Cls / Top-1 Loc / GT-known Loc / MaxBoxAccV2 and OpenImages Top-1 Cls / PxAP only.
"""

from __future__ import annotations

from pipeline.cams import variants

SOURCE = "METHOD.md 7.1 (precursor Table 2: finallyupper/dual-cam asset/wsol_result.png; Oh & Noh, BMVC 2025)"

# (backbone, method label as the paper prints it): (IN Top1 Cls, IN Top1 Loc, IN GT Loc, IN MaxBoxAccV2, OI Top1 Cls,
# OI PxAP) for the baseline (softmax) row, and (IN Top1 Loc, IN GT Loc, IN MaxBoxAccV2, OI PxAP) for "+Ours" (sigmoid),
# in METHOD.md 7.1's row order.
_TABLE_2 = {
    ("vgg16", "CAM"): ((66.56, 43.11, 59.53, 60.00, 70.00, 58.17), (43.13, 59.56, 60.25, 60.16)),
    ("vgg16", "Grad-CAM"): ((69.62, 37.01, 48.99, 52.50, 70.12, 55.25), (44.69, 59.44, 60.17, 56.53)),
    ("resnet50", "CAM"): ((73.87, 47.67, 60.80, 63.52, 74.02, 59.36), (49.44, 62.68, 64.73, 60.49)),
    ("resnet50", "Grad-CAM"): ((69.01, 41.15, 55.29, 57.03, 74.02, 60.56), (40.33, 53.60, 57.99, 60.24)),
    ("inception", "CAM"): ((69.72, 42.16, 57.69, 63.51, 56.22, 62.25), (44.11, 60.12, 64.98, 63.65)),
    ("inception", "Grad-CAM"): ((67.79, 34.57, 46.35, 52.30, 68.56, 49.64), (33.72, 45.18, 53.06, 48.16)),
}


def _build() -> dict[tuple[str, str, str], dict]:
    out = {}
    for (backbone, label), (base, ours) in _TABLE_2.items():
        in_cls, in_loc, in_gt, in_v2, oi_cls, oi_pxap = base
        s_loc, s_gt, s_v2, s_pxap = ours
        out[("ilsvrc", backbone, label)] = {
            "top1_cls": in_cls,
            "softmax": {"top1_loc": in_loc, "gt_known_loc": in_gt, "maxboxacc_v2": in_v2},
            "sigmoid": {"top1_loc": s_loc, "gt_known_loc": s_gt, "maxboxacc_v2": s_v2},
        }
        out[("openimages", backbone, label)] = {
            "top1_cls": oi_cls,
            "softmax": {"pxap": oi_pxap},
            "sigmoid": {"pxap": s_pxap},
        }
    return out


PAPER = _build()
DATASETS = ("ilsvrc", "openimages")  # the datasets the paper reports


def paper_value(dataset: str, backbone: str, variant: str, branch: str | None, metric: str) -> float | None:
    """The paper's number, or None where it reports none (branch None: Top-1 Cls, which has no branch)."""
    entry = PAPER.get((dataset, backbone, variants.label(variant))) if variant in variants.names() else None
    if entry is None:
        return None
    if branch is None:
        return entry.get(metric)
    return entry[branch].get(metric)
