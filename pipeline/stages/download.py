"""Stage `download`: write the raw dataset in the wsolevaluation layout under download.root/<dataset>.

SynthBirds is generated (deterministically from the seed); real datasets arrive with their fetchers.
"""
from pipeline.data.synthbirds import SynthBirdsSpec, generate
from pipeline.stages.common import start, user_errors


def main() -> None:
    params = start()
    d = params.data
    spec = SynthBirdsSpec(num_classes=d.num_classes, image_size=d.image_size, train_per_class=d.train_per_class,
                          val_per_class=d.val_per_class, test_per_class=d.test_per_class, seed=params.seed,
                          min_distractors=d.min_distractors, max_distractors=d.max_distractors,
                          confuser_prob=d.confuser_prob, supersample=d.supersample)
    with user_errors():
        summary = generate(spec, params.raw_dir(), workers=params.download.workers)
    print(f"download: {params.dataset} -> {params.raw_dir()}: {summary}")


if __name__ == "__main__":
    main()
