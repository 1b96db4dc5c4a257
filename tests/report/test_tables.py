"""The paper-style results table: values, deltas, bold rules, CSV and the options text."""

import io

import pandas as pd
import pytest

from pipeline.cams.engine import BRANCHES, VARIANTS
from pipeline.report.tables import (
    METRICS,
    TABLES,
    options_markdown,
    results_frame,
    results_markdown,
    sign_markdown,
    write_csv_text,
)


def fake_metrics(offset: float = 0.0) -> dict:
    metrics = {"top1_cls": 94.333333}
    for i, v in enumerate(VARIANTS):
        metrics[v] = {}
        for j, b in enumerate(BRANCHES):
            metrics[v][b] = {m.key: 10.0 * i + 1.5 * j + k + offset for k, m in enumerate(METRICS)}
            metrics[v][b]["best_threshold_iou50"] = 0.4
    return metrics


def test_every_metric_appears_in_exactly_one_markdown_table():
    keys = [k for _, ks in TABLES for k in ks]
    assert sorted(keys) == sorted(m.key for m in METRICS)


def test_frame_has_softmax_sigmoid_and_delta():
    frame = results_frame(fake_metrics(), "resnet50")
    assert list(frame["variant"]) == list(VARIANTS)
    assert (frame["backbone"] == "resnet50").all()
    row = frame.iloc[2]  # gradcampp: softmax = 20 + k, sigmoid = 21.5 + k
    assert row["maxboxacc_v2_softmax"] == 22.0
    assert row["maxboxacc_v2_sigmoid"] == 23.5
    assert row["maxboxacc_v2_delta"] == pytest.approx(1.5)
    assert row["top1_cls"] == pytest.approx(94.333333)


def test_missing_optional_metrics_are_left_out():
    metrics = fake_metrics()
    for v in VARIANTS:
        for b in BRANCHES:
            del metrics[v][b]["pxap"]
    frame = results_frame(metrics, "x")
    assert "pxap_softmax" not in frame.columns
    assert "PxAP" not in results_markdown(frame)


def test_missing_variant_is_named():
    metrics = fake_metrics()
    del metrics["layercam"]
    with pytest.raises(ValueError, match="missing: layercam"):
        results_frame(metrics, "x")


def test_markdown_bold_marks_the_better_branch_and_lower_is_better_for_avg_drop():
    md = results_markdown(results_frame(fake_metrics(), "vgg16"))
    cam_rows = [line for line in md.splitlines() if line.startswith("| vgg16 | CAM |")]
    assert len(cam_rows) == len(TABLES)
    # Localization: Top-1 Loc softmax 0.00, sigmoid 1.50 -> sigmoid bold, delta +1.50
    assert "| vgg16 | CAM | 94.33 | 0.00 | **1.50** | +1.50 |" in cam_rows[0]
    # Avg Drop (k = 8): softmax 8.00, sigmoid 9.50 -> lower is better -> softmax bold
    assert "| **8.00** | 9.50 | +1.50 |" in cam_rows[2]
    assert md.count("| vgg16 |") == len(VARIANTS) * len(TABLES)


def test_negative_delta_uses_a_minus_sign_and_zero_has_none():
    metrics = fake_metrics()
    metrics["cam"]["sigmoid"]["top1_loc"] = -2.25
    metrics["cam"]["sigmoid"]["gt_known_loc"] = metrics["cam"]["softmax"]["gt_known_loc"]
    md = results_markdown(results_frame(metrics, "b"))
    assert "\u22122.25" in md
    assert "| 1.00 | 1.00 | 0.00 |" in md


def test_csv_round_trips_with_fixed_precision():
    frame = results_frame(fake_metrics(0.123456), "r")
    text = write_csv_text(frame)
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == list(frame.columns)
    assert back["top1_loc_softmax"][0] == pytest.approx(0.1235)
    assert write_csv_text(frame) == text


def test_sign_markdown_lists_both_branches():
    sign = {
        v: {b: {"neg_share_inside": 1.0, "neg_share_outside": 2.0, "net_negative_inside": 3.0} for b in BRANCHES}
        for v in VARIANTS
    }
    md = sign_markdown(sign)
    assert md.splitlines()[2] == "| CAM | 1.00 | 2.00 | 3.00 | 1.00 | 2.00 | 3.00 |"


def test_options_name_every_official_choice():
    evaluation = {
        "dataset": "synthbirds",
        "backbone": "vgg16",
        "images": 300,
        "head_init": "random",
        "bn_mode": "batch_stats",
        "postprocess": "official",
        "weight_clamp": None,
        "relu": None,
        "upsample": None,
        "threshold_grid": "official",
        "threshold_split": "test",
        "gt_box_match": "first",
        "loc_threshold": 0.2,
        "fidelity": True,
        "fidelity_target": "pred",
    }
    cls = {"top1_cls_softmax": 90.0, "top1_cls_sigmoid": 91.0, "softmax_branch_unchanged": True}
    text = options_markdown(evaluation, cls)
    for fragment in (
        "`head_init: random`",
        "`bn_mode: batch_stats`",
        "weight clamp: sigmoid branch only",
        "GT box rule `first`",
        "threshold grid `official`",
        "chosen on `test`",
        "oracle",
        "bicubic for CAM",
        "off for CAM",
    ):
        assert fragment in text, fragment
    clean = options_markdown(
        {**evaluation, "postprocess": "clean", "weight_clamp": "both", "relu": False, "threshold_split": "val"}, cls
    )
    assert "weight clamp: both branches" in clean and "ReLU: off" in clean and "applied to test" in clean


