"""The evaluate stage's time and memory on the paper's datasets, projected from the measured scale benchmark.

Reads benchmarks/results/evaluate_scale.json (benchmarks/bench_evaluate_scale.py, a label's fits: peak RSS per
rank = fixed + slope x test images, and the marginal CPU ms per test image per model, at 224 px from 14 x 14
maps, 3 models, 3 protocols, thresholds on val, 1000 bootstrap resamples, fidelity by a tiny model) and writes
benchmarks/results/scale_projection.md: for CUB-200-2011 and ILSVRC at their full test sizes (the registered
`TEST_IMAGES`), on one node with one process and on 8 ranks (one per GPU):

  - the peak memory of a rank: the fit of that rank count where measured, else the 1-rank fixed part plus the
    1-rank slope divided by the ranks (every image-sized array of a rank is its share; the benchmark's 2- and
    4-rank fits check this);
  - the CPU time of evaluate's CPU side (post-processing, box scoring, PxAP, bootstrap): the marginal CPU cost
    x test images x models, and, with P ranks, that divided by P (the work per rank measured about 1/P).

What is not projected: the GPU side (training, `cams`, the fidelity forwards of a real backbone), which no
machine lent to this work measured.

    python benchmarks/project_scale.py [--label after]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
DATASETS = ("cub", "ilsvrc")
MODELS = 3  # baseline.replicates x finetune.replicates of the presets
GPU_RANKS = 8
KB_PER_GIB = 2**20


def project(fits: dict, test_images: int, ranks: int) -> dict:
    """Peak RSS per rank (GiB) and CPU hours of evaluate for `test_images` on `ranks` ranks."""
    one = fits["1"]
    own = fits.get(str(ranks))
    if own and own.get("slope_kb_per_image") is not None:
        fixed, slope, source = own["fixed_gib"], own["slope_kb_per_image"], f"the {ranks}-rank fit"
    else:
        fixed, slope = one["fixed_gib"], one["slope_kb_per_image"] / ranks
        source = f"the 1-rank fit, slope / {ranks}"
    cpu_ms = one["cpu_ms_per_image_model_marginal"]
    cpu_h = cpu_ms * test_images * MODELS / 3.6e6
    return {
        "peak_gib": fixed + slope * test_images / KB_PER_GIB,
        "cpu_h": cpu_h,
        "wall_h": cpu_h / ranks,
        "memory_from": source,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="after-cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale_projection.md")
    a = ap.parse_args()
    from pipeline.data.real import DATASETS as REAL

    doc = json.loads((RESULTS / "evaluate_scale.json").read_text())
    result = doc["labels"][a.label]
    fits = {str(k): v for k, v in result["summary"]["fits"].items()}
    sizes = ", ".join(f"{s:,}" for s in fits["1"]["sizes"])
    lines = [
        "| dataset | test images | one process: peak memory | one process: evaluate CPU time | "
        f"{GPU_RANKS} ranks: peak memory per rank | {GPU_RANKS} ranks: evaluate wall time |",
        "|---|---|---|---|---|---|",
    ]
    for name in DATASETS:
        n = REAL[name].TEST_IMAGES
        one, many = project(fits, n, 1), project(fits, n, GPU_RANKS)
        lines.append(
            f"| {name} | {n:,} | {one['peak_gib']:.2f} GiB | {one['cpu_h']:.2f} h | {many['peak_gib']:.2f} GiB | "
            f"{many['wall_h']:.2f} h |"
        )
    lines += [
        "",
        f"Projected by `benchmarks/project_scale.py` from `benchmarks/bench_evaluate_scale.py` (label `{a.label}`, "
        f"{result.get('environment', {}).get('date', 'date not recorded')}): synthetic 224-px workspaces of "
        f"{sizes} test images, {MODELS} models, 14 x 14 maps, 3 protocols, 1,000 resamples, fidelity off, measured "
        "on a "
        f"{result.get('environment', {}).get('cpus', '?')}-CPU machine. Memory: peak RSS per rank = "
        f"{fits['1']['fixed_gib']:.2f} GiB + {fits['1']['slope_kb_per_image']:.1f} KB per test image in one "
        f"process; {GPU_RANKS} ranks: {project(fits, 1, GPU_RANKS)['memory_from']}. Time: "
        f"{fits['1']['cpu_ms_per_image_model_marginal']:.1f} ms of CPU per test image and model (val images "
        "included, at the benchmark's val/test ratio), divided by the ranks. Not included: training, `cams` and "
        "the fidelity forwards of a real backbone on the GPU (not measured: no GPU was lent to this work).",
    ]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
