"""Real WSOL datasets: one module per dataset, each with its official file list and a metadata builder.

Registry: ``DATASETS[name]`` is a module with
    ``NUM_CLASSES``                 classes of the full dataset
    ``files(cfg) -> [RemoteFile]``  the files it needs for the settings `cfg` (URL, size, checksums)
    ``MANUAL_WHY``                  why the files cannot be downloaded ("" if they can)
    ``build(paths, out, cfg, progress=...) -> summary``   unpack and write the raw layout into `out`

:func:`build_dataset` fetches or checks the files in the archive folder (``download.archive_dir/<name>``
or ``datasets.<name>.source_dir``), then builds the raw layout that pipeline.data.prepare reads,
atomically replacing `raw_dir`:

    <raw>/images/<image_id>        <raw>/metadata/{train,val,test}/*.txt   (wsolevaluation format)
    <raw>/masks/<mask path>        <raw>/metadata_mask/{val,test}/*.txt     (mask datasets)
    <raw>/classes.txt              <raw>/source.json                        (files used, choices made)
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data.fetch import fetch_files, recorded_sha256
from pipeline.data.real import cars, cub, ilsvrc, openimages
from pipeline.io import atomic_dir, write_json

DATASETS = {"cub": cub, "cars": cars, "ilsvrc": ilsvrc, "openimages": openimages}


def archive_folder(name: str, cfg, archive_dir: Path | str) -> Path:
    """Where the dataset's files are expected: `source_dir` if set, else `<archive_dir>/<name>`."""
    return Path(cfg.source_dir) if cfg.source_dir else Path(archive_dir) / name


def build_dataset(name: str, cfg, raw_dir: Path | str, *, archive_dir: Path | str, progress: bool = True,
                  download_kwargs: dict | None = None) -> dict:
    """Fetch (mode auto) or check (mode manual, or a `source_dir`) the files of dataset `name`, then
    write its raw layout to `raw_dir`. Returns the summary also written to `<raw_dir>/source.json`."""
    if name not in DATASETS:
        raise ValueError(f"dataset: {name!r} has no real-dataset builder; valid: {', '.join(DATASETS)}")
    module = DATASETS[name]
    folder = archive_folder(name, cfg, archive_dir)
    mode = "manual" if cfg.source_dir or module.MANUAL_WHY else getattr(cfg, "mode", "manual")
    specs = module.files(cfg)
    hints = [f"To use files kept in another folder, set datasets.{name}.source_dir to that folder."]
    if not module.MANUAL_WHY and mode == "manual":
        hints.append(f"To download them instead, set datasets.{name}.mode: auto and source_dir: null.")
    paths = fetch_files(name, specs, folder, mode=mode, why=module.MANUAL_WHY, hint=" ".join(hints),
                        progress=progress, download_kwargs=download_kwargs)
    with atomic_dir(raw_dir) as tmp:
        summary = module.build(paths, tmp, cfg, progress=progress)
        summary = {"dataset": name, **summary, "files": {
            s.name: {"sha256": s.sha256 or recorded_sha256(paths[s.name]), "md5": s.md5} for s in specs}}
        write_json(tmp / "source.json", summary)
    return summary
