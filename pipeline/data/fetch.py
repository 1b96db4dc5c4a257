"""Fetch, verify and unpack dataset files: a resumable HTTP(S) downloader, a safe archive extractor and a
check of files that users place by hand ("manual" files: Stanford Cars since 2023, ImageNet behind a login).

No DVC in here. The download stage keeps archives in `download.archive_dir` (outside every DVC output),
so a `.part` file left by a killed run is resumed by the next run.

* :func:`download` streams a URL into ``<dest>.part``, resumes an existing ``.part`` with an HTTP
  ``Range`` request (206: append; 200: the server ignored the range, start again; 416: the part is
  already complete), retries a connection that drops mid-file (resuming each time, with a short
  backoff; bounded: a few attempts without progress, a total time, a size cap, redirects only to the
  record's hosts), and checks size and checksum *before* renaming ``.part`` to ``dest``. On a mismatch the
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
  on first download, but only when the whole file came in that run, from the URL's origin or a host
  its record allows, with its end announced by the server (a file redirected elsewhere, or possibly
  truncated, is refused, not recorded);
  later runs check against that record.

Why not pooch or torchvision's download helpers (read from their source, pooch 1.9.0 and torchvision 0.29):
neither resumes a download (pooch streams each attempt into a new temporary file that a failure deletes and
retries from byte 0; torchvision's `download_url` has no retry at all), caps the size, or restricts redirects
to allowed hosts (pooch's requests follows any redirect, torchvision follows up to 3 hops to any host);
requests decodes a Content-Encoding, so pooch could write other bytes than the server's file; their checks
hash one algorithm per read of the file (two reads of a 148 GB archive for sha256 and md5). Their extractors
call `extractall` in place: no refusal of links or absolute names (zipfile silently rewrites them), no
`filter="data"` on Python 3.11 (pooch passes it from 3.12, torchvision never), no member selection by
predicate, no atomic replacement; torchvision picks the archive type from the file name, not its content.
What this module takes from libraries: urllib (HTTP, redirects through `HTTPRedirectHandler`), hashlib,
tarfile (its ``data`` filter as a second guard) and zipfile, tqdm.
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
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.progress import bar_disabled

CHUNK = 1 << 20
USER_AGENT = "wsol-dvc-pipeline/1 (python urllib)"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_MAX_SIZE = 200 << 30
"""Size cap of a download whose size is neither recorded nor given (ILSVRC train, the largest file, is
147.9 GB)."""
DEFAULT_MAX_SECONDS = 12 * 3600.0
"""Total time one file's download may take, all attempts together."""


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
        allowed_hosts: hosts besides the URL's own that a download may be redirected to (``"host"``
            exactly, or ``".suffix"`` for any host ending so); a redirect to any other origin is refused.
        max_size: the most bytes a download may bring when ``size`` is unknown (a server that sends no
            Content-Length, or a wrong file, cannot fill the disk); None: :data:`DEFAULT_MAX_SIZE`.
    """

    name: str
    url: str | None
    size: int | None
    sha256: str | None
    md5: str | None
    where: str
    allowed_hosts: tuple[str, ...] = ()
    max_size: int | None = None

    def describe(self) -> str:
        parts = []
        if self.size is not None:
            parts.append(f"{self.size:,} bytes")
        if self.sha256:
            parts.append(f"sha256 {self.sha256}")
        elif self.md5:
            parts.append(f"md5 {self.md5}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# Checksums


def file_digests(path: Path | str, *, progress: bool = False) -> tuple[int, str, str]:
    """Return (size, sha256, md5) of a file, read once."""
    path = Path(path)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"verify {path.name}",
            disable=bar_disabled(progress),
            leave=False,
        ) as bar,
    ):
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            bar.update(len(chunk))
    return size, sha.hexdigest(), md5.hexdigest()


def _mismatch(
    size: int, sha256: str, md5: str, *, want_size: int | None, want_sha256: str | None, want_md5: str | None
) -> str | None:
    """What is wrong with a file of this size and digests, or None when it matches."""
    if want_size is not None and size != want_size:
        return f"size is {size:,} bytes, expected {want_size:,} bytes"
    if want_sha256 and sha256 != want_sha256.lower():
        return f"sha256 is {sha256}, expected {want_sha256.lower()}"
    if want_md5 and md5 != want_md5.lower():
        return f"md5 is {md5}, expected {want_md5.lower()}"
    return None


def verify_file(
    path: Path | str,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = False,
) -> str | None:
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


def download(
    url: str,
    dest: Path | str,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    chunk_size: int = CHUNK,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_size: int | None = None,
    allowed_hosts: Sequence[str] = (),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Download `url` to `dest` through ``<dest>.part``, resuming and retrying; return the file's sha256.

    An existing ``<dest>.part`` is resumed with ``Range: bytes=N-``. A connection that fails or ends
    early is retried, each retry resuming, the wait doubling from `backoff` seconds. Bounds, so that no
    server can keep it busy forever:

    * at most `retries` failed attempts in a row *without progress*; progress means the ``.part`` file
      grew past its largest size so far (a server that drops the connection and ignores ``Range`` makes
      none, however many bytes each attempt brings);
    * at most `max_seconds` in all (checked between attempts and while reading);
    * at most `size` bytes when the size is known, else `max_size` (:data:`DEFAULT_MAX_SIZE` if None):
      a larger Content-Length is refused before reading, and a body without one is cut at the cap;
    * redirects only within the URL's origin (scheme, host, port) or to `allowed_hosts`, never from
      https to http.

    HTTP errors other than 408/425/429/5xx are not retried. Size and checksums are checked before the
    rename; on a mismatch the partial file is deleted and ChecksumError is raised. An existing `dest`
    is verified and kept (ChecksumError if it does not match).

    Raises:
        FetchError: the server refused the file, redirected elsewhere, or the bounds above were reached
            (the ``.part`` file is kept where resuming makes sense).
        ChecksumError: the complete file has the wrong size or checksum, or exceeds the size cap
            (nothing is left behind).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        problem = verify_file(dest, size=size, sha256=sha256, md5=md5, progress=progress)
        if problem:
            raise ChecksumError(
                f"{dest}: already exists but its {problem} (expected the file from {url}); "
                f"delete it and run again to download it afresh"
            )
        return file_digests(dest)[1]
    return _download(
        url,
        dest,
        size=size,
        sha256=sha256,
        md5=md5,
        progress=progress,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        chunk_size=chunk_size,
        max_seconds=max_seconds,
        max_size=max_size,
        allowed_hosts=allowed_hosts,
        sleep=sleep,
        clock=clock,
    ).sha256


@dataclass(frozen=True)
class _Fetched:
    """What :func:`_download` reports: the digests, and whether the bytes can be trusted without a
    published checksum (see :func:`_download`)."""

    sha256: str
    md5: str
    trustworthy: bool
    why_not: str = ""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    return any(host == a.lower() or (a.startswith(".") and host.endswith(a.lower())) for a in allowed)


class _RedirectRefused(Exception):
    """A redirect to an origin the file's record does not allow."""


