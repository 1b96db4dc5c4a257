"""Official transforms (METHOD.md 2.3), the image dataset and its loader."""

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.images import ImageSet, eval_transform, load_rgb, make_loader, train_transform
from pipeline.train.loops import resolve_device


def test_transforms_resize_crop_and_normalise():
    image = Image.fromarray(np.full((50, 70, 3), 255, dtype=np.uint8))
    train = train_transform(224)
    assert train.transforms[0].size == (256, 256)  # resize (256, 256), aspect not kept, then crop 224
    assert train_transform(96).transforms[0].size == (110, 110)  # same 256/224 ratio at 96 px
    x = eval_transform(96)(image)
    assert x.shape == (3, 96, 96)
    torch.testing.assert_close(
        x[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    assert train(image).shape == (3, 224, 224)


def test_image_set_preloads_and_names_missing_files(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    ds = ImageSet(tmp_path, ["a.png"], [1], eval_transform(8), approx_bytes=192)
    assert ds.cache is not None and len(ds) == 1 and ds[0][1] == 1
    lazy = ImageSet(tmp_path, ["a.png", "missing.png"], [0, 1], eval_transform(8), approx_bytes=None)
    assert lazy.cache is None
    with pytest.raises(FileNotFoundError, match="missing.png: image listed in the metadata is missing"):
        lazy[1]


def test_shuffle_order_depends_on_seed_only(tmp_path):
    for i in range(6):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    ds = ImageSet(tmp_path, [f"{i}.png" for i in range(6)], list(range(6)), eval_transform(4))

    def order(seed: int) -> list[int]:
        return torch.cat([y for _, y in make_loader(ds, batch_size=2, train=True, seed=seed)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert torch.cat([y for _, y in make_loader(ds, batch_size=4, train=False, seed=1)]).tolist() == list(range(6))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use auto or cpu"):
            resolve_device("cuda:0")


def test_eval_transform_is_the_official_test_transform_on_pil_images():
    """wsolevaluation (data_loaders.py) evaluates on `Resize((224, 224))` of the PIL image, then ToTensor and
    Normalize; GT boxes are rescaled to the same grid. Ours must give the same tensor, bit for bit."""
    from torchvision import transforms

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (335, 500, 3), dtype=np.uint8))  # CUB's first test size
    official = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    assert torch.equal(eval_transform(224)(image), official(image))


# --- a damaged image fails with its path when first read (preprocess checks headers and ends only) ---


def damaged_jpegs(root):
    """Three good JPEGs, then one cut short and one whose scan holds a stray SOI marker (header and EOI intact,
    so it passes preprocess); returns their ids."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((64, 48), Image.BICUBIC)
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    files = {f"good{i}.jpg": data for i in range(3)}
    files["cut.jpg"] = data[: len(data) // 2]
    files["body.jpg"] = data[: len(data) // 2] + b"\xff\xd8" + data[len(data) // 2 + 2 :]
    for name, content in files.items():
        (root / name).write_bytes(content)
    return list(files)


def test_truncated_images_are_not_loaded_silently():
    from PIL import ImageFile

    import pipeline.stages.baseline  # noqa: F401  the stages that decode images: nothing may switch it on
    import pipeline.stages.cams  # noqa: F401
    import pipeline.stages.evaluate  # noqa: F401
    import pipeline.stages.finetune  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_rgb_names_a_damaged_file(tmp_path):
    damaged_jpegs(tmp_path)
    assert load_rgb(tmp_path / "good0.jpg").size == (64, 48)
    with pytest.raises(
        OSError, match=re.escape(f"{tmp_path / 'cut.jpg'}: image cannot be decoded (image file is truncated")
    ):
        load_rgb(tmp_path / "cut.jpg")
    with pytest.raises(OSError, match=re.escape(f"{tmp_path / 'body.jpg'}: image cannot be decoded")):
        load_rgb(tmp_path / "body.jpg")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("bad", ["cut.jpg", "body.jpg"])
def test_a_damaged_image_stops_the_loader_with_its_path(tmp_path, workers, bad):
    ids = [i for i in damaged_jpegs(tmp_path) if i.startswith("good") or i == bad]
    ds = ImageSet(tmp_path, ids, list(range(len(ids))), eval_transform(16))  # read lazily, as large sets are
    loader = make_loader(ds, batch_size=2, train=False, seed=0, workers=workers)
    with pytest.raises(OSError, match=re.escape(f"{tmp_path / bad}: image cannot be decoded")):
        for _ in loader:
            pass
    with pytest.raises(OSError, match=re.escape(f"{tmp_path / bad}: image cannot be decoded")):
        ImageSet(tmp_path, ids, list(range(len(ids))), eval_transform(16), approx_bytes=1)  # preloaded
