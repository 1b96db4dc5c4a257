"""Stage `baseline`: train the vanilla softmax classifier (cross-entropy, SGD as METHOD.md 2.2) from a random
or an ImageNet-pretrained trunk (`baseline.pretrained`), or import one from `baseline.checkpoint`. Writes
data/models/baseline.pt and DVCLive logs under reports/baseline/. A killed run, rerun, resumes after its last
complete epoch from data/resume/baseline/ (pipeline/train/resume.py)."""
from pipeline.stages.common import BASELINE_CKPT, live, loader, model_spec, start, throughput, user_errors


def main() -> None:
    params = start(distributed=True, seed=lambda p: p.baseline.seed)
    from pipeline.dist import finish, is_main, share_checkpoints
    from pipeline.models.convert import import_checkpoint
    from pipeline.models.dual import DualBranchNet, save_checkpoint
    from pipeline.models.pretrained import load_imagenet, local_file
    from pipeline.train.loops import predict, resolve_device, train_baseline
    from pipeline.train.resume import for_stage

    b = params.baseline
    with user_errors():
        device = resolve_device(params.device)
        checkpoints = None if b.checkpoint else share_checkpoints(for_stage("baseline", params, device))
        spec = model_spec(params)
        test_loader = loader(params, "test", train=False)
        val_loader = loader(params, "val", train=False) if params.data.val_per_class else None
        with live("reports/baseline") as lv:
            if b.checkpoint:  # this project's checkpoint, or an official / wsolevaluation one (a path or URL)
                model, info = import_checkpoint(local_file(b.checkpoint), spec)
                print(f"baseline: {info}", flush=True)
                lv.summary["imported"] = 1
            else:
                model = DualBranchNet(spec)
                if b.pretrained == "imagenet":
                    print(f"baseline: {load_imagenet(model, b.pretrained_file)}", flush=True)

                def on_epoch(epoch: int, metrics: dict) -> None:
                    if val_loader is not None:
                        metrics["val/acc"] = predict(model, val_loader, device, desc="val").top1()
                    for name, value in metrics.items():
                        lv.log_metric(name, value)
                    lv.next_step()
                    print(f"baseline epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                          flush=True)

                checkpoints.replay(lv)  # the resumed epochs' metrics, as first logged
                train_loader = loader(params, "train", train=True, workers=b.workers, seed=b.seed)
                with throughput("baseline", len(train_loader.dataset) * b.epochs, device):
                    train_baseline(model, train_loader, device, epochs=b.epochs, lr=params.baseline_lr,
                                   lr_classifier_ratio=b.lr_classifier_ratio, lr_decay_every=b.lr_decay_every,
                                   momentum=b.momentum, nesterov=b.nesterov,
                                   weight_decay=params.model.baseline_weight_decay,
                                   label_smoothing=b.label_smoothing, on_epoch=on_epoch if is_main() else None,
                                   checkpoints=checkpoints)
            model.to(device)
            top1 = predict(model, test_loader, device, desc="test").top1()
            lv.summary["test"] = {"top1_cls": top1}
        model.cpu()
        if not is_main():  # distributed: rank 0 alone writes; the others wait for it
            return finish()
        save_checkpoint(model, BASELINE_CKPT, stage="baseline", test_top1_cls=round(top1, 4))
        if checkpoints is not None:
            checkpoints.clear()
    print(f"baseline: {params.backbone} Top-1 Cls on test = {top1:.2f}% -> {BASELINE_CKPT}")
    finish()


if __name__ == "__main__":
    main()
