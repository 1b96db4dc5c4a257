"""CAM engine throughput: our one-pass `compute_cams` against a plain forward and against pytorch-grad-cam.

Two cases, each for both model families, on every device (the CPU, plus CUDA when present with
`--device auto`):

- `default`: params.yaml's backbone at its input size, output stride, feature stage and batch size
  (resnet10t up to layer3, 96 px, batch 32), and the dataset's class count;
- `mobilenetv2`: timm `mobilenetv2_100`, 224 px, output stride 16, batch 16 (random weights).

The CAM family is the project's `DualBranchNet` (GAP -> linear heads: the engine's closed-form path); the
gradient family is the same timm trunk with a `PoolMlpHead` on each branch (adaptive pool to `--grad-grid`,
a 3-layer MLP of width `--grad-hidden`; the stand-in of tests/cams/standins.py): the engine differentiates
the MLP on the pooled map and reduces the variants per cell of the pooling windows (`Head.pooled`). For each it
measures, interleaved in rounds (median over `--repeats` rounds
after `--warmup` untimed ones, so that load from other processes affects them alike)

  (a) a plain inference forward of the model (eval, torch.no_grad), the baseline,
  (b) `compute_cams(targets=gt)`: every variant of the family for both branches,
  (c) `compute_cams(pred=True)`: also the maps of the predicted class (the cams stage's default `gt+pred`),

and prints ms/image and the ratios (b)/(a) and (c)/(a) (target <= 1.3). For the default case's CAM family it
also times (d) pytorch-grad-cam's GradCAM, GradCAMPlusPlus, XGradCAM and LayerCAM for both branches (8 calls,
about twenty forwards; median of `--grad-cam-repeats`, 0 skips it) and prints (d)/(b) (target >= 5). On
CUDA it also times (a) and (b) under bf16 autocast (`compute_cams(..., amp=True)`).

    python benchmarks/bench_cams.py
    python benchmarks/bench_cams.py --cases mobilenetv2 --repeats 9 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from pipeline.cams.engine import BRANCHES, compute_cams  # noqa: E402
from pipeline.models.dual import BranchClassifier, DualBranchNet, ModelSpec  # noqa: E402
from pipeline.params import resolve_backbone  # noqa: E402
from pipeline.train.loops import place, to_device  # noqa: E402
from tests.cams.standins import timm_model  # noqa: E402  (the gradient-family stand-in)

GRAD_CAMS = (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of `fn` (CUDA synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time of each function over `repeats` rounds after `warmup` untimed rounds; every round
    runs each function once, so that load from other processes affects them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            times[label].append(seconds(fn, device))
    return {label: statistics.median(t) for label, t in times.items()}


def grad_cam_loop(model: DualBranchNet, images: torch.Tensor, targets: list[ClassifierOutputTarget]) -> None:
    """The four pytorch-grad-cam methods for both branches, 8 calls, each with its own forward and backward."""
    for branch in BRANCHES:
        for cam_class in GRAD_CAMS:
            with cam_class(BranchClassifier(model, branch), [model.trunk]) as cam:
                cam(images, targets)


def build(case: dict, family: str, grid: int, hidden: int, device: torch.device) -> torch.nn.Module:
    """The case's model of `family` (random weights), in eval mode on `device`."""
    torch.manual_seed(0)
    if family == "cam":
        spec = ModelSpec(
            case["backbone"],
            case["classes"],
            case["size"],
            case["large_feature_map"],
            case["output_stride"],
            case["feature_stage"],
        )
        model = DualBranchNet(spec)
        model.add_sigmoid_head("clone")
    else:
        model = timm_model(
            case["backbone"],
            family="grad",
            num_classes=case["classes"],
            input_size=case["size"],
            output_stride=case["output_stride"],
            feature_stage=case["feature_stage"],
            grid=grid,
            hidden=hidden,
        )
    return place(model, device).eval()  # the pipeline's layout (channels-last, pipeline/train/loops.py)


