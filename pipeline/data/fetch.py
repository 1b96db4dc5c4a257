"""Fetch, verify and unpack dataset files: a resumable HTTP(S) downloader, a safe archive extractor and a
check of files that users place by hand ("manual" files: Stanford Cars since 2023, ImageNet behind a login).

No DVC in here. The download stage keeps archives in `download.archive_dir` (outside every DVC output),
so a `.part` file left by a killed run is resumed by the next run.

* :func:`download` streams a URL into ``<dest>.part``, resumes an existing ``.part`` with an HTTP
  ``Range`` request (206: append; 200: the server ignored the range, start again; 416: the part is
  already complete), retries a connection that drops mid-file (resuming each time, with a short
  backoff), and checks size and checksum *before* renaming ``.part`` to ``dest``. On a mismatch the
  partial file is deleted and :class:`ChecksumError` names the file, the URL, both checksums and what
  to do.
* :func:`extract` unpacks a tar (plain, .gz, .bz2, .xz) or zip archive into a temporary folder beside
  the destination and renames it into place; members with absolute paths, ``..`` components, links
  or device files are refused, and a corrupt archive leaves nothing behind.
* :func:`check_files` / :func:`require_files` check user-placed files (existence, size, checksum) and
  raise ONE :class:`ManualFilesError` listing every missing or wrong file with the full path where it
  must go and where to get it.
* :func:`fetch_files` ties these together for a list of :class:`RemoteFile`: files already present are
  verified (a small ``.<name>.verified`` stamp avoids re-hashing unchanged multi-GB files), missing
  ones are downloaded (``mode="auto"``) or reported (``mode="manual"``). A file without a published
  checksum (``sha256=None``, OpenImages30k) has its sha256 recorded in ``<name>.sha256`` and printed
  on first download; later runs check against that record.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

CHUNK = 1 << 20
USER_AGENT = "wsol-dvc-pipeline/1 (python urllib)"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(ValueError):
    """A file could not be fetched or unpacked; the message names the file and what to do."""


class ChecksumError(FetchError):
    """A downloaded or placed file has the wrong size or checksum."""


class ArchiveError(FetchError):
    """An archive is corrupt, of an unknown type, or has unsafe members."""


class ManualFilesError(FetchError):
    """Files that must be placed by hand are missing or wrong (one line per file)."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as its publisher distributes it.

    Attributes:
        name: file name in the archive folder (e.g. ``CUB_200_2011.tgz``).
        url: official URL, or None when the file cannot be fetched automatically.
        size: size in bytes, or None when unknown.
        sha256, md5: hex digests, or None when none is published.
        where: where a user can get the file (shown in manual-mode errors).
    """

    name: str
    url: str | None
    size: int | None
    sha256: str | None
    md5: str | None
    where: str

    def describe(self) -> str:
        parts = []
        if self.size is not None:
            parts.append(f"{self.size:,} bytes")
        if self.sha256:
            parts.append(f"sha256 {self.sha256}")
        elif self.md5:
            parts.append(f"md5 {self.md5}")
        return ", ".join(parts)


def bar_disabled(progress: bool) -> bool:
    return (not progress or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
            or not sys.stderr.isatty())


# ----------------------------------------------------------------------------------------------------
# Checksums


def file_digests(path: Path | str, *, progress: bool = False) -> tuple[int, str, str]:
    """Return (size, sha256, md5) of a file, read once."""
    path = Path(path)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"verify {path.name}",
                                      disable=bar_disabled(progress), leave=False) as bar:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            bar.update(len(chunk))
    return size, sha.hexdigest(), md5.hexdigest()


def _mismatch(size: int, sha256: str, md5: str, *, want_size: int | None, want_sha256: str | None,
              want_md5: str | None) -> str | None:
    """What is wrong with a file of this size and digests, or None when it matches."""
    if want_size is not None and size != want_size:
        return f"size is {size:,} bytes, expected {want_size:,} bytes"
    if want_sha256 and sha256 != want_sha256.lower():
        return f"sha256 is {sha256}, expected {want_sha256.lower()}"
    if want_md5 and md5 != want_md5.lower():
        return f"md5 is {md5}, expected {want_md5.lower()}"
    return None


def verify_file(path: Path | str, *, size: int | None = None, sha256: str | None = None,
                md5: str | None = None, progress: bool = False) -> str | None:
    """Return None when `path` has the expected size and checksums, else what is wrong.

    The size is compared first (from `stat`, no hashing) so a wrong-sized file is reported at once.
    """
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size is {actual_size:,} bytes, expected {size:,} bytes"
    if not sha256 and not md5:
        return None
    _, got_sha, got_md5 = file_digests(path, progress=progress)
    return _mismatch(actual_size, got_sha, got_md5, want_size=size, want_sha256=sha256, want_md5=md5)


# ----------------------------------------------------------------------------------------------------
# Download


class _Cut(Exception):
    """The server closed the connection before the announced length arrived."""


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def download(url: str, dest: Path | str, *, size: int | None = None, sha256: str | None = None,
             md5: str | None = None, progress: bool = True, retries: int = 5, backoff: float = 1.0,
             timeout: float = 60.0, chunk_size: int = CHUNK,
             sleep: Callable[[float], None] = time.sleep) -> str:
    """Download `url` to `dest` through ``<dest>.part``, resuming and retrying; return the file's sha256.

    An existing ``<dest>.part`` is resumed with ``Range: bytes=N-``. A connection that fails or ends
    early is retried up to `retries` times in a row (each retry resumes; the wait doubles from `backoff`
    seconds; an attempt that received data resets the count). HTTP errors other than 408/425/429/5xx are not retried. Size and checksums are checked
    before the rename; on a mismatch the partial file is deleted and ChecksumError is raised. An
    existing `dest` is verified and kept (ChecksumError if it does not match).

    Raises:
        FetchError: the server refused the file or the connection failed `retries + 1` times (the
            ``.part`` file is kept, so running again resumes).
        ChecksumError: the complete file has the wrong size or checksum (nothing is left behind).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        problem = verify_file(dest, size=size, sha256=sha256, md5=md5, progress=progress)
        if problem:
            raise ChecksumError(f"{dest}: already exists but its {problem} (expected the file from {url}); "
                                f"delete it and run again to download it afresh")
        return file_digests(dest)[1]
    return _download(url, dest, size=size, sha256=sha256, md5=md5, progress=progress, retries=retries,
                     backoff=backoff, timeout=timeout, chunk_size=chunk_size, sleep=sleep)[0]