def _opener(url: str, allowed_hosts: Sequence[str]) -> urllib.request.OpenerDirector:
    """A urllib opener whose redirects stay within `url`'s origin or go to `allowed_hosts` (no https ->
    http downgrade)."""
    origin = _origin(url)

    class Guard(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            newurl = urllib.parse.urljoin(req.full_url, newurl)
            target = _origin(newurl)
            if target != origin and (
                not _host_allowed(target[1], allowed_hosts) or (origin[0] == "https" and target[0] != "https")
            ):
                raise _RedirectRefused(
                    f"the server redirected to {newurl} (host {target[1]!r}), another origin "
                    f"than {origin[0]}://{origin[1]}:{origin[2]}, and the file's record allows "
                    f"only {list(allowed_hosts) or 'no other host'}"
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(Guard)


def _download(
    url: str,
    dest: Path,
    *,
    size: int | None,
    sha256: str | None,
    md5: str | None,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
    chunk_size: int,
    sleep: Callable[[float], None],
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_size: int | None = None,
    allowed_hosts: Sequence[str] = (),
    clock: Callable[[], float] = time.monotonic,
) -> _Fetched:
    """The body of :func:`download` for a missing `dest`.

    Also reports whether the file is *trustworthy* without a checksum: every byte arrived in this call
    (no ``.part`` from an earlier run), from the URL's origin or a host its record allows (any other
    redirect is refused before a byte is read), and its end was announced by the server (Content-Length /
    Content-Range, or a complete chunked body), so a connection that merely closed is not taken for the end
    of the file.
    """
    part = dest.with_name(dest.name + ".part")
    cap = size if size is not None else (max_size if max_size is not None else DEFAULT_MAX_SIZE)
    started = clock()
    failures = 0
    best = part.stat().st_size if part.exists() else 0  # largest .part size so far: progress = beyond it
    untrusted = "part of it came from an earlier run's .part file" if best else ""
    opener = _opener(url, allowed_hosts)

    def out_of_time(what: str) -> FetchError:
        kept = part.stat().st_size if part.exists() else 0
        return FetchError(
            f"{url}: download of {dest.name} gave up after {clock() - started:.0f} s, over its "
            f"{max_seconds:.0f} s limit ({what}). {kept:,} bytes are kept in {part}; run again to "
            f"resume, or place the complete file at {dest}"
        )

    def too_big(what: str) -> ChecksumError:
        part.unlink(missing_ok=True)
        return ChecksumError(
            f"{url}: {dest.name} {what}, more than the {cap:,} bytes this file may have "
            f"({'its recorded size' if size is not None else 'the cap for a file of unknown size'}"
            f"); nothing was kept. The server sends a different file: get the right one "
            f"(DATA.md section 3) and place it at {dest}"
        )

    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:  # longer than the file can be: start again
            part.unlink()
            have = 0
        if size is not None and have == size and have > 0:
            break  # complete already (a run killed between the last byte and the rename)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        announced = False
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if have and resp.status == 206:
                    start = _content_range_start(resp.headers.get("Content-Range"))
                    if start != have:
                        raise _Cut(
                            f"server answered the range request from byte {have} with "
                            f"Content-Range {resp.headers.get('Content-Range')!r}"
                        )
                    mode = "ab"
                else:  # 200: a fresh download, or the server ignored the range: start from zero
                    have, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                length = int(length) if length is not None and length.isdigit() else None
                if length is not None and have + length > cap:
                    raise too_big(f"is announced as {have + length:,} bytes (Content-Length)")
                announced = length is not None or bool(getattr(resp, "chunked", False))
                total = have + length if length is not None else size
                with (
                    open(part, mode) as fh,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=bar_disabled(progress),
                    ) as bar,
                ):
                    received = 0
                    while chunk := resp.read(chunk_size):
                        if have + received + len(chunk) > cap:
                            fh.close()
                            raise too_big("arrives without a length and runs past the cap")
                        fh.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                        if clock() - started > max_seconds:
                            raise out_of_time("while reading")
                if length is not None and received < length:
                    raise _Cut(f"connection closed after {have + received:,} of {have + length:,} bytes")
            break
        except _RedirectRefused as exc:
            part.unlink(missing_ok=True)
            raise FetchError(
                f"{url}: refused to download {dest.name}: {exc}. If the publisher moved the file "
                f"there, add that host to the file's allowed_hosts (pipeline/data/real/); "
                f"otherwise place the file at {dest} yourself"
            ) from None
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                announced = True  # the server says the part holds the whole file
                break
            if exc.code not in RETRY_STATUS or failures >= retries:
                hint = (
                    " The file is not (or no longer) at this URL: check DATA.md section 3 for a mirror, or "
                    f"place the file at {dest} yourself."
                    if exc.code in (401, 403, 404, 410)
                    else ""
                )
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason} while downloading {dest.name}.{hint}") from None
            failures += 1
        except (_Cut, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            now = part.stat().st_size if part.exists() else 0
            if now > best:  # the attempt made progress: a fresh budget of retries for the rest
                best, failures = now, 0
            if failures >= retries:
                raise FetchError(
                    f"{url}: download of {dest.name} failed {failures + 1} times in a row without progress "
                    f"(last: {exc}). {now:,} bytes are kept in {part}; run again to resume, or place the "
                    f"complete file at {dest}"
                ) from None
            failures += 1
        wait = backoff * 2 ** (failures - 1) if failures else 0.0
        if clock() - started + wait > max_seconds:
            raise out_of_time("between attempts")
        sleep(wait)

    actual_size, got_sha, got_md5 = file_digests(part, progress=progress)
    problem = _mismatch(actual_size, got_sha, got_md5, want_size=size, want_sha256=sha256, want_md5=md5)
    if problem:
        part.unlink()
        raise ChecksumError(
            f"{dest.name}: the file downloaded from {url} is wrong: {problem} (sha256 of what arrived: {got_sha}). "
            f"The partial file was deleted. Run again to download it afresh; if it fails again the server "
            f"now serves a different file: get the right one (DATA.md section 3) and place it at {dest}"
        )
    why_not = untrusted or (
        ""
        if announced or size is not None
        else "the server did not announce its length, so a connection "
        "that closed early cannot be told from the end of the file"
    )
    os.replace(part, dest)
    return _Fetched(got_sha, got_md5, not why_not, why_not)


# ----------------------------------------------------------------------------------------------------
# Extraction


def _safe_name(name: str, archive: Path) -> str:
    """Return a normalised relative member name, or raise ArchiveError for an unsafe one."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or path.is_absolute():
        raise ArchiveError(
            f"{archive}: refusing member {name!r}: absolute path (the archive would write "
            f"outside its folder); the file is not a genuine dataset archive"
        )
    if ".." in path.parts:
        raise ArchiveError(
            f"{archive}: refusing member {name!r}: '..' in the path (path traversal); "
            f"the file is not a genuine dataset archive"
        )
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
    raise ArchiveError(
        f"{archive}: not a tar or zip archive (corrupt, truncated or the wrong file); replace it "
        f"with an intact copy, or, if it was downloaded here, delete it and run again to download "
        f"it afresh"
    )


def safe_tar_members(tar: tarfile.TarFile, archive: Path) -> Iterable[tarfile.TarInfo]:
    """Yield the regular files and folders of `tar`, raising ArchiveError for unsafe members."""
    for member in tar:
        _safe_name(member.name, archive)
        if member.issym() or member.islnk():
            raise ArchiveError(
                f"{archive}: refusing member {member.name!r}: links are not expected in a dataset archive"
            )
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


def extract(
    archive: Path | str, dest_dir: Path | str, *, progress: bool = False, keep: Callable[[str], bool] | None = None
) -> Path:
    """Unpack a tar(.gz/.tgz/.bz2/.xz) or zip `archive` so that its members lie under `dest_dir`.

    `keep` (a member's normalised name -> bool): unpack only the files it accepts (one pass over the archive);
    None: every member.

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
                    if keep is not None:
                        members = (m for m in members if m.isfile() and keep(_safe_name(m.name, archive)))
                    if not bar_disabled(progress):
                        members = tqdm(members, desc=f"extract {archive.name}", unit="file")
                    extract_tar_members(tar, members, tmp)
            else:
                with zipfile.ZipFile(archive) as zf:
                    infos = zf.infolist()
                    for info in infos:
                        _safe_name(info.filename, archive)
                        if (info.external_attr >> 16) & 0o170000 == 0o120000:
                            raise ArchiveError(
                                f"{archive}: refusing member {info.filename!r}: links are not "
                                f"expected in a dataset archive"
                            )
                    if keep is not None:
                        infos = [i for i in infos if not i.is_dir() and keep(_safe_name(i.filename, archive))]
                    for info in tqdm(
                        infos, desc=f"extract {archive.name}", unit="file", disable=bar_disabled(progress)
                    ):
                        zf.extract(info, tmp)
        except ArchiveError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            # zlib.error is caught by tarfile as ReadError; a bad CRC in a zip is BadZipFile.
            raise ArchiveError(
                f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); replace it "
                f"with an intact copy, or, if it was downloaded here, delete it and run again to "
                f"download it afresh"
            ) from None
        if dest_dir.exists():
            shutil.rmtree(dest_dir)
        os.replace(tmp, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


# ----------------------------------------------------------------------------------------------------
# Files placed by hand, and the fetch of a whole file list


def _stamp_path(path: Path, stamp_dir: Path | None = None) -> Path:
    """The verification stamp of `path`: in `stamp_dir` (named by the file's absolute path) when given, so that
    nothing is written into a user's folder; else beside the file, as ``.<name>.verified``."""
    if stamp_dir is None:
        return path.with_name(f".{path.name}.verified")
    key = hashlib.sha1(str(Path(path).absolute()).encode()).hexdigest()[:16]
    return Path(stamp_dir) / f"{path.name}.{key}.json"


def _read_stamp(path: Path, stamp_dir: Path | None = None) -> dict | None:
    try:
        stamp = json.loads(_stamp_path(path, stamp_dir).read_text())
        st = path.stat()
        if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
            return stamp
    except (OSError, ValueError):
        pass
    return None


def _write_stamp(path: Path, sha256: str, md5: str, stamp_dir: Path | None = None) -> None:
    st = path.stat()
    target = _stamp_path(path, stamp_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256, "md5": md5}))
    except OSError:
        pass  # a read-only folder: verify again next time


