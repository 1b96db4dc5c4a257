"""Helpers shared by the real-dataset builders (pipeline/data/real/<dataset>.py)."""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from PIL import Image
from tqdm import tqdm

from pipeline.data.fetch import ArchiveError, bar_disabled
from pipeline.data.prepare import DataError
from pipeline.data.wsol import Box, SplitMetadata, write_split


def find_dir(root: Path, marker: str, archive: str, max_depth: int = 3) -> Path:
    """The shallowest folder under `root` (itself included) that contains `marker`; ArchiveError if none."""
    level = [Path(root)]
    for _ in range(max_depth + 1):
        for folder in sorted(level):
            if (folder / marker).exists():
                return folder
        level = [c for folder in level for c in sorted(folder.iterdir()) if c.is_dir()]
    raise ArchiveError(f"{archive}: unexpected layout: no '{marker}' inside it (is it the right file?)")


def move(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` (same file system: instant), creating the parent of `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (no decoding); DataError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image listed in the dataset's annotations is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: image cannot be read ({exc})") from exc


def image_sizes(root: Path, ids: Iterable[str], *, progress: bool, desc: str) -> dict[str, tuple[int, int]]:
    ids = list(ids)
    return {i: image_size(root / i) for i in tqdm(ids, desc=desc, unit="img", disable=bar_disabled(progress),
                                                  leave=False)}


def clamp_box(x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> Box:
    """Clip an inclusive box to the image: 0 <= x <= width - 1, 0 <= y <= height - 1."""
    x0, x1 = (min(max(v, 0), width - 1) for v in (x0, x1))
    y0, y1 = (min(max(v, 0), height - 1) for v in (y0, y1))
    return (x0, y0, max(x0, x1), max(y0, y1))


def split_off_per_class(ids: list[str], labels: dict[str, int], per_class: int,
                        what: str) -> tuple[list[str], list[str]]:
    """Move the first `per_class` ids of each class (in `ids` order) out: return (rest, moved).

    DataError when a class would keep no image in `rest`.
    """
    if per_class == 0:
        return list(ids), []
    by_class: dict[int, list[str]] = defaultdict(list)
    for i in ids:
        by_class[labels[i]].append(i)
    short = sorted(c for c, members in by_class.items() if len(members) <= per_class)
    if short:
        raise DataError(f"val_per_class={per_class} leaves no {what} image for class(es) {short[:5]} "
                        f"(they have {min(len(by_class[c]) for c in short)} or fewer); use a smaller val_per_class")
    moved = {i for members in by_class.values() for i in members[:per_class]}
    return [i for i in ids if i not in moved], [i for i in ids if i in moved]


def first_per_class(ids: list[str], labels: dict[str, int], per_class: int | None) -> list[str]:
    """The first `per_class` ids of each class, in `ids` order (None: all)."""
    if per_class is None:
        return list(ids)
    seen: dict[int, int] = defaultdict(int)
    out = []
    for i in ids:
        if seen[labels[i]] < per_class:
            seen[labels[i]] += 1
            out.append(i)
    return out


def write_metadata(out: Path, view: str, split: str, ids: list[str], labels: dict[str, int],
                   sizes: dict[str, tuple[int, int]], boxes: dict[str, tuple[Box, ...]] | None = None,
                   masks: dict[str, tuple[tuple[str, ...], str | None]] | None = None) -> None:
    """Write one split of one metadata view (`metadata` or `metadata_mask`) in wsolevaluation format."""
    keep = set(ids)
    write_split(out / view / split, SplitMetadata(
        image_ids=tuple(ids), labels={i: labels[i] for i in ids}, sizes={i: sizes[i] for i in ids if i in sizes},
        boxes={i: b for i, b in (boxes or {}).items() if i in keep and b},
        masks={i: m for i, m in (masks or {}).items() if i in keep}))


def write_classes(out: Path, names: list[str]) -> None:
    """`classes.txt`: `<label>,<name>` per line (read by pipeline.data.prepare for class names)."""
    bad = [n for n in names if "\n" in n or "\r" in n]
    if bad:
        raise DataError(f"class name {bad[0]!r} contains a line break")
    (out / "classes.txt").write_text("".join(f"{label},{name}\n" for label, name in enumerate(names)))


def remove_unlisted(root: Path, keep: set[str]) -> int:
    """Delete every file under `root` whose relative path is not in `keep`, then empty folders."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.relative_to(root).as_posix() not in keep:
                path.unlink()
                removed += 1
        if Path(dirpath) != root and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()
    return removed


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
