"""Read and write wsolevaluation-style split metadata.

A split is described by up to four header-less CSV files in one folder (``<path>`` is relative to
the dataset root, labels are 0-based, coordinates are inclusive integer pixels in the original
image resolution):

* ``image_ids.txt``     -- ``<path>``
* ``class_labels.txt``  -- ``<path>,<label>``
* ``image_sizes.txt``   -- ``<path>,<W>,<H>`` (optional; may be missing or empty)
* ``localization.txt``  -- per row either a box ``<path>,<x0>,<y0>,<x1>,<y1>`` (several rows per
  image allowed) or an instance mask ``<path>,<mask_png>,<ignore_png>`` where the ignore path is
  given on the image's first mask row only and left empty on later rows (optional file).

:func:`read_split` validates everything it reads and raises :class:`MetadataError` naming the file
and line of the first problem; :func:`write_split` writes the files byte-deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_IDS = "image_ids.txt"
CLASS_LABELS = "class_labels.txt"
IMAGE_SIZES = "image_sizes.txt"
LOCALIZATION = "localization.txt"

Box = tuple[int, int, int, int]
"""An inclusive pixel box ``(x0, y0, x1, y1)``."""


class MetadataError(ValueError):
    """A metadata file is missing or has a row that breaks the format; the message names the file
    and, where there is one, the 1-based line number."""


@dataclass(frozen=True)
class SplitMetadata:
    """The metadata of one split of a WSOL dataset.

    Attributes:
        image_ids: image paths relative to the dataset root, in file order (unique).
        labels: 0-based class label of every image id.
        sizes: original ``(width, height)`` per image id; may be empty or cover only some images.
        boxes: box datasets: inclusive ``(x0, y0, x1, y1)`` boxes per image id in file order; images
            without boxes are absent. Empty for mask datasets.
        masks: mask datasets: ``(instance_mask_paths, ignore_path)`` per image id, with the instance
            mask paths in file order and ``ignore_path`` ``None`` when the image has none. Paths are
            relative to the mask root. Empty for box datasets.
    """

    image_ids: tuple[str, ...]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    boxes: dict[str, tuple[Box, ...]] = field(default_factory=dict)
    masks: dict[str, tuple[tuple[str, ...], str | None]] = field(default_factory=dict)


def write_split(meta_dir: Path | str, metadata: SplitMetadata) -> None:
    """Write ``metadata`` as the four metadata files into ``meta_dir`` (created if needed).

    Rows follow ``metadata.image_ids`` order; the boxes and instance masks of one image keep their
    given order (an image with both is written boxes first). Every non-empty file ends with a
    newline and empty files have zero bytes, so the same metadata always gives the same bytes.

    Raises:
        ValueError: when ``metadata`` cannot be written as a valid split (duplicate or unknown ids,
            a missing or negative label, an invalid box or size, a field that contains a comma or
            a line break, an image with no instance mask, ...).
    """
    _check_writable(metadata)
    meta_dir = Path(meta_dir)
    meta_dir.mkdir(parents=True, exist_ok=True)
    ids = metadata.image_ids
    localization: list[str] = []
    for image_id in ids:
        for box in metadata.boxes.get(image_id, ()):
            localization.append(",".join([image_id, *map(str, box)]))
        if image_id in metadata.masks:
            mask_paths, ignore_path = metadata.masks[image_id]
            for row, mask_path in enumerate(mask_paths):
                ignore = ignore_path if row == 0 and ignore_path is not None else ""
                localization.append(f"{image_id},{mask_path},{ignore}")
    sizes = metadata.sizes
    files = {
        IMAGE_IDS: list(ids),
        CLASS_LABELS: [f"{i},{metadata.labels[i]}" for i in ids],
        IMAGE_SIZES: [f"{i},{sizes[i][0]},{sizes[i][1]}" for i in ids if i in sizes],
        LOCALIZATION: localization,
    }
    for name, lines in files.items():
        (meta_dir / name).write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


def read_split(meta_dir: Path | str) -> SplitMetadata:
    """Read and validate the split metadata in ``meta_dir``.

    ``image_ids.txt`` and ``class_labels.txt`` are required; ``image_sizes.txt`` and
    ``localization.txt`` may be missing or empty. Each ``localization.txt`` row is classified on
    its own: 5 columns is a box, 3 columns an instance mask. A trailing newline is optional and
    ``\\r\\n`` line ends are accepted.

    Raises:
        MetadataError: naming the file path and line number, for a missing required file, a blank
            line, a row with the wrong number of columns, a non-integer number, a negative label,
            coordinate or non-positive size, a box with ``x1 < x0`` or ``y1 < y0``, an empty path,
            an ignore path on a non-first mask row, an id that is not in ``image_ids.txt``, an id
            listed twice (in any file but ``localization.txt``), or an image without a label.
    """
    meta_dir = Path(meta_dir)

    ids_path = meta_dir / IMAGE_IDS
    id_lines: dict[str, int] = {}
    for lineno, (image_id,) in _rows(ids_path, required=True, widths=(1,), expected="'<path>'"):
        _check_path(ids_path, lineno, image_id, "image path")
        _check_unique(ids_path, lineno, image_id, id_lines)
        id_lines[image_id] = lineno

    labels_path = meta_dir / CLASS_LABELS
    label_lines: dict[str, int] = {}
    labels: dict[str, int] = {}
    for lineno, (image_id, label) in _rows(labels_path, True, (2,), "'<path>,<label>'"):
        _check_known(labels_path, lineno, image_id, id_lines)
        _check_unique(labels_path, lineno, image_id, label_lines)
        label_lines[image_id] = lineno
        labels[image_id] = _int(labels_path, lineno, label, "label", minimum=0)
    for image_id, lineno in id_lines.items():
        if image_id not in labels:
            raise MetadataError(
                f"{ids_path}:{lineno}: image id {image_id!r} has no row in {labels_path}; "
                "expected one '<path>,<label>' row per image id"
            )

    sizes_path = meta_dir / IMAGE_SIZES
    size_lines: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for lineno, (image_id, width, height) in _rows(sizes_path, False, (3,), "'<path>,<W>,<H>'"):
        _check_known(sizes_path, lineno, image_id, id_lines)
        _check_unique(sizes_path, lineno, image_id, size_lines)
        size_lines[image_id] = lineno
        sizes[image_id] = (
            _int(sizes_path, lineno, width, "width W", minimum=1),
            _int(sizes_path, lineno, height, "height H", minimum=1),
        )

    loc_path = meta_dir / LOCALIZATION
    boxes: dict[str, list[Box]] = {}
    mask_paths: dict[str, list[str]] = {}
    ignore_paths: dict[str, str | None] = {}
    expected_loc = "'<path>,<x0>,<y0>,<x1>,<y1>' (box) or '<path>,<mask_png>,<ignore_png>' (mask)"
    for lineno, row in _rows(loc_path, False, (5, 3), expected_loc):
        image_id = row[0]
        _check_known(loc_path, lineno, image_id, id_lines)
        if len(row) == 5:
            boxes.setdefault(image_id, []).append(_box(loc_path, lineno, row[1:]))
            continue
        mask_path, ignore_path = row[1], row[2]
        _check_path(loc_path, lineno, mask_path, "mask path")
        if image_id in mask_paths:
            if ignore_path:
                raise MetadataError(
                    f"{loc_path}:{lineno}: ignore path {ignore_path!r} on a later mask row of "
                    f"{image_id!r}; expected the ignore path on the image's first mask row only"
                )
            mask_paths[image_id].append(mask_path)
        else:
            mask_paths[image_id] = [mask_path]
            ignore_paths[image_id] = ignore_path or None

    return SplitMetadata(
        image_ids=tuple(id_lines),
        labels=labels,
        sizes=sizes,
        boxes={i: tuple(b) for i, b in boxes.items()},
        masks={i: (tuple(m), ignore_paths[i]) for i, m in mask_paths.items()},
    )


def _rows(path: Path, required: bool, widths: tuple[int, ...], expected: str) -> list[tuple[int, list[str]]]:
    """Return ``(line number, fields)`` for every line of the CSV file ``path``, checking that each
    line has one of the column counts in ``widths``; a missing optional file gives no rows."""
    if not path.is_file():
        if required:
            raise MetadataError(f"{path}: required file is missing; expected rows {expected}")
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            raise MetadataError(f"{path}:{lineno}: blank line; expected a row {expected}")
        fields = line.split(",")
        if len(fields) not in widths:
            raise MetadataError(f"{path}:{lineno}: expected a row {expected}, got {len(fields)} column(s): {line!r}")
        rows.append((lineno, fields))
    return rows


def _int(path: Path, lineno: int, text: str, what: str, minimum: int) -> int:
    """Parse the integer field ``text`` and check that it is at least ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise MetadataError(
            f"{path}:{lineno}: {what} {text!r} is not an integer; expected an integer >= {minimum}"
        ) from None
    if value < minimum:
        raise MetadataError(f"{path}:{lineno}: {what} is {value}; expected an integer >= {minimum}")
    return value


