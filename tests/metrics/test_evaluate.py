"""Evaluation orchestration: post-processing presets and overrides, alignment checks, end-to-end numbers on
hand-made CAM sets whose localization is known."""

import numpy as np
import pytest

from pipeline.cams.store import CamRecord, read_cams, write_cams
from pipeline.data.prepare import GroundTruth
from pipeline.metrics.evaluate import (
    PROTOCOLS,
    EvalOptions,
    check_alignment,
    evaluate_all,
    postprocess_options,
    protocol_options,
)


def test_presets_and_overrides():
    clean = postprocess_options("gradcam", "sigmoid", 64, EvalOptions())
    assert (clean.weight_clamp, clean.relu, clean.upsample, clean.official_grad_scaling) == (
        False,
        True,
        "bilinear",
        False,
    )
    off = EvalOptions(postprocess="official")
    cam_soft = postprocess_options("cam", "softmax", 64, off)
    cam_sig = postprocess_options("cam", "sigmoid", 64, off)
    assert (cam_soft.weight_clamp, cam_soft.relu, cam_soft.upsample) == (False, False, "bicubic")
    assert cam_sig.weight_clamp is True
    assert postprocess_options("layercam", "sigmoid", 64, off).official_grad_scaling is True
    both = EvalOptions(weight_clamp="both", relu=False, upsample="bicubic")
    pp = postprocess_options("cam", "softmax", 32, both)
    assert (pp.weight_clamp, pp.relu, pp.upsample, pp.size) == (True, False, "bicubic", 32)
    assert postprocess_options("cam", "softmax", 32, EvalOptions(weight_clamp="sigmoid")).weight_clamp is False
    assert postprocess_options("cam", "sigmoid", 32, EvalOptions(weight_clamp="sigmoid")).weight_clamp is True
    sym_soft = protocol_options("official_symmetric", "cam", "softmax", 64)
    assert sym_soft == cam_sig == protocol_options("official_symmetric", "cam", "sigmoid", 64)
    assert protocol_options("official", "gradcam", "softmax", 64).weight_clamp is False
    assert protocol_options("official_symmetric", "gradcam", "softmax", 64).weight_clamp is True
    assert postprocess_options("cam", "softmax", 64, EvalOptions(postprocess="official_symmetric")) == sym_soft
    from pipeline import concepts
    from pipeline.params import PROTOCOLS as PARAM_PROTOCOLS

    assert tuple(PROTOCOLS) == concepts.PROTOCOLS == PARAM_PROTOCOLS  # one rule per named protocol, same order
    with pytest.raises(
        ValueError, match="postprocess: 'x' is not valid; choose one of: clean, official, official_symmetric"
    ):
        postprocess_options("cam", "softmax", 32, EvalOptions(postprocess="x"))


def block_maps(n, size, boxes):
    """Raw softmax-branch `pos` maps: 1 inside each image's box 0 elsewhere; sigmoid maps 0."""
    maps = np.zeros((n, 1, 2, 2, 5, size, size), dtype=np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        maps[i, 0, 0, 0, :, y0 : y1 + 1, x0 : x1 + 1] = 1.0  # softmax branch only
    return maps


def make_split(tmp_path, name, boxes, size=16, preds=None, maps=None, info=None):
    n = len(boxes)
    maps = block_maps(n, size, boxes) if maps is None else maps
    preds = preds if preds is not None else [0] * n
    recs = [CamRecord(f"{name}{i}.png", 0, preds[i], 1.0, 1.0, maps[i]) for i in range(n)]
    write_cams(
        tmp_path / name,
        iter(recs),
        targets=("gt",),
        feature_size=(size, size),
        dtype="float32",
        shard_size=4,
        info=info or {},
    )
    fg = np.zeros((n, size, size), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        fg[i, y0 : y1 + 1, x0 : x1 + 1] = True
    gt = GroundTruth(
        [f"{name}{i}.png" for i in range(n)],
        np.zeros(n, dtype=np.int64),
        [np.array([b]) for b in boxes],
        fg,
        np.zeros_like(fg),
        size,
    )
    return read_cams(tmp_path / name), gt


def test_perfect_maps_localize_everything(tmp_path):
    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10), (4, 1, 13, 14)]  # IoU of the "+1" boxes >= 0.73
    cams, gt = make_split(tmp_path, "test", boxes, preds=[0, 0, 1, 0])
    opts = EvalOptions(threshold_split="test", upsample="bilinear", relu=True)
    metrics, curves = evaluate_all({"test": cams}, {"test": gt}, opts)
    assert metrics["top1_cls"] == 75.0
    for variant in ("cam", "gradcam", "gradcampp", "xgradcam", "layercam"):
        soft = metrics[variant]["softmax"]
        assert soft["maxboxacc_v2"] == 100.0 and soft["gt_known_loc"] == 100.0
        assert soft["top1_loc"] == 75.0  # the misclassified image does not count
        assert soft["pxap"] == pytest.approx(100.0)
        sig = metrics[variant]["sigmoid"]  # sigmoid maps are all zero: box [0,0,0,0] -> IoU ~ 0
        assert sig["gt_known_loc"] < 100.0
    assert list(curves[("cam", "softmax")]["box"]) == ["iou30", "iou50", "iou70", "largest_contour_iou50"]
    assert curves[("cam", "softmax")]["box"]["iou50"].max() == 100.0


