"""Stage `clone_head`: add the sigmoid branch to the baseline: an exact copy of the softmax head
(`finetune.head_init: clone`, the paper's text) or a fresh init (`random`, the official code), seeded by the
replicate's seed (`python -m pipeline.stages.clone_head K`: finetune.seed + K)."""
from pipeline.stages.common import (BASELINE_CKPT, check_params, model_spec, replicate, replicate_arg, start,
                                    user_errors)


def main() -> None:
    params = start(seed=lambda p: replicate(p, replicate_arg()).seed)
    rep = replicate(params, replicate_arg())
    import torch

    from pipeline.models.dual import load_checkpoint, save_checkpoint

    with user_errors():
        model, _ = load_checkpoint(BASELINE_CKPT, expect=model_spec(params))
        model.add_sigmoid_head(params.finetune.head_init, generator=torch.Generator().manual_seed(rep.seed))
        save_checkpoint(model, rep.dual_ckpt, stage="clone_head", head_init=params.finetune.head_init,
                        finetune_seed=rep.seed)
    check_params()
    print(f"clone_head: replicate {rep.index} (seed {rep.seed}): sigmoid head initialised by "
          f"'{params.finetune.head_init}' -> {rep.dual_ckpt}")


if __name__ == "__main__":
    main()