def _row(protocol, variant, metric, delta, low, high, verdict, half=None):
    return {
        "protocol": protocol,
        "variant": variant,
        "metric": metric,
        "softmax": 40.0,
        "sigmoid": 40.0 + delta,
        "delta": delta,
        "low": low,
        "high": high,
        "half_width": (high - low) / 2 if half is None else half,
        "verdict": verdict,
        "models": [[0, 0], [1, 0], [2, 0]],
        "model_deltas": [delta] * 3,
        "resamples": 100,
        "confidence": 0.95,
        "se": (high - low) / 4,
        "df": 2.5,
        "levels": {"images": 0.25, "finetune": None, "baseline": 0.75},
    }


def test_interval_tables_show_delta_interval_and_verdict():
    from pipeline.report.tables import ablation_markdown, intervals_markdown, power_markdown

    rows = [
        _row("clean", "cam", "maxboxacc_v2", 1.5, 0.5, 2.5, "sigmoid better"),
        _row("clean", "cam", "avg_drop", -0.25, -1.0, 0.5, "no detectable difference"),
        _row("clean", "gradcam", "maxboxacc_v2", -2.0, -3.0, -1.0, "sigmoid worse"),
        _row("official", "cam", "maxboxacc_v2", 0.0, -1.0, 1.0, "no detectable difference"),
    ]
    table = intervals_markdown(rows, "clean").splitlines()
    assert table[0] == "| variant | metric | softmax | sigmoid | \u0394 [95% interval] | half-width | verdict |"
    assert table[2] == "| CAM | MaxBoxAccV2 | 40.00 | 41.50 | +1.50 [+0.50, +2.50] | 1.00 | sigmoid better |"
    assert table[3] == (
        "| CAM | Avg Drop | 40.00 | 39.75 | \u22120.25 [\u22121.00, +0.50] | 0.75 | no detectable difference |"
    )
    assert len(table) == 5
    ablation = ablation_markdown(rows).splitlines()
    assert ablation[0] == "| variant | protocol | MaxBoxAccV2 |"
    assert ablation[2:] == [
        "| CAM | `clean` | +1.50 [+0.50, +2.50] (better) |",
        "| CAM | `official` | 0.00 [\u22121.00, +1.00] (n.s.) |",
        "| Grad-CAM | `clean` | \u22122.00 [\u22123.00, \u22121.00] (worse) |",
    ]
    power = power_markdown(rows, "clean").splitlines()
    assert power[2] == "| MaxBoxAccV2 | 1.00 | 1.00 |" and power[3] == "| Avg Drop | 0.75 | 0.75 |"


def test_levels_table_names_each_levels_share():
    from pipeline.report.tables import levels_markdown

    rows = [
        _row("clean", "cam", "maxboxacc_v2", 1.5, 0.5, 2.5, "sigmoid better"),
        {
            **_row("clean", "cam", "pxap", 0.1, -0.1, 0.3, "no detectable difference"),
            "models": [[0, 0], [0, 1]],
            "df": None,
            "levels": {"images": 0.6, "finetune": 0.4, "baseline": None},
        },
        {**_row("clean", "layercam", "top1_loc", 0.1, -0.2, 0.4, "no detectable difference"), "df": 6.4e54},
        _row("official", "cam", "maxboxacc_v2", 0.0, -1.0, 1.0, "no detectable difference"),
    ]
    table = levels_markdown(rows, "clean", metrics=["maxboxacc_v2", "pxap", "top1_loc"]).splitlines()
    assert table[0] == "| variant | metric | half-width | images | fine-tuning | baseline | df |"
    assert table[2] == "| CAM | MaxBoxAccV2 | 1.00 | 25% | n/s | 75% | 2.5 |"  # 3 baselines, 1 replicate each
    assert table[3] == "| CAM | PxAP | 0.20 | 60% | 40% | - | \u221e |"  # one baseline: that level is absent
    assert table[4] == "| LayerCAM | Top-1 Loc | 0.30 | 25% | n/s | 75% | \u221e |"  # Satterthwaite's df past 1e6
    assert len(table) == 5


def test_summary_merges_identical_map_sets_and_lists_the_protocols():
    from pipeline.report.tables import summary_markdown

    rows = [
        _row("clean", "cam", "maxboxacc_v2", 1.5, 0.5, 2.5, "sigmoid better"),
        _row("clean", "gradcam", "maxboxacc_v2", 1.5, 0.5, 2.5, "sigmoid better"),
        _row("clean", "layercam", "maxboxacc_v2", -0.5, -1.5, 0.5, "no detectable difference"),
        _row("official", "cam", "maxboxacc_v2", 0.0, -1.0, 1.0, "no detectable difference"),
    ]
    text = summary_markdown(rows, "clean").splitlines()
    assert text[0].startswith("Sigmoid \u2212 softmax, headline protocol `clean`, 3 model(s) (3 baseline(s))")
    assert text[2:6] == [
        "| map set | MaxBoxAccV2 |",
        "|---|---|",
        "| CAM = Grad-CAM | +1.50 [+0.50, +2.50] (better) |",
        "| LayerCAM | \u22120.50 [\u22121.50, +0.50] (n.s.) |",
    ]
    assert text[-2:] == [
        "| `clean` | +1.50 [+0.50, +2.50] (better) |",
        "| `official` | 0.00 [\u22121.00, +1.00] (n.s.) |",
    ]