def _download(url: str, dest: Path, *, size: int | None, sha256: str | None, md5: str | None, progress: bool,
              retries: int, backoff: float, timeout: float, chunk_size: int,
              sleep: Callable[[float], None]) -> tuple[str, str]:
    """The body of :func:`download` for a missing `dest`; returns (sha256, md5) of the file."""
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:  # longer than the file can be: start again
            part.unlink()
            have = 0
        if size is not None and have == size and have > 0:
            break  # complete already (a run killed between the last byte and the rename)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        received = 0
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if have and resp.status == 206:
                    start = _content_range_start(resp.headers.get("Content-Range"))
                    if start != have:
                        raise _Cut(f"server answered the range request from byte {have} with "
                                   f"Content-Range {resp.headers.get('Content-Range')!r}")
                    mode = "ab"
                else:  # 200: a fresh download, or the server ignored the range: start from zero
                    have, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                length = int(length) if length is not None and length.isdigit() else None
                total = have + length if length is not None else size
                with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                  unit_divisor=1024, desc=dest.name,
                                                  disable=bar_disabled(progress)) as bar:
                    while chunk := resp.read(chunk_size):
                        fh.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if length is not None and received < length:
                    raise _Cut(f"connection closed after {have + received:,} of {have + length:,} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                break  # nothing left to send: the part is complete (verified below)
            if exc.code not in RETRY_STATUS or failures >= retries:
                hint = (" The file is not (or no longer) at this URL: check DATA.md section 3 for a mirror, or "
                        f"place the file at {dest} yourself." if exc.code in (401, 403, 404, 410) else "")
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason} while downloading {dest.name}.{hint}") \
                    from None
            failures += 1
        except (_Cut, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if received:  # the attempt made progress: a fresh budget of retries for the rest
                failures = 0
            if failures >= retries:
                raise FetchError(
                    f"{url}: download of {dest.name} failed {failures + 1} times in a row (last: {exc}). "
                    f"{part.stat().st_size if part.exists() else 0:,} bytes are kept in {part}; "
                    f"run again to resume, or place the complete file at {dest}") from None
            failures += 1
        sleep(backoff * 2 ** (failures - 1))

    actual_size, got_sha, got_md5 = file_digests(part, progress=progress)
    problem = _mismatch(actual_size, got_sha, got_md5, want_size=size, want_sha256=sha256, want_md5=md5)
    if problem:
        part.unlink()
        raise ChecksumError(
            f"{dest.name}: the file downloaded from {url} is wrong: {problem} (sha256 of what arrived: {got_sha}). "
            f"The partial file was deleted. Run again to download it afresh; if it fails again the server "
            f"now serves a different file: get the right one (DATA.md section 3) and place it at {dest}")
    os.replace(part, dest)
    return got_sha, got_md5


# ----------------------------------------------------------------------------------------------------
# Extraction


def _safe_name(name: str, archive: Path) -> str:
    """Return a normalised relative member name, or raise ArchiveError for an unsafe one."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or path.is_absolute():
        raise ArchiveError(f"{archive}: refusing member {name!r}: absolute path (the archive would write "
                           f"outside its folder); the file is not a genuine dataset archive")
    if ".." in path.parts:
        raise ArchiveError(f"{archive}: refusing member {name!r}: '..' in the path (path traversal); "
                           f"the file is not a genuine dataset archive")
    return str(path)


def archive_kind(archive: Path | str) -> str:
    """'tar' or 'zip' from the file's content; raise ArchiveError for anything else."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    raise ArchiveError(f"{archive}: not a tar or zip archive (corrupt, truncated or the wrong file); "
                       f"delete it and run again to download it afresh")


