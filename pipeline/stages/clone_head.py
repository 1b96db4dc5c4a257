"""Stage `clone_head`: add the sigmoid branch to the baseline: an exact copy of the softmax head
(`finetune.head_init: clone`, the paper's text) or a fresh init (`random`, the official code)."""
from pipeline.stages.common import BASELINE_CKPT, DUAL_CKPT, check_params, model_spec, start, user_errors


def main() -> None:
    params = start()
    import torch

    from pipeline.models.dual import load_checkpoint, save_checkpoint

    with user_errors():
        model, _ = load_checkpoint(BASELINE_CKPT, expect=model_spec(params))
        model.add_sigmoid_head(params.finetune.head_init, generator=torch.Generator().manual_seed(params.seed))
        save_checkpoint(model, DUAL_CKPT, stage="clone_head", head_init=params.finetune.head_init)
    check_params()
    print(f"clone_head: sigmoid head initialised by '{params.finetune.head_init}' -> {DUAL_CKPT}")


if __name__ == "__main__":
    main()
