"""Stage `cams`: every CAM variant from both branches, raw and signed at feature resolution, in shards.

Writes data/cams/ (manifest.json, index.csv, shard_*.npy; see pipeline/cams/store.py). Post-processing
(weight clamp, ReLU, upsampling, normalisation) belongs to evaluation, so changing it never reruns this.
"""
from pathlib import Path

from pipeline.stages.common import FINETUNED_CKPT, loader, model_spec, start, user_errors

CAMS_DIR = Path("data/cams")


def main() -> None:
    params = start("cams")
    from pipeline.cams.generate import iter_cam_records
    from pipeline.cams.store import write_cams
    from pipeline.data.prepare import load_prepared
    from pipeline.models.dual import load_checkpoint
    from pipeline.train.loops import resolve_device

    c = params.cams
    with user_errors():
        device = resolve_device(params.device)
        model, _ = load_checkpoint(FINETUNED_CKPT, expect=model_spec(params))
        model.to(device).eval()
        ids = load_prepared(params.prepared_dir()).split(c.split).image_ids
        records = iter_cam_records(model, loader(params, c.split, train=False, batch_size=c.batch_size), ids,
                                   targets=tuple(c.targets.split("+")), amp=c.amp)
        info = {"backbone": params.backbone, "dataset": params.dataset, "split": c.split,
                "target_layer": model.trunk.target_layer, "input_size": params.model.input_size,
                "device_type": device.type, "amp": c.amp and device.type == "cuda"}
        manifest = write_cams(CAMS_DIR, records, targets=tuple(c.targets.split("+")), feature_size=model.feature_size,
                              dtype=c.dtype, shard_size=c.shard_size, info=info)
    print(f"cams: {manifest['images']} images x {len(manifest['variants'])} variants x "
          f"{len(manifest['branches'])} branches at {manifest['feature_size']} in {len(manifest['shards'])} "
          f"shard(s) -> {CAMS_DIR}")


if __name__ == "__main__":
    main()
