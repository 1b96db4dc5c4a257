"""Stage `evaluate`: WSOL metrics of every CAM variant x branch from the stored raw maps.

Reads data/cams/<split>/ and the prepared GT tables, applies the evaluation-time post-processing
(`evaluate.*` params: changing them reruns only this stage), and writes
  reports/metrics.json                     every variant x branch (DVC metrics, canonical JSON), and under
                                           "intervals" every sigmoid-minus-softmax delta with its 95% interval
  reports/intervals.json                   the interval table row by row (the report's source)
  reports/evaluation.json                  which official-code options were used
  reports/plots/box_accuracy/<v>_<b>.csv   box accuracy against CAM threshold: one column per IoU (all
                                           contours) and the largest contour at IoU 50
  reports/plots/pixel_pr/<v>_<b>.csv       pixel precision-recall curve (datasets with masks)
metrics.json holds the headline protocol (`evaluate.postprocess`) at metrics[variant][branch] and every further
protocol of `evaluate.protocols` at metrics["protocols"][name][variant][branch]. Every model of the run (baseline
replicate j x fine-tuning replicate k) is scored; the per-branch numbers are the first model's, the deltas'
intervals (pipeline/metrics/intervals.py) combine the image level with the fine-tuning and baseline levels.
With `distributed.nproc` > 1 each rank takes its own run of image blocks in every phase (reading, digests,
scoring, fidelity, bootstrap sums; pipeline/metrics/evaluate.py) and rank 0 writes the same bytes as one process.
With EVALUATE_WORK_LOG=<folder> in the environment each rank writes its work counters there (rank_<r>.json).

metrics.json also says what the numbers are of, for the tables that set them beside the paper's
(pipeline/report/paper_table.py, `make exp-table`):
  "dataset"        {name, num_classes, test_images, full}: the prepared dataset's name and classes
                   (dataset.json) and the test images scored; `full` is true when both are the full dataset's
                   (pipeline.data.real DATASETS[name].NUM_CLASSES / TEST_IMAGES), null for SynthBirds (no full
                   size, no paper numbers)
  "params_digest"  `params_digest` of the resolved params this process used under `digest_keys`: every key that
                   dvc.yaml declares for the stages that make the numbers (download through evaluate). Under
                   DVC these are data/params.json's values (the start check of pipeline/stages/common.py).
                   paper_table computes the same function on params.yaml as it is, so a table can tell whether
                   reports/ were made from the params.yaml beside them. This stage declares every one of those
                   keys itself (tests/report/test_params_digest.py checks it), so a change of any of them reruns
                   it and the recorded digest stays current; the digest's code lives here, in a dependency of
                   this stage, for the same reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.params import lookup
from pipeline.stages.common import (
    REPORTS,
    eval_options,
    loader,
    loader_workers,
    model_spec,
    replicates,
    stage_keys,
    start,
    user_errors,
)

PLOTS = REPORTS / "plots"
DVC_FILE = Path("dvc.yaml")
# Stages whose declared keys are not in the digest: `validate` writes data/params.json (it declares the whole
# params.yaml), `source` only fingerprints where a real dataset's files are (download.archive_dir, a location
# like download.workers; the files themselves reach download through data/source.json), `report` runs after
# the numbers are made.
DIGEST_SKIPPED = ("validate", "source", "report")
DIGEST_CHARS = 16  # hex characters of the sha256 kept
WORK_LOG_ENV = "EVALUATE_WORK_LOG"  # a folder: each rank writes its work counters there (the scale benchmark)
_ABSENT = object()


def _outermost(keys: Iterable[str]) -> list[str]:
    """The keys without those inside a group also listed (`cams.batch_size` goes when `cams` is there)."""
    keys = set(keys)
    return sorted(k for k in keys if not any(k.startswith(f"{group}.") for group in keys))


def digest_keys(dvc_file: str | Path = DVC_FILE) -> list[str]:
    """The keys of data/params.json that `dvc_file` declares for any stage but DIGEST_SKIPPED (`foreach` and
    `matrix` stages included), a group key standing for the keys inside it."""
    import yaml

    stages = yaml.safe_load(Path(dvc_file).read_text()).get("stages") or {}
    return _outermost(k for name in stages if name not in DIGEST_SKIPPED for k in stage_keys(name, dvc_file) or [])


def params_digest(values: Mapping, keys: Iterable[str]) -> str:
    """sha256 (its first DIGEST_CHARS hex characters) of the canonical JSON of `values` (resolved params,
    pipeline.params `resolved`, i.e. data/params.json's content) picked at the dotted `keys`; a key that
    `values` lacks is left out. The same values give the same digest; a value under any other key does not
    count."""
    picked = {k: v for k in _outermost(keys) if (v := lookup(values, k, _ABSENT)) is not _ABSENT}
    text = json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def dataset_block(name: str, num_classes: int, test_images: int) -> dict:
    """metrics.json's "dataset": what the run used, and whether it is the full dataset (null: SynthBirds and any
    dataset without a registered full size)."""
    from pipeline.data.real import DATASETS

    full = DATASETS.get(name)
    return {
        "name": name,
        "num_classes": int(num_classes),
        "test_images": int(test_images),
        "full": None if full is None else bool(num_classes == full.NUM_CLASSES and test_images == full.TEST_IMAGES),
    }


def baseline_level(params) -> str:
    """What the interval's baseline level stands for in this run (reports/evaluation.json, the report)."""
    b = params.baseline
    n = len(b.replicates)
    if b.checkpoint:
        return "absent: one imported checkpoint (baseline.checkpoint), a fixed model"
    if n == 1:
        return "absent: one baseline (baseline.replicates has one entry)"
    origin = (
        "from ImageNet weights (the trunk's start is fixed: the level is the spread of training from it, "
        "not of pretraining)"
        if b.pretrained == "imagenet"
        else "from random initialisation"
    )
    return f"{n} baselines trained {origin}, seeds {', '.join(str(params.baseline_seed(j)) for j in b.replicates)}"


