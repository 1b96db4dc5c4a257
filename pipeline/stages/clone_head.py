"""Stage `clone_head`: add the sigmoid branch to the baseline: an exact copy of the softmax head
(`finetune.head_init: clone`, the paper's text) or a fresh init (`random`, the official code), seeded by the
replicate's seed (`python -m pipeline.stages.clone_head J K`: fine-tuning replicate K of baseline J, seed
finetune.seed + 1000 J + K)."""

from pipeline.stages.common import model_arg, model_spec, start, user_errors


def main() -> None:
    params = start(seed=lambda p: model_arg(p).seed)
    rep = model_arg(params)
    import torch

    from pipeline.models.dual import load_checkpoint, save_checkpoint

    with user_errors():
        model, _ = load_checkpoint(rep.baseline_ckpt, expect=model_spec(params))
        model.add_sigmoid_head(params.finetune.head_init, generator=torch.Generator().manual_seed(rep.seed))
        save_checkpoint(
            model, rep.dual_ckpt, stage="clone_head", head_init=params.finetune.head_init, finetune_seed=rep.seed
        )
    print(
        f"clone_head: model {rep.name} (seed {rep.seed}): sigmoid head initialised by "
        f"'{params.finetune.head_init}' -> {rep.dual_ckpt}"
    )


if __name__ == "__main__":
    main()
