"""Evaluation orchestration: post-processing presets and overrides, alignment checks, end-to-end numbers on
hand-made CAM sets whose localization is known."""

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.cams.store import CamRecord, read_cams, write_cams
from pipeline.data.prepare import GroundTruth
from pipeline.metrics.evaluate import (
    PROTOCOLS,
    EvalOptions,
    Fidelity,
    ModelMaps,
    WorkLog,
    check_alignment,
    evaluate_all,
    evaluate_models,
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


def test_protocols_dedup_and_observed_outcomes(tmp_path):
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
        observe=lambda key, split, start, box, mask, fid: seen.setdefault((key, split), (box, mask, fid)),
    )
    alone, _ = evaluate_all(cams, gts, EvalOptions())
    headline = {k: v for k, v in metrics.items() if k != "protocols"}
    assert headline == alone  # the extra protocols leave the headline as it was
    assert set(metrics["protocols"]) == {"official", "official_symmetric"}
    # every variant holds the same raw maps and no negative part (so the clamp changes nothing): by their raw
    # maps and post-processing, 30 keys are 6 sets: 2 branches x 3 rules (clean; CAM's official rule; the
    # gradient variants' official rule)
    assert messages == ["30 (model, protocol, variant, branch) map sets of 1 model(s), 6 distinct, scored once each"]
    assert len(seen) == 30 * 2  # every key, both splits
    cam, gradcampp = (seen[((0, "official", v, "softmax"), "test")][0] for v in ("cam", "gradcampp"))
    assert seen[((0, "official_symmetric", "cam", "softmax"), "test")][0] is cam  # one set, scored once
    assert cam is not gradcampp
    sym, off = metrics["protocols"]["official_symmetric"], metrics["protocols"]["official"]
    assert sym["gradcam"]["sigmoid"] == off["gradcam"]["sigmoid"]
    assert off["cam"]["softmax"]["maxboxacc_v2"] == 100.0
    box, mask, fid = seen[((0, "clean", "cam", "softmax"), "test")]
    assert fid is None  # no model given: no fidelity
    assert box.per_image_multi.shape == (4, 3, 1000) and box.per_image_gt_known.tolist() == [True] * 4
    assert box.per_image_top1_loc.tolist() == [True, True, False, True]
    assert (mask.per_image_fg_hist.sum(0) == mask.fg_hist).all()
    assert seen[((0, "clean", "cam", "softmax"), "val")][0].n_images == 3
    assert seen[((0, "clean", "cam", "softmax"), "val")][1] is None  # PxAP: test only
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


def test_models_sharing_a_map_set_score_it_once(tmp_path, monkeypatch):
    """Two fine-tuning replicates of one baseline share the softmax branch: evaluated together, the second
    model's softmax sets are not post-processed or scored again, and every number equals each model alone."""
    import pipeline.metrics.evaluate as evaluate

    boxes = [(2, 3, 9, 12), (0, 0, 15, 7), (5, 5, 10, 10)]
    first = varied_maps(3, 16, 0)
    second = first.copy()
    second[:, :, :, 1] = varied_maps(3, 16, 1)[:, :, :, 1]  # a new sigmoid branch, the same softmax one
    sets = []
    for k, maps in enumerate((first, second)):
        test, gt = make_split(tmp_path / f"r{k}", "test", boxes, maps=maps)
        sets.append(({"test": test}, {"test": gt}))
    opts = EvalOptions(threshold_split="test")
    done, messages = [], []
    real = evaluate.postprocess
    monkeypatch.setattr(evaluate, "postprocess", lambda pos, neg, pp: done.append(len(pos)) or real(pos, neg, pp))
    together = evaluate.evaluate_models(
        [ModelMaps((0, k), c) for k, (c, _) in enumerate(sets)], sets[0][1], opts, progress=messages.append
    )
    assert messages == ["20 (model, protocol, variant, branch) map sets of 2 model(s), 15 distinct, scored once each"]
    assert sum(done) == 15 * 3  # each distinct set post-processed once, image by image
    alone = [evaluate_all(c, g, opts)[0] for c, g in sets]
    assert [together[(0, 0)][0], together[(0, 1)][0]] == alone


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
    assert messages == ["20 (model, protocol, variant, branch) map sets of 1 model(s), 14 distinct, scored once each"]
    for branch in ("softmax", "sigmoid"):
        assert m["gradcam"][branch] == m["xgradcam"][branch] == m["cam"][branch]
        off = m["protocols"]["official"]
        assert off["gradcam"][branch] == off["xgradcam"][branch]
    unflagged, _ = evaluate_all({"test": plain}, {"test": gt}, opts)
    assert unflagged["cam"] == m["cam"] and unflagged["gradcampp"] == m["gradcampp"]
    assert unflagged["gradcam"]["softmax"] != unflagged["cam"]["softmax"]  # random maps: their own numbers


