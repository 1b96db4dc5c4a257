"""A synthetic workspace in which `python -m pipeline.stages.evaluate` runs exactly as under DVC.

`make_workspace(root, test_images, val_images, ...)` builds, under `root`, what the evaluate stage reads, in
the project's own formats and written with the project's own code:

    params.yaml, dvc.yaml      the repo's params.yaml with the overrides merged in (`pipeline.params.deep_merge`,
                               as `python -m pipeline.params apply` does) and the repo's dvc.yaml (the stage checks
                               that the keys it reads are declared for it there)
    data/params.json           `pipeline.params.resolved_json(validate(...))`, what the `validate` stage writes
    data/raw/synthbirds/       the wsolevaluation layout (`pipeline.data.wsol.write_split`): JPEG images (smooth
                               random colour fields with a coloured ellipse per object), one mask PNG per image
                               (the ellipses), boxes, a tiny train split (one image per class)
    data/prepared/synthbirds/  `pipeline.data.prepare.prepare_dataset` of that raw folder (tables, packed masks)
    data/models/baseline_<j>/replicate_<k>/finetuned.pt
                               `pipeline.models.dual.save_checkpoint` of a randomly initialised dual model
                               (timm's `test_resnet`, the smallest ResNet available offline): fidelity forwards
                               are cheap on the CPU; the softmax trunk and head are the same in every
                               fine-tuning replicate of a baseline, as after a real fine-tuning
    data/cams/baseline_<j>/replicate_<k>/{test,val}/
                               `pipeline.cams.store.write_cams`, float32 maps at `feature` x `feature`, both target
                               kinds (gt, pred), the CAM family's 5 variants, manifest `gap_linear_heads: true` (as
                               the cams stage writes for GAP-linear heads) and CAM = Grad-CAM = XGrad-CAM maps;
                               the maps are a Gaussian blob on the (first) GT object plus distractor blobs, a
                               negative part elsewhere; the softmax branch's maps (and predictions) depend on the
                               baseline only, the same in its every fine-tuning replicate (the frozen head); the
                               pred-target maps equal the gt-target maps where the prediction is right
    workspace.json             the configuration, written last: `make_workspace` reuses a workspace whose
                               workspace.json matches and rebuilds any other

Everything is a function of `seed`. Vectorised over images; JPEG and PNG files are written by a pool of
processes (fork), so 16,000 test images take minutes.

    python benchmarks/synthetic_workspace.py /tmp/evalscale/ws_1000 --test 1000 --val 400
    cd /tmp/evalscale/ws_1000 && PYTHONPATH=/path/to/repo python -m pipeline.stages.evaluate
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMAT = 1  # of workspace.json: bump when the generator's output changes
DATASET = "synthbirds"
NUM_CLASSES = 10
CHUNK = 1024  # images of CAM maps generated at once
PROTOCOLS = "official+official_symmetric"  # with the headline `clean`: all three protocols


def overrides(
    size: int,
    *,
    baselines: int = 3,
    finetunes: int = 1,
    bootstrap_resamples: int = 1000,
    fidelity: bool = True,
    device: str = "cpu",
    extra: dict | None = None,
) -> dict:
    """The params the workspace changes in the repo's params.yaml (merged as `python -m pipeline.params apply`
    merges an overrides file): SynthBirds evaluated at `size` px, `baselines` x `finetunes` models, every
    protocol, thresholds chosen on val, fidelity on."""
    from pipeline.params import deep_merge

    out = {
        "dataset": DATASET,
        "backbone": "test_resnet",
        "family": "cam",
        "device": device,
        "model": {"input_size": size},
        "preprocess": {"eval_size": size},
        "baseline": {"replicates": list(range(baselines)), "checkpoint": None},
        "finetune": {"replicates": list(range(finetunes))},
        "cams": {"splits": "val+test", "targets": "gt+pred", "dtype": "float32"},
        "evaluate": {
            "postprocess": "clean",
            "protocols": PROTOCOLS,
            "threshold_split": "val",
            "bootstrap_resamples": bootstrap_resamples,
            "fidelity": fidelity,
        },
        "distributed": {"nproc": 1},
    }
    return deep_merge(out, extra or {})


def write_params(root: Path, override: dict, nproc: int | None = None) -> dict:
    """params.yaml (the repo's with `override` merged), dvc.yaml (the repo's) and data/params.json (validated and
    resolved by pipeline.params) under `root`; returns the resolved params."""
    import yaml

    from pipeline.params import deep_merge, resolved, resolved_json, validate

    merged = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
    if nproc is not None:
        merged = deep_merge(merged, {"distributed": {"nproc": nproc}})
    params = validate(merged, f"params.yaml + {root}")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "params.json").write_text(resolved_json(params))  # after params.yaml: no staleness warning
    return resolved(params)


def set_nproc(root: Path, nproc: int) -> None:
    """Set `distributed.nproc` in the workspace's data/params.json (and params.yaml), nothing else."""
    import yaml

    root = Path(root)
    text = (root / "params.yaml").read_text()
    merged = yaml.safe_load(text)
    merged.setdefault("distributed", {})["nproc"] = nproc
    (root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    path = root / "data" / "params.json"
    values = json.loads(path.read_text())
    values["distributed"]["nproc"] = nproc
    path.write_text(json.dumps(values, sort_keys=True, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------------
# The dataset


def _objects(rng: np.random.Generator, n: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image 1 or 2 inclusive boxes (n, 2, 4) in pixels (the second absent where its x0 is -1) and a class
    colour index per image."""
    boxes = np.full((n, 2, 4), -1, dtype=np.int64)
    for slot in range(2):
        w = rng.uniform(0.25, 0.6, n) * px
        h = rng.uniform(0.25, 0.6, n) * px
        cx = rng.uniform(w / 2, px - w / 2)
        cy = rng.uniform(h / 2, px - h / 2)
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        b = np.clip(np.floor(b), 0, px - 1).astype(np.int64)
        keep = np.ones(n, dtype=bool) if slot == 0 else rng.random(n) < 0.15
        boxes[keep, slot] = b[keep]
    return boxes, rng.integers(0, 255, (n, 3))


def _draw(task: tuple) -> None:
    """Write one chunk of images and masks (a pool task): a smooth random colour field (4 x 4 upsampled) with a
    filled ellipse in each box, as JPEG, and the ellipses as a 0/255 PNG mask."""
    import cv2

    image_dir, mask_dir, px, seed, rows = task
    rng = np.random.default_rng(seed)
    for name, boxes, colour in rows:
        field = cv2.resize(rng.random((4, 4, 3), dtype=np.float32), (px, px), interpolation=cv2.INTER_CUBIC)
        image = np.clip(field * 255, 0, 255).astype(np.uint8)
        mask = np.zeros((px, px), dtype=np.uint8)
        for x0, y0, x1, y1 in boxes:
            centre, axes = ((x0 + x1) // 2, (y0 + y1) // 2), (max(1, (x1 - x0) // 2), max(1, (y1 - y0) // 2))
            cv2.ellipse(image, centre, axes, 0, 0, 360, tuple(int(c) for c in colour), -1)
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
        stem = name.removesuffix(".jpg")
        Path(image_dir, name).parent.mkdir(parents=True, exist_ok=True)
        Path(mask_dir, stem + ".png").parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(Path(image_dir, name)), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(Path(mask_dir, stem + ".png")), mask)


def _workers(workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def write_dataset(root: Path, counts: dict[str, int], px: int, seed: int, workers: int | None = None) -> dict:
    """The raw wsolevaluation layout under root/data/raw/synthbirds (images, masks, metadata, metadata_mask);
    returns {split: (image ids, labels, boxes (n, 2, 4))}."""
    from pipeline.data.wsol import SplitMetadata, write_split

    raw = root / "data" / "raw" / DATASET
    splits, tasks = {}, []
    for s, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, 17, s])
        ids = tuple(f"{split}/{i:06d}.jpg" for i in range(n))
        labels = np.arange(n) % NUM_CLASSES
        rng.shuffle(labels)
        boxes, colours = _objects(rng, n, px)
        splits[split] = (ids, labels, boxes)
        per_image = [[tuple(int(v) for v in b) for b in boxes[i] if b[0] >= 0] for i in range(n)]
        meta_labels = {i: int(label) for i, label in zip(ids, labels)}
        sizes = dict.fromkeys(ids, (px, px))
        write_split(
            raw / "metadata" / split,
            SplitMetadata(ids, meta_labels, sizes, boxes={i: tuple(b) for i, b in zip(ids, per_image)}),
        )
        masks = {i: ((i.removesuffix(".jpg") + ".png",), None) for i in ids}
        write_split(raw / "metadata_mask" / split, SplitMetadata(ids, meta_labels, sizes, masks=masks))
        step = 256
        for start in range(0, n, step):
            rows = [(ids[i], per_image[i], colours[i]) for i in range(start, min(n, start + step))]
            tasks.append((str(raw / "images"), str(raw / "masks"), px, [seed, 29, s, start], rows))
    n_workers = _workers(workers)
    if n_workers > 1 and len(tasks) > 1:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with multiprocessing.get_context(method).Pool(n_workers) as pool:
            for _ in pool.imap_unordered(_draw, tasks):
                pass
    else:
        for task in tasks:
            _draw(task)
    return splits


# ----------------------------------------------------------------------------------------------------
# CAM maps


def _blobs(rng: np.random.Generator, centres: np.ndarray, sizes: np.ndarray, k: int, f: int) -> np.ndarray:
    """(n, k, 2, f, f) raw maps: per image and distinct variant a pos part (a blob on the object, jittered, plus
    0-2 distractor blobs and a little noise, >= 0) and a neg part (a blob elsewhere, <= 0). `centres` (n, 2) and
    `sizes` (n, 2) are in feature cells."""
    n = len(centres)
    grid = np.arange(f, dtype=np.float32)

    def gauss(cx, cy, sx, sy):  # (...,) -> (..., f, f)
        gx = np.exp(-((grid - cx[..., None]) ** 2) / (2 * sx[..., None] ** 2))
        gy = np.exp(-((grid - cy[..., None]) ** 2) / (2 * sy[..., None] ** 2))
        return (gy[..., :, None] * gx[..., None, :]).astype(np.float32)

    shape = (n, k)
    jitter = rng.normal(0, 0.12, (n, k, 2)) * sizes[:, None, :]
    c = centres[:, None, :] + jitter
    s = np.maximum(0.6, sizes[:, None, :] * rng.uniform(0.25, 0.5, (n, k, 2)))
    pos = rng.uniform(0.6, 1.5, shape)[..., None, None] * gauss(c[..., 0], c[..., 1], s[..., 0], s[..., 1])
    for d in range(2):
        on = (rng.random(shape) < (0.7 if d == 0 else 0.3))[..., None, None]
        cx, cy = rng.uniform(0, f - 1, shape), rng.uniform(0, f - 1, shape)
        sx, sy = rng.uniform(0.6, f / 5, shape), rng.uniform(0.6, f / 5, shape)
        pos += on * rng.uniform(0.1, 0.8, shape)[..., None, None] * gauss(cx, cy, sx, sy)
    pos += 0.03 * rng.random((n, k, f, f), dtype=np.float32)
    cx, cy = rng.uniform(0, f - 1, shape), rng.uniform(0, f - 1, shape)
    sx, sy = rng.uniform(1.0, f / 4, shape), rng.uniform(1.0, f / 4, shape)
    neg = -rng.uniform(0.05, 0.5, shape)[..., None, None] * gauss(cx, cy, sx, sy)
    return np.stack([pos, neg], axis=2).astype(np.float32)


def cam_records(
    ids: tuple[str, ...],
    labels: np.ndarray,
    boxes: np.ndarray,
    preds: np.ndarray,
    *,
    px: int,
    feature: int,
    variants: list[str],
    sources: list[str],
    key: tuple,
    softmax_key: tuple,
) -> Iterator:
    """CamRecords (maps (2 targets, 2 parts, 2 branches, V, f, f)) of one split of one model, chunk by chunk. The
    softmax branch's maps come from `softmax_key` alone (the same in every fine-tuning replicate of a baseline),
    the sigmoid branch's from `key`; variants whose source is another variant (CAM's aliases) get its maps."""
    from pipeline.cams.store import CamRecord

    distinct = sorted(set(sources), key=variants.index)
    col = [distinct.index(s) for s in sources]
    first = boxes[:, 0].astype(np.float64)
    centres = np.stack([(first[:, 0] + first[:, 2] + 1) / 2, (first[:, 1] + first[:, 3] + 1) / 2], 1) / px * feature
    sizes = np.stack([first[:, 2] - first[:, 0] + 1, first[:, 3] - first[:, 1] + 1], 1) / px * feature
    sizes = sizes - 0.5  # cell centres
    centres = centres - 0.5
    for c, start in enumerate(range(0, len(ids), CHUNK)):
        sl = slice(start, min(len(ids), start + CHUNK))
        n = sl.stop - sl.start
        maps = np.empty((n, 2, 2, 2, len(variants), feature, feature), dtype=np.float32)
        for b, branch_key in enumerate((softmax_key, key)):
            rng = np.random.default_rng([*branch_key, c])
            gt = _blobs(rng, centres[sl], sizes[sl], len(distinct), feature)  # (n, k, 2, f, f)
            # pred target: the gt maps where the prediction is right, else a blob somewhere else
            wrong = rng.uniform(0.5, feature - 1.5, (n, 2))
            other = _blobs(rng, wrong, sizes[sl], len(distinct), feature)
            right = (preds[sl] == labels[sl])[:, None, None, None, None]
            pred = np.where(right, gt, other)
            for t, kind in enumerate((gt, pred)):
                maps[:, t, :, b] = kind[:, col].transpose(0, 2, 1, 3, 4)
        soft_rng = np.random.default_rng([*softmax_key, c, 1])
        sig_rng = np.random.default_rng([*key, c, 1])
        logit_softmax = soft_rng.normal(2.0, 1.0, n)
        logit_sigmoid = sig_rng.normal(0.5, 1.0, n)
        for i in range(n):
            g = sl.start + i
            yield CamRecord(ids[g], int(labels[g]), int(preds[g]), logit_softmax[i], logit_sigmoid[i], maps[i])


def _predictions(labels: np.ndarray, key: tuple, accuracy: float = 0.85) -> np.ndarray:
    rng = np.random.default_rng(key)
    wrong = rng.random(len(labels)) >= accuracy
    shift = rng.integers(1, NUM_CLASSES, len(labels))
    return np.where(wrong, (labels + shift) % NUM_CLASSES, labels)


# ----------------------------------------------------------------------------------------------------
# The workspace


def config(
    test_images: int,
    val_images: int,
    *,
    size: int,
    image_px: int,
    feature: int,
    baselines: int,
    finetunes: int,
    seed: int,
    override: dict,
) -> dict:
    return {
        "format": FORMAT,
        "test_images": test_images,
        "val_images": val_images,
        "train_images": NUM_CLASSES,
        "size": size,
        "image_px": image_px,
        "feature": feature,
        "baselines": baselines,
        "finetunes": finetunes,
        "seed": seed,
        "params": override,
    }


def make_workspace(
    root: str | Path,
    test_images: int,
    val_images: int,
    *,
    size: int = 224,
    image_px: int | None = None,
    feature: int = 14,
    baselines: int = 3,
    finetunes: int = 1,
    bootstrap_resamples: int = 1000,
    fidelity: bool = True,
    extra_params: dict | None = None,
    seed: int = 0,
    workers: int | None = None,
    reuse: bool = True,
    log=print,
) -> Path:
    """Build (or reuse, when its workspace.json matches) the workspace under `root`; return `root`.

    `size`: model.input_size and preprocess.eval_size; `image_px`: the images' side (default `size`);
    `feature`: the CAM maps' side; `baselines` x `finetunes` models; `extra_params`: further params overrides."""
    import torch

    from pipeline.cams import variants as registry
    from pipeline.cams.store import write_cams
    from pipeline.data.prepare import prepare_dataset
    from pipeline.models.dual import DualBranchNet, save_checkpoint
    from pipeline.params import StageParams
    from pipeline.stages.common import model_spec, replicates, stage_keys

    root = Path(root).resolve()
    image_px = image_px or size
    override = overrides(
        size,
        baselines=baselines,
        finetunes=finetunes,
        bootstrap_resamples=bootstrap_resamples,
        fidelity=fidelity,
        extra=extra_params,
    )
    cfg = config(
        test_images,
        val_images,
        size=size,
        image_px=image_px,
        feature=feature,
        baselines=baselines,
        finetunes=finetunes,
        seed=seed,
        override=override,
    )
    marker = root / "workspace.json"
    if reuse and marker.is_file():
        try:
            if json.loads(marker.read_text()) == json.loads(json.dumps(cfg)):
                write_params(root, override)  # fresh params (nproc 1) in a reused workspace
                log(f"workspace: reusing {root}")
                return root
        except ValueError:
            pass
    if root.exists():
        shutil.rmtree(root)
    began = time.perf_counter()
    values = write_params(root, override)
    params = StageParams(values, stage_keys("evaluate", root / "dvc.yaml") or [], "evaluate")

    counts = {"train": NUM_CLASSES, "val": val_images, "test": test_images}
    splits = write_dataset(root, counts, image_px, seed, workers)
    with contextlib.chdir(root):  # dataset.json's image_root is relative to the workspace, as under DVC
        prepare_dataset(
            Path("data/raw") / DATASET,
            Path("data/prepared") / DATASET,
            dataset=DATASET,
            num_classes=NUM_CLASSES,
            eval_size=size,
            progress=False,
            workers=workers,
        )
    log(f"workspace: dataset {counts} in {time.perf_counter() - began:.1f} s")

    names = [v.name for v in registry.for_family(registry.DEFAULT_FAMILY)]
    sources = [registry.map_source(v, True) for v in names]
    spec = model_spec(params)
    trunks: dict[int, dict] = {}
    for rep in replicates(params):
        ckpt, cams_dir = root / rep.finetuned_ckpt, root / rep.cams_dir  # the stage's own relative paths
        if rep.baseline not in trunks:  # the softmax side: one per baseline, the same in its every replicate
            torch.manual_seed(seed * 1000 + rep.baseline)
            trunks[rep.baseline] = DualBranchNet(spec).state_dict()
        model = DualBranchNet(spec)
        model.load_state_dict(trunks[rep.baseline])
        model.add_sigmoid_head("random", torch.Generator().manual_seed(seed * 1000 + 100 * rep.baseline + rep.index))
        model.eval()
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, ckpt, synthetic=True)
        for s, split in enumerate(("test", "val")):
            ids, labels, boxes = splits[split]
            preds = _predictions(labels, (seed, 7, s, rep.baseline))
            info = {
                "backbone": values["backbone"],
                "dataset": DATASET,
                "split": split,
                "family": registry.DEFAULT_FAMILY,
                "gap_linear_heads": True,
                "target_layer": model.trunk.target_layer,
                "input_size": size,
                "device_type": "cpu",
                "amp": False,
                "synthetic": True,
            }
            write_cams(
                cams_dir / split,
                cam_records(
                    ids,
                    labels,
                    boxes,
                    preds,
                    px=image_px,
                    feature=feature,
                    variants=names,
                    sources=sources,
                    key=(seed, 11, s, rep.baseline, rep.index),
                    softmax_key=(seed, 13, s, rep.baseline),
                ),
                targets=("gt", "pred"),
                feature_size=(feature, feature),
                dtype="float32",
                shard_size=int(values["cams"]["shard_size"]),
                info=info,
                variants=names,
            )
        log(f"workspace: model {rep.name} written ({time.perf_counter() - began:.1f} s)")
    marker.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    log(f"workspace: {root} ready in {time.perf_counter() - began:.1f} s")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--test", type=int, default=1000, help="test images")
    ap.add_argument("--val", type=int, default=None, help="val images (default: 2/5 of test, as SynthBirds)")
    ap.add_argument("--size", type=int, default=224, help="model.input_size = preprocess.eval_size")
    ap.add_argument("--feature", type=int, default=14, help="CAM maps' side")
    ap.add_argument("--baselines", type=int, default=3)
    ap.add_argument("--finetunes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--rebuild", action="store_true", help="rebuild even if a matching workspace exists")
    args = ap.parse_args(argv)
    make_workspace(
        args.root,
        args.test,
        args.val if args.val is not None else max(1, args.test * 2 // 5),
        size=args.size,
        feature=args.feature,
        baselines=args.baselines,
        finetunes=args.finetunes,
        seed=args.seed,
        workers=args.workers,
        reuse=not args.rebuild,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
