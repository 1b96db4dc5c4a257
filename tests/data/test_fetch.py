"""pipeline.data.fetch: resumable download, checksums, safe extraction, manual files (offline, local server)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile

import pytest

from pipeline.data import fetch
from pipeline.data.fetch import (
    ArchiveError,
    ChecksumError,
    FetchError,
    ManualFilesError,
    RemoteFile,
    download,
    extract,
    fetch_files,
    require_files,
)
from tests.data.archives import tar_bytes, zip_bytes

NO_SLEEP = {"sleep": lambda seconds: None}


def payload(n: int = 200_000) -> bytes:
    return bytes((i * 7919 + i // 256) % 256 for i in range(n))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------------
# download


def test_download_verifies_and_renames(file_server, tmp_path):
    data = payload()
    url = file_server.add("/a.bin", data)
    dest = tmp_path / "a.bin"
    got = download(url, dest, size=len(data), sha256=sha(data), md5=hashlib.md5(data).hexdigest(), progress=False)
    assert got == sha(data)
    assert dest.read_bytes() == data
    assert leftovers(tmp_path) == ["a.bin"]
    assert file_server.log == [("/a.bin", None, 200)]


def test_connection_cut_mid_file_resumes_with_range(file_server, tmp_path):
    data = payload()
    url = file_server.add("/big.tgz", data)
    file_server.cut_after["/big.tgz"] = 70_001
    dest = tmp_path / "big.tgz"
    download(url, dest, size=len(data), sha256=sha(data), progress=False, chunk_size=4096, **NO_SLEEP)
    assert dest.read_bytes() == data
    assert file_server.log == [("/big.tgz", None, 200), ("/big.tgz", "bytes=70001-", 206)]
    assert not (tmp_path / "big.tgz.part").exists()


def test_existing_part_is_resumed_across_runs(file_server, tmp_path):
    data = payload()
    url = file_server.add("/f.tar", data)
    dest = tmp_path / "f.tar"
    (tmp_path / "f.tar.part").write_bytes(data[:12_345])  # left by a killed run
    download(url, dest, size=len(data), sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert file_server.log == [("/f.tar", "bytes=12345-", 206)]


def test_server_ignoring_range_restarts_from_zero(file_server, tmp_path):
    data = payload()
    url = file_server.add("/f.zip", data)
    file_server.ignore_range = True
    (tmp_path / "f.zip.part").write_bytes(b"x" * 500)
    download(url, tmp_path / "f.zip", size=len(data), sha256=sha(data), progress=False)
    assert (tmp_path / "f.zip").read_bytes() == data
    assert file_server.log == [("/f.zip", "bytes=500-", 200)]


def test_416_means_the_part_is_already_complete(file_server, tmp_path):
    data = payload(5000)
    url = file_server.add("/g.bin", data)
    (tmp_path / "g.bin.part").write_bytes(data)
    download(url, tmp_path / "g.bin", sha256=sha(data), progress=False)  # size unknown: asks the server
    assert (tmp_path / "g.bin").read_bytes() == data
    assert file_server.log == [("/g.bin", "bytes=5000-", 416)]


def test_complete_part_of_known_size_needs_no_request(file_server, tmp_path):
    data = payload(5000)
    url = file_server.add("/h.bin", data)
    (tmp_path / "h.bin.part").write_bytes(data)
    download(url, tmp_path / "h.bin", size=len(data), sha256=sha(data), progress=False)
    assert (tmp_path / "h.bin").read_bytes() == data
    assert file_server.log == []


def test_checksum_mismatch_deletes_part_and_explains(file_server, tmp_path):
    data = payload(4096)
    url = file_server.add("/CUB_200_2011.tgz", data)
    wanted = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(url, tmp_path / "CUB_200_2011.tgz", sha256=wanted, progress=False)
    msg = str(info.value)
    for part in ("CUB_200_2011.tgz", url, f"expected {wanted}", f"sha256 is {sha(data)}", "deleted", "Run again"):
        assert part in msg, (part, msg)
    assert leftovers(tmp_path) == []  # no dest, no .part


def test_wrong_size_is_reported_before_hashing(file_server, tmp_path):
    url = file_server.add("/s.bin", b"abc")
    with pytest.raises(ChecksumError, match=r"size is 3 bytes, expected 4 bytes"):
        download(url, tmp_path / "s.bin", size=4, progress=False)
    assert leftovers(tmp_path) == []


def test_http_404_is_not_retried_and_names_the_url(file_server, tmp_path):
    url = file_server.url("/gone.tgz")
    with pytest.raises(FetchError, match=r"HTTP 404.*gone\.tgz.*not \(or no longer\) at this URL") as info:
        download(url, tmp_path / "gone.tgz", progress=False, **NO_SLEEP)
    assert url in str(info.value)
    assert len(file_server.log) == 1


def test_unreachable_server_gives_up_after_retries_and_keeps_nothing(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits = []
    with pytest.raises(FetchError, match=r"failed 3 times in a row") as info:
        download(
            f"http://127.0.0.1:{port}/x.tgz",
            tmp_path / "x.tgz",
            progress=False,
            retries=2,
            backoff=0.5,
            sleep=waits.append,
        )
    assert waits == [0.5, 1.0]
    assert "run again to resume" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# extract


@pytest.mark.parametrize("kind", ["tgz", "tar", "zip"])
def test_extract_tar_and_zip_atomically(tmp_path, kind):
    members = {"top/a.txt": b"a", "top/sub/b.bin": payload(3000)}
    archive = tmp_path / f"x.{kind}"
    archive.write_bytes(zip_bytes(members) if kind == "zip" else tar_bytes(members, "w:gz" if kind == "tgz" else "w"))
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.txt").write_text("replaced")
    assert extract(archive, dest) == dest
    assert (dest / "top/a.txt").read_bytes() == b"a"
    assert (dest / "top/sub/b.bin").read_bytes() == members["top/sub/b.bin"]
    assert not (dest / "stale.txt").exists()
    assert leftovers(tmp_path) == ["out", f"x.{kind}"]


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt"])
@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_extract_refuses_path_traversal(tmp_path, name, kind):
    members = {"fine.txt": b"x", name: b"evil"}
    archive = tmp_path / f"bad.{kind}"
    archive.write_bytes(zip_bytes(members) if kind == "zip" else tar_bytes(members))
    with pytest.raises(ArchiveError, match="refusing member") as info:
        extract(archive, tmp_path / "work" / "out")
    assert str(archive) in str(info.value)
    assert leftovers(tmp_path / "work") == []
    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_symlinks(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    with pytest.raises(ArchiveError, match="links are not expected"):
        extract(tmp_path / "l.tar", tmp_path / "w" / "out")
    assert leftovers(tmp_path / "w") == []


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_corrupt_archive_leaves_nothing_behind(tmp_path, kind):
    members = {f"d/{i}.bin": payload(20_000 + i) for i in range(5)}
    data = zip_bytes(members) if kind == "zip" else tar_bytes(members)
    broken = bytearray(data)
    if kind == "zip":  # flip bytes inside the first member's data: a CRC error on extraction
        start = data.index(b"d/0.bin") + len("d/0.bin") + 100
        broken[start : start + 50] = bytes(50)
    else:  # truncate the gzip stream
        broken = broken[: len(broken) // 2]
    archive = tmp_path / f"corrupt.{kind}"
    archive.write_bytes(bytes(broken))
    dest = tmp_path / "work" / "dataset"
    with pytest.raises(ArchiveError, match=r"corrupt or truncated archive") as info:
        extract(archive, dest)
    assert str(archive) in str(info.value) and "download it afresh" in str(info.value)
    assert leftovers(tmp_path / "work") == []  # neither dest nor the temporary folder


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tgz").write_bytes(b"<html>login required</html>")
    with pytest.raises(ArchiveError, match=r"x\.tgz: not a tar or zip archive"):
        extract(tmp_path / "x.tgz", tmp_path / "out")
    assert leftovers(tmp_path) == ["x.tgz"]


# ----------------------------------------------------------------------------------------------------
# manual files and fetch_files


def spec(name: str, data: bytes | None = None, url: str | None = None, checksum: bool = True) -> RemoteFile:
    return RemoteFile(
        name,
        url,
        len(data) if data is not None else None,
        sha(data) if data is not None and checksum else None,
        None,
        f"the {name} page",
    )


def test_manual_error_lists_every_missing_or_wrong_file(tmp_path):
    good, bad = payload(100), payload(50)
    (tmp_path / "good.tgz").write_bytes(good)
    (tmp_path / "short.tgz").write_bytes(bad[:10])
    (tmp_path / "tampered.mat").write_bytes(bytes(50))
    files = [
        spec("good.tgz", good),
        spec("missing.tgz", payload(70)),
        spec("short.tgz", bad),
        spec("tampered.mat", bad),
    ]
    with pytest.raises(ManualFilesError) as info:
        require_files("cars", [(f, tmp_path / f.name) for f in files], why="The links are dead.")
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{tmp_path / 'missing.tgz'}: missing (70 bytes, sha256 ")
    assert problems[0].endswith("Get it from: the missing.tgz page")
    assert problems[1].startswith(f"{tmp_path / 'short.tgz'}: size is 10 bytes, expected 50 bytes")
    assert problems[2].startswith(f"{tmp_path / 'tampered.mat'}: sha256 is {sha(bytes(50))}, expected {sha(bad)}")
    msg = str(info.value)
    assert msg.startswith("cars: 3 of 4 required file(s) missing or wrong. The links are dead.")
    assert "good.tgz" not in msg


def test_fetch_files_manual_mode_never_downloads(file_server, tmp_path):
    data = payload(100)
    f = spec("a.tgz", data, url=file_server.add("/a.tgz", data))
    with pytest.raises(ManualFilesError, match=str(tmp_path / "a.tgz")):
        fetch_files("cub", [f], tmp_path, mode="manual", progress=False)
    assert file_server.log == []


def test_fetch_files_downloads_then_reuses_verified_file(file_server, tmp_path, monkeypatch):
    data = payload(1000)
    f = spec("a.tgz", data, url=file_server.add("/a.tgz", data))
    paths = fetch_files("cub", [f], tmp_path, mode="auto", progress=False)
    assert paths["a.tgz"].read_bytes() == data
    calls = []
    real = fetch.file_digests
    monkeypatch.setattr(fetch, "file_digests", lambda *a, **k: calls.append(a) or real(*a, **k))
    fetch_files("cub", [f], tmp_path, mode="auto", progress=False)
    assert len(file_server.log) == 1 and calls == []  # neither downloaded nor re-hashed (verified stamp)
    os.utime(paths["a.tgz"], ns=(1, 1))  # touched: hashed again
    fetch_files("cub", [f], tmp_path, mode="auto", progress=False)
    assert len(calls) == 1


def test_unpublished_checksum_is_recorded_then_enforced(file_server, tmp_path, capsys):
    data = payload(1000)
    f = spec("OpenImages_images.zip", data, url=file_server.add("/oi.zip", data), checksum=False)
    fetch_files("openimages", [f], tmp_path, mode="auto", progress=False)
    record = tmp_path / "OpenImages_images.zip.sha256"
    assert record.read_text() == f"{sha(data)}  OpenImages_images.zip\n"
    assert f"recorded sha256 {sha(data)}" in capsys.readouterr().err
    (tmp_path / "OpenImages_images.zip").write_bytes(bytes(1000))  # same size, different content
    with pytest.raises(ChecksumError, match=f"expected {sha(data)}"):
        fetch_files("openimages", [f], tmp_path, mode="auto", progress=False)


def test_every_cut_that_made_progress_gets_fresh_retries(file_server, tmp_path, monkeypatch):
    data = payload(50_000)
    url = file_server.add("/flaky.bin", data)
    cuts = iter(range(10))
    real_record = file_server._record

    def record_and_rearm(path, rng, status):  # cut every one of the first 10 requests after 4,000 bytes
        real_record(path, rng, status)
        if next(cuts, None) is not None:
            file_server.cut_after[path] = 4000

    file_server.cut_after["/flaky.bin"] = 4000
    monkeypatch.setattr(file_server, "_record", record_and_rearm)
    download(url, tmp_path / "flaky.bin", size=len(data), sha256=sha(data), progress=False, retries=2, **NO_SLEEP)
    assert (tmp_path / "flaky.bin").read_bytes() == data
    assert [r for _, r, _ in file_server.log][:3] == [None, "bytes=4000-", "bytes=8000-"]
    assert len(file_server.log) == 12  # 11 cut requests + the final one; only 2 retries allowed in a row


# ----------------------------------------------------------------------------------------------------
# bounds: attempts without progress, total time, size cap, redirects, record-on-first-download


def test_server_that_drops_and_ignores_range_is_given_up_after_retries(file_server, tmp_path):
    data = payload()
    url = file_server.add("/drop.tgz", data)
    file_server.cut_every["/drop.tgz"] = 1000
    file_server.ignore_range = True  # every attempt starts again at byte 0 and gets 1,000 bytes
    with pytest.raises(FetchError, match=r"failed 4 times in a row without progress") as info:
        download(url, tmp_path / "drop.tgz", size=len(data), sha256=sha(data), progress=False, retries=3, backoff=0.001)
    assert len(file_server.log) == 4  # the first attempt's 1,000 bytes are progress, the next three are not
    assert "1,000 bytes are kept" in str(info.value)


def test_total_time_is_bounded_even_when_every_attempt_makes_progress(file_server, tmp_path):
    data = payload()
    url = file_server.add("/slow.tgz", data)
    file_server.cut_every["/slow.tgz"] = 1000  # honours Range: 1,000 more bytes per attempt
    ticks = iter(range(10_000))
    with pytest.raises(FetchError, match=r"over its 20 s limit") as info:
        download(
            url,
            tmp_path / "slow.tgz",
            size=len(data),
            sha256=sha(data),
            progress=False,
            max_seconds=20,
            clock=lambda: float(next(ticks)),
            **NO_SLEEP,
        )
    assert 3 <= len(file_server.log) <= 20  # each attempt reads the clock a few times
    assert "run again to resume" in str(info.value)
    assert (tmp_path / "slow.tgz.part").stat().st_size == 1000 * len(file_server.log)


def test_slow_real_download_stops_at_the_time_limit(file_server, tmp_path):
    data = payload()
    url = file_server.add("/trickle.tgz", data)
    file_server.cut_every["/trickle.tgz"] = 1000
    with pytest.raises(FetchError, match=r"over its 0 s limit"):
        download(url, tmp_path / "trickle.tgz", size=len(data), progress=False, max_seconds=0.3, backoff=0.05)


def test_body_without_length_is_cut_at_the_cap(file_server, tmp_path):
    data = payload(50_000)
    url = file_server.add("/nolen.zip", data)
    file_server.no_length.add("/nolen.zip")
    with pytest.raises(ChecksumError, match=r"runs past the cap.*more than the 10,000 bytes.*unknown size"):
        download(url, tmp_path / "nolen.zip", max_size=10_000, progress=False, chunk_size=4096)
    assert leftovers(tmp_path) == []
    with pytest.raises(ChecksumError, match=r"more than the 10,000 bytes this file may have \(its recorded size"):
        download(url, tmp_path / "nolen.zip", size=10_000, progress=False, chunk_size=4096)
    assert leftovers(tmp_path) == []
    assert download(url, tmp_path / "nolen.zip", max_size=50_000, progress=False) == sha(data)  # fits


def test_announced_length_over_the_cap_is_refused_before_reading(file_server, tmp_path):
    data = payload(50_000)
    url = file_server.add("/big.zip", data)
    with pytest.raises(ChecksumError, match=r"announced as 50,000 bytes \(Content-Length\)"):
        download(url, tmp_path / "big.zip", max_size=10_000, progress=False)
    assert leftovers(tmp_path) == [] and len(file_server.log) == 1


def test_default_cap_applies_without_size_or_max_size(file_server, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "DEFAULT_MAX_SIZE", 5_000)
    url = file_server.add("/c.bin", payload(6_000))
    file_server.no_length.add("/c.bin")
    with pytest.raises(ChecksumError, match="5,000 bytes"):
        download(url, tmp_path / "c.bin", progress=False, chunk_size=1024)


def test_redirect_within_the_origin_is_followed(file_server, tmp_path):
    data = payload(3000)
    file_server.add("/real.bin", data)
    file_server.redirects["/moved.bin"] = "/real.bin"
    assert download(file_server.url("/moved.bin"), tmp_path / "m.bin", sha256=sha(data), progress=False) == sha(data)
    assert [s for _, _, s in file_server.log] == [302, 200]


def test_redirect_to_another_origin_is_refused_unless_the_record_allows_its_host(file_server, other_server, tmp_path):
    data = payload(3000)
    other_server.add("/elsewhere.bin", data)
    foreign = f"http://localhost:{other_server.httpd.server_address[1]}/elsewhere.bin"
    file_server.redirects["/f.bin"] = foreign
    url = file_server.url("/f.bin")
    with pytest.raises(
        FetchError,
        match=r"refused to download f\.bin: the server redirected to .*'localhost'.*"
        r"allowed_hosts",
    ) as info:
        download(url, tmp_path / "f.bin", sha256=sha(data), progress=False, allowed_hosts=("mirror.example",))
    assert foreign in str(info.value)
    assert other_server.log == [] and leftovers(tmp_path) == []
    got = download(url, tmp_path / "f.bin", sha256=sha(data), progress=False, allowed_hosts=("localhost",))
    assert got == sha(data) and other_server.log == [("/elsewhere.bin", None, 200)]
    assert fetch._host_allowed("a.files.1drv.com", (".1drv.com",)) and not fetch._host_allowed(
        "1drv.com.evil", (".1drv.com",)
    )


def test_record_first_refuses_a_foreign_redirect_and_records_nothing(file_server, other_server, tmp_path):
    data = payload(3000)
    other_server.add("/x.zip", data)
    file_server.redirects["/oi.zip"] = f"http://localhost:{other_server.httpd.server_address[1]}/x.zip"
    f = spec("OpenImages_images.zip", url=file_server.url("/oi.zip"), checksum=False)
    with pytest.raises(FetchError, match="redirected"):
        fetch_files("openimages", [f], tmp_path, mode="auto", progress=False)
    assert leftovers(tmp_path) == [] and other_server.log == []


def test_record_first_refuses_a_body_whose_end_was_not_announced(file_server, tmp_path):
    data = payload(3000)
    f = spec("OpenImages_images.zip", url=file_server.add("/oi.zip", data), checksum=False)
    file_server.no_length.add("/oi.zip")
    with pytest.raises(
        FetchError,
        match=r"cannot be trusted as the first record: the server did not announce its "
        r"length",
    ):
        fetch_files("openimages", [f], tmp_path, mode="auto", progress=False)
    assert leftovers(tmp_path) == []  # neither the file nor a .sha256 record


def test_record_first_never_resumes_an_earlier_part(file_server, tmp_path):
    data = payload(3000)
    f = spec("OpenImages_images.zip", url=file_server.add("/oi.zip", data), checksum=False)
    (tmp_path / "OpenImages_images.zip.part").write_bytes(b"forged prefix")  # from some earlier run
    fetch_files("openimages", [f], tmp_path, mode="auto", progress=False)
    assert (tmp_path / "OpenImages_images.zip").read_bytes() == data
    assert file_server.log == [("/oi.zip", None, 200)]  # fetched whole, not resumed
    assert (tmp_path / "OpenImages_images.zip.sha256").read_text().startswith(sha(data))


def test_record_first_trusts_a_cut_resumed_within_the_same_run(file_server, tmp_path):
    data = payload(30_000)
    f = spec("OpenImages_images.zip", url=file_server.add("/oi.zip", data), checksum=False)
    file_server.cut_after["/oi.zip"] = 10_000
    fetch_files("openimages", [f], tmp_path, mode="auto", progress=False, download_kwargs=NO_SLEEP)
    assert file_server.log == [("/oi.zip", None, 200), ("/oi.zip", "bytes=10000-", 206)]
    assert (tmp_path / "OpenImages_images.zip.sha256").read_text().startswith(sha(data))
