"""Stage `source`: fingerprint the real dataset's files (what `datasets.<dataset>.source_dir` or the archive folder
holds), so that `download` reruns when they change. DVC runs it on every `dvc repro` (always_changed); its output
keeps the same bytes while the files do, so nothing downstream reruns. A stat walk: nothing is read or written in
the dataset's folder. SynthBirds has no files: the fingerprint is empty.
"""

from pipeline.io import write_json
from pipeline.stages.common import load_stage_params, user_errors

OUT = "data/source.json"


def main() -> None:
    params = load_stage_params()  # no torch here: this stage runs on every `dvc repro`
    record = {"dataset": params.dataset, "parts": {}}
    if params.dataset != "synthbirds":
        from pipeline.data.real import DATASETS, archive_folder
        from pipeline.data.real.source import fingerprint

        folder = archive_folder(params.dataset, params.data, params.download.archive_dir)
        with user_errors():
            record["parts"] = fingerprint(folder, DATASETS[params.dataset].parts(params.data))
    write_json(OUT, record)
    found = {k: (v or {}).get("kind", "missing") for k, v in record["parts"].items()}
    print(f"source: {params.dataset}: {found or 'generated, no files'} -> {OUT}")


if __name__ == "__main__":
    main()
