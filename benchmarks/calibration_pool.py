"""The known answer of the interval calibration (benchmarks/bench_calibration.py): one fixed model, a large pool
of new SynthBirds val and test images (the class design of params.yaml's `seed` kept, the images drawn at
indices 0..N-1 per class, so the default's own images are a tenth of the pool), and every image's
evaluation outcomes under the headline protocol, as the project's own `evaluate_all` scores them (its
`observe` hook, chunk by chunk).

    python benchmarks/calibration_pool.py --model data/models/b0_f0/finetuned.pt --out build/calibration

Writes <out>/pool/ (the generated raw and prepared pool, CAM shards) and <out>/outcomes.npz: per
(variant, branch) the per-image arrays of both splits (box outcomes at every threshold and IoU, GT-known and
Top-1 Loc flags, PxAP histograms, Average Drop terms and Increase in Confidence flags) and the labels. Each step
is skipped when its output exists (delete the folder to rebuild).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POOL_VAL_PER_CLASS = 400  # 10 x the default's val (40 per class)
POOL_TEST_PER_CLASS = 1000  # 10 x the default's test (100 per class)


def build(model_path: Path, out: Path, val_per_class: int, test_per_class: int, workers: int) -> Path:
    from pipeline.cams.engine import gap_linear_heads, model_family, model_variants
    from pipeline.cams.generate import iter_cam_records
    from pipeline.cams.store import read_cams, write_cams
    from pipeline.data.images import ImageSet, eval_transform, make_loader
    from pipeline.data.prepare import load_ground_truth, load_prepared, prepare_dataset
    from pipeline.data.synthbirds import SynthBirdsSpec, generate
    from pipeline.metrics.evaluate import EvalOptions, evaluate_all
    from pipeline.models.dual import load_checkpoint
    from pipeline.params import load_params

    params = load_params()
    d = params.data
    if params.dataset != "synthbirds":
        raise SystemExit("calibration: params.yaml's dataset must be synthbirds (the pool is generated)")
    raw, prepared_dir, cams_dir = out / "pool" / "raw", out / "pool" / "prepared", out / "pool" / "cams"
    spec = SynthBirdsSpec(
        num_classes=d.num_classes,
        image_size=d.image_size,
        train_per_class=0,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        seed=params.seed,
        min_distractors=d.min_distractors,
        max_distractors=d.max_distractors,
        confuser_prob=d.confuser_prob,
        supersample=d.supersample,
    )
    t0 = time.perf_counter()
    if not (raw / "classes.txt").is_file():
        generate(spec, raw, workers=workers)
        print(f"pool: generated in {time.perf_counter() - t0:.0f} s", flush=True)
    if not (prepared_dir / "dataset.json").is_file():
        prepare_dataset(raw, prepared_dir, dataset="synthbirds", num_classes=d.num_classes, eval_size=params.eval_size)
    model, _ = load_checkpoint(model_path)
    model.eval()
    prepared = load_prepared(prepared_dir)
    size = params.model.input_size

    def split_loader(split: str):
        data = prepared.split(split)
        ds = ImageSet(prepared.image_root, data.image_ids, data.labels, eval_transform(size))
        return make_loader(ds, batch_size=params.cams.batch_size or params.model.batch_size, train=False, seed=0)

    for split in ("val", "test"):
        if not (cams_dir / split / "manifest.json").is_file():
            t1 = time.perf_counter()
            ids = prepared.split(split).image_ids
            write_cams(
                cams_dir / split,
                iter_cam_records(model, split_loader(split), ids, targets=("gt", "pred")),
                targets=("gt", "pred"),
                feature_size=model.feature_size,
                dtype="float32",
                shard_size=4096,
                info={"family": model_family(model), "gap_linear_heads": gap_linear_heads(model)},
                variants=[v.name for v in model_variants(model)],
            )
            print(f"pool: {split} CAMs in {time.perf_counter() - t1:.0f} s", flush=True)

    outcomes = out / "outcomes.npz"
    if outcomes.is_file():
        return outcomes
    e = params.evaluate
    opts = EvalOptions(
        postprocess=e.postprocess,
        threshold_grid=e.threshold_grid,
        threshold_split="val",
        gt_box_match=e.gt_box_match,
        loc_threshold=e.loc_threshold,
    )
    cams = {s: read_cams(cams_dir / s) for s in ("val", "test")}
    gts = {s: load_ground_truth(prepared_dir, s) for s in ("val", "test")}
    arrays: dict[str, np.ndarray] = {f"labels_{s}": gts[s].labels for s in gts}
    names: list[str] = []
    n_thresholds = [0]
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    chunks: dict[tuple, list] = {}  # (variant, branch, split) -> [(start, box, mask, fidelity)]

    def observe(key, split, start, box, mask, fid) -> None:
        _, _, variant, branch = key
        chunks.setdefault((variant, branch, split), []).append((start, box, mask, fid))

    test_loader = split_loader("test")
    t2 = time.perf_counter()
    evaluate_all(
        cams,
        gts,
        opts,
        model=model,
        batches=lambda: iter(test_loader),
        fidelity_target=e.fidelity_target,
        fidelity_size=size,
        observe=observe,
        show_progress=True,
    )
    for (variant, branch, split), parts in chunks.items():
        boxes = sorted((p for p in parts if p[1] is not None), key=lambda p: p[0])
        fids = sorted((p for p in parts if p[3] is not None), key=lambda p: p[0])
        if id(boxes[0][1]) in seen:  # a variant scored from another's maps (Grad-CAM, XGrad-CAM: CAM's)
            aliases[variant] = seen[id(boxes[0][1])]
            continue
        seen[id(boxes[0][1])] = variant
        stem = f"{variant}.{branch}.{split}"
        names.append(stem)

        def joined(field, parts=boxes):
            return np.concatenate([getattr(p[1], field) for p in parts])

        multi = joined("per_image_multi")
        n_thresholds[:] = [multi.shape[-1]]
        arrays[f"{stem}.multi"] = np.packbits(multi, axis=-1)
        arrays[f"{stem}.single"] = np.packbits(joined("per_image_single"), axis=-1)
        arrays[f"{stem}.gt_known"] = joined("per_image_gt_known")
        arrays[f"{stem}.top1_loc"] = joined("per_image_top1_loc")
        if boxes[0][2] is not None:
            arrays[f"{stem}.fg"] = np.concatenate([p[2].per_image_fg_hist for p in boxes]).astype(np.uint16)
            arrays[f"{stem}.bg"] = np.concatenate([p[2].per_image_bg_hist for p in boxes]).astype(np.uint16)
        if fids:
            arrays[f"{stem}.avg_drop"] = np.concatenate([p[3]["avg_drop_terms"] for p in fids]).astype(np.float64)
            arrays[f"{stem}.inc_conf"] = np.concatenate([p[3]["inc_conf_flags"] for p in fids]).astype(bool)
    print(f"pool: outcomes in {time.perf_counter() - t2:.0f} s", flush=True)
    meta = {
        "keys": sorted(set(names)),
        "n_thresholds": n_thresholds[0],
        "model": str(model_path),
        "val_per_class": val_per_class,
        "test_per_class": test_per_class,
        "options": repr(opts),
        "aliases": aliases,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(outcomes, **arrays)
    return outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a fine-tuned dual-branch checkpoint (held fixed)")
    ap.add_argument("--out", type=Path, default=Path("build/calibration"))
    ap.add_argument("--val-per-class", type=int, default=POOL_VAL_PER_CLASS)
    ap.add_argument("--test-per-class", type=int, default=POOL_TEST_PER_CLASS)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    print(build(a.model, a.out, a.val_per_class, a.test_per_class, a.workers))


if __name__ == "__main__":
    main()
