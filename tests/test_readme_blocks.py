"""The README's measured tables are its files' text (pipeline/report/blocks.py)."""
from pathlib import Path

import pytest

from pipeline.report.blocks import ROOT, render, stale


def test_every_include_block_of_the_readme_is_current():
    text = (ROOT / "README.md").read_text()
    assert "<!-- include: " in text
    assert stale(text) == [], "run: python -m pipeline.report.blocks README.md"


def test_a_changed_file_makes_its_block_stale_and_render_mends_it(tmp_path: Path):
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    doc = "intro\n<!-- include: t.md -->\n| a |\n|---|\n| 1 |\n<!-- end include -->\ntail\n"
    assert stale(doc, tmp_path) == []
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 2 |\n")
    assert stale(doc, tmp_path) == ["t.md"]
    assert stale(render(doc, tmp_path), tmp_path) == [] and "| 2 |" in render(doc, tmp_path)
    with pytest.raises(FileNotFoundError, match="include: gone.md does not exist"):
        render("<!-- include: gone.md -->\n<!-- end include -->", tmp_path)
