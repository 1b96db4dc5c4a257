"""Baseline training, sigmoid fine-tuning and CAM throughput against a plain forward, on one device.

Runs the library end to end without DVC (so it also runs where DVC is not installed, e.g. a bare GPU
machine): generates a SynthBirds set in a temporary folder, prepares it, trains the softmax baseline,
clones the head, fine-tunes the sigmoid head, checks that the softmax logits are bit-identical, computes all
ten CAMs (5 variants x 2 branches), and prints images/second for each step and its ratio to a plain
inference forward of the same model and batch measured in the same run.

    python benchmarks/bench_train.py                       # default backbone, CPU or CUDA (auto)
    python benchmarks/bench_train.py --size 224 --epochs 3 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.images import ImageSet, eval_transform, make_loader, train_transform  # noqa: E402
from pipeline.data.prepare import load_prepared, prepare_dataset  # noqa: E402
from pipeline.data.synthbirds import SynthBirdsSpec, generate  # noqa: E402
from pipeline.models.archs import ALIASES  # noqa: E402
from pipeline.models.archs import ARCHS as WSOL_ARCHS  # noqa: E402  (the backbones in their WSOL form)
from pipeline.models.dual import DualBranchNet, ModelSpec  # noqa: E402
from pipeline.train.loops import autocast, finetune_sigmoid_head, predict, resolve_device, train_baseline  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--output-stride", type=int, default=16)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=40)
    ap.add_argument("--test-per-class", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), backbone {args.backbone} @ {args.size}px, batch {args.batch}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = SynthBirdsSpec(
            num_classes=args.classes,
            image_size=args.size,
            train_per_class=args.train_per_class,
            val_per_class=0,
            test_per_class=args.test_per_class,
            seed=0,
        )
        t_gen = timed(lambda: generate(spec, tmp / "raw", workers=max(1, args.workers), progress=False), device)
        prepare_dataset(
            tmp / "raw",
            tmp / "prep",
            dataset="synthbirds",
            num_classes=args.classes,
            eval_size=args.size,
            progress=False,
        )
        prep = load_prepared(tmp / "prep")
        tr, te = prep.split("train"), prep.split("test")
        pin = device.type == "cuda"
        train_loader = make_loader(
            ImageSet(
                prep.image_root,
                tr.image_ids,
                tr.labels,
                train_transform(args.size),
                approx_bytes=prep.approx_bytes("train"),
            ),
            batch_size=args.batch,
            train=True,
            seed=0,
            workers=args.workers,
            pin_memory=pin,
        )
        test_loader = make_loader(
            ImageSet(
                prep.image_root,
                te.image_ids,
                te.labels,
                eval_transform(args.size),
                approx_bytes=prep.approx_bytes("test"),
            ),
            batch_size=args.batch,
            train=False,
            seed=0,
            workers=args.workers,
            pin_memory=pin,
        )
        n_train, n_test = len(tr.image_ids), len(te.image_ids)
        print(f"synthbirds: {n_train} train / {n_test} test images generated in {t_gen:.1f} s")

        wsol = ALIASES.get(args.backbone, args.backbone) in WSOL_ARCHS  # their stride is fixed
        model = DualBranchNet(
            ModelSpec(args.backbone, args.classes, args.size, output_stride=None if wsol else args.output_stride)
        ).to(device)
        t_base = timed(
            lambda: train_baseline(
                model,
                train_loader,
                device,
                epochs=args.epochs,
                lr=0.05,
                lr_classifier_ratio=1.0,
                lr_decay_every=10**6,
                momentum=0.9,
                nesterov=True,
                weight_decay=5e-4,
            ),
            device,
        )
        model.add_sigmoid_head("clone")
        model.to(device)
        before = predict(model, test_loader, device)
        t_ft = timed(
            lambda: finetune_sigmoid_head(
                model,
                train_loader,
                device,
                epochs=args.epochs,
                lr=0.05,
                lr_decay_every=10**6,
                momentum=0.9,
                nesterov=True,
                weight_decay=1e-4,
                bn_mode="eval",
            ),
            device,
        )
        after = predict(model, test_loader, device)
        identical = torch.equal(before.logits, after.logits)

        batches = [(x.to(device), y.to(device)) for x, y in test_loader]
        model.eval()

        def plain_forward() -> None:
            with torch.no_grad(), autocast(device):
                for x, _ in batches:
                    model(x)

        plain_forward()  # warm-up
        t_fwd = min(timed(plain_forward, device) for _ in range(3))
        rows = [
            ("plain forward (test)", n_test, t_fwd),
            ("baseline train", n_train * args.epochs, t_base),
            ("sigmoid fine-tune", n_train * args.epochs, t_ft),
        ]
        try:
            from pipeline.cams.engine import compute_cams
        except ImportError:
            compute_cams = None
        if compute_cams is not None:

            def cams() -> None:
                for x, y in batches:
                    compute_cams(model, x, y, amp=True)  # bf16 trunk on CUDA, like the plain forward

            cams()  # warm-up
            rows.append(("all 10 CAMs (test)", n_test, min(timed(cams, device) for _ in range(3))))

    print(
        f"Top-1 Cls after {args.epochs} epochs: softmax {after.top1(1):.1f}%, sigmoid {after.top1(2):.1f}%; "
        f"softmax logits bit-identical after fine-tuning: {identical}"
    )
    base_rate = n_test / t_fwd
    print(f"{'step':<24}{'images/s':>12}{'x plain forward time/img':>28}")
    for label, n, t in rows:
        rate = n / t
        print(f"{label:<24}{rate:>12.1f}{base_rate / rate:>28.2f}")
    if not identical:
        raise SystemExit("softmax logits changed during fine-tuning")


if __name__ == "__main__":
    main()