def bench_case(case: dict, family: str, device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Time (a)-(c) (and (d) when asked) for one case and family; print and return the ratios."""
    model = build(case, family, args.grad_grid, args.grad_hidden, device)
    batch = case["batch"]
    images = to_device(torch.randn(batch, 3, case["size"], case["size"]), device)
    labels = torch.randint(0, case["classes"], (batch,), device=device)

    def forward(amp: bool = False) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(images)

    fns = {
        "plain forward": forward,
        "compute_cams, gt": lambda: compute_cams(model, images, labels),
        "compute_cams, gt+pred": lambda: compute_cams(model, images, labels, pred=True),
    }
    if device.type == "cuda":
        fns["plain forward, bf16"] = lambda: forward(amp=True)
        fns["compute_cams, gt, bf16 trunk"] = lambda: compute_cams(model, images, labels, amp=True)
    ms = interleaved_medians(fns, device, args.warmup, args.repeats)
    grad_cam = family == "cam" and case["name"] == "default" and args.grad_cam_repeats > 0
    if grad_cam:
        targets = [ClassifierOutputTarget(int(k)) for k in labels]
        with GradCAM(BranchClassifier(model, "softmax"), [model.trunk]) as cam:  # warm-up: one call of the 8
            cam(images, targets)
        ms["pytorch-grad-cam (8 calls)"] = statistics.median(
            seconds(lambda: grad_cam_loop(model, images, targets), device) for _ in range(args.grad_cam_repeats)
        )
    head = "GAP -> linear" if family == "cam" else f"PoolMlpHead(grid {args.grad_grid}, hidden {args.grad_hidden})"
    stage = "" if case["feature_stage"] is None else f"feature_stage {case['feature_stage']}, "
    print(
        f"\n{case['name']}: {case['backbone']} @ {case['size']}px, output_stride {case['output_stride']}, {stage}"
        f"batch {batch}, K={case['classes']}, {family} family ({head}); median of {args.repeats} rounds "
        f"after {args.warmup} warm-up"
    )
    for label, t in ms.items():
        print(f"  {label:<30}{1000 * t / batch:>10.3f} ms/image")
    ratios = {kind: ms[f"compute_cams, {kind}"] / ms["plain forward"] for kind in ("gt", "gt+pred")}
    for kind, r in ratios.items():
        print(f"  ours ({kind}) / plain forward{'':<{9 - len(kind)}}{r:>8.2f}   (target <= 1.3)")
    if grad_cam:
        print(
            f"  grad-cam loop / ours (gt)     {ms['pytorch-grad-cam (8 calls)'] / ms['compute_cams, gt']:>8.2f}"
            f"   (target >= 5)"
        )
    if device.type == "cuda":
        print(
            f"  ours (gt) / plain forward, bf16 {ms['compute_cams, gt, bf16 trunk'] / ms['plain forward, bf16']:>6.2f}"
        )
    return ratios


def main() -> None:
    # The raw file, not pipeline.params.load_params: a benchmark should not depend on unrelated sections.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="default,mobilenetv2", help="comma-separated: default, mobilenetv2")
    ap.add_argument("--families", default="cam,grad", help="comma-separated: cam, grad")
    ap.add_argument("--backbone", default=params["backbone"], help="default case: params.yaml's backbone")
    ap.add_argument("--size", type=int, default=None, help="default case: input side (the backbone's input_size)")
    ap.add_argument("--batch", type=int, default=None, help="default case: batch (the backbone's batch_size)")
    ap.add_argument("--classes", type=int, default=params["datasets"][params["dataset"]]["num_classes"])
    ap.add_argument("--grad-grid", type=int, default=3, help="gradient family: the MLP head's pooled grid")
    ap.add_argument("--grad-hidden", type=int, default=256, help="gradient family: the MLP head's width")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds of (a)-(c)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds of (a)-(c)")
    ap.add_argument(
        "--grad-cam-repeats",
        type=int,
        default=1,
        help="timed runs of (d), the slow one (after a one-call warm-up); 0 skips it",
    )
    ap.add_argument("--device", default="auto", help="auto (the CPU, plus CUDA when present) | cpu | cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's default")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backbone, entry = resolve_backbone(args.backbone, params["backbones"])
    settings = params["backbones"][entry]
    cases = {
        "default": {
            "name": "default",
            "backbone": backbone,
            "size": args.size or settings["input_size"],
            "batch": args.batch or settings["batch_size"],
            "large_feature_map": settings["large_feature_map"],
            "output_stride": settings["output_stride"],
            "feature_stage": settings["feature_stage"],
            "classes": args.classes,
        },
        "mobilenetv2": {
            "name": "mobilenetv2",
            "backbone": "mobilenetv2_100",
            "size": 224,
            "batch": 16,
            "large_feature_map": False,
            "output_stride": 16,
            "feature_stage": None,
            "classes": args.classes,
        },
    }
    chosen = args.cases.split(",")
    families = args.families.split(",")
    bad = [c for c in chosen if c not in cases] + [f for f in families if f not in ("cam", "grad")]
    if bad:
        ap.error(f"unknown case or family: {', '.join(bad)}; cases: {', '.join(cases)}; families: cam, grad")
    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    summary = []
    for device in devices:
        name = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        )
        print(f"\n=== {device} ({name})")
        for c in chosen:
            for family in families:
                ratios = bench_case(cases[c], family, device, args)
                summary.append((device.type, c, family, ratios))
    print("\nsummary: ours / plain forward (target <= 1.3)")
    for dev, c, family, r in summary:
        print(f"  {dev:<5}{c:<13}{family:<6}gt {r['gt']:.2f}   gt+pred {r['gt+pred']:.2f}")


if __name__ == "__main__":
    main()