def main() -> None:
    params = start(distributed=True)
    import os
    import time

    from pipeline.cams.store import open_cams
    from pipeline.concepts import BRANCHES
    from pipeline.data.prepare import load_ground_truth
    from pipeline.dist import finish, is_main, rank, rank_loader
    from pipeline.io import write_json
    from pipeline.metrics.curves import write_curves
    from pipeline.metrics.evaluate import Fidelity, ModelMaps, WorkLog, evaluate_models
    from pipeline.metrics.intervals import IntervalAccumulator, interval_metrics
    from pipeline.models.dual import load_checkpoint
    from pipeline.train.loops import place, resolve_device

    began = time.perf_counter()
    e = params.evaluate
    opts = eval_options(params)
    splits = ["test"] + (["val"] if e.threshold_split == "val" else [])
    log = WorkLog()
    with user_errors():
        reps = replicates(params)
        first = reps[0]
        gts = {s: load_ground_truth(params.prepared_dir(), s) for s in splits}
        fidelity = None
        if e.fidelity:
            device = resolve_device(params.device)
            batch_size = params.cams.batch_size
            test_loader = loader(params, "test", train=False, batch_size=batch_size, workers=loader_workers())
            # the softmax head scores a baseline's maps: frozen, the same in all its fine-tuning replicates
            checkpoints = {}
            for rep in reps:
                checkpoints.setdefault(rep.baseline, rep.finetuned_ckpt)

            def fidelity_model(j: int):
                model, _ = load_checkpoint(checkpoints[j], expect=model_spec(params))
                return place(model, device).eval()

            def fidelity_batches(lo: int, hi: int):
                from pipeline.dist import batch_indices

                batches = [[lo + i for i in b] for b in batch_indices(hi - lo, batch_size)]
                return rank_loader(test_loader, batches)

            fidelity = Fidelity(
                model=fidelity_model,
                batches=fidelity_batches,
                batch_size=batch_size,
                size=params.model.input_size,
                target=e.fidelity_target,
            )
        intervals = IntervalAccumulator(
            resamples=e.bootstrap_resamples,
            seed=e.bootstrap_seed,
            threshold_split=e.threshold_split,
            iou_thresholds=opts.iou_thresholds,
            strata={s: gts[s].labels for s in splits},
        )
        models = [ModelMaps(rep.model, {s: open_cams(rep.cams_dir / s) for s in splits}) for rep in reps]
        if is_main():
            print(
                f"evaluate: {len(reps)} model(s): "
                + ", ".join(
                    f"{rep.name} (baseline seed {params.baseline_seed(rep.baseline)}, fine-tuning seed {rep.seed})"
                    for rep in reps
                ),
                flush=True,
            )
        results = evaluate_models(
            models,
            gts,
            opts,
            fidelity=fidelity,
            intervals=intervals,
            progress=lambda text: print(f"evaluate: {text}", flush=True),
            show_progress=is_main(),
            log=log,
        )
        work_log = os.environ.get(WORK_LOG_ENV)
        if work_log:
            from pipeline.dist import world_size

            Path(work_log).mkdir(parents=True, exist_ok=True)
            write_json(Path(work_log) / f"rank_{rank()}.json", {"rank": rank(), "world": world_size(), **log.as_dict()})
        if not is_main():  # distributed: rank 0 has every result and alone writes
            return finish()
        metrics, curves = results[first.model]
        table = intervals.table()
    metrics["intervals"] = interval_metrics(table)
    with user_errors():
        prepared = json.loads((params.prepared_dir() / "dataset.json").read_text())
        metrics["dataset"] = dataset_block(prepared["dataset"], prepared["num_classes"], len(gts["test"].image_ids))
        metrics["params_digest"] = params_digest(params.declared_values(), digest_keys())
    write_json(REPORTS / "metrics.json", metrics)
    write_json(REPORTS / "intervals.json", {"rows": table})
    write_json(
        REPORTS / "evaluation.json",
        {
            "dataset": params.dataset,
            "backbone": params.backbone,
            "split": "test",
            "images": models[0].cams["test"].manifest["images"],
            "preset": params.preset,
            "head_init": params.finetune.head_init,
            "bn_mode": params.finetune.bn_mode,
            "models": [list(r.model) for r in reps],
            "baseline_seeds": [params.baseline_seed(j) for j in params.baseline.replicates],
            "finetune_seeds": [r.seed for r in reps],
            "baseline_level": baseline_level(params),
            "bootstrap_resamples": e.bootstrap_resamples,
            "bootstrap_seed": e.bootstrap_seed,
            **{
                k: getattr(e, k)
                for k in (
                    "postprocess",
                    "protocols",
                    "weight_clamp",
                    "relu",
                    "upsample",
                    "threshold_grid",
                    "threshold_split",
                    "gt_box_match",
                    "loc_threshold",
                    "fidelity",
                    "fidelity_target",
                )
            },
        },
    )
    write_curves(curves, PLOTS)
    best = max(
        ((v, b) for v in models[0].cams["test"].manifest["variants"] for b in BRANCHES),
        key=lambda vb: metrics[vb[0]][vb[1]]["maxboxacc_v2"],
    )
    print(
        f"evaluate: Top-1 Cls {metrics['top1_cls']:.2f}%; "
        f"best MaxBoxAccV2 {metrics[best[0]][best[1]]['maxboxacc_v2']:.2f}"
        f" ({best[0]}, {best[1]} branch) -> {REPORTS / 'metrics.json'}"
    )
    n_images = len(reps) * sum(len(gts[s].image_ids) for s in splits)
    seconds = time.perf_counter() - began
    print(
        f"evaluate: {seconds:.1f} s for {n_images} images ({1e3 * seconds / n_images:.1f} ms per image, "
        f"{len(gts['test'].image_ids)} test x {len(reps)} model(s)), every protocol, metric and interval included",
        flush=True,
    )
    finish()


if __name__ == "__main__":
    main()
