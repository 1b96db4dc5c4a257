"""Torch datasets over the prepared image index, with the official transforms (METHOD.md 2.3).

Train: resize to (R, R) with R = round(size * 256 / 224) (256 for 224), random crop `size`, horizontal
flip, ImageNet normalisation. Test: resize to (size, size), no crop, same normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Decode every image into memory when the split holds fewer pixels than this (SynthBirds does).
PRELOAD_MAX_BYTES = 1 << 30


def train_transform(size: int) -> transforms.Compose:
    resize = round(size * 256 / 224)
    return transforms.Compose(
        [
            transforms.Resize((resize, resize)),
            transforms.RandomCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(size: int) -> transforms.Compose:
    return transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB; the error names the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image listed in the metadata is missing") from None
    except OSError as exc:
        raise OSError(f"{path}: image cannot be decoded ({exc})") from exc


class ImageSet(Dataset):
    """(image tensor, label) pairs for image ids under `image_root`."""

    def __init__(
        self, image_root: Path, image_ids: list[str], labels: list[int], transform, approx_bytes: int | None = None
    ):
        self.root = Path(image_root)
        self.ids = list(image_ids)
        self.labels = list(labels)
        self.transform = transform
        self.cache: list[Image.Image] | None = None
        if approx_bytes is not None and approx_bytes <= PRELOAD_MAX_BYTES:
            self.cache = [load_rgb(self.root / i) for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.cache[index] if self.cache is not None else load_rgb(self.root / self.ids[index])
        return self.transform(image), self.labels[index]


def make_loader(
    dataset: ImageSet,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    workers: int = 0,
    pin_memory: bool = False,
    sampler=None,
) -> DataLoader:
    """Shuffled (train) or ordered (test) loader; the shuffle order depends on `seed` only. A `sampler`
    (a seeded DistributedSampler, pipeline/dist.py) replaces the shuffle. `pin_memory` and the workers'
    prefetch depth only change speed, never the batches.

    Train loaders start fresh workers every epoch, seeded from `generator`: the random crops and flips of an
    epoch then depend on the generator's state alone, which pipeline/train/resume.py saves and restores.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=workers > 0 and not train,
        prefetch_factor=4 if workers > 0 else None,
    )
