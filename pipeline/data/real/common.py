"""Helpers shared by the real-dataset builders (pipeline/data/real/<dataset>.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pipeline.data.prepare import DataError, read_image_sizes
from pipeline.data.wsol import Box, SplitMetadata, write_split


def image_sizes(root: Path, ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of every `root/<id>` from its header, in parallel (pipeline.data.prepare's reader: one
    home for how an image's size is read and how a bad image is reported, with its path)."""
    ids = list(ids)
    return dict(zip(ids, read_image_sizes(Path(root), ids)))


def clamp_box(x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> Box:
    """Clip an inclusive box to the image: 0 <= x <= width - 1, 0 <= y <= height - 1."""
    x0, x1 = (min(max(v, 0), width - 1) for v in (x0, x1))
    y0, y1 = (min(max(v, 0), height - 1) for v in (y0, y1))
    return (x0, y0, max(x0, x1), max(y0, y1))


def split_off_per_class(
    ids: list[str], labels: dict[str, int], per_class: int, what: str
) -> tuple[list[str], list[str]]:
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
        raise DataError(
            f"val_per_class={per_class} leaves no {what} image for class(es) {short[:5]} "
            f"(they have {min(len(by_class[c]) for c in short)} or fewer); use a smaller val_per_class"
        )
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


def write_metadata(
    out: Path,
    view: str,
    split: str,
    ids: list[str],
    labels: dict[str, int],
    sizes: dict[str, tuple[int, int]],
    boxes: dict[str, tuple[Box, ...]] | None = None,
    masks: dict[str, tuple[tuple[str, ...], str | None]] | None = None,
) -> None:
    """Write one split of one metadata view (`metadata` or `metadata_mask`) in wsolevaluation format."""
    keep = set(ids)
    write_split(
        out / view / split,
        SplitMetadata(
            image_ids=tuple(ids),
            labels={i: labels[i] for i in ids},
            sizes={i: sizes[i] for i in ids if i in sizes},
            boxes={i: b for i, b in (boxes or {}).items() if i in keep and b},
            masks={i: m for i, m in (masks or {}).items() if i in keep},
        ),
    )


def write_classes(out: Path, names: list[str]) -> None:
    """`classes.txt`: `<label>,<name>` per line (read by pipeline.data.prepare for class names)."""
    bad = [n for n in names if "\n" in n or "\r" in n]
    if bad:
        raise DataError(f"class name {bad[0]!r} contains a line break")
    (out / "classes.txt").write_text("".join(f"{label},{name}\n" for label, name in enumerate(names)))
