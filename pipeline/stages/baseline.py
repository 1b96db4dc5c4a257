"""Stage `baseline`: train the vanilla softmax classifier (cross-entropy, SGD as METHOD.md 2.2) from a random
or an ImageNet-pretrained trunk (`baseline.pretrained`), or import one from `baseline.checkpoint`. Writes
data/models/baseline_J/baseline.pt and DVCLive logs under reports/baseline/baseline_J/ for baseline replicate J
(`python -m pipeline.stages.baseline J`, seed baseline.seed + J; paths: pipeline/stages/common.py `baseline`).
A killed run, rerun, resumes after its last complete epoch from data/resume/baseline/ (pipeline/train/resume.py).

`baseline.checkpoint` may name this stage's own output, data/models/baseline_0/baseline.pt (to re-import a trained
model under other params): DVC deletes a stage's outputs before running it, so that file is then read
from the DVC cache, by the md5 dvc.lock recorded for it. An import writes the same outputs as training:
the checkpoint, and DVCLive's metrics and plots (one step: the imported model's test Top-1 Cls).
"""

from pathlib import Path

from pipeline.stages.common import (
    Baseline,
    baseline_arg,
    epochs_to_run,
    live,
    loader,
    model_spec,
    resume_params,
    start,
    throughput,
    user_errors,
)


def checkpoint_file(checkpoint: str, base: Baseline) -> Path:
    """The local file of `baseline.checkpoint`: a path, a URL fetched into the weights cache, or, for this
    stage's own output that DVC removed before the run, its copy in the DVC cache."""
    from pipeline.models.pretrained import local_file

    path = local_file(checkpoint)
    if path.exists() or path.resolve() != base.ckpt.resolve():
        return path
    cached = _dvc_cached(base.ckpt, base.stage)
    if cached is None:
        raise FileNotFoundError(
            f"baseline.checkpoint: {checkpoint} is this stage's own output, which DVC removes "
            f"before running the stage, and dvc.lock records no cached copy of it; copy the "
            f"file elsewhere (e.g. data/imports/baseline.pt) and point baseline.checkpoint there"
        )
    print(f"baseline: {checkpoint} (removed by DVC before this run) read from the DVC cache: {cached}", flush=True)
    return cached


def _dvc_cached(out: Path, stage: str) -> Path | None:
    """The DVC cache file of output `out` of this stage as dvc.lock records it (None when there is none)."""
    import yaml

    lock = Path("dvc.lock")
    if not lock.is_file():
        return None
    outs = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {}).get("outs", [])
    md5 = next((o.get("md5") for o in outs if Path(o.get("path", "")) == out), None)
    if not md5:
        return None
    from dvc.repo import Repo

    with Repo(".") as repo:
        path = Path(repo.cache.local.oid_to_path(md5))
    return path if path.is_file() else None


def main() -> None:
    params = start(distributed=True, seed=lambda p: baseline_arg(p).seed, pin_cpu=True)
    base = baseline_arg(params)
    from pipeline.dist import finish, is_main, share_checkpoints
    from pipeline.models.convert import import_checkpoint
    from pipeline.models.dual import DualBranchNet, save_checkpoint
    from pipeline.models.pretrained import load_imagenet
    from pipeline.train.loops import place, predict, resolve_device, train_baseline
    from pipeline.train.resume import for_stage

    b = params.baseline
    with user_errors():
        device = resolve_device(params.device)
        resume = resume_params(params, "baseline")
        checkpoints = (
            None
            if b.checkpoint
            else share_checkpoints(for_stage("baseline", resume, device, extra={"seed": base.seed}))
        )
        spec = model_spec(params)
        test_loader = loader(params, "test", train=False)
        val_loader = loader(params, "val", train=False) if params.data.val_per_class else None
        with live(str(base.live_dir)) as lv:
            if b.checkpoint:  # this project's checkpoint, or an official / wsolevaluation one (a path or URL)
                model, info = import_checkpoint(checkpoint_file(b.checkpoint, base), spec)
                print(f"baseline: {info}", flush=True)
                lv.summary["imported"] = 1
            else:
                model = DualBranchNet(spec)
                if b.pretrained == "imagenet":
                    print(f"baseline: {load_imagenet(model, b.pretrained_file)}", flush=True)

                def on_epoch(epoch: int, metrics: dict) -> None:
                    if val_loader is not None and (epoch % b.val_every == 0 or epoch == b.epochs):
                        metrics["val/acc"] = predict(model, val_loader, device, desc="val").top1()
                    for name, value in metrics.items():
                        lv.log_metric(name, value)
                    lv.next_step()
                    print(
                        f"baseline epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True
                    )

                checkpoints.replay(lv)  # the resumed epochs' metrics, as first logged
                train_loader = loader(params, "train", train=True, workers=b.workers, seed=base.seed)
                with throughput("baseline", len(train_loader.dataset) * epochs_to_run(b.epochs, checkpoints), device):
                    train_baseline(
                        model,
                        train_loader,
                        device,
                        epochs=b.epochs,
                        lr=params.baseline_lr,
                        lr_classifier_ratio=b.lr_classifier_ratio,
                        lr_decay_every=b.lr_decay_every,
                        momentum=b.momentum,
                        nesterov=b.nesterov,
                        weight_decay=params.model.baseline_weight_decay,
                        label_smoothing=b.label_smoothing,
                        on_epoch=on_epoch if is_main() else None,
                        checkpoints=checkpoints,
                    )
            place(model, device)
            top1 = predict(model, test_loader, device, desc="test").top1()
            lv.summary["test"] = {"top1_cls": top1}
            if b.checkpoint:  # the declared plots output exists for an import too: one step
                lv.log_metric("test/top1_cls", top1)
                lv.next_step()
        model.cpu()
        if not is_main():  # distributed: rank 0 alone writes; the others wait for it
            return finish()
        save_checkpoint(model, base.ckpt, stage="baseline", test_top1_cls=round(top1, 4), baseline_seed=base.seed)
        if checkpoints is not None:
            checkpoints.clear()
    print(f"baseline {base.index} (seed {base.seed}): {params.backbone} Top-1 Cls on test = {top1:.2f}% -> {base.ckpt}")
    finish()


if __name__ == "__main__":
    main()
