"""Real WSOL datasets: one module per dataset, each with its parts, its published counts and a metadata builder.

Registry: ``DATASETS[name]`` is a module with
    ``NUM_CLASSES``, ``TEST_IMAGES``   classes and test images of the full dataset
    ``PUBLISHED``                      counts of the published dataset as ``build`` reports them in ``found``
    ``parts(cfg) -> [Part]``           the parts it reads with the settings `cfg` (pipeline/data/real/source.py)
    ``MANUAL_WHY``                     why the files cannot be downloaded ("" if they can)
    ``build(inputs, out, cfg, progress=...) -> summary``   read the parts and write the raw layout into `out`;
                                       the summary's ``found`` counts the whole copy (from its annotations)

:func:`build_dataset` finds every part in the dataset's folder (``datasets.<name>.source_dir``, else
``download.archive_dir/<name>``, where mode auto downloads the published archives that are missing), checks
them as ``datasets.<name>.verify`` says, then builds the raw layout that pipeline.data.prepare reads,
atomically replacing `raw_dir`:

    <raw>/images/<image_id>        <raw>/metadata/{train,val,test}/*.txt   (wsolevaluation format)
    <raw>/masks/<mask path>        <raw>/metadata_mask/{val,test}/*.txt     (mask datasets)
    <raw>/classes.txt              <raw>/source.json                        (parts read, their identity, counts)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.data.fetch import (
    ManualFilesError,
    _check_present,
    _mismatch,
    cached_digests,
    fetch_files,
    recorded_sha256,
)
from pipeline.data.real import cars, cub, ilsvrc, openimages
from pipeline.data.real.source import Found, Inputs, Reader, locate
from pipeline.io import atomic_dir, write_json

DATASETS = {"cub": cub, "cars": cars, "ilsvrc": ilsvrc, "openimages": openimages}


class NotPublishedError(ValueError):
    """A part is not the publisher's archive while ``verify: published``; the message names the param."""


def archive_folder(name: str, cfg, archive_dir: Path | str) -> Path:
    """Where the dataset's files are expected: `source_dir` if set, else `<archive_dir>/<name>`."""
    return Path(cfg.source_dir) if cfg.source_dir else Path(archive_dir) / name


def stamp_dir(archive_dir: Path | str) -> Path:
    """The project's folder of checksum stamps (never the user's folder)."""
    return Path(archive_dir) / ".verified"


def _counts(found: dict) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in found.items())


def _differences(found: dict, published: dict) -> list[str]:
    return [f"{k}: {found.get(k, 0):,} (published {v:,})" for k, v in published.items() if found.get(k) != v]


def build_dataset(
    name: str,
    cfg,
    raw_dir: Path | str,
    *,
    archive_dir: Path | str,
    progress: bool = True,
    download_kwargs: dict | None = None,
) -> dict:
    """Find (and in mode auto download), check and read the parts of dataset `name`, then write its raw layout to
    `raw_dir`. Returns the summary also written to `<raw_dir>/source.json`."""
    if name not in DATASETS:
        raise ValueError(f"dataset: {name!r} has no real-dataset builder; valid: {', '.join(DATASETS)}")
    module = DATASETS[name]
    folder = archive_folder(name, cfg, archive_dir)
    stamps = stamp_dir(archive_dir)
    verify = cfg.verify
    parts = module.parts(cfg)
    found = locate(folder, parts)
    mode = "manual" if cfg.source_dir or module.MANUAL_WHY else getattr(cfg, "mode", "manual")
    missing = [p for p in parts if found[p.name] is None]
    if missing and mode == "auto" and all(p.published and p.published.url for p in missing):
        fetch_files(
            name,
            [p.published for p in missing],
            folder,
            mode="auto",
            progress=progress,
            download_kwargs=download_kwargs,
            stamp_dir=stamps,
        )
        found = locate(folder, parts)
        missing = [p for p in parts if found[p.name] is None]
    if missing:
        raise _missing_error(name, module, cfg, folder, missing, mode)

    problems = {}
    if verify == "published":
        for part in parts:
            f = found[part.name]
            if f.kind != "published":
                problems[part.name] = f"{f.describe()} is not the published {part.published.name}"
            else:
                problem = _check_present(part.published, f.path, progress=progress, stamp_dir=stamps)
                if problem:
                    problems[part.name] = f"{f.path}: {problem}"
    if problems:
        raise _not_published_error(name, module, cfg, found, problems, Path(raw_dir) / "source.json")

    with atomic_dir(raw_dir) as tmp:
        summary = _build(module, found, tmp, cfg, progress, stamps)
        summary = {"dataset": name, "verify": verify, **summary}
        diff = _differences(summary["found"], module.PUBLISHED)
        summary["differs_from_published"] = diff
        if diff and verify == "content":
            print(
                f"download: {name}: this copy differs from the published dataset ({'; '.join(diff)}); "
                f"it is identified by its content in {Path(raw_dir) / 'source.json'}",
                file=sys.stderr,
            )
        write_json(tmp / "source.json", summary)
    return summary


