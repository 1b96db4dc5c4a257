"""CAM engine throughput: our one-pass `compute_cams` against a plain forward and against pytorch-grad-cam.

For one random-init model and one batch of random images it measures, in one run and per device (the CPU,
plus CUDA when present with `--device auto`)

  (a) a plain inference forward of the model (eval, torch.no_grad),
  (b) `compute_cams`: all ten raw maps (5 variants x 2 branches),
  (c) pytorch-grad-cam's GradCAM, GradCAMPlusPlus, XGradCAM and LayerCAM, one after the other, for both
      branches (8 calls),

(a) and (b) interleaved, median over `--repeats` rounds after `--warmup` untimed ones; (c), which costs
about twenty forwards, median over `--grad-cam-repeats` runs (default 1) after a one-call warm-up. It
prints ms/image for each and the ratios ours / plain forward (target <= 1.5) and grad-cam / ours
(target >= 5). On CUDA it also times (a) and (b) under bf16 autocast (`compute_cams(..., amp=True)`).
Defaults come from params.yaml: its backbone and that backbone's input size, output stride and batch size,
and the dataset's class count.

    python benchmarks/bench_cams.py
    python benchmarks/bench_cams.py --backbone resnet18 --size 128 --batch 16 --repeats 5 --device cpu
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


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                        repeats: int) -> dict[str, float]:
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


def bench_device(spec: ModelSpec, batch: int, device: torch.device, warmup: int, repeats: int,
                 grad_cam_repeats: int) -> None:
    """Time (a), (b) and (c) on `device` and print ms/image and the two ratios."""
    torch.manual_seed(0)
    model = DualBranchNet(spec)
    model.add_sigmoid_head("clone")
    model = model.to(device).eval()
    images = torch.randn(batch, 3, spec.input_size, spec.input_size, device=device)
    labels = torch.randint(0, spec.num_classes, (batch,), device=device)
    targets = [ClassifierOutputTarget(int(k)) for k in labels]

    def forward(amp: bool = False) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(images)

    fns = {"plain forward": forward, "compute_cams (10 maps)": lambda: compute_cams(model, images, labels)}
    if device.type == "cuda":
        fns["plain forward, bf16"] = lambda: forward(amp=True)
        fns["compute_cams, bf16 trunk"] = lambda: compute_cams(model, images, labels, amp=True)
    ms = interleaved_medians(fns, device, warmup, repeats)
    with GradCAM(BranchClassifier(model, "softmax"), [model.trunk]) as cam:  # warm-up: one call of the 8
        cam(images, targets)
    ms["pytorch-grad-cam (8 calls)"] = statistics.median(
        seconds(lambda: grad_cam_loop(model, images, targets), device) for _ in range(grad_cam_repeats))
    threads = f"CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"\n{device} ({name}): {spec.backbone} @ {spec.input_size}px, output_stride {spec.output_stride}, "
          f"batch {batch}, K={spec.num_classes}; median of {repeats} rounds after {warmup} warm-up "
          f"(grad-cam: of {grad_cam_repeats})")
    for label, t in ms.items():
        print(f"  {label:<28}{1000 * t / batch:>10.3f} ms/image")
    ours = ms["compute_cams (10 maps)"]
    print(f"  ours / plain forward        {ours / ms['plain forward']:>10.2f}   (target <= 1.5)")
    print(f"  grad-cam loop / ours        {ms['pytorch-grad-cam (8 calls)'] / ours:>10.2f}   (target >= 5)")
    if device.type == "cuda":
        print(f"  ours / plain forward, bf16  "
              f"{ms['compute_cams, bf16 trunk'] / ms['plain forward, bf16']:>10.2f}")


def main() -> None:
    # The raw file, not pipeline.params.load_params: a benchmark should not depend on unrelated sections.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=params["backbone"], help="default: params.yaml's backbone")
    ap.add_argument("--size", type=int, default=None, help="input side; default: the backbone's input_size")
    ap.add_argument("--batch", type=int, default=None, help="default: the backbone's batch_size")
    ap.add_argument("--classes", type=int, default=params["datasets"][params["dataset"]]["num_classes"])
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of (a) and (b)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds of (a) and (b)")
    ap.add_argument("--grad-cam-repeats", type=int, default=1,
                    help="timed runs of (c), the slow one (after a one-call warm-up)")
    ap.add_argument("--device", default="auto", help="auto (the CPU, plus CUDA when present) | cpu | cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's default")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backbone, entry = resolve_backbone(args.backbone, params["backbones"])
    settings = params["backbones"][entry]
    spec = ModelSpec(backbone, args.classes, args.size or settings["input_size"], settings["large_feature_map"],
                     settings["output_stride"])
    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    for device in devices:
        bench_device(spec, args.batch or settings["batch_size"], device, args.warmup, args.repeats,
                     args.grad_cam_repeats)


if __name__ == "__main__":
    main()