def _box(path: Path, lineno: int, fields: list[str]) -> Box:
    """Parse and check the four coordinates of an inclusive ``x0,y0,x1,y1`` box."""
    x0, y0, x1, y1 = (
        _int(path, lineno, text, f"box coordinate {name}", minimum=0)
        for text, name in zip(fields, ("x0", "y0", "x1", "y1"))
    )
    if x1 < x0 or y1 < y0:
        raise MetadataError(f"{path}:{lineno}: box ({x0},{y0},{x1},{y1}) is inverted; expected x0 <= x1 and y0 <= y1")
    return (x0, y0, x1, y1)


def _check_path(path: Path, lineno: int, value: str, what: str) -> None:
    """Reject an empty path field."""
    if not value:
        raise MetadataError(f"{path}:{lineno}: empty {what}; expected a relative file path")


def _check_known(path: Path, lineno: int, image_id: str, id_lines: dict[str, int]) -> None:
    """Reject an image id that ``image_ids.txt`` does not list."""
    if image_id not in id_lines:
        raise MetadataError(
            f"{path}:{lineno}: image id {image_id!r} is not listed in {IMAGE_IDS}; expected only ids from that file"
        )


def _check_unique(path: Path, lineno: int, image_id: str, seen: dict[str, int]) -> None:
    """Reject an image id that an earlier line of the same file already had."""
    if image_id in seen:
        raise MetadataError(
            f"{path}:{lineno}: duplicate image id {image_id!r} (first on line {seen[image_id]}); expected each id once"
        )


