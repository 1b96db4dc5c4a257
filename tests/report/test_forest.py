"""pipeline/report/forest.py on synthetic interval rows from the real accumulator."""

import hashlib
from types import SimpleNamespace as NS

import numpy as np
import pytest
from PIL import Image

from pipeline.metrics.intervals import IntervalAccumulator
from pipeline.report.forest import VERDICT_COLORS, forest


def rows():
    """Two protocols x two variants, the sigmoid branch better (cam), worse (gradcam) or the same."""
    rng = np.random.default_rng(0)
    acc = IntervalAccumulator(resamples=100, seed=0, threshold_split="test")
    n = 200
    for protocol in ("clean", "official"):
        for variant, shift in (("cam", 0.15), ("gradcam", -0.15)):
            p = rng.uniform(0.3, 0.6, n)
            u_soft = rng.random(n)  # one baseline: its frozen softmax branch is the same in both models
            for seed in (0, 1):
                q_sig = np.clip(p + (shift if protocol == "clean" else 0), 0, 1)
                for branch, q in (("softmax", p), ("sigmoid", q_sig)):
                    u = u_soft if branch == "softmax" else rng.random(n)
                    known = u < q if branch == "sigmoid" else u < p
                    b = NS(
                        per_image_multi=np.repeat(known[:, None, None], 3, axis=1).repeat(4, axis=2),
                        per_image_single=np.repeat(known[:, None, None], 3, axis=1).repeat(4, axis=2),
                        per_image_gt_known=known,
                        per_image_top1_loc=known,
                    )
                    f = NS(avg_drop_terms=1.0 - q * u, inc_conf_flags=known)
                    acc.callback(seed)((protocol, variant, branch, "test"), b, None, f)
    return acc.table()


def test_forest_draws_every_row_with_verdict_colours_and_is_byte_stable(tmp_path):
    table = rows()
    verdicts = {(r["protocol"], r["variant"]): r["verdict"] for r in table if r["metric"] == "gt_known_loc"}
    assert verdicts[("clean", "cam")] == "sigmoid better" and verdicts[("clean", "gradcam")] == "sigmoid worse"
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    forest(table, a, dpi=80, title="synthetic")
    forest(table, b, dpi=80, title="synthetic")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with Image.open(a) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert im.width > 4 * im.height / 2  # one panel per metric, side by side
    present = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in VERDICT_COLORS.values()}
    colours = {tuple(p) for p in np.unique(pixels, axis=0)}
    assert present <= colours  # better, worse and no-difference rows all drawn


def test_forest_needs_a_metric_it_can_show(tmp_path):
    with pytest.raises(ValueError, match="none of the metrics"):
        forest(rows(), tmp_path / "x.png", dpi=80, title="t", metrics=("pxap",))