def small_model():
    import torch

    from pipeline.models.dual import DualBranchNet, ModelSpec

    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 3, 32, output_stride=16))
    model.add_sigmoid_head("random", generator=torch.Generator().manual_seed(1))
    return model.eval()


def test_fidelity_forwards_each_map_set_and_each_image_batch_once(tmp_path):
    """Average Drop / Increase in Confidence of two models of one baseline that share the softmax branch: per
    image batch one forward of the images (Y) and one of the masked images of each distinct set (10 sets of
    the first model, the 5 new sigmoid sets of the second), and every number equals each model alone."""
    import torch

    model = small_model()
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

    def ranged(lo, hi):
        return [(images[a : a + 2], labels[a : a + 2]) for a in range(lo, hi, 2)]

    fidelity = Fidelity(model=lambda j: model, batches=ranged, batch_size=2, size=32, target="gt")
    together = evaluate_models(
        [ModelMaps((0, k), c) for k, (c, _) in enumerate(sets)], sets[0][1], opts, fidelity=fidelity
    )
    assert forwards == [2] * (1 + 15) * 2  # per batch: Y, then the 15 distinct sets
    kwargs = dict(model=model, batches=batches, fidelity_target="gt", fidelity_size=32)
    alone = [evaluate_all(c, g, opts, **kwargs)[0] for c, g in sets]
    assert [together[(0, 0)][0], together[(0, 1)][0]] == alone
    assert all("avg_drop" in alone[1][v][b] for v in ("cam", "layercam") for b in ("softmax", "sigmoid"))


def two_models(tmp_path, n_test=13, n_val=7):
    """Two models of one baseline sharing the softmax branch, test and val splits with several boxes."""
    rng = np.random.default_rng(7)

    def boxes(n):
        x0, y0 = rng.integers(0, 8, n), rng.integers(0, 8, n)
        return [(int(a), int(b), int(a + rng.integers(3, 8)), int(b + rng.integers(3, 8))) for a, b in zip(x0, y0)]

    test_boxes, val_boxes = boxes(n_test), boxes(n_val)
    models, gts = [], {}
    for k in range(2):
        cams = {}
        for split, bx, seed in (("test", test_boxes, 10), ("val", val_boxes, 20)):
            maps = varied_maps(len(bx), 16, seed)
            maps[:, :, :, 1] = varied_maps(len(bx), 16, seed + 1 + k)[:, :, :, 1]
            preds = [int(p) for p in rng.integers(0, 3, len(bx))] if k == 0 else None
            cams[split], gts[split] = make_split(tmp_path / f"m{k}", split, bx, maps=maps, preds=preds)
        models.append(ModelMaps((0, k), cams))
    for split in ("test", "val"):  # both models' index rows (predictions) are the first model's
        models[1].cams[split].index[:] = models[0].cams[split].index
    return models, gts


def intervals_for(gts, resamples=200):
    from pipeline.metrics.intervals import IntervalAccumulator

    return IntervalAccumulator(resamples=resamples, seed=3, strata={s: gts[s].labels for s in gts})


