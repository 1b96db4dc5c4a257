"""Where a real dataset's files come from: the publisher's archives, the same archives repacked or recompressed,
or the folders a lab extracted them into. One home for finding, checking and reading them.

A dataset (pipeline/data/real/<name>.py) lists its :class:`Part` s: each is one publisher archive (for CUB:
``CUB_200_2011.tgz``, optional ``segmentations.tgz``) with a *marker*, a test that recognises the part's
extracted folder. :func:`locate` looks for every part in the dataset's folder (``datasets.<name>.source_dir``
or ``download.archive_dir/<name>``), in this order:

1. the published archive by its published name (``published``);
2. another archive whose name is the published stem with any archive suffix, e.g. ``CUB_200_2011.tar.xz`` or
   ``CUB_200_2011.zip`` (``archive``: repacked or recompressed);
3. the extracted folder: the shallowest folder, up to :data:`MAX_DEPTH` levels down, that the marker accepts
   (``folder``).

``datasets.<name>.verify: published`` accepts only (1), checked against the published size and checksums;
``verify: content`` accepts any of them. A copy that is not the published archive is identified by its
content: an archive by its md5 (what DVC hashes for a file), a folder by the md5 of every file read from it
(:class:`Reader`), recorded in ``<raw>/source.json``.

Nothing is ever written into the dataset's folder: archives are unpacked into the output's work folder,
files of an extracted folder are copied from it, and checksum stamps live in the archive folder of the
project (``download.archive_dir/.verified``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.fetch import ArchiveError, RemoteFile, extract
from pipeline.data.prepare import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz", ".tar", ".zip")
MAX_DEPTH = 5
"""How many folder levels below the dataset's folder an extracted part is looked for (the localization
challenge's val images lie at ``imagenet-object-localization-challenge/ILSVRC/Data/CLS-LOC/val``, five levels
below the folder that holds the challenge's folder)."""
VERIFY = ("published", "content")


@dataclass(frozen=True)
class Part:
    """One piece of a dataset as its publisher ships it.

    Attributes:
        name: what the messages call it (usually the archive's name).
        published: the publisher's archive (name, URL, size, checksums); None for a part that exists only as
            extracted files (the localization challenge's CSV files).
        marker: does this folder hold the part's extracted content (its root)?
        what: how the extracted folder looks, for messages ("CUB_200_2011/ with images.txt and images/").
    """

    name: str
    published: RemoteFile | None
    marker: Callable[[Path], bool]
    what: str
    reads: Callable[[Path], list[Path] | None] = lambda folder: None
    """The files of the found folder the part reads, where that is less than the whole folder (the localization
    challenge's LOC_val_solution.csv sits at the top of the whole dataset); None: all of it. The fingerprint walks
    only these."""

    @property
    def single_file(self) -> bool:
        """The published file is not an archive (Stanford Cars' ``cars_test_annos_withlabels.mat``): found by its
        name it is read where it lies, like a folder's file; its marker finds a folder holding it."""
        return self.published is not None and not self.published.name.endswith(ARCHIVE_SUFFIXES)

    @property
    def stems(self) -> tuple[str, ...]:
        if self.published is None:
            return ()
        name = self.published.name
        for suffix in ARCHIVE_SUFFIXES:
            if name.endswith(suffix):
                return (name[: -len(suffix)],)
        return (name,)


@dataclass(frozen=True)
class Found:
    """Where one part was found: `kind` is published | archive | folder; `path` the archive or the folder."""

    part: Part
    kind: str
    path: Path

    def describe(self) -> str:
        return {
            "published": f"the published archive {self.path}",
            "archive": f"the archive {self.path} (not the published file name)",
            "folder": f"the extracted folder {self.path}",
        }[self.kind]


def _archives_named(folder: Path, stem: str) -> list[Path]:
    return sorted(folder / f"{stem}{s}" for s in ARCHIVE_SUFFIXES if (folder / f"{stem}{s}").is_file())


