"""Stage `report`: the paper-style results table, sign diagnostics and figures, for people and for PRs.

Reads reports/metrics.json, evaluation.json, classification.json and the curve CSVs of the evaluate stage,
the test CAMs (streamed from their shards, block by block) and the prepared ground truth, and writes
  reports/README.md        tables (softmax | sigmoid | delta per metric), the options used, figures
  reports/results.csv      the same numbers, one row per backbone x variant
  reports/summary.md       the answer: the headline deltas with their intervals (rendered into README.md)
  reports/sign.json        sign diagnostics of the raw maps (DVC metrics)
  reports/figures/*.png    threshold curves, PR curves, sign bars, one signed-map gallery per variant
"""

import json
import shutil

from pipeline.stages.common import REPORTS, eval_options, replicate, start, user_errors


def main() -> None:
    params = start()
    from pipeline.cams.store import open_cams
    from pipeline.data.prepare import load_ground_truth, load_prepared
    from pipeline.report.build import build_report

    with user_errors():
        reads = {}
        first = replicate(params)  # the first fine-tuning replicate (every replicate: issue 13)
        for name in ("metrics", "evaluation", "classification"):
            path = first.classification if name == "classification" else REPORTS / f"{name}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run the earlier stages first (dvc repro)")
            reads[name] = json.loads(path.read_text())
        intervals_file = REPORTS / "intervals.json"
        if not intervals_file.is_file():
            raise FileNotFoundError(f"{intervals_file}: missing; run the evaluate stage first (dvc repro)")
        reads["intervals"] = json.loads(intervals_file.read_text())["rows"]
        prepared = load_prepared(params.prepared_dir(), dataset=params.dataset, num_classes=params.num_classes)
        shutil.rmtree(REPORTS / "figures", ignore_errors=True)
        sign = build_report(
            out_dir=REPORTS,
            plots_dir=REPORTS / "plots",
            cams=open_cams(first.cams_dir / "test"),  # streamed: one block of maps in memory at a time
            gt=load_ground_truth(params.prepared_dir(), "test"),
            image_root=prepared.image_root,
            class_names=prepared.info["class_names"],
            opts=eval_options(params),
            gallery_images=params.report.gallery_images,
            dpi=params.report.dpi,
            **reads,
        )
    from pipeline.cams.variants import label

    first = next(iter(sign))  # the run's first variant (CAM for the CAM family)
    cam = sign[first]
    print(
        f"report: negative share of the {label(first)} inside the GT box: softmax "
        f"{cam['softmax']['neg_share_inside']:.1f}%, sigmoid {cam['sigmoid']['neg_share_inside']:.1f}% "
        f"-> {REPORTS / 'README.md'}"
    )


if __name__ == "__main__":
    main()
