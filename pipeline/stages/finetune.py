"""Stage `finetune`: train only the sigmoid head with class-balanced BCE (pos_weight K-1).

Checks that the softmax branch is unchanged (the trunk and softmax head are frozen, so Top-1 Cls cannot
change) and fails if it is not: the sha256 of every parameter and buffer outside the sigmoid head is the same
before and after, and so are the softmax logits of the first test batch, bit for bit
(`pipeline.models.dual.FrozenCheck`). The test set is predicted once, after training, with the sigmoid head as
it was before training as an extra head on the same trunk output (its Top-1 Cls is `top1_cls_sigmoid_before`).
`python -m pipeline.stages.finetune J K` trains replicate K of baseline J with seed finetune.seed + 1000 J + K
and writes data/models/baseline_J/replicate_K/finetuned.pt, DVCLive logs and Top-1 Cls of both branches
(classification.json) under reports/finetune/baseline_J/replicate_K/ (paths: pipeline/stages/common.py
`replicate`). A killed run, rerun, resumes after
its last complete epoch from data/resume/finetune/ (pipeline/train/resume.py).
"""

import copy
import sys

from pipeline.io import write_json
from pipeline.stages.common import (
    epochs_to_run,
    live,
    loader,
    model_arg,
    model_spec,
    resume_params,
    start,
    throughput,
    user_errors,
)


def main() -> None:
    params = start(distributed=True, seed=lambda p: model_arg(p).seed, pin_cpu=True)
    rep = model_arg(params)
    from pipeline.dist import finish, is_main, share_checkpoints
    from pipeline.models.dual import FrozenCheck, load_checkpoint, save_checkpoint
    from pipeline.train.loops import finetune_sigmoid_head, place, predict, resolve_device, to_device
    from pipeline.train.resume import for_stage

    f = params.finetune
    with user_errors():
        device = resolve_device(params.device)
        # the key hashes the replicate's dual.pt, which records its seed: replicates never share a checkpoint
        checkpoints = share_checkpoints(
            for_stage("finetune", resume_params(params, "finetune"), device, inputs=[rep.dual_ckpt])
        )
        model, extra = load_checkpoint(rep.dual_ckpt, expect=model_spec(params))
        place(model, device)  # the layout training uses: "before" and "after" logits come from one layout
        test_loader = loader(params, "test", train=False)
        frozen = FrozenCheck(model, to_device(next(iter(test_loader))[0], device))  # the first test batch
        initial_head = copy.deepcopy(model.head2)
        with live(str(rep.live_dir)) as lv:

            def on_epoch(epoch: int, metrics: dict) -> None:
                for name, value in metrics.items():
                    lv.log_metric(name, value)
                lv.next_step()
                print(f"finetune epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)

            checkpoints.replay(lv)  # the resumed epochs' metrics, as first logged
            train_loader = loader(
                params, "train", train=True, workers=params.runtime("finetune.workers"), seed=rep.seed
            )
            with throughput("finetune", len(train_loader.dataset) * epochs_to_run(f.epochs, checkpoints), device):
                trained = finetune_sigmoid_head(
                    model,
                    train_loader,
                    device,
                    epochs=f.epochs,
                    lr=params.finetune_lr,
                    lr_decay_every=f.lr_decay_every,
                    momentum=f.momentum,
                    nesterov=f.nesterov,
                    weight_decay=params.model.finetune_weight_decay,
                    bn_mode=f.bn_mode,
                    pos_weight=f.pos_weight,
                    on_epoch=on_epoch if is_main() else None,
                    checkpoints=checkpoints,
                )
            after = predict(model, test_loader, device, desc="test", extra_heads={"before": initial_head})
            change = frozen.change(model)
            result = {
                "top1_cls_softmax": after.top1(1),
                "top1_cls_sigmoid": after.top1(2),
                "top1_cls_sigmoid_before": after.top1("before"),
                "softmax_branch_unchanged": change is None,
            }
            lv.summary["test"] = {k: float(v) for k, v in result.items()}
        if change is not None:
            print(
                f"error: fine-tuning changed the softmax branch: {change}; the trunk and softmax head must stay frozen",
                file=sys.stderr,
            )
            raise SystemExit(1)
        if not is_main():  # distributed: rank 0 alone writes; the others wait for it
            return finish()
        write_json(
            rep.classification,
            {
                **result,
                "backbone": params.backbone,
                "family": params.family,
                "dataset": params.dataset,
                "baseline_replicate": rep.baseline,
                "replicate": rep.index,
                "finetune_seed": rep.seed,
                "head_init": f.head_init,
                "bn_mode": f.bn_mode,
                "trained_parameters": trained,
                "num_test_images": len(after.labels),
            },
        )
        model.cpu()
        save_checkpoint(
            model,
            rep.finetuned_ckpt,
            stage="finetune",
            head_init=f.head_init,
            bn_mode=f.bn_mode,
            finetune_seed=rep.seed,
        )
        checkpoints.clear()
    print(
        f"finetune: Top-1 Cls softmax {result['top1_cls_softmax']:.2f}% "
        f"(unchanged: frozen state and logits bit-identical), "
        f"sigmoid {result['top1_cls_sigmoid']:.2f}% -> {rep.finetuned_ckpt}"
    )
    finish()


if __name__ == "__main__":
    main()
