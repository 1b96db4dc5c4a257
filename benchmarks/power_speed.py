"""resnet10t per-image cost at candidate (input px, output_stride): a baseline train step (fwd+bwd+SGD) and a
trunk forward (fine-tuning / cams lower bound), batch 32, this process's threads; a warm-up step, then rounds
interleaved over configs, medians; ratios against the current default (96 px, stride 16) measured in the same run."""

import sys
import time

sys.path.insert(
    0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
)
import torch

from pipeline.models.dual import DualBranchNet, ModelSpec

torch.manual_seed(0)
configs = [(96, 16), (96, 8), (128, 8), (192, 16)]
models = {}
for size, stride in configs:
    m = DualBranchNet(ModelSpec(backbone="resnet10t", num_classes=10, input_size=size, output_stride=stride))
    models[(size, stride)] = (m, torch.optim.SGD(m.parameters(), lr=0.01), torch.randn(32, 3, size, size))
y = torch.randint(0, 10, (32,))


def logits(m, x):
    out = m(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def train(c):
    m, opt, x = models[c]
    m.train()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(logits(m, x), y).backward()
    opt.step()


def fwd(c):
    m, _, x = models[c]
    m.eval()
    with torch.no_grad():
        logits(m, x)


res = {c: {"train": [], "fwd": []} for c in configs}
for c in configs:
    train(c)
    fwd(c)
for _ in range(5):
    for c in configs:
        for kind, fn in (("train", train), ("fwd", fwd)):
            t = time.perf_counter()
            fn(c)
            res[c][kind].append((time.perf_counter() - t) / 32)


def med(v):
    return sorted(v)[len(v) // 2]


base = {k: med(res[configs[0]][k]) for k in ("train", "fwd")}
for c in configs:
    fs = models[c][0].feature_size
    print(
        f"{c[0]}px stride {c[1]} (features {fs}): train {med(res[c]['train']) * 1e3:.1f} ms/img "
        f"({med(res[c]['train']) / base['train']:.2f}x), "
        f"forward {med(res[c]['fwd']) * 1e3:.1f} ms/img ({med(res[c]['fwd']) / base['fwd']:.2f}x)"
    )
print("threads", torch.get_num_threads())