def cached_digests(path: Path | str, *, stamp_dir: Path | None = None, progress: bool = False) -> tuple[str, str]:
    """(sha256, md5) of a file, from its stamp when size and mtime are unchanged, else hashed (and stamped)."""
    path = Path(path)
    stamp = _read_stamp(path, stamp_dir)
    if stamp is not None:
        return stamp["sha256"], stamp["md5"]
    _, sha, md5 = file_digests(path, progress=progress)
    _write_stamp(path, sha, md5, stamp_dir)
    return sha, md5


def recorded_sha256(path: Path) -> str | None:
    record = path.with_name(path.name + ".sha256")
    if record.is_file():
        text = record.read_text().split()
        return text[0] if text else None
    return None


def _expected(spec: RemoteFile, path: Path) -> tuple[str | None, str | None]:
    sha256 = spec.sha256 or recorded_sha256(path)
    return sha256, spec.md5


def _check_present(spec: RemoteFile, path: Path, *, progress: bool, stamp_dir: Path | None = None) -> str | None:
    """None when the present file `path` matches `spec` (size, checksums), else what is wrong."""
    sha256, md5 = _expected(spec, path)
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size is {size:,} bytes, expected {spec.size:,} bytes (incomplete or a different file)"
    if not sha256 and not md5:
        return None
    got_sha, got_md5 = cached_digests(path, stamp_dir=stamp_dir, progress=progress)
    return _mismatch(size, got_sha, got_md5, want_size=spec.size, want_sha256=sha256, want_md5=md5)