def _read(module, found: dict[str, Found], out: Path, cfg, progress: bool) -> tuple[dict, dict[str, Reader]]:
    """The dataset's `build` into `out` from one Reader per found part (unpacked archives in `out/.work`, removed
    after); its summary and the readers (what they read)."""
    work = out / ".work"
    readers = {n: Reader(f, work, progress=progress) for n, f in found.items() if f is not None}
    try:
        return module.build(Inputs(readers, work), out, cfg, progress=progress), readers
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(module, found: dict[str, Found], out: Path, cfg, progress: bool, stamps: Path) -> dict:
    """:func:`_read`, and each part's identity: the sha256 of a file by its published name, else the content md5."""
    summary, readers = _read(module, found, out, cfg, progress)

    def md5_of(path: Path) -> str:
        return cached_digests(path, stamp_dir=stamps, progress=progress)[1]

    sources = {}
    for n, r in readers.items():
        f = r.found
        entry = {"kind": f.kind, "name": f.path.name}
        if f.kind == "published":  # by its name; checked in `verify: published`, hashed here in `content`
            spec = f.part.published
            sha, md5 = cached_digests(f.path, stamp_dir=stamps, progress=progress)
            want_sha = spec.sha256 or recorded_sha256(f.path)
            if not (want_sha or spec.md5) or _mismatch(
                f.path.stat().st_size, sha, md5, want_size=spec.size, want_sha256=want_sha, want_md5=spec.md5
            ):
                entry["kind"] = "archive"  # the published name, other bytes (or nothing to check them against)
            entry["sha256"] = sha
        else:
            entry["md5"] = r.content_md5(md5_of)
            if not r.owned:
                entry["files_read"] = len(r.md5s)
        sources[n] = entry
    return {**summary, "sources": sources}


def _missing_error(name: str, module, cfg, folder: Path, missing: list, mode: str) -> ManualFilesError:
    lines = []
    for p in missing:
        spec = p.published
        if spec is not None:
            what = f" ({spec.describe()})" if spec.describe() else ""
            lines.append(
                f"{folder.absolute() / spec.name}: missing{what}, and no {p.what} under {folder}. "
                f"Get it from: {spec.where}"
            )
        else:
            lines.append(f"{folder}: no {p.what}")
    head = f"{name}: {len(missing)} of {len(module.parts(cfg))} part(s) not found."
    why = f" {module.MANUAL_WHY}" if module.MANUAL_WHY else ""
    accepted = (
        f"the published archives, or with datasets.{name}.verify: content also repacked archives or the "
        f"extracted folders"
    )
    if cfg.source_dir:
        hints = [
            f"datasets.{name}.source_dir is {cfg.source_dir}: place them there ({accepted}), or point it at "
            f"the folder that holds them."
        ]
    else:
        hints = [
            f"Or set datasets.{name}.source_dir to a folder that holds them ({accepted}); nothing is written into it."
        ]
    if not module.MANUAL_WHY and mode == "manual":
        hints.append(f"To download them instead, set datasets.{name}.mode: auto and source_dir: null.")
    body = "\n".join(f"  - {line}" for line in lines)
    return ManualFilesError(f"{head}{why}\nPlace each, then run the stage again:\n{body}\n{' '.join(hints)}", lines)


def _not_published_error(name: str, module, cfg, found: dict, problems: dict, record: Path) -> NotPublishedError:
    """What differs from the published dataset (its counts, read by building the copy into a throw-away folder),
    naming datasets.<name>.verify."""
    content = ""
    with tempfile.TemporaryDirectory(prefix=f".{name}-inventory-") as tmp:
        try:
            summary, _ = _read(module, found, Path(tmp), cfg, progress=False)
            diff = _differences(summary["found"], module.PUBLISHED)
            content = f"Its content: {_counts(summary['found'])}; " + (
                f"it differs from the published dataset in {'; '.join(diff)}."
                if diff
                else "the same counts as the published dataset (a repacked or recompressed "
                "copy, or the extracted files)."
            )
        except (ValueError, OSError) as exc:
            content = f"Its content cannot be read ({exc})."
    body = "\n".join(f"  - {p}" for p in problems.values())
    return NotPublishedError(
        f"{name}: datasets.{name}.verify is `published`, and {len(problems)} part(s) are not the publisher's "
        f"archive:\n{body}\n{content}\nTo use this copy as it is, set datasets.{name}.verify: content (it is then "
        f"identified by the md5 of its content, recorded in {record}, and the tables "
        f"mark a run whose counts differ from the published ones as a subset). If a file is an interrupted "
        f"download, delete it and run again."
    )
