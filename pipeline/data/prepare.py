"""The preprocess step: raw wsolevaluation layout -> a few prepared tables.

Works on any dataset in the raw layout (SynthBirds now; CUB, Cars, ImageNet, OpenImages later):

    <raw>/images/<image_id>                 images
    <raw>/metadata/<split>/*.txt            box view (wsolevaluation format)
    <raw>/masks/<mask path>                 instance and ignore masks (mask datasets)
    <raw>/metadata_mask/<split>/*.txt       mask view (optional)
    <raw>/classes.txt                       `<label>,<name>` (optional)

Every listed image must exist and have a readable header whose size equals `image_sizes.txt`; the sizes
are read from the headers (PIL `Image.open(...).size`, no decode) in a pool of processes, one per CPU
(`read_image_sizes`). A file that is missing, not an image or has a header PIL cannot parse fails here with
a DataError naming it, and so does a JPEG (or MPO) that does not end with the EOI marker FF D9 or a PNG
that does not end with its IEND chunk -- a file cut short -- unless a full decode of that file succeeds
(data after the end marker is allowed, as the decoder allows it). Damage inside the body of a file whose
header and end are intact (a corrupt JPEG scan, a broken PNG data stream) is not looked for here: the file
fails, with its path, when training or the cams first decode it (`pipeline.data.images.load_rgb`). The
first bad image in listing order is the one reported, whatever the pool's order of work. GT boxes are
rescaled to the evaluation grid by independent truncation, `x' = int(x * S / W)`, `y' = int(y * S / H)`
(METHOD.md 4.3), as wsolevaluation's `resize_bbox`; masks are read as its `load_mask_image` does (OpenCV,
INTER_NEAREST: `read_mask`), thresholded > 0.5 and OR-ed over instances, and the ignore region minus the
foreground is kept apart (METHOD.md 4.5; `read_gt_mask`).

Writes (no file per image):
    images.csv       split,image_id,label,width,height  (one row per image, metadata order)
    boxes.csv        split,image_id,x0,y0,x1,y1,ex0,ey0,ex1,ey1  (original and evaluation-grid boxes)
    <split>_mask_fg.npy, <split>_mask_ignore.npy   (N, S*S/8) bit-packed masks, image order (if masks)
    dataset.json     dataset name, class names, evaluation size, counts, image root
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.wsol import MetadataError, SplitMetadata, read_split
from pipeline.io import atomic_dir, write_json, write_npy, write_text
from pipeline.progress import bar_disabled

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
FORMAT = 1


class DataError(ValueError):
    """Raw data that cannot be prepared: the message names the file and what is wrong."""


def rescale_box(
    box: tuple[int, int, int, int], width: int, height: int, size: int | tuple[int, int]
) -> tuple[int, int, int, int]:
    """Map an inclusive original-resolution box onto a size x size (or (width, height) = size) grid by
    truncation, `x' = int(x * S / W)` (METHOD.md 4.3, wsolevaluation's `resize_bbox`)."""
    x0, y0, x1, y1 = box
    new_w, new_h = (size, size) if isinstance(size, int) else size
    return (int(x0 * new_w / width), int(y0 * new_h / height), int(x1 * new_w / width), int(y1 * new_h / height))


def read_mask(path: Path, size: int) -> np.ndarray:
    """One mask PNG on the size x size evaluation grid, as wsolevaluation's `load_mask_image` reads it:
    `cv2.imread(IMREAD_GRAYSCALE)` as float32, `cv2.resize` with INTER_NEAREST (pixel x takes source pixel
    floor(x * W / size); Pillow's NEAREST takes floor((x + 0.5) * W / size) and picks other pixels), then
    `> 0.5` after scaling to [0, 1]. For 0/255 masks (OpenImages) that is the official `> 0.5` on the raw
    grey values; for CUB's soft segmentations (grey = fraction of 5 annotators) it is a majority vote."""
    try:
        data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: mask listed in the metadata is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: mask cannot be read ({exc})") from exc
    grey = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if grey is None:
        raise DataError(f"{path}: mask cannot be decoded (not an image OpenCV can read)")
    grid = cv2.resize(np.float32(grey), (size, size), interpolation=cv2.INTER_NEAREST)
    return grid / 255.0 > 0.5


def read_gt_mask(
    mask_root: Path, instances: tuple[str, ...] | list[str], ignore_path: str | None, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (foreground, ignore) bool masks of one image on the grid (wsolevaluation's `get_mask`): the
    foreground is the union of the instance masks, the ignore region the ignore mask minus the foreground
    (all False without an ignore file)."""
    fg = np.zeros((size, size), dtype=bool)
    for rel in instances:
        fg |= read_mask(Path(mask_root) / rel, size)
    ignore = read_mask(Path(mask_root) / ignore_path, size) & ~fg if ignore_path else np.zeros_like(fg)
    return fg, ignore


# The last bytes of a complete file, per PIL format: a file cut short lacks them. JPEG (and MPO, a JPEG
# followed by more JPEGs) ends with the EOI marker; PNG with the IEND chunk (length 0, type, CRC).
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}
SIZE_CHUNK = 64  # images per task of the size pool (a few ms of work): small pickles, even shares
SIZE_MIN_PARALLEL = 512  # fewer images: one process (starting the pool, tens of ms, would eat the gain)


def _decoded_size(path: Path) -> tuple[int, int]:
    """Decode the image fully and return its size; the error names the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image listed in the metadata is missing") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: image cannot be decoded ({exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of one image from its header, without decoding the pixels.

    A missing file, a file that is not an image or a header PIL cannot parse raises a DataError naming the
    file. The end of the file is checked too (`END_MARKERS`): a JPEG or PNG whose last bytes are not its end
    marker -- cut short, or followed by extra data -- is decoded in full, as every image was before, and
    fails if that decode fails. Formats without a known end marker are decoded in full as well.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            size = im.size
            if _has_end_marker(im):
                return size
    except FileNotFoundError:
        raise DataError(f"{path}: image listed in the metadata is missing") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: image cannot be decoded ({exc})") from exc
    decoded = _decoded_size(path)
    if decoded != size:  # never seen: a header that disagrees with the decoded pixels
        raise DataError(f"{path}: image header says {size[0]}x{size[1]} but it decodes to {decoded[0]}x{decoded[1]}")
    return decoded


def _has_end_marker(im: Image.Image) -> bool:
    """Whether the open image's file ends with its format's end marker (False: unknown format, or unsure)."""
    marker = END_MARKERS.get(im.format or "")
    fp = getattr(im, "fp", None)
    if marker is None or fp is None:
        return False
    try:
        length = fp.seek(0, os.SEEK_END)
        if length < len(marker):
            return False
        fp.seek(length - len(marker))
        return fp.read(len(marker)) == marker
    except (OSError, ValueError):  # not seekable, or a read error: the full decode will tell
        return False


def _sizes_or_errors(root: str, image_ids: list[str]) -> list[tuple[int, int] | Exception]:
    """`image_size` of each `root/image_id`, or the exception it raised (one task of the size pool)."""
    out: list[tuple[int, int] | Exception] = []
    for image_id in image_ids:
        try:
            out.append(image_size(Path(root) / image_id))
        except Exception as exc:  # noqa: BLE001 - handed back in order, raised by the caller at its turn
            out.append(exc)
    return out


def default_workers() -> int:
    """Processes for the size pool: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _SizePool:
    """A process pool that yields image sizes in listing order, at most `2 * workers` chunks in flight."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _SizePool:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def sizes(self, root: Path, image_ids: list[str]) -> Iterator[tuple[int, int] | Exception]:
        """Per image id, in order: its size or the exception `image_size` raised for it."""
        if self.workers <= 1 or len(image_ids) < SIZE_MIN_PARALLEL:
            for image_id in image_ids:
                yield from _sizes_or_errors(str(root), [image_id])
            return
        if self.pool is None:
            # fork on Linux (as synthbirds' generator): no re-import in the workers; spawn elsewhere
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
        chunks = (image_ids[i : i + SIZE_CHUNK] for i in range(0, len(image_ids), SIZE_CHUNK))
        pending: deque[Future] = deque()
        try:
            for chunk in chunks:
                pending.append(self.pool.submit(_sizes_or_errors, str(root), chunk))
                if len(pending) >= 2 * self.workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:  # stopped early (an error): drop the work not started
                future.cancel()


def read_image_sizes(root: Path, image_ids: list[str], *, workers: int | None = None) -> list[tuple[int, int]]:
    """`image_size` of every `root/image_id`, in parallel (`workers` processes, default one per CPU); the
    error raised is that of the first bad image in `image_ids` order."""
    with _SizePool(default_workers() if workers is None else workers) as pool:
        sizes = []
        for result in pool.sizes(Path(root), list(image_ids)):
            if isinstance(result, Exception):
                raise result
            sizes.append(result)
        return sizes


@dataclass(frozen=True)
class PreparedSplit:
    image_ids: list[str]
    labels: list[int]
    sizes: list[tuple[int, int]]


def prepare_dataset(
    raw_dir: Path,
    out_dir: Path,
    *,
    dataset: str,
    num_classes: int,
    eval_size: int,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Check the raw dataset and write the prepared tables to `out_dir` (replaced atomically).

    Image sizes come from the headers, read by `workers` processes (default: one per CPU; the outputs do
    not depend on it). The checks run in listing order, so the error raised is always that of the first
    bad row or image. Returns the summary written to dataset.json.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    image_root, mask_root = raw_dir / "images", raw_dir / "masks"
    splits: dict[str, SplitMetadata] = {}
    mask_views: dict[str, SplitMetadata] = {}
    for split in SPLITS:
        meta_dir = raw_dir / "metadata" / split
        if not meta_dir.is_dir():
            if split in REQUIRED_SPLITS:
                raise DataError(
                    f"{meta_dir}: metadata folder missing; a dataset needs "
                    f"{', '.join(REQUIRED_SPLITS)} (run the download stage)"
                )
            continue
        try:
            splits[split] = read_split(meta_dir)
            if (raw_dir / "metadata_mask" / split).is_dir():
                mask_views[split] = read_split(raw_dir / "metadata_mask" / split)
        except MetadataError as exc:
            raise DataError(str(exc)) from exc

    image_rows, box_rows, counts, n_boxes = [], [], {}, 0
    with atomic_dir(out_dir) as tmp, _SizePool(default_workers() if workers is None else workers) as pool:
        for split, meta in splits.items():
            ids = list(meta.image_ids)
            header_sizes = pool.sizes(image_root, ids)
            for image_id, size in zip(
                tqdm(ids, desc=f"check {split} images", disable=bar_disabled(progress), leave=False), header_sizes
            ):
                label = meta.labels[image_id]
                if not 0 <= label < num_classes:
                    raise DataError(
                        f"{raw_dir}/metadata/{split}/class_labels.txt: {image_id} has label "
                        f"{label}; valid labels are 0..{num_classes - 1} (num_classes={num_classes})"
                    )
                if isinstance(size, Exception):
                    raise size
                width, height = size
                listed = meta.sizes.get(image_id)
                if listed is not None and listed != (width, height):
                    raise DataError(
                        f"{raw_dir}/metadata/{split}/image_sizes.txt: {image_id} is listed as "
                        f"{listed[0]}x{listed[1]} but the image is {width}x{height}"
                    )
                image_rows.append((split, image_id, label, width, height))
                for box in meta.boxes.get(image_id, ()):
                    if box[2] >= width or box[3] >= height:
                        raise DataError(
                            f"{raw_dir}/metadata/{split}/localization.txt: box {box} of {image_id} "
                            f"lies outside the {width}x{height} image"
                        )
                    box_rows.append((split, image_id, *box, *rescale_box(box, width, height, eval_size)))
                    n_boxes += 1
            counts[split] = len(ids)
            if split in mask_views:
                fg, ignore = _pack_masks(ids, mask_views[split], mask_root, eval_size)
                write_npy(tmp / f"{split}_mask_fg.npy", fg)
                write_npy(tmp / f"{split}_mask_ignore.npy", ignore)
        write_text(tmp / "images.csv", _csv(("split", "image_id", "label", "width", "height"), image_rows))
        write_text(
            tmp / "boxes.csv", _csv(("split", "image_id", "x0", "y0", "x1", "y1", "ex0", "ey0", "ex1", "ey1"), box_rows)
        )
        summary = {
            "format": FORMAT,
            "dataset": dataset,
            "num_classes": num_classes,
            "eval_size": eval_size,
            "image_root": image_root.as_posix(),
            "counts": counts,
            "boxes": n_boxes,
            "mask_splits": sorted(mask_views),
            "class_names": _class_names(raw_dir, num_classes),
        }
        write_json(tmp / "dataset.json", summary)
    return summary


def _pack_masks(ids: list[str], view: SplitMetadata, mask_root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground (OR of instances) and ignore-minus-foreground masks on the grid, bit-packed per image."""
    fg = np.zeros((len(ids), size * size), dtype=bool)
    ignore = np.zeros_like(fg)
    for i, image_id in enumerate(ids):
        instances, ignore_path = view.masks.get(image_id, ((), None))
        image_fg, image_ignore = read_gt_mask(mask_root, instances, ignore_path, size)
        fg[i], ignore[i] = image_fg.ravel(), image_ignore.ravel()
    return np.packbits(fg, axis=1), np.packbits(ignore, axis=1)


def _class_names(raw_dir: Path, num_classes: int) -> list[str]:
    path = raw_dir / "classes.txt"
    names = [str(i) for i in range(num_classes)]
    if path.is_file():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            label, _, name = line.partition(",")
            if not label.isdigit() or not 0 <= int(label) < num_classes:
                raise DataError(f"{path}:{lineno}: expected '<label>,<name>' with label in 0..{num_classes - 1}")
            names[int(label)] = name
    return names


def _csv(header: tuple[str, ...], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# Reading prepared tables


@dataclass(frozen=True)
class Prepared:
    root: Path
    info: dict
    images: dict[str, PreparedSplit]

    @property
    def image_root(self) -> Path:
        return Path(self.info["image_root"])

    def split(self, name: str) -> PreparedSplit:
        if name not in self.images:
            raise DataError(f"{self.root}: no '{name}' split was prepared (have: {', '.join(self.images)})")
        return self.images[name]

    def approx_bytes(self, name: str) -> int:
        return sum(w * h * 3 for w, h in self.split(name).sizes)


def load_prepared(root: Path, *, dataset: str | None = None, num_classes: int | None = None) -> Prepared:
    """Read dataset.json and images.csv; with `dataset`/`num_classes`, check they match the params."""
    root = Path(root)
    info_path = root / "dataset.json"
    if not info_path.is_file():
        raise DataError(f"{info_path}: missing; run the preprocess stage first (dvc repro preprocess)")
    info = json.loads(info_path.read_text())
    if dataset is not None and info.get("dataset") != dataset:
        raise DataError(f"{info_path}: prepared for dataset '{info.get('dataset')}', params ask for '{dataset}'")
    if num_classes is not None and info.get("num_classes") != num_classes:
        raise DataError(f"{info_path}: prepared with {info.get('num_classes')} classes, params ask for {num_classes}")
    images: dict[str, PreparedSplit] = {}
    with open(root / "images.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            s = images.setdefault(row["split"], PreparedSplit([], [], []))
            s.image_ids.append(row["image_id"])
            s.labels.append(int(row["label"]))
            s.sizes.append((int(row["width"]), int(row["height"])))
    return Prepared(root, info, images)


@dataclass(frozen=True)
class GroundTruth:
    """Evaluation-grid ground truth of one split, in prepared image order."""

    image_ids: list[str]
    labels: np.ndarray  # (N,) int64
    boxes: list[np.ndarray]  # per image (n_i, 4) int64 (x0, y0, x1, y1) on the grid, file order
    fg: np.ndarray | PackedMasks | None  # (N, S, S) bool foreground, or None without masks
    ignore: np.ndarray | PackedMasks | None  # (N, S, S) bool ignore region (already minus the foreground)
    size: int


def unpack_masks(packed: np.ndarray, size: int) -> np.ndarray:
    """Invert `_pack_masks` (`np.packbits(mask.reshape(N, size*size), axis=1)`):
    (N, ceil(size*size / 8)) uint8 -> (N, size, size) bool."""
    packed = np.asarray(packed)
    expected = -(-size * size // 8)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != expected:
        raise ValueError(
            f"packed masks must be uint8 of shape (N, {expected}) for size {size}; got {packed.dtype} {packed.shape}"
        )
    bits = np.unpackbits(packed, axis=1, count=size * size)
    return bits.reshape(len(packed), size, size).astype(bool)


class PackedMasks:
    """(N, S, S) bool masks kept bit-packed as prepared (S * S / 8 bytes per image, not S * S): indexing
    unpacks only the images asked for (`masks[start:stop]`, `masks[i, y0:y1, x0:x1]`), so evaluation holds one
    block's masks at a time; `np.asarray(masks)` unpacks them all."""

    def __init__(self, packed: np.ndarray, size: int) -> None:
        unpack_masks(np.asarray(packed)[:0], size)  # checks dtype and shape
        self.packed, self.size = np.asarray(packed), size

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.packed), self.size, self.size)

    def __getitem__(self, index):
        rest: tuple = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        sub = self.packed[index]
        out = unpack_masks(sub.reshape(-1, sub.shape[-1]), self.size)
        if sub.ndim == 1:
            return out[0][rest] if rest else out[0]
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = unpack_masks(self.packed, self.size)
        return out if dtype is None else out.astype(dtype)


def load_ground_truth(root: Path, split: str) -> GroundTruth:
    """Read the GT boxes (and masks, where prepared) of `split` from a prepared folder."""
    prepared = load_prepared(root)
    data = prepared.split(split)
    size = int(prepared.info["eval_size"])
    boxes: dict[str, list[tuple[int, ...]]] = {i: [] for i in data.image_ids}
    with open(Path(root) / "boxes.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == split:
                boxes[row["image_id"]].append(tuple(int(row[k]) for k in ("ex0", "ey0", "ex1", "ey1")))
    fg = ignore = None
    if split in prepared.info.get("mask_splits", []):
        fg = PackedMasks(np.load(Path(root) / f"{split}_mask_fg.npy"), size)
        ignore = PackedMasks(np.load(Path(root) / f"{split}_mask_ignore.npy"), size)
    return GroundTruth(
        list(data.image_ids),
        np.asarray(data.labels, dtype=np.int64),
        [np.asarray(boxes[i], dtype=np.int64).reshape(-1, 4) for i in data.image_ids],
        fg,
        ignore,
        size,
    )
