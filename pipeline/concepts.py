"""The project's shared vocabulary, in one torch-free module: every other module imports these names from here.

A scanner test (tests/test_concepts_scanner.py) fails when one of these literals is written out elsewhere in
`pipeline/`, so adding a branch, a family, a protocol or an IoU threshold is one edit here.
"""

from __future__ import annotations

# The dual-branch model's two heads: the frozen softmax classifier and the fine-tuned per-class sigmoid branch.
BRANCHES: tuple[str, ...] = ("softmax", "sigmoid")

# Model families (METHOD.md 1): cam = GAP -> linear heads (CAM); grad = the official `wsol/` gradient-family heads.
FAMILIES: tuple[str, ...] = ("cam", "grad")
DEFAULT_FAMILY = "cam"  # a model whose spec names no family

# Post-processing protocols of the raw maps (METHOD.md 3): the rules live in pipeline/metrics/evaluate.py.
PROTOCOLS: tuple[str, ...] = ("clean", "official", "official_symmetric")

# The IoU thresholds (percent) of MaxBoxAccV2 (METHOD.md 4), also the columns iou30/iou50/iou70 of the curves.
IOUS: tuple[int, ...] = (30, 50, 70)

# Okabe-Ito orange / blue, colour-blind safe: one colour per branch in every figure and page.
PALETTE: dict[str, str] = {"softmax": "#E69F00", "sigmoid": "#0072B2"}

# The CAM threshold grids (METHOD.md 4): official = 1001 values including 1.0 (the official repo), wsol = 1000
# (wsolevaluation); the default of params.yaml's evaluate.threshold_grid and of every evaluator.
THRESHOLD_GRIDS: tuple[str, ...] = ("official", "wsol")
DEFAULT_THRESHOLD_GRID = "wsol"
