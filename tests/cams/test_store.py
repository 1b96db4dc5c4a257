"""CAM shards: streaming, fixed boundaries, byte-determinism, read-back and clear errors."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.cams.engine import compute_cams
from pipeline.cams.generate import iter_cam_records
from pipeline.cams.store import CamRecord, iter_shards, open_cams, read_cams, write_cams
from pipeline.models.dual import DualBranchNet, ModelSpec

SHAPE = (1, 2, 2, 5, 3, 3)


def records(n, seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return [
        CamRecord(f"img{i}.png", i % 3, (i + 1) % 3, 0.5 * i, -0.25 * i, rng.standard_normal(shape)) for i in range(n)
    ]


def test_shards_round_trip_with_fixed_boundaries(tmp_path):
    recs = records(7)
    manifest = write_cams(
        tmp_path / "c",
        iter(recs),
        targets=("gt",),
        feature_size=(3, 3),
        dtype="float32",
        shard_size=3,
        info={"backbone": "x"},
    )
    assert [s["images"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["images"] == 7 and manifest["backbone"] == "x"
    cams = read_cams(tmp_path / "c")
    np.testing.assert_array_equal(cams.maps, np.stack([r.maps for r in recs]).astype(np.float32))
    assert [r["image_id"] for r in cams.index] == [r.image_id for r in recs]
    assert [(int(r["shard"]), int(r["offset"])) for r in cams.index] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
    ]
    sel = cams.select(part="neg", branch="sigmoid", variant="xgradcam")
    np.testing.assert_array_equal(sel, np.stack([r.maps[0, 1, 1, 3] for r in recs]).astype(np.float32))
    with pytest.raises(ValueError, match="variant: 'gradcam\\+\\+' is not in this CAM set; choose one of: cam, "):
        cams.select(part="pos", branch="softmax", variant="gradcam++")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_streamed_store_reads_any_block_across_shards(tmp_path, dtype):
    """open_cams reads blocks and single map slices with positioned reads, across shard boundaries, equal to
    the whole set read at once; it counts the bytes it read and maps nothing into memory."""
    recs = records(11, seed=3)
    write_cams(tmp_path / "c", iter(recs), targets=("gt",), feature_size=(3, 3), dtype=dtype, shard_size=4, info={})
    whole = read_cams(tmp_path / "c")
    store = open_cams(tmp_path / "c")
    assert len(store) == 11 and store.index == whole.index and store.manifest == whole.manifest
    for start, stop in ((0, 11), (0, 4), (3, 9), (4, 8), (10, 11), (7, 20), (5, 5)):
        np.testing.assert_array_equal(store.block(start, stop), whole.maps[start:stop])
        np.testing.assert_array_equal(whole.block(start, stop), whole.maps[start:stop])
        args = dict(part="neg", branch="sigmoid", variant="layercam")
        np.testing.assert_array_equal(store.maps_of(start, stop, **args), whole.select(**args)[start:stop])
        np.testing.assert_array_equal(whole.maps_of(start, stop, **args), whole.select(**args)[start:stop])
    before = store.bytes_read
    store.block(2, 6)
    assert store.bytes_read - before == 4 * whole.maps[0].nbytes
    assert store.block(0, 3).dtype == np.dtype(dtype) and not isinstance(store.block(0, 3), np.memmap)
    with pytest.raises(ValueError, match="branch: 'head' is not in this CAM set"):
        store.maps_of(0, 2, part="pos", branch="head", variant="cam")
    np.save(tmp_path / "c" / "shard_00001.npy", np.zeros((3, *SHAPE), dtype=dtype))  # one image short
    with pytest.raises(ValueError, match="shard_00001.npy: holds 3 images, the manifest says 4"):
        open_cams(tmp_path / "c")


def test_same_maps_same_bytes_and_float16(tmp_path):
    for name in ("a", "b"):
        write_cams(
            tmp_path / name,
            iter(records(5)),
            targets=("gt",),
            feature_size=(3, 3),
            dtype="float16",
            shard_size=2,
            info={},
        )
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert read_cams(tmp_path / "a").maps.dtype == np.float16


def test_bad_shapes_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="CAM maps of img0.png have shape"):
        write_cams(
            tmp_path / "c",
            iter(records(2, shape=(1, 2, 2, 5, 4, 4))),
            targets=("gt",),
            feature_size=(3, 3),
            dtype="float32",
            shard_size=2,
            info={},
        )
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="cams dtype: 'int8' is not valid"):
        write_cams(tmp_path / "c", iter([]), targets=("gt",), feature_size=(3, 3), dtype="int8", shard_size=2, info={})
    write_cams(
        tmp_path / "c", iter(records(4)), targets=("gt",), feature_size=(3, 3), dtype="float32", shard_size=2, info={}
    )
    (tmp_path / "c" / "shard_00001.npy").unlink()
    with pytest.raises(FileNotFoundError, match="shard_00001.npy: CAM shard listed in .* is missing"):
        list(iter_shards(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="run the cams stage first"):
        read_cams(tmp_path / "nothing")


def test_records_from_engine_match_per_image_computation():
    torch.manual_seed(0)
    model = DualBranchNet(ModelSpec("resnet10t", 4, 48, output_stride=16)).eval()
    model.add_sigmoid_head("random")
    x = torch.randn(5, 3, 48, 48)
    y = torch.tensor([0, 1, 2, 3, 1])
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    recs = list(iter_cam_records(model, loader, [f"i{i}" for i in range(5)], targets=("gt", "pred")))
    assert [r.image_id for r in recs] == ["i0", "i1", "i2", "i3", "i4"]
    for i, rec in enumerate(recs):
        alone = compute_cams(model, x[i : i + 1], y[i : i + 1])
        assert rec.maps.shape == (2, 2, 2, 5, 3, 3)
        np.testing.assert_allclose(rec.maps[0, 0], alone.pos[0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec.maps[0, 1], alone.neg[0].numpy(), rtol=1e-5, atol=1e-6)
        assert rec.pred == int(alone.logits.argmax())
        # a batch of 2 and a batch of 1 sum in another order: the maps' tolerance (a logit can be near 0)
        assert rec.logit_softmax == pytest.approx(alone.logits[0, y[i]].item(), rel=1e-5, abs=1e-6)
        assert rec.logit_sigmoid == pytest.approx(alone.logits2[0, y[i]].item(), rel=1e-5, abs=1e-6)
        by_pred = compute_cams(model, x[i : i + 1], torch.tensor([rec.pred]))
        np.testing.assert_allclose(rec.maps[1, 0], by_pred.pos[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="loader yielded 5 images for 6 image ids"):
        list(iter_cam_records(model, loader, [f"i{i}" for i in range(6)]))
    with pytest.raises(ValueError, match="cams targets: \\['pred'\\] is not valid"):
        list(iter_cam_records(model, loader, ["a"], targets=("pred",)))