def check_files(
    files: Sequence[tuple[RemoteFile, Path]], *, progress: bool = False, stamp_dir: Path | None = None
) -> list[str]:
    """Check every (spec, expected path); return one line per missing or wrong file (empty: all good)."""
    problems = []
    for spec, path in files:
        path = Path(path).absolute()
        if not path.is_file():
            what = f" ({spec.describe()})" if spec.describe() else ""
            problems.append(f"{path}: missing{what}. Get it from: {spec.where}")
            continue
        problem = _check_present(spec, path, progress=progress, stamp_dir=stamp_dir)
        if problem:
            problems.append(f"{path}: {problem}. Replace it with the file from: {spec.where}")
    return problems


def require_files(
    dataset: str,
    files: Sequence[tuple[RemoteFile, Path]],
    *,
    why: str = "",
    hint: str = "",
    progress: bool = False,
    stamp_dir: Path | None = None,
) -> None:
    """Raise one ManualFilesError listing every missing or wrong file of `files` (nothing if all good)."""
    problems = check_files(files, progress=progress, stamp_dir=stamp_dir)
    if not problems:
        return
    lines = "\n".join(f"  - {p}" for p in problems)
    head = f"{dataset}: {len(problems)} of {len(files)} required file(s) missing or wrong."
    tail = f"\n{hint}" if hint else ""
    raise ManualFilesError(
        f"{head}{' ' + why if why else ''}\nPlace each file at the path shown, then run "
        f"the stage again:\n{lines}{tail}",
        problems,
    )