def test_thresholds_chosen_on_val_apply_to_test(tmp_path):
    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (4, 1, 13, 14)]
    test, gt_test = make_split(tmp_path, "test", boxes)
    val, gt_val = make_split(tmp_path, "val", boxes)
    opts = EvalOptions(threshold_split="val")
    metrics, _ = evaluate_all({"test": test, "val": val}, {"test": gt_test, "val": gt_val}, opts)
    assert metrics["cam"]["softmax"]["maxboxacc_v2"] == 100.0


def test_misaligned_cams_and_gt_are_rejected(tmp_path):
    cams, gt = make_split(tmp_path, "test", [(1, 1, 4, 4), (2, 2, 5, 5)])
    other = GroundTruth(["a.png", "b.png"], gt.labels, gt.boxes, gt.fg, gt.ignore, gt.size)
    with pytest.raises(
        ValueError,
        match="test: the CAM shards \\(2 images\\) and the prepared GT table \\(2 images\\) disagree from position 0",
    ):
        check_alignment(cams, other, "test")


def test_protocols_dedup_and_per_image_callback(tmp_path):
    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10), (4, 1, 13, 14)]
    test, gt_test = make_split(tmp_path, "test", boxes, preds=[0, 0, 1, 0])
    val, gt_val = make_split(tmp_path, "val", boxes[:3])
    cams, gts = {"test": test, "val": val}, {"test": gt_test, "val": gt_val}
    seen = {}
    messages = []
    opts = EvalOptions(protocols=("official", "official_symmetric"))
    metrics, curves = evaluate_all(
        cams,
        gts,
        opts,
        progress=messages.append,
        on_result=lambda key, box, mask, fid: seen.setdefault(key, (box, mask, fid)),
    )
    alone, _ = evaluate_all(cams, gts, EvalOptions())
    headline = {k: v for k, v in metrics.items() if k != "protocols"}
    assert headline == alone  # the extra protocols leave the headline as it was
    assert set(metrics["protocols"]) == {"official", "official_symmetric"}
    # every variant holds the same raw maps, at the evaluation size (resizing is the identity) and binary
    # (0/1: every scaling and min-max gives them back): by content, 30 map sets are 2, the softmax
    # blocks and the all-zero sigmoid maps, whatever the protocol
    assert messages == ["30 (protocol, variant, branch) map sets, 2 distinct, 2 to score (0 scored before)"]
    sym, off = metrics["protocols"]["official_symmetric"], metrics["protocols"]["official"]
    assert sym["gradcam"]["sigmoid"] == off["gradcam"]["sigmoid"]
    assert off["cam"]["softmax"]["maxboxacc_v2"] == 100.0
    assert len(seen) == 3 * 5 * 2 * 2
    box, mask, fid = seen[("clean", "cam", "softmax", "test")]
    assert fid is None  # no model given: no fidelity
    assert box.per_image_multi.shape == (4, 3, 1000) and box.per_image_gt_known.tolist() == [True] * 4
    assert box.per_image_top1_loc.tolist() == [True, True, False, True]
    assert (mask.per_image_fg_hist.sum(0) == mask.fg_hist).all()
    assert seen[("official", "cam", "softmax", "val")][0].n_images == 3
    assert seen[("official", "cam", "softmax", "val")][1] is None  # PxAP: test only
    with pytest.raises(ValueError, match="protocols: 'fancy' is not valid"):
        evaluate_all(cams, gts, EvalOptions(protocols=("fancy",)))