def find_folder(root: Path, marker: Callable[[Path], bool], max_depth: int = MAX_DEPTH) -> Path | None:
    """The shallowest folder under `root` (itself included, sorted order within a level) that `marker` accepts.

    Folders whose name starts with '.' are skipped; only folder entries are listed (no stat per file)."""
    level = [Path(root)] if Path(root).is_dir() else []
    for depth in range(max_depth + 1):
        for folder in level:
            if marker(folder):
                return folder
        if depth == max_depth:
            break
        nxt = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    nxt.extend(sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")))
            except OSError:
                continue
        level = nxt
    return None


def locate(folder: Path, parts: Iterable[Part]) -> dict[str, Found | None]:
    """Each part's :class:`Found` in `folder` (None where it is not there), by the order in the module doc."""
    folder = Path(folder)
    out: dict[str, Found | None] = {}
    for part in parts:
        found = None
        if part.published is not None and (folder / part.published.name).is_file():
            found = Found(part, "published", folder / part.published.name)
        else:
            others = [p for stem in part.stems for p in _archives_named(folder, stem)]
            if others:
                found = Found(part, "archive", others[0])
            else:
                hit = find_folder(folder, part.marker)
                if hit is not None:
                    found = Found(part, "folder", hit)
        out[part.name] = found
    return out


# ----------------------------------------------------------------------------------------------------
# Reading a part


class Reader:
    """Read the files of one found part, and record the content they came from.

    An archive is unpacked into ``work/<part>`` on first use (:meth:`unpack` with ``keep`` restricts it to the
    members needed, in one pass) and its files are *moved* into the output; an extracted folder is read in place
    and its files are *copied* (nothing is written into it). :attr:`root` is the part's root folder (the folder
    its marker accepts) either way. A published single file (:attr:`Part.single_file`) is read in place too, from
    its folder (its root).
    """

    def __init__(self, found: Found, work: Path, *, progress: bool = False):
        self.found = found
        self.work = Path(work)
        self.progress = progress
        single = found.kind == "published" and found.part.single_file
        self.owned = found.kind != "folder" and not single
        self.md5s: dict[str, str] = {}  # files read from a folder: relative path -> md5
        self._root: Path | None = None if self.owned else (found.path.parent if single else found.path)

    def unpack(self, keep: Callable[[str], bool] | None = None) -> Path:
        """Unpack the archive (only the members `keep` accepts, if given); the part's root folder."""
        if self._root is None:
            dest = self.work / re.sub(r"[^A-Za-z0-9_.-]", "_", self.found.part.name)
            extract(self.found.path, dest, progress=self.progress, keep=keep)
            root = find_folder(dest, self.found.part.marker)
            if root is None:
                raise ArchiveError(
                    f"{self.found.path}: unexpected layout: no {self.found.part.what} inside it (is it the right file?)"
                )
            self._root = root
        return self._root

    @property
    def root(self) -> Path:
        return self.unpack()

    def path_of(self, rel: str) -> Path:
        """Where the part's file `rel` lies (in the unpacked archive or the user's folder), for messages and tests."""
        return self.root / rel

    def read_bytes(self, rel: str) -> bytes:
        data = (self.root / rel).read_bytes()
        if not self.owned:
            self.md5s[rel] = hashlib.md5(data).hexdigest()
        return data

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def place(self, rel: str, dest: Path) -> None:
        """Put the part's file `rel` at `dest`: moved from an unpacked archive, copied (and hashed) from a folder."""
        src = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.owned:
            os.replace(src, dest)
            return
        md5 = hashlib.md5()
        try:
            with open(src, "rb") as fin, open(dest, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    md5.update(chunk)
                    fout.write(chunk)
        except FileNotFoundError:
            raise DataError(f"{src}: listed in the dataset's annotations but missing") from None
        self.md5s[rel] = md5.hexdigest()

    def place_all(self, rels: Iterable[str], dest_root: Path) -> None:
        for rel in rels:
            self.place(rel, dest_root / rel)

    def content_md5(self, archive_md5: Callable[[Path], str]) -> str:
        """The content identity: the archive's md5, or for a folder the md5 of the sorted (path, md5) list of the
        files read from it, suffixed ``.dir`` as DVC marks a folder's hash."""
        if self.owned:
            return archive_md5(self.found.path)
        listing = "".join(f"{rel}\t{md5}\n" for rel, md5 in sorted(self.md5s.items()))
        return hashlib.md5(listing.encode()).hexdigest() + ".dir"


@dataclass
class Inputs:
    """What :func:`pipeline.data.real.build_dataset` hands a dataset's ``build``: one :class:`Reader` per found
    part (absent parts are missing), and where unpacked archives go."""

    readers: dict[str, Reader]
    work: Path

    def __getitem__(self, name: str) -> Reader:
        return self.readers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.readers


def fingerprint(folder: Path, parts: Iterable[Part]) -> dict:
    """A cheap fingerprint of what :func:`locate` finds: per part its kind, name and the size and mtime of every
    file it holds (a stat walk, no reading), so that the download stage reruns when the files change."""
    out = {}
    for name, found in locate(folder, parts).items():
        if found is None:
            out[name] = None
            continue
        listing = hashlib.md5()
        count = 0
        if found.kind == "folder" and found.part.single_file:  # a folder holding the part's one file
            paths = [found.path / found.part.published.name]
        elif found.kind == "folder" and (only := found.part.reads(found.path)) is not None:
            paths = only
        else:
            paths = (
                [found.path]
                if found.path.is_file()
                else sorted(Path(d) / f for d, _, fs in os.walk(found.path) for f in fs)
            )
        for path in paths:
            st = path.stat()
            rel = path.relative_to(found.path.parent).as_posix()
            listing.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            count += 1
        out[name] = {"kind": found.kind, "name": found.path.name, "files": count, "stat_md5": listing.hexdigest()}
    return out