def fetch_files(
    dataset: str,
    files: Sequence[RemoteFile],
    directory: Path | str,
    *,
    mode: str,
    why: str = "",
    hint: str = "",
    progress: bool = True,
    download_kwargs: dict | None = None,
    stamp_dir: Path | None = None,
) -> dict[str, Path]:
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
    require_files(
        dataset,
        [(spec, paths[spec.name]) for spec in manual],
        why=why,
        hint=hint,
        progress=progress,
        stamp_dir=stamp_dir,
    )
    for spec in files:
        if spec in manual:
            continue
        path = paths[spec.name]
        if path.is_file():
            problem = _check_present(spec, path, progress=progress, stamp_dir=stamp_dir)
            if problem:
                raise ChecksumError(
                    f"{path}: {problem}. Delete it and run again to download it afresh from "
                    f"{spec.url}, or replace it with the file from: {spec.where}"
                )
            continue
        sha256, md5 = _expected(spec, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {
            "retries": 5,
            "backoff": 1.0,
            "timeout": 60.0,
            "chunk_size": CHUNK,
            "sleep": time.sleep,
            "max_seconds": DEFAULT_MAX_SECONDS,
            **(download_kwargs or {}),
        }
        record_first = not sha256 and not md5
        if record_first:  # nothing to check against: only a file wholly fetched in this run may be recorded
            path.with_name(path.name + ".part").unlink(missing_ok=True)
        got = _download(
            spec.url,
            path,
            size=spec.size,
            sha256=sha256,
            md5=md5,
            progress=progress,
            max_size=spec.max_size,
            allowed_hosts=spec.allowed_hosts,
            **kwargs,
        )
        if record_first and not got.trustworthy:
            path.unlink()
            raise FetchError(
                f"{dataset}: {spec.name} has no published checksum, and the download from "
                f"{spec.url} cannot be trusted as the first record: {got.why_not}. Nothing was "
                f"recorded or kept; run again, or place the file at {path} yourself"
            )
        _write_stamp(path, got.sha256, got.md5, stamp_dir)
        if record_first:
            path.with_name(path.name + ".sha256").write_text(f"{got.sha256}  {spec.name}\n")
            print(
                f"{dataset}: {spec.name} has no published checksum; recorded sha256 {got.sha256} in "
                f"{path.name}.sha256 (later runs check against it)",
                file=sys.stderr,
            )
    return paths
