"""Stage `cams`: every CAM variant from both branches, raw and signed at feature resolution, in shards.

`python -m pipeline.stages.cams J K` writes, for fine-tuning replicate K of baseline J,
data/cams/baseline_J/replicate_K/<split>/
(manifest.json, index.csv, shard_*.npy; see pipeline/cams/store.py) for the test split, and the val split too
with `cams.splits: val+test`. Post-processing
(weight clamp, ReLU, upsampling, normalisation) belongs to evaluation, so changing it never reruns this.
With `distributed.nproc` > 1 the ranks share the batches and rank 0 writes the same bytes (pipeline/dist.py).
"""

import contextlib

from pipeline.stages.common import loader, loader_workers, model_arg, model_spec, start, throughput, user_errors


def main() -> None:
    params = start(distributed=True, seed=lambda p: model_arg(p).seed)
    rep = model_arg(params)
    from pipeline.cams.engine import gap_linear_heads, model_family, model_variants
    from pipeline.cams.generate import iter_cam_records
    from pipeline.cams.store import write_cams
    from pipeline.data.prepare import load_prepared
    from pipeline.dist import drain, finish, is_main, map_ordered
    from pipeline.io import atomic_dir
    from pipeline.models.dual import load_checkpoint
    from pipeline.train.loops import place, resolve_device

    c = params.cams
    with user_errors():
        device = resolve_device(params.device)
        model, _ = load_checkpoint(rep.finetuned_ckpt, expect=model_spec(params))
        place(model, device).eval()
        prepared = load_prepared(params.prepared_dir())
        targets = tuple(c.targets.split("+"))
        workers = loader_workers()  # decode and resize in worker processes: the same batches on any count
        with atomic_dir(rep.cams_dir) if is_main() else contextlib.nullcontext() as tmp:
            for split in c.splits.split("+"):
                ids = prepared.split(split).image_ids
                batches = loader(params, split, train=False, workers=workers, batch_size=c.batch_size)
                records = map_ordered(
                    batches,
                    ids,
                    lambda part, part_ids: iter_cam_records(model, part, part_ids, targets=targets, amp=c.amp),
                )
                if not is_main():  # distributed: this rank's batches go to rank 0, which writes
                    drain(records)
                    continue
                info = {
                    "backbone": params.backbone,
                    "dataset": params.dataset,
                    "split": split,
                    "family": model_family(model),
                    "gap_linear_heads": gap_linear_heads(model),
                    "target_layer": model.trunk.target_layer,
                    "input_size": params.model.input_size,
                    "device_type": device.type,
                    "amp": c.amp and device.type == "cuda",
                }
                with throughput(f"cams: {split}", len(ids) * len(targets), device):
                    manifest = write_cams(
                        tmp / split,
                        records,
                        targets=targets,
                        feature_size=model.feature_size,
                        dtype=c.dtype,
                        shard_size=c.shard_size,
                        info=info,
                        variants=[v.name for v in model_variants(model)],
                    )
                print(
                    f"cams: {split}: {manifest['images']} images x {len(manifest['variants'])} variants x "
                    f"{len(manifest['branches'])} branches x {len(targets)} target(s) at {manifest['feature_size']} "
                    f"in {len(manifest['shards'])} shard(s) -> {rep.cams_dir / split}"
                )
    finish()


if __name__ == "__main__":
    main()
