"""pipeline/train/cpu_repro.py: with pinned CPU kernels a short training gives the same checkpoint bytes whatever
ISA the process was told to use; without pinning the same two settings give different bytes (measured on AVX2
and, by design, on AVX-512 CPUs).

Each run is a fresh interpreter: ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL's variables are read once, when
torch is imported. The two "machines" are emulated on this CPU: this CPU's best kernels (nothing set) vs an older
CPU's (ATen scalar kernels, oneDNN limited to AVX, MKL limited to SSE4.2). What this cannot show is a real
AVX-512 CPU running the pinned AVX2 kernels (see the module's docstring)."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.train import cpu_repro

ROOT = Path(__file__).resolve().parents[2]

# A baseline-like run (whole net, SGD Nesterov, BatchNorm in train mode), then a fine-tuning-like run (the
# sigmoid head alone on the frozen trunk), on the default backbone (resnet10t, stride 8, layer3) at 32 px.
SCRIPT = r"""
import hashlib, json, os, sys
mode = sys.argv[1]
from pipeline.train import cpu_repro
if mode != "native":
    cpu_repro.pin(mode, threads=1)
import torch
cpu_repro.apply_torch_flags()
if mode == "native":
    torch.set_num_threads(1)
from torch.utils.data import DataLoader, TensorDataset
from pipeline.models.dual import DualBranchNet, ModelSpec
from pipeline.train.loops import finetune_sigmoid_head, train_baseline

torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
x = torch.nn.functional.avg_pool2d(torch.randn(16, 3, 32, 32, generator=g), 3, 1, 1) * 2
y = torch.arange(16) % 4
loader = DataLoader(TensorDataset(x, y), batch_size=8)
model = DualBranchNet(ModelSpec("resnet10t", 4, 32, output_stride=8, feature_stage=3))
cpu = torch.device("cpu")
train_baseline(model, loader, cpu, epochs=1, lr=0.05, lr_classifier_ratio=1.0, lr_decay_every=7, momentum=0.9,
               nesterov=True, weight_decay=5e-4)
digests = {}
def digest():
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode()); h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()
digests["baseline"] = digest()
model.add_sigmoid_head("clone")
finetune_sigmoid_head(model, loader, cpu, epochs=1, lr=0.05, lr_decay_every=3, momentum=0.9, nesterov=True,
                      weight_decay=5e-4, bn_mode="eval")
digests["finetune"] = digest()
digests["capability"] = torch.backends.cpu.get_cpu_capability()
print(json.dumps(digests))
"""

ISA_VARS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MKL_DYNAMIC",
    "OMP_DYNAMIC",
)
THIS_CPU = {}  # this CPU's best kernels
OLDER_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def train(mode: str, isa_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARS}
    env.update(isa_env, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_avx2 = pytest.mark.skipif(not {"avx2", "fma"} <= cpu_repro.cpu_flags(), reason="this CPU has no AVX2/FMA")


@needs_avx2
def test_pinned_avx2_kernels_give_the_same_bytes_whatever_the_isa_settings():
    runs = [("avx2", THIS_CPU), ("avx2", OLDER_CPU), ("native", THIS_CPU), ("native", OLDER_CPU)]
    with ThreadPoolExecutor(2) as pool:  # one intra-op thread each: two runs at a time
        a, b, n, m = pool.map(lambda run: train(*run), runs)
    assert a["capability"] == b["capability"] == "AVX2"
    assert a["baseline"] == b["baseline"]
    assert a["finetune"] == b["finetune"]
    # the test can fail: the same two settings, unpinned, train different weights
    assert n["capability"] != m["capability"]
    assert n["baseline"] != m["baseline"]
    assert n["finetune"] != m["finetune"]


def test_pin_refuses_after_torch_import_and_without_a_thread_count(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    with pytest.raises(RuntimeError, match="before torch is imported"):
        cpu_repro.pin("avx2", threads=1)
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(ValueError, match="fixed thread count"):
        cpu_repro.pin("portable", threads=None)
    with pytest.raises(ValueError, match="not valid"):
        cpu_repro.pin("fast", threads=1)
