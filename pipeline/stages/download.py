"""Stage `download`: write the raw dataset in the wsolevaluation layout under download.root/<dataset>.

SynthBirds is generated (deterministically from the seed). Real datasets (cub, cars, ilsvrc, openimages;
pipeline/data/real/) are downloaded to, or checked in, download.archive_dir/<dataset> (or
datasets.<dataset>.source_dir), a folder outside every DVC output so that an interrupted download resumes on
the next run; their metadata is then built from the dataset's own annotation files.
"""

from pipeline.data.synthbirds import SynthBirdsSpec, generate
from pipeline.stages.common import start, user_errors


def main() -> None:
    params = start()
    d = params.data
    if params.dataset != "synthbirds":
        from pipeline.data.real import build_dataset

        with user_errors():
            summary = build_dataset(
                params.dataset, d, params.raw_dir(), archive_dir=params.runtime("download.archive_dir")
            )
        print(f"download: {params.dataset} -> {params.raw_dir()}: {summary['counts']} images")
        return
    spec = SynthBirdsSpec(
        num_classes=d.num_classes,
        image_size=d.image_size,
        train_per_class=d.train_per_class,
        val_per_class=d.val_per_class,
        test_per_class=d.test_per_class,
        seed=params.seed,
        min_distractors=d.min_distractors,
        max_distractors=d.max_distractors,
        confuser_prob=d.confuser_prob,
        supersample=d.supersample,
    )
    with user_errors():
        summary = generate(spec, params.raw_dir(), workers=params.runtime("download.workers"))
    print(f"download: {params.dataset} -> {params.raw_dir()}: {summary}")


if __name__ == "__main__":
    main()
