"""Stage `preprocess`: check every raw image and write GT tables and the image index (a few files)."""

from pipeline.data.prepare import prepare_dataset
from pipeline.stages.common import start, user_errors


def main() -> None:
    params = start()
    with user_errors():
        summary = prepare_dataset(
            params.raw_dir(),
            params.prepared_dir(),
            dataset=params.dataset,
            num_classes=params.num_classes,
            eval_size=params.eval_size,
        )
    print(
        f"preprocess: {summary['counts']} images, {summary['boxes']} boxes, eval grid {params.eval_size}px, "
        f"masks for {summary['mask_splits'] or 'no split'} -> {params.prepared_dir()}"
    )


if __name__ == "__main__":
    main()
