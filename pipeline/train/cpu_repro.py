"""Fixed CPU kernel choices for bit-reproducible CPU training (issue 21, point 4).

A CPU training run is byte-identical when rerun with the same kernels, but PyTorch picks its kernels from the
machine: ATen's vectorised kernels (BatchNorm statistics, softmax, SGD, reductions) by the best ISA the CPU
has (AVX-512 reduces in 16 lanes, AVX2 in 8, so sums come out in another order); oneDNN JIT-compiles its
convolutions for the best ISA; MKL (torch's BLAS here: the linear heads, and ATen's own convolution) picks a
code branch by CPU; and all three split reductions over the intra-op threads, whose number defaults to the
machine's cores. Measured on one AVX2 machine (resnet10t, 96 px, batch 32; /tmp/determinism in the issue's
report), each of these changed the checkpoint bytes of a 6-step baseline epoch: ATEN_CPU_CAPABILITY default vs
avx2, ONEDNN_MAX_CPU_ISA SSE41 vs AVX vs AVX2, MKL_CBWR COMPATIBLE vs unset, 1 vs 2 threads.

`pin(mode, threads)` fixes all four. It sets environment variables, which torch, oneDNN and MKL read once when
torch is first imported, so it must run before anything imports torch (it raises otherwise); `apply_torch_flags`
then sets what only exists after the import (the thread count, oneDNN off in `portable`) and checks the pin
took. Modes:

- `native`: nothing fixed (the fastest kernels of this machine; results depend on its CPU and core count).
- `avx2`: the kernels every AVX2 CPU (x86-64 since about 2013-2015) runs, also on AVX-512 CPUs:
  ATEN_CPU_CAPABILITY=avx2 (ATen's avx2-compiled kernels, the same machine code on every such CPU),
  ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN JIT-generates AVX2 code, not AVX-512), MKL_CBWR=COMPATIBLE (MKL's conditional
  numerical reproducibility: one code branch on every Intel and compatible CPU; it cost nothing measurable
  here), MKL_DYNAMIC/OMP_DYNAMIC=FALSE and a fixed thread count (MKL's reproducibility conditions; ATen and oneDNN
  split work by the thread count too). Cost measured here (AVX2, 1 thread): about 1.0-1.1x (native is AVX2
  here); on an AVX-512 machine it forgoes the AVX-512 kernels (cost not measured). Not verified across real
  machines: whether oneDNN's AVX2 code on an AVX-512 CPU reduces in the same order as on an AVX2 CPU (its
  blocking heuristics read the caches' sizes); ATen's and MKL's parts are the same code by construction.
- `portable`: the kernels every x86-64 CPU runs: ATEN_CPU_CAPABILITY=default (ATen's scalar build), oneDNN off
  (`torch.backends.mkldnn.enabled = False`: ATen's own im2col + MKL GEMM convolution; ONEDNN_MAX_CPU_ISA=SSE41 in
  case anything still reaches oneDNN), MKL_CBWR=COMPATIBLE, a fixed thread count. Nothing in it depends on the
  CPU beyond MKL's documented CNR guarantee, but it cost 2.6-3x a native baseline epoch here.

Results are identical across machines only with the same mode, the same thread count, the same torch/MKL/oneDNN
build (the same wheel), and the same inputs (data order, seeds).
"""

from __future__ import annotations

import os
import sys

MODES = ("native", "avx2", "portable")

_ENV = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"},
    "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
}
_CAPABILITY = {"avx2": "AVX2", "portable": "DEFAULT"}  # torch.backends.cpu.get_cpu_capability() once pinned

_state: dict = {}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pin(mode: str, threads: int | None) -> dict[str, str]:
    """Fix the CPU kernels for `mode` (see the module's docstring) with `threads` intra-op threads; return the
    environment variables set. Must run before torch is first imported; call `apply_torch_flags()` after."""
    if mode not in MODES:
        raise ValueError(f"cpu kernels: '{mode}' is not valid; choose one of: {', '.join(MODES)}")
    if mode == "native":
        _state.update(mode=mode, threads=threads)
        return {}
    if "torch" in sys.modules:
        raise RuntimeError(
            "cpu_repro.pin must run before torch is imported: torch, oneDNN and MKL read their "
            "kernel settings once, at import"
        )
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(
            f"cpu kernels '{mode}' need a fixed thread count (a positive integer), got {threads!r}: "
            f"ATen, oneDNN and MKL split their reductions by it"
        )
    if mode == "avx2" and not {"avx2", "fma"} <= cpu_flags():
        raise ValueError("cpu kernels 'avx2': this CPU has no AVX2/FMA; use 'portable' (or 'native')")
    env = {
        **_ENV[mode],
        "MKL_DYNAMIC": "FALSE",
        "OMP_DYNAMIC": "FALSE",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    os.environ.update(env)
    _state.update(mode=mode, threads=threads)
    return env


def apply_torch_flags() -> None:
    """After `pin` and the first torch import: set the thread count (and, in `portable`, turn oneDNN off) and
    check that torch runs the pinned ATen kernels."""
    mode = _state.get("mode", "native")
    if mode == "native":
        return
    import torch

    torch.set_num_threads(_state["threads"])
    if mode == "portable":
        torch.backends.mkldnn.enabled = False
    got = torch.backends.cpu.get_cpu_capability()
    if got != _CAPABILITY[mode]:
        raise RuntimeError(
            f"cpu kernels '{mode}': torch runs {got} ATen kernels, not {_CAPABILITY[mode]} (was torch "
            f"imported before cpu_repro.pin?)"
        )
