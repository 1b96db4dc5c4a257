"""`seed_everything` turns on PyTorch's deterministic algorithms (warn-only) in every stage process, without
importing torch._inductor when nothing else did (its import alone costs seconds per stage)."""

import subprocess
import sys

import pytest

PROBE = """
import sys
import torch
{before}
from pipeline.stages.common import seed_everything
seed_everything(3)
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      "torch._inductor" in sys.modules, torch.initial_seed())
if "torch._inductor.config" in sys.modules:
    import torch._inductor.config as c
    print(c.deterministic)
"""


@pytest.mark.parametrize(
    "before,expected",
    [
        ("", ["True True False 3"]),
        ("import torch._inductor.config", ["True True True 3", "True"]),  # loaded: the public call sets its flag too
    ],
)
def test_seed_everything_sets_deterministic_algorithms(before, expected):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert [line for line in out if line] == expected