def safe_tar_members(tar: tarfile.TarFile, archive: Path) -> Iterable[tarfile.TarInfo]:
    """Yield the regular files and folders of `tar`, raising ArchiveError for unsafe members."""
    for member in tar:
        _safe_name(member.name, archive)
        if member.issym() or member.islnk():
            raise ArchiveError(f"{archive}: refusing member {member.name!r}: links are not expected in a "
                               f"dataset archive")
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(f"{archive}: refusing member {member.name!r}: not a regular file or folder")
        yield member


def extract_tar_members(tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], dest: Path) -> int:
    """Extract already-checked `members` of an open tar into `dest`; return the number of files."""
    count = 0
    for member in members:
        tar.extract(member, dest, filter="data")
        count += member.isfile()
    return count


def extract(archive: Path | str, dest_dir: Path | str, *, progress: bool = False) -> Path:
    """Unpack a tar(.gz/.tgz/.bz2/.xz) or zip `archive` so that its members lie under `dest_dir`.

    The archive is unpacked into a temporary folder beside `dest_dir`, which then replaces `dest_dir`
    (an existing `dest_dir` is replaced). Members with absolute paths or ``..`` are refused, as are
    links and device files.

    Raises:
        ArchiveError: naming the archive, for an unknown type, a corrupt or truncated archive or an
            unsafe member; neither `dest_dir` nor the temporary folder is left behind.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    kind = archive_kind(archive)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.", suffix=".extract"))
    try:
        try:
            if kind == "tar":
                with tarfile.open(archive, "r:*") as tar:
                    members = safe_tar_members(tar, archive)
                    if not bar_disabled(progress):
                        members = tqdm(members, desc=f"extract {archive.name}", unit="file")
                    extract_tar_members(tar, members, tmp)
            else:
                with zipfile.ZipFile(archive) as zf:
                    infos = zf.infolist()
                    for info in infos:
                        _safe_name(info.filename, archive)
                        if (info.external_attr >> 16) & 0o170000 == 0o120000:
                            raise ArchiveError(f"{archive}: refusing member {info.filename!r}: links are not "
                                               f"expected in a dataset archive")
                    for info in tqdm(infos, desc=f"extract {archive.name}", unit="file",
                                     disable=bar_disabled(progress)):
                        zf.extract(info, tmp)
        except ArchiveError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            # zlib.error is caught by tarfile as ReadError; a bad CRC in a zip is BadZipFile.
            raise ArchiveError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                               f"delete it and run again to download it afresh") from None
        if dest_dir.exists():
            shutil.rmtree(dest_dir)
        os.replace(tmp, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


# ----------------------------------------------------------------------------------------------------
# Files placed by hand, and the fetch of a whole file list


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _read_stamp(path: Path) -> dict | None:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        st = path.stat()
        if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
            return stamp
    except (OSError, ValueError):
        pass
    return None


def _write_stamp(path: Path, sha256: str, md5: str) -> None:
    st = path.stat()
    try:
        _stamp_path(path).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                 "sha256": sha256, "md5": md5}))
    except OSError:
        pass  # a read-only source folder: verify again next time


def recorded_sha256(path: Path) -> str | None:
    record = path.with_name(path.name + ".sha256")
    if record.is_file():
        text = record.read_text().split()
        return text[0] if text else None
    return None


def _expected(spec: RemoteFile, path: Path) -> tuple[str | None, str | None]:
    sha256 = spec.sha256 or recorded_sha256(path)
    return sha256, spec.md5


def _check_present(spec: RemoteFile, path: Path, *, progress: bool) -> str | None:
    """None when the present file `path` matches `spec` (size, checksums), else what is wrong."""
    sha256, md5 = _expected(spec, path)
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size is {size:,} bytes, expected {spec.size:,} bytes (incomplete or a different file)"
    if not sha256 and not md5:
        return None
    stamp = _read_stamp(path)
    if stamp is None:
        size, got_sha, got_md5 = file_digests(path, progress=progress)
        _write_stamp(path, got_sha, got_md5)
    else:
        got_sha, got_md5 = stamp["sha256"], stamp["md5"]
    return _mismatch(size, got_sha, got_md5, want_size=spec.size, want_sha256=sha256, want_md5=md5)


def check_files(files: Sequence[tuple[RemoteFile, Path]], *, progress: bool = False) -> list[str]:
    """Check every (spec, expected path); return one line per missing or wrong file (empty: all good)."""
    problems = []
    for spec, path in files:
        path = Path(path).absolute()
        if not path.is_file():
            what = f" ({spec.describe()})" if spec.describe() else ""
            problems.append(f"{path}: missing{what}. Get it from: {spec.where}")
            continue
        problem = _check_present(spec, path, progress=progress)
        if problem:
            problems.append(f"{path}: {problem}. Replace it with the file from: {spec.where}")
    return problems


def require_files(dataset: str, files: Sequence[tuple[RemoteFile, Path]], *, why: str = "",
                  hint: str = "", progress: bool = False) -> None:
    """Raise one ManualFilesError listing every missing or wrong file of `files` (nothing if all good)."""
    problems = check_files(files, progress=progress)
    if not problems:
        return
    lines = "\n".join(f"  - {p}" for p in problems)
    head = f"{dataset}: {len(problems)} of {len(files)} required file(s) missing or wrong."
    tail = f"\n{hint}" if hint else ""
    raise ManualFilesError(f"{head}{' ' + why if why else ''}\nPlace each file at the path shown, then run "
                           f"the stage again:\n{lines}{tail}", problems)


def fetch_files(dataset: str, files: Sequence[RemoteFile], directory: Path | str, *, mode: str,
                why: str = "", hint: str = "", progress: bool = True,
                download_kwargs: dict | None = None) -> dict[str, Path]:
    """Make every file of `files` present and verified in `directory`; return name -> path.

    ``mode="auto"``: missing files are downloaded from their URL (files without a URL, or all files in
    ``mode="manual"``, must already be there). Present files are always verified. Every missing or
    wrong manual file is reported at once in a ManualFilesError.
    """
    if mode not in ("auto", "manual"):
        raise ValueError(f"mode: {mode!r} is not valid; choose one of: auto, manual")
    directory = Path(directory).absolute()
    paths = {spec.name: directory / spec.name for spec in files}
    manual = [spec for spec in files if mode == "manual" or spec.url is None]
    require_files(dataset, [(spec, paths[spec.name]) for spec in manual], why=why, hint=hint, progress=progress)
    for spec in files:
        if spec in manual:
            continue
        path = paths[spec.name]
        if path.is_file():
            problem = _check_present(spec, path, progress=progress)
            if problem:
                raise ChecksumError(f"{path}: {problem}. Delete it and run again to download it afresh from "
                                    f"{spec.url}, or replace it with the file from: {spec.where}")
            continue
        sha256, md5 = _expected(spec, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"retries": 5, "backoff": 1.0, "timeout": 60.0, "chunk_size": CHUNK, "sleep": time.sleep,
                  **(download_kwargs or {})}
        got_sha, got_md5 = _download(spec.url, path, size=spec.size, sha256=sha256, md5=md5, progress=progress,
                                     **kwargs)
        _write_stamp(path, got_sha, got_md5)
        if not sha256 and not md5:
            path.with_name(path.name + ".sha256").write_text(f"{got_sha}  {spec.name}\n")
            print(f"{dataset}: {spec.name} has no published checksum; recorded sha256 {got_sha} in "
                  f"{path.name}.sha256 (later runs check against it)", file=sys.stderr)
    return paths
