"""docs/params.md is generated from the params schema (`python -m pipeline.params docs`): it must be current."""

import subprocess
import sys
from pathlib import Path

from pipeline.params import DOCS_FILE, docs_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_params_reference_page_is_current():
    committed = (ROOT / DOCS_FILE).read_text()
    assert committed == docs_markdown(), (
        f"{DOCS_FILE} is stale: regenerate it with `python -m pipeline.params docs > {DOCS_FILE}`"
    )


def test_the_page_names_every_key_of_params_yaml():
    import yaml

    page = docs_markdown()
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, value in data.items():
        if group in ("datasets", "backbones"):
            continue
        keys = [f"{group}.{k}" for k in value] if isinstance(value, dict) else [group]
        for key in keys:
            assert f"| `{key}` |" in page, key
    for name, settings in data["datasets"].items():
        for key in settings:
            assert f"| `datasets.{name}.{key}` |" in page, (name, key)
    assert "| `backbones.<name>.feature_stage` |" in page and "presets.<shared or backbone>.loc_threshold" in page


def test_the_docs_command_prints_the_page():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.params", "docs"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout == docs_markdown()


def test_params_yaml_keeps_only_short_comments():
    """The explanations live in the schema's descriptions and on the generated page, not in params.yaml."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines[1:], start=1):
        if line.lstrip().startswith("#") and lines[i - 1].lstrip().startswith("#"):
            assert i <= 2, f"params.yaml line {i + 1}: a comment of more than one line (the header has two)"
