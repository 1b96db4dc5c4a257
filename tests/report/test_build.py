"""The report builder on a small synthetic run: files, numbers, figures, determinism."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from pipeline.cams.engine import BRANCHES, VARIANTS
from pipeline.cams.store import CamSet
from pipeline.data.prepare import GroundTruth
from pipeline.metrics.boxes import box_iou
from pipeline.metrics.evaluate import EvalOptions
from pipeline.report.build import build_report, figure_names, gallery_indices, gallery_panel, sign_table
from tests.metrics.reference_boxes import reference_boxes
from tests.report.test_tables import fake_metrics

N, S, H = 8, 32, 4


def fake_run(tmp_path, variants=VARIANTS, family=None):
    """CAMs whose softmax maps are negative on the object and sigmoid maps positive, GT boxes, images.
    `variants` / `family`: those of the CAM manifest (no family key when None, as in older CAM sets)."""
    rng = np.random.default_rng(3)
    maps = np.zeros((N, 1, 2, 2, len(variants), H, H), np.float32)
    boxes = []
    for i in range(N):
        y, x = divmod(i % 4, 2)
        blob = np.full((H, H), 0.1, np.float32)
        blob[2 * y : 2 * y + 2, 2 * x : 2 * x + 2] = 1.0 + rng.random((2, 2))
        maps[i, 0, 0, 1] = blob  # sigmoid branch: positive part only
        maps[i, 0, 1, 0] = -blob  # softmax branch: the same blob, all negative weights
        maps[i, 0, 0, 0] = 0.05  # and a faint positive background
        boxes.append(np.array([[16 * x, 16 * y, 16 * x + 15, 16 * y + 15]]))
    manifest = {
        "targets": ["gt"],
        "parts": ["pos", "neg"],
        "branches": list(BRANCHES),
        "variants": list(variants),
        "images": N,
        "feature_size": [H, H],
    }
    if family is not None:
        manifest["family"] = family
    index = [
        {
            "image_id": f"img{i}.png",
            "label": str(i % 2),
            "pred": str(i % 2 if i < 6 else 1 - i % 2),
            "logit_softmax": "0",
            "logit_sigmoid": "0",
        }
        for i in range(N)
    ]
    cams = CamSet(manifest, index, maps)
    gt = GroundTruth(
        image_ids=[r["image_id"] for r in index],
        labels=np.array([i % 2 for i in range(N)]),
        boxes=boxes,
        fg=None,
        ignore=None,
        size=S,
    )
    image_root = tmp_path / "images"
    image_root.mkdir()
    for i in range(N):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image_root / f"img{i}.png")
    plots = tmp_path / "plots" / "box_accuracy"
    plots.mkdir(parents=True)
    t = np.arange(0, 1, 0.001)
    for v in variants:
        for b in BRANCHES:
            rows = [f"{x:.3f},{100 * (1 - x):.4f},{50 * (1 - x):.4f},{10 * (1 - x):.4f},{40 * (1 - x):.4f}" for x in t]
            (plots / f"{v}_{b}.csv").write_text("threshold,iou30,iou50,iou70,largest_contour_iou50\n" + "\n".join(rows))
    return cams, gt, image_root


def test_gallery_indices_are_evenly_spaced_and_bounded():
    assert gallery_indices(300, 6) == [0, 60, 120, 179, 239, 299]
    assert gallery_indices(3, 6) == [0, 1, 2]
    with pytest.raises(ValueError, match="no images"):
        gallery_indices(0, 4)


def test_sign_table_sees_the_collapse(tmp_path):
    cams, gt, _ = fake_run(tmp_path)
    sign = sign_table(cams, gt)
    assert sign["cam"]["softmax"]["net_negative_inside"] == 100.0
    assert sign["cam"]["softmax"]["neg_share_inside"] > 90.0
    assert sign["cam"]["sigmoid"]["neg_share_inside"] == 0.0
    assert sign["cam"]["sigmoid"]["net_negative_inside"] == 0.0


def test_gallery_boxes_are_the_official_largest_contour_boxes(tmp_path):
    cams, gt, _ = fake_run(tmp_path)
    metrics = fake_metrics()
    opts = EvalOptions()
    from pipeline.cams.postprocess import postprocess
    from pipeline.metrics.evaluate import postprocess_options

    panel = gallery_panel(cams, gt, "cam", [0, 3, 5], metrics, opts)
    for branch in BRANCHES:
        pos = cams.select(part="pos", branch=branch, variant="cam")
        neg = cams.select(part="neg", branch=branch, variant="cam")
        for row, i in enumerate([0, 3, 5]):
            score = postprocess(pos[i : i + 1], neg[i : i + 1], postprocess_options("cam", branch, S, opts))[0]
            expected = reference_boxes(score, [0.4], multi_contour=False)[0][0][0]
            assert panel.pred_boxes[branch][row].tolist() == expected.tolist()
            iou = box_iou(expected[None], gt.boxes[i]).max()
            assert panel.captions[branch][row].startswith(f"IoU {iou:.2f}")
        assert panel.signed[branch].shape == (3, S, S)
    # the sigmoid blob sits on the box: IoU well above the softmax map's (ReLU leaves only the background)
    assert all(float(c.split()[1]) >= 0.5 for c in panel.captions["sigmoid"])
    assert panel.captions["softmax"][0].endswith("neg in box 100%")


# The evaluation options build_report prints (pipeline/stages/evaluate.py writes them to reports/evaluation.json).
EVALUATION = {
    "dataset": "synthbirds",
    "backbone": "resnet10t",
    "images": N,
    "head_init": "clone",
    "bn_mode": "eval",
    "postprocess": "clean",
    "weight_clamp": None,
    "relu": None,
    "upsample": None,
    "threshold_grid": "wsol",
    "threshold_split": "val",
    "gt_box_match": "max",
    "loc_threshold": 0.2,
    "fidelity": True,
    "fidelity_target": "pred",
}


def test_build_report_writes_everything_deterministically(tmp_path):
    cams, gt, image_root = fake_run(tmp_path)
    evaluation = dict(EVALUATION)
    cls = {"top1_cls_softmax": 75.0, "top1_cls_sigmoid": 80.0, "softmax_branch_unchanged": True}
    out = tmp_path / "reports"

    def build():
        return build_report(
            out_dir=out,
            metrics=fake_metrics(),
            evaluation=evaluation,
            classification=cls,
            plots_dir=tmp_path / "plots",
            cams=cams,
            gt=gt,
            image_root=image_root,
            class_names=["a", "b"],
            opts=EvalOptions(),
            gallery_images=4,
            dpi=60,
        )

    build()
    files = {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()
    }
    expected_figures = {f"figures/{name}" for key, name in figure_names(VARIANTS).items() if key != "pr_curves"}
    assert set(files) == {"README.md", "results.csv", "sign.json"} | expected_figures  # no masks -> no PR figure
    for name in expected_figures:
        with Image.open(out / name) as im:
            assert im.width > 200 and im.height > 150, name
    readme = (out / "README.md").read_text()
    for label in ("| resnet10t | CAM |", "| resnet10t | Grad-CAM++ |", "| resnet10t | LayerCAM |"):
        assert readme.count(label) == 3
    assert "`head_init: clone`" in readme and "figures/gallery_cam.png" in readme
    assert "figures/pr_curves.png" not in readme
    assert (out / "results.csv").read_text().splitlines()[0].startswith("backbone,variant,top1_cls,top1_loc_softmax")
    build()
    again = {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()
    }
    assert again == files


def test_missing_curve_file_is_named(tmp_path):
    cams, gt, image_root = fake_run(tmp_path)
    (tmp_path / "plots/box_accuracy/layercam_sigmoid.csv").unlink()
    with pytest.raises(FileNotFoundError, match="layercam_sigmoid.csv: box-accuracy curve missing"):
        build_report(
            out_dir=tmp_path / "r",
            metrics=fake_metrics(),
            evaluation={"backbone": "b", "dataset": "d"},
            classification={},
            plots_dir=tmp_path / "plots",
            cams=cams,
            gt=gt,
            image_root=image_root,
            class_names=["a", "b"],
            opts=EvalOptions(),
            gallery_images=2,
            dpi=60,
        )


def test_grad_family_report_shows_cam_as_not_applicable(tmp_path):
    """A gradient-family run has no CAM maps: the tables show CAM as n/a with the registry's footnote, the
    CSV row is empty, and there is no CAM gallery; the other variants are reported as usual."""
    grad = [v for v in VARIANTS if v != "cam"]
    cams, gt, image_root = fake_run(tmp_path, variants=grad, family="grad")
    metrics = fake_metrics()
    del metrics["cam"]
    evaluation = {
        "dataset": "synthbirds",
        "backbone": "vgg16",
        "images": N,
        "head_init": "clone",
        "bn_mode": "eval",
        "postprocess": "official",
        "weight_clamp": None,
        "relu": None,
        "upsample": None,
        "threshold_grid": "wsol",
        "threshold_split": "test",
        "gt_box_match": "first",
        "loc_threshold": 0.2,
    }
    cls = {"top1_cls_softmax": 75.0, "top1_cls_sigmoid": 80.0, "softmax_branch_unchanged": True}
    out = tmp_path / "reports"
    sign = build_report(
        out_dir=out,
        metrics=metrics,
        evaluation=evaluation,
        classification=cls,
        plots_dir=tmp_path / "plots",
        cams=cams,
        gt=gt,
        image_root=image_root,
        class_names=["a", "b"],
        opts=EvalOptions(postprocess="official"),
        gallery_images=2,
        dpi=50,
    )
    assert list(sign) == grad
    readme = (out / "README.md").read_text()
    cam_rows = [line for line in readme.splitlines() if line.startswith("| vgg16 | CAM |")]
    assert len(cam_rows) == 3 and all(set(r.split(" | ")[2:]) <= {"n/a", "n/a |"} for r in cam_rows), cam_rows
    assert cam_rows[0].count("n/a") == 1 + 3 * 3  # Top-1 Cls and the three localization metrics x 3 cells
    assert "n/a: CAM is defined for the CAM family only" in readme
    assert readme.count("| vgg16 | Grad-CAM |") == 3 and "gradient-family model" in readme
    assert not (out / "figures/gallery_cam.png").exists() and (out / "figures/gallery_gradcam.png").is_file()
    assert "gallery_cam.png" not in readme
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[1] == "vgg16,cam" + "," * (csv[0].count(",") - 1)
    assert csv[2].startswith("vgg16,gradcam,94.3333,")


# ----------------------------------------------------------------------------------------------------
# The verdict paragraph, one row per distinct map set, and the per-model tables folded away


def _interval_rows():
    """Interval rows where Grad-CAM and XGrad-CAM repeat CAM's numbers under `clean` (a GAP-linear head) but not
    under `official`, Grad-CAM++ is ahead on MaxBoxAccV2 and LayerCAM is detectably worse on PxAP."""
    from tests.report.test_tables import _row

    rows = []
    for v in ("cam", "gradcam", "gradcampp", "xgradcam", "layercam"):
        if v == "gradcampp":
            rows += [
                _row("clean", v, "maxboxacc_v2", 0.5, -0.25, 1.25, "no detectable difference"),
                _row("clean", v, "pxap", -0.1, -0.3, 0.1, "no detectable difference"),
            ]
        elif v == "layercam":
            rows += [
                _row("clean", v, "maxboxacc_v2", -0.5, -1.5, 0.5, "no detectable difference"),
                _row("clean", v, "pxap", -0.5, -0.75, -0.25, "sigmoid worse"),
            ]
        else:
            rows += [
                _row("clean", v, "maxboxacc_v2", -0.83, -1.72, 0.05, "no detectable difference"),
                _row("clean", v, "pxap", -0.57, -1.07, -0.08, "sigmoid worse"),
            ]
        official = 1.0 if v == "cam" else 0.25
        rows.append(
            _row("official", v, "maxboxacc_v2", official, official - 1, official + 1, "no detectable difference")
        )
    return rows


def test_identical_variants_share_one_row_per_distinct_map_set():
    from pipeline.report.build import headline_markdown, map_set_groups, merge_map_sets

    rows = _interval_rows()
    assert map_set_groups(rows, ["clean"]) == [["cam", "gradcam", "xgradcam"], ["gradcampp"], ["layercam"]]
    assert map_set_groups(rows, ["clean", "official"]) == [
        ["cam"],
        ["gradcam", "xgradcam"],
        ["gradcampp"],
        ["layercam"],
    ]
    merged = merge_map_sets(rows, ["clean"])
    assert [r["variant"] for r in merged] == ["CAM = Grad-CAM = XGrad-CAM"] * 2 + ["Grad-CAM++"] * 2 + ["LayerCAM"] * 2
    table = headline_markdown(rows, "clean").splitlines()
    # the branch columns are the mean over the models, and say so
    assert table[0] == (
        "| map set | metric | softmax, mean of 3 models | sigmoid, mean of 3 models | "
        "\u0394 [95% interval] | half-width | verdict |"
    )
    assert table[2] == (
        "| CAM = Grad-CAM = XGrad-CAM | MaxBoxAccV2 | 40.00 | 39.17 | \u22120.83 [\u22121.72, +0.05] | "
        "0.89 | no detectable difference |"
    )
    assert len(table) == 2 + 6  # three map sets x two metrics, not five variants x two


def test_verdict_paragraph_counts_the_map_sets_and_names_each_interval():
    from pipeline.report.build import verdict_paragraph

    text = verdict_paragraph(_interval_rows(), "clean")
    assert text.startswith(
        "**Verdict** (generated from `reports/intervals.json`): sigmoid \u2212 softmax under the "
        "headline protocol `clean`, the mean over 3 model(s): 3 baseline(s) x 1 fine-tuning "
        "replicate(s), with 95% intervals"
    )
    assert (
        "**MaxBoxAccV2**: the sigmoid branch is ahead on 1 of the 3 distinct map sets (1 of the 5 variants) and "
        "behind on 2 of the 3 distinct map sets (4 of the 5 variants): CAM = Grad-CAM = XGrad-CAM \u22120.83 "
        "[\u22121.72, +0.05]; Grad-CAM++ +0.50 [\u22120.25, +1.25]; LayerCAM \u22120.50 [\u22121.50, +0.50]. "
        "Every interval contains 0: no detectable difference."
    ) in text
    assert ("**PxAP**: the sigmoid branch is behind on all 3 distinct map sets (5 variants)") in text
    assert (
        "The interval excludes 0 for CAM = Grad-CAM = XGrad-CAM (sigmoid worse), LayerCAM (sigmoid worse); it "
        "contains 0 for the other 1 map set(s)."
    ) in text
    assert text.rstrip().endswith(
        "Over these 6 (map set, metric) pairs the sigmoid branch is detectably better in 0 and detectably worse in 2."
    )
    # lower is better for Avg Drop: a negative delta is the sigmoid branch ahead
    from tests.report.test_tables import _row

    drop = verdict_paragraph(
        [_row("clean", "cam", "avg_drop", -0.5, -0.75, -0.25, "sigmoid better")], "clean", metrics=("avg_drop",)
    )
    assert "**Avg Drop** (lower is better): the sigmoid branch is ahead on all 1 distinct map sets" in drop
    assert "detectably better in 1 and detectably worse in 0" in drop


def test_report_leads_with_the_verdict_and_folds_the_per_model_tables(tmp_path):
    cams, gt, image_root = fake_run(tmp_path)
    rows = _interval_rows()
    evaluation = {**EVALUATION, "baseline_level": "3 baselines"}
    cls = {"top1_cls_softmax": 75.0, "top1_cls_sigmoid": 80.0, "softmax_branch_unchanged": True}
    out = tmp_path / "reports"
    build_report(
        out_dir=out,
        metrics=fake_metrics(),
        evaluation=evaluation,
        classification=cls,
        plots_dir=tmp_path / "plots",
        cams=cams,
        gt=gt,
        image_root=image_root,
        class_names=["a", "b"],
        opts=EvalOptions(),
        gallery_images=2,
        dpi=50,
        intervals=rows,
    )
    readme = (out / "README.md").read_text()
    lines = readme.splitlines()
    assert lines[0] == "# Results: `resnet10t` on `synthbirds`" and lines[2].startswith("**Verdict**")
    # one row per distinct map set in the interval tables: CAM's numbers appear once, under all three names
    assert "| CAM = Grad-CAM = XGrad-CAM | MaxBoxAccV2 | " in readme and "| Grad-CAM | MaxBoxAccV2 | " not in readme
    assert "| CAM | `official` |" in readme and "| Grad-CAM = XGrad-CAM | `official` |" in readme
    # the per-model tables: labelled as one model's, inside a <details> block after the means
    one = "one model only: baseline 0, fine-tuning replicate 0"
    assert f"## Per-branch numbers ({one})" in readme and "not the means over the 3 models above" in readme
    start, end = readme.index("<details>"), readme.index("</details>")
    assert readme.index("softmax, mean of 3 models") < start
    assert "| resnet10t | CAM |" in readme[start:end] and "| resnet10t | CAM |" not in readme[end:]
    sign_section = readme[readme.index(f"## Sign diagnostics ({one})") :]
    assert "| CAM = Grad-CAM = Grad-CAM++ = XGrad-CAM = LayerCAM | " in sign_section  # the fake maps are all alike
    summary = (out / "summary.md").read_text()
    assert summary.startswith("**Verdict**") and "| map set | MaxBoxAccV2 | PxAP |" in summary


def test_sign_rows_merge_identical_variants():
    from pipeline.report.build import sign_merged_markdown

    zero = {"neg_share_inside": 0.0, "neg_share_outside": 0.0, "net_negative_inside": 0.0}
    some = {"neg_share_inside": 1.5, "neg_share_outside": 54.34, "net_negative_inside": 0.3}
    sign = {
        "cam": {"softmax": zero, "sigmoid": some},
        "gradcam": {"softmax": zero, "sigmoid": some},
        "gradcampp": {"softmax": zero, "sigmoid": zero},
        "layercam": {"softmax": zero, "sigmoid": zero},
    }
    table = sign_merged_markdown(sign).splitlines()
    assert table[2:] == [
        "| CAM = Grad-CAM | 0.00 | 0.00 | 0.00 | 1.50 | 54.34 | 0.30 |",
        "| Grad-CAM++ = LayerCAM | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |",
    ]
