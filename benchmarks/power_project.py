"""Projected half-widths at other (n_test, n_val): the outcomes of power_outcomes.py enlarged by drawing images
with replacement (the same per-image distribution), bootstrapped as the pipeline does; median over 5 draws."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from types import SimpleNamespace as NS
import numpy as np
from pipeline.metrics.intervals import IntervalAccumulator
from pipeline.cams.engine import VARIANTS
def load(split, v, b):
    z = np.load(f"/tmp/power/{split}_{v}_{b}.npz")
    return NS(per_image_multi=z["multi"], per_image_single=z["single"], per_image_gt_known=z["known"], per_image_top1_loc=z["top1"])
def take(r, idx): return NS(**{k: getattr(r, k)[idx] for k in vars(r)})
for n_test, n_val in [(300, 100), (1000, 300), (1500, 300), (2000, 500)]:
    hw = {}
    for rep in range(5):
        rng = np.random.default_rng(rep)
        acc = IntervalAccumulator(resamples=1000, seed=rep)
        it = rng.integers(0, 300, n_test) if n_test != 300 else np.arange(300)
        iv = rng.integers(0, 100, n_val) if n_val != 100 else np.arange(100)
        for v in ("cam", "gradcampp", "layercam"):
            for b in ("softmax", "sigmoid"):
                acc.add(0, ("clean", v, b, "test"), take(load("test", v, b), it))
                acc.add(0, ("clean", v, b, "val"), take(load("val", v, b), iv))
        for r in acc.table():
            hw.setdefault((r["variant"], r["metric"]), []).append(r["half_width"])
        if n_test == 300: break
    print(n_test, n_val, {f"{v}/{m}": round(float(np.median(x)), 2) for (v, m), x in hw.items() if m in ("maxboxacc_v2", "gt_known_loc")})
