"""The cams stage decodes images in DataLoader worker processes (`loader_workers`): the batches, the CAM records
and the shards with index.csv are the same bytes with workers as without."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cams.generate import iter_cam_records
from pipeline.cams.store import write_cams
from pipeline.data.images import ImageSet, eval_transform, make_loader
from pipeline.models.dual import DualBranchNet, ModelSpec
from pipeline.stages import common
from pipeline.stages.common import MAX_LOADER_WORKERS, WORKERS_ENV, loader_workers

SIZE = 48
IDS = [f"img{i:02d}.jpg" for i in range(10)]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """Noise JPEGs of several sizes: decoding and the resize are the work the workers take over."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, name in enumerate(IDS):
        pixels = rng.integers(0, 256, (40 + 3 * i, 70 - 2 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name, quality=90)
    return root


def batches(image_root, workers: int, preload: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = ImageSet(
        image_root, IDS, [i % 4 for i in range(len(IDS))], eval_transform(SIZE), approx_bytes=1 if preload else None
    )
    return list(make_loader(data, batch_size=4, train=False, seed=0, workers=workers))


@pytest.mark.parametrize("preload", [False, True], ids=["from_files", "preloaded"])
def test_eval_batches_are_bit_identical_with_workers(image_root, preload):
    alone = batches(image_root, 0, preload)
    assert [len(y) for _, y in alone] == [4, 4, 2]
    for workers in (1, 2):
        got = batches(image_root, workers, preload)
        assert len(got) == len(alone)
        for (x0, y0), (x1, y1) in zip(alone, got, strict=True):
            assert x0.dtype == x1.dtype == torch.float32
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
            assert x0.numpy().tobytes() == x1.numpy().tobytes()


def test_cam_shards_and_index_are_byte_identical_with_workers(image_root, tmp_path):
    """The cams stage's path (iter_cam_records -> write_cams) over a loader with 0 and 2 workers."""
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 4, SIZE, output_stride=16)).eval()
    model.add_sigmoid_head("random")
    data = ImageSet(image_root, IDS, [i % 4 for i in range(len(IDS))], eval_transform(SIZE))
    written = {}
    for workers in (0, 2):
        loader = make_loader(data, batch_size=4, train=False, seed=0, workers=workers)
        records = iter_cam_records(model, loader, IDS, targets=("gt", "pred"))
        written[workers] = tmp_path / f"workers{workers}"
        write_cams(
            written[workers],
            records,
            targets=("gt", "pred"),
            feature_size=model.feature_size,
            dtype="float32",
            shard_size=4,
            info={"workers": "not recorded"},
        )
    files = sorted(p.name for p in written[0].iterdir())
    assert "index.csv" in files and sum(f.startswith("shard_") for f in files) == 3
    assert files == sorted(p.name for p in written[2].iterdir())
    match, mismatch, errors = filecmp.cmpfiles(written[0], written[2], files, shallow=False)
    assert (mismatch, errors) == ([], []) and match == files


def test_loader_workers_follow_the_cpus_and_the_local_ranks(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpus = {"n": 16}
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: set(range(cpus["n"])), raising=False)
    assert loader_workers() == MAX_LOADER_WORKERS  # 16 - 1, capped
    cpus["n"] = 4
    assert loader_workers() == 3  # one CPU for the main process
    cpus["n"] = 1
    assert loader_workers() == 0  # never negative: the main process decodes
    cpus["n"] = 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks on this node share the CPUs
    assert loader_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert loader_workers() == 0
    monkeypatch.setenv(WORKERS_ENV, "5")  # an explicit count wins
    assert loader_workers() == 5
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert loader_workers() == 0
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="PIPELINE_LOADER_WORKERS='many': expected a worker count"):
        loader_workers()