def test_the_numbers_do_not_depend_on_the_blocks(tmp_path):
    """Blocks of 4, 5 or every image: the same metrics and the same interval table, bit for bit (counters are
    integers; the bootstrap's float32 sums of counts are exact)."""
    models, gts = two_models(tmp_path)
    opts = EvalOptions(protocols=("official",))
    runs = []
    for block in (4, 5, 512):
        acc = intervals_for(gts)
        out = evaluate_models(models, gts, opts, intervals=acc, block=block)
        runs.append((out[(0, 0)][0], out[(0, 1)][0], acc.table()))
    assert runs[0] == runs[1] == runs[2]


def test_the_interval_table_equals_the_per_image_path(tmp_path):
    """The streamed sums give the table that IntervalAccumulator.add gives from whole per-image arrays."""
    models, gts = two_models(tmp_path)
    opts = EvalOptions()
    streamed = intervals_for(gts)
    evaluate_models(models, gts, opts, intervals=streamed, block=4)
    whole = intervals_for(gts)
    for mm in models:
        outcomes = {}

        def keep(key, split, start, box, mask, fid, outcomes=outcomes):
            outcomes.setdefault((key[1:], split), []).append((start, box, mask))

        evaluate_models([mm], gts, opts, observe=keep)
        for (key, split), parts in outcomes.items():
            parts.sort(key=lambda p: p[0])
            box = SimpleNamespace(
                **{
                    f"per_image_{f}": np.concatenate([getattr(p[1], f"per_image_{f}") for p in parts])
                    for f in ("multi", "single", "gt_known", "top1_loc")
                }
            )
            mask = None
            if parts[0][2] is not None:
                mask = SimpleNamespace(
                    per_image_fg_hist=np.concatenate([p[2].per_image_fg_hist for p in parts]),
                    per_image_bg_hist=np.concatenate([p[2].per_image_bg_hist for p in parts]),
                )
            whole.add(mm.model, (*key, split), box, mask)
    assert streamed.table() == whole.table()


def _rank_main(rank, world, init_file, tmp_path, out_file):
    import pickle

    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        models, gts = two_models(tmp_path)
        acc = intervals_for(gts)
        log = WorkLog()
        out = evaluate_models(models, gts, EvalOptions(protocols=("official",)), intervals=acc, block=4, log=log)
        result = None if out is None else (out[(0, 0)][0], out[(0, 1)][0], acc.table())
        with open(f"{out_file}.{rank}", "wb") as fh:
            pickle.dump((result, log.as_dict()["phases"]), fh)
    finally:
        tdist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_divide_every_phase_and_give_the_bits_of_one_process(tmp_path, world):
    import pickle

    import torch.multiprocessing as mp

    models, gts = two_models(tmp_path / "one")
    acc, log = intervals_for(gts), WorkLog()
    out = evaluate_models(models, gts, EvalOptions(protocols=("official",)), intervals=acc, block=4, log=log)
    one = (out[(0, 0)][0], out[(0, 1)][0], acc.table())
    mp.spawn(_rank_main, args=(world, str(tmp_path / "init"), tmp_path / "ranks", str(tmp_path / "out")), nprocs=world)
    parts = []
    for r in range(world):
        with open(tmp_path / f"out.{r}", "rb") as fh:
            parts.append(pickle.load(fh))
    assert parts[0][0] == one  # rank 0 has every number, the same bits
    assert all(p[0] is None for p in parts[1:])
    whole = log.as_dict()["phases"]
    for phase, counter in (("digest", "images"), ("read", "bytes"), ("postprocess", "maps"), ("score", "maps")):
        shares = [p[1][phase][counter] for p in parts]
        assert sum(shares) == whole[phase][counter]  # nothing done twice
        assert max(shares) <= whole[phase][counter] / world * 1.6  # each rank about 1/P (blocks of 4 images)


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