def test_protocol_params_are_validated():
    from pathlib import Path

    import yaml

    from pipeline.params import ParamsError, validate

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    assert validate(data).evaluate.protocols == "official+official_symmetric"
    for bad in ("official+fancy", "official+official", ""):
        data["evaluate"]["protocols"] = bad
        with pytest.raises(
            ParamsError,
            match="evaluate.protocols: .* is not valid; give distinct names of clean, "
            "official, official_symmetric joined by '\\+', or none",
        ):
            validate(data)
    data["evaluate"]["protocols"] = "none"
    assert validate(data).evaluate.protocols == "none"
    data["evaluate"]["workers"] = 2  # removed: evaluation parallelism is distributed.nproc
    with pytest.raises(ParamsError, match="evaluate.workers: unknown key"):
        validate(data)


def varied_maps(n, size, seed):
    """Random raw maps, every variant and branch different (pos >= 0, neg <= 0)."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, 1, 2, 2, 5, size, size)).astype(np.float32)
    maps[:, :, 1] *= -0.3  # the neg part
    return maps


def test_memo_scores_a_map_set_once_across_calls(tmp_path):
    """Two CAM sets sharing the softmax branch (two fine-tuning replicates): with one memo, the second call
    scores only its sigmoid branch, and every number equals a call without the memo."""
    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10)]
    first = varied_maps(3, 16, 0)
    second = first.copy()
    second[:, :, :, 1] = varied_maps(3, 16, 1)[:, :, :, 1]  # a new sigmoid branch, the same softmax one
    sets = []
    for k, maps in enumerate((first, second)):
        test, gt = make_split(tmp_path / f"r{k}", "test", boxes, maps=maps)
        sets.append(({"test": test}, {"test": gt}))
    opts = EvalOptions(threshold_split="test")
    memo, messages = {}, []
    with_memo = [evaluate_all(c, g, opts, memo=memo, progress=messages.append)[0] for c, g in sets]
    alone = [evaluate_all(c, g, opts)[0] for c, g in sets]
    assert with_memo == alone
    assert messages == [
        "10 (protocol, variant, branch) map sets, 10 distinct, 10 to score (0 scored before)",
        "10 (protocol, variant, branch) map sets, 10 distinct, 5 to score (5 scored before)",
    ]
    # another ground truth is another context: nothing is reused
    test, gt = sets[0][0]["test"], sets[0][1]["test"]
    moved = type(gt)(gt.image_ids, gt.labels, [b + 1 for b in gt.boxes], gt.fg, gt.ignore, gt.size)
    messages.clear()
    evaluate_all({"test": test}, {"test": moved}, opts, memo=memo, progress=messages.append)
    assert messages[0].endswith("10 to score (0 scored before)")


def test_gap_linear_heads_score_cam_for_gradcam_and_xgradcam(tmp_path):
    """With `gap_linear_heads` in the manifest, Grad-CAM and XGrad-CAM are scored from CAM's maps (positive
    multiples of them for such heads) where their rule is CAM's, so their rows equal CAM's; without the flag
    each is scored from its own maps."""
    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10)]
    maps = varied_maps(3, 16, 2)
    flagged, gt = make_split(tmp_path / "a", "test", boxes, maps=maps, info={"gap_linear_heads": True})
    plain, _ = make_split(tmp_path / "b", "test", boxes, maps=maps)
    opts = EvalOptions(threshold_split="test", protocols=("official",))
    messages = []
    m, _ = evaluate_all({"test": flagged}, {"test": gt}, opts, progress=messages.append)
    # clean: cam = gradcam = xgradcam (one set per branch) + gradcampp + layercam; official: CAM's rule differs
    # from the gradient rule, so cam, gradcam = xgradcam, gradcampp, layercam
    assert messages == ["20 (protocol, variant, branch) map sets, 14 distinct, 14 to score (0 scored before)"]
    for branch in ("softmax", "sigmoid"):
        assert m["gradcam"][branch] == m["xgradcam"][branch] == m["cam"][branch]
        off = m["protocols"]["official"]
        assert off["gradcam"][branch] == off["xgradcam"][branch]
    unflagged, _ = evaluate_all({"test": plain}, {"test": gt}, opts)
    assert unflagged["cam"] == m["cam"] and unflagged["gradcampp"] == m["gradcampp"]
    assert unflagged["gradcam"]["softmax"] != unflagged["cam"]["softmax"]  # random maps: their own numbers


def test_fidelity_with_memo_forwards_each_map_set_and_each_image_batch_once(tmp_path):
    """Average Drop / Increase in Confidence through evaluate_all: with one memo over two CAM sets that share
    the softmax branch, the second call forwards only its sigmoid maps (Y comes from the first call), and
    every number equals a call without the memo."""
    import torch

    from pipeline.models.dual import DualBranchNet, ModelSpec

    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 3, 32, output_stride=16))
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    model.eval()
    forwards = []
    model.trunk.register_forward_hook(lambda module, args, out: forwards.append(len(args[0])))
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    batches = lambda: iter([(images[:2], labels[:2]), (images[2:], labels[2:])])  # noqa: E731
    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10), (4, 1, 13, 14)]
    first = varied_maps(4, 16, 3)
    second = first.copy()
    second[:, :, :, 1] = varied_maps(4, 16, 4)[:, :, :, 1]
    sets = []
    for k, maps in enumerate((first, second)):
        test, gt = make_split(tmp_path / f"r{k}", "test", boxes, maps=maps, preds=[0, 1, 2, 0])
        sets.append(({"test": test}, {"test": gt}))
    opts = EvalOptions(threshold_split="test")
    kwargs = dict(model=model, batches=batches, fidelity_target="gt", fidelity_size=32)
    memo = {}
    with_memo = []
    for c, g in sets:
        forwards.clear()
        with_memo.append(evaluate_all(c, g, opts, memo=memo, **kwargs)[0])
        with_memo[-1]["forwards"] = list(forwards)
    assert with_memo[0].pop("forwards") == [2] * (1 + 10) + [2] * (1 + 10)  # per batch: Y, then 10 map sets
    assert with_memo[1].pop("forwards") == [2] * 5 * 2  # the 5 sigmoid sets, no Y
    alone = [evaluate_all(c, g, opts, **kwargs)[0] for c, g in sets]
    assert with_memo == alone
    assert all("avg_drop" in alone[1][v][b] for v in ("cam", "layercam") for b in ("softmax", "sigmoid"))


def test_map_cache_post_processes_each_set_once_and_changes_no_number(tmp_path, monkeypatch):
    """The maps post-processed for the digests are scored from the cache (boxes, PxAP and fidelity at another
    size): each set is post-processed once; with no cache, or one too small for every set, each set is
    post-processed again for scoring, and every number is the same."""
    import torch

    import pipeline.metrics.evaluate as evaluate
    from pipeline.models.dual import DualBranchNet, ModelSpec

    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 3, 32, output_stride=16))
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    batches = lambda: iter([(images[:3], labels[:3]), (images[3:], labels[3:])])  # noqa: E731
    test, test_gt = make_split(
        tmp_path,
        "test",
        [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10), (4, 1, 13, 14)],
        maps=varied_maps(4, 16, 5),
        preds=[0, 1, 2, 0],
    )
    val, val_gt = make_split(tmp_path, "val", [(1, 1, 8, 8), (3, 2, 14, 12), (0, 4, 9, 15)], maps=varied_maps(3, 16, 6))
    done = []
    real = evaluate.postprocess
    monkeypatch.setattr(evaluate, "postprocess", lambda pos, neg, pp: done.append(len(pos)) or real(pos, neg, pp))

    def run(budget):
        monkeypatch.setattr(evaluate, "MAP_CACHE_BYTES", budget)
        done.clear()
        messages = []
        out = evaluate_all(
            {"test": test, "val": val},
            {"test": test_gt, "val": val_gt},
            EvalOptions(),
            model=model,
            batches=batches,
            fidelity_target="gt",
            fidelity_size=32,
            progress=messages.append,
        )[0]
        units = int(messages[0].split(" distinct, ")[1].split(" to score")[0])
        return out, sum(done), units

    cached, with_cache, units = run(2**30)
    uncached, without, _ = run(0)
    partly, some, _ = run(4 * 16 * 16 * 4)  # room for one test set at a time
    assert cached == uncached == partly
    # a unit scores its test and val maps at 16 px and its test maps again at 32 px for fidelity
    assert without - with_cache == units * (4 + 3 + 4)
    assert with_cache < some < without


def test_the_evaluate_bar_honours_tqdm_disable():
    """tqdm reads the TQDM_* variables when it is imported: each case in its own interpreter."""
    import os
    import subprocess
    import sys

    code = (
        "from pipeline.metrics.evaluate import progress_bar; print(progress_bar(3, True).disable, "
        "progress_bar(3, False).disable)"
    )

    def disabled(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
        return subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
        ).stdout.split()

    assert disabled() == ["False", "True"]
    assert disabled(TQDM_DISABLE="1") == ["True", "True"]