def _check_writable(metadata: SplitMetadata) -> None:
    """Check that ``metadata`` is a consistent split that :func:`read_split` would read back."""
    ids = metadata.image_ids
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate image ids in SplitMetadata.image_ids")
    known = set(ids)
    for name, mapping in (
        ("labels", metadata.labels),
        ("sizes", metadata.sizes),
        ("boxes", metadata.boxes),
        ("masks", metadata.masks),
    ):
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"SplitMetadata.{name} has ids not in image_ids, e.g. {unknown[0]!r}")
    fields: list[str] = list(ids)
    for image_id in ids:
        label = metadata.labels.get(image_id)
        if not isinstance(label, int) or label < 0:
            raise ValueError(f"image {image_id!r} needs an integer label >= 0, got {label!r}")
    for image_id, size in metadata.sizes.items():
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image {image_id!r}: invalid size {size!r}; expected (W, H) >= 1")
    for image_id, boxes in metadata.boxes.items():
        if not boxes:
            raise ValueError(f"image {image_id!r}: empty box list; leave it out of boxes instead")
        for box in boxes:
            if len(box) != 4 or min(box) < 0 or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"image {image_id!r} has an invalid box {box!r}")
    for image_id, (mask_paths, ignore_path) in metadata.masks.items():
        if not mask_paths:
            raise ValueError(f"image {image_id!r}: no instance mask; leave it out of masks instead")
        if not all(mask_paths) or ignore_path == "":
            raise ValueError(f"image {image_id!r} has an empty mask or ignore path")
        fields += [*mask_paths, *([ignore_path] if ignore_path is not None else [])]
    bad = [f for f in fields if not f or any(c in f for c in ",\r\n")]
    if bad:
        raise ValueError(f"path {bad[0]!r} is empty or contains a comma or line break")
