"""benchmarks/synthetic_workspace.py: the maps keep the invariants of a real cams stage, and the evaluate stage runs
in a tiny workspace exactly as under DVC (one process), scoring every registered variant of both branches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.cams import variants as registry
from pipeline.concepts import BRANCHES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.synthetic_workspace import cam_records, make_workspace  # noqa: E402

NAMES = [v.name for v in registry.for_family(registry.DEFAULT_FAMILY)]
SOURCES = [registry.map_source(v, True) for v in NAMES]


def records(key, n=12, px=64, feature=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    preds = np.where(np.arange(n) % 3 == 0, (labels + 1) % 10, labels)
    boxes = np.full((n, 2, 4), -1)
    boxes[:, 0] = [8, 10, 40, 50]
    ids = tuple(f"test/{i:06d}.jpg" for i in range(n))
    recs = list(
        cam_records(
            ids,
            labels,
            boxes,
            preds,
            px=px,
            feature=feature,
            variants=NAMES,
            sources=SOURCES,
            key=key,
            softmax_key=(5,),
        )
    )
    return np.stack([r.maps for r in recs]), labels, preds


def test_maps_keep_the_invariants_of_a_real_run():
    a, labels, preds = records((1,))
    b, _, _ = records((2,))  # another fine-tuning replicate of the same baseline
    soft, sig = BRANCHES.index("softmax"), BRANCHES.index("sigmoid")
    assert a.shape == (12, 2, 2, 2, len(NAMES), 6, 6) and a.dtype == np.float32
    assert np.array_equal(a[:, :, :, soft], b[:, :, :, soft])  # the frozen softmax head: the same maps
    assert not np.array_equal(a[:, :, :, sig], b[:, :, :, sig])
    for v, source in zip(NAMES, SOURCES):  # CAM = Grad-CAM = XGrad-CAM for GAP-linear heads
        assert np.array_equal(a[:, :, :, :, NAMES.index(v)], a[:, :, :, :, NAMES.index(source)])
    assert len(set(SOURCES)) < len(NAMES)
    right = preds == labels
    assert np.array_equal(a[right, 0], a[right, 1]) and not np.array_equal(a[~right, 0], a[~right, 1])
    assert (a[:, :, 0] >= 0).all() and (a[:, :, 1] <= 0).all()  # pos and neg parts


def test_evaluate_runs_in_a_tiny_workspace(tmp_path):
    ws = make_workspace(
        tmp_path / "ws", 40, 20, size=64, feature=4, baselines=2, bootstrap_resamples=200, log=lambda _: None
    )
    marker = (ws / "workspace.json").stat().st_mtime_ns
    assert (
        make_workspace(ws, 40, 20, size=64, feature=4, baselines=2, bootstrap_resamples=200, log=lambda _: None) == ws
        and (ws / "workspace.json").stat().st_mtime_ns == marker
    )  # reused, not rebuilt
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env.pop("DVC_STAGE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.evaluate"], cwd=ws, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    for v in NAMES:
        for b in BRANCHES:
            m = metrics[v][b]
            assert 0 <= m["maxboxacc_v2"] <= 100 and "pxap" in m and "avg_drop" in m
    assert set(metrics["protocols"]) == {"official", "official_symmetric"}
    assert metrics["dataset"]["test_images"] == 40 and metrics["intervals"]
    assert (ws / "reports" / "intervals.json").is_file()
    assert len(list((ws / "reports" / "plots" / "box_accuracy").glob("*.csv"))) == len(NAMES) * len(BRANCHES)
