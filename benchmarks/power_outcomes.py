"""Power of the current run: per-image outcomes from data/cams (one BoxEvaluator count per image), then the
bootstrap half-widths (pipeline/metrics/intervals.py), saved to /tmp/power/*.npz for power_project.py (reads
DATA_DIR/cams/<split>/, the layout before replicates: use DATA_DIR/cams/replicate_0 layouts by symlink).
Usage: python benchmarks/power_outcomes.py [DATA_DIR]   (default /work/main/data; writes /tmp/power/)."""
from pathlib import Path
import sys, time
from types import SimpleNamespace as NS

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.cams.store import read_cams
from pipeline.data.prepare import load_ground_truth
from pipeline.metrics.evaluate import EvalOptions, postprocess_options, score_maps
from pipeline.metrics.boxes import _Task, _count, quantize_scoremaps, threshold_grid
from pipeline.metrics.masks import MaskEvaluator
from pipeline.metrics.intervals import IntervalAccumulator
from pipeline.cams.engine import VARIANTS, BRANCHES

Path("/tmp/power").mkdir(exist_ok=True)
D = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/main/data")
opts = EvalOptions()
thr = threshold_grid(opts.threshold_grid)
loc = int(np.flatnonzero(thr == opts.loc_threshold)[0])
acc = IntervalAccumulator(resamples=1000, seed=0)
t0 = time.time()
for split in ("val", "test"):
    cams = read_cams(D / "cams" / split)
    gt = load_ground_truth(D / "prepared/synthbirds", split)
    correct = np.array([int(r["pred"]) == int(r["label"]) for r in cams.index], dtype=bool)
    for variant in VARIANTS:
        for branch in BRANCHES:
            pp = postprocess_options(variant, branch, gt.size, opts)
            maps = np.concatenate([m for _, m in score_maps(cams, variant, branch, pp)])
            q = quantize_scoremaps(maps)
            n = len(q)
            multi = np.zeros((n, 3, len(thr)), bool); single = np.zeros_like(multi)
            known = np.zeros(n, bool); top1 = np.zeros(n, bool)
            for i in range(n):
                m, s, g, t = _count(_Task(q[i:i+1], (gt.boxes[i],), correct[i:i+1], thr, np.array([.3, .5, .7]), loc, False))
                multi[i], single[i], known[i], top1[i] = m > 0, s > 0, g > 0, t > 0
            mask = None
            if gt.fg is not None and split == "test":
                fg = []; bg = []
                for i in range(n):
                    ev = MaskEvaluator(grid=opts.threshold_grid); ev.accumulate(maps[i:i+1], gt.fg[i:i+1], gt.ignore[i:i+1])
                    fg.append(ev.fg_hist); bg.append(ev.bg_hist)
                mask = NS(per_image_fg_hist=np.stack(fg), per_image_bg_hist=np.stack(bg))
            acc.add(0, ("clean", variant, branch, split), NS(per_image_multi=multi, per_image_single=single,
                    per_image_gt_known=known, per_image_top1_loc=top1), mask, None)
            np.savez_compressed(f"/tmp/power/{split}_{variant}_{branch}.npz", multi=multi, single=single, known=known, top1=top1)
print(f"outcomes in {time.time() - t0:.0f} s")
for r in acc.table():
    if r["metric"] in ("maxboxacc_v2", "maxboxacc_iou50", "gt_known_loc", "top1_loc", "pxap"):
        print(f"{r['variant']:10s} {r['metric']:16s} soft {r['softmax']:6.2f} sig {r['sigmoid']:6.2f} delta {r['delta']:+6.2f} "
              f"[{r['low']:+6.2f}, {r['high']:+6.2f}] hw {r['half_width']:5.2f} {r['verdict']}")
