"""The README's and the docs' measured numbers are their files' text (pipeline/report/blocks.py), never typed."""

import json
import re
from pathlib import Path

import pytest

from pipeline.report.blocks import ROOT, documents, format_value, main, render, stale

DOCUMENTS = documents()


def test_the_readme_and_every_docs_page_are_checked():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert "README.md" in names and "docs/index.md" in names and "docs/datasets.md" in names
    assert names >= {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}


def test_the_readme_renders_the_answer_from_the_report():
    text = (ROOT / "README.md").read_text()
    assert "<!-- include: reports/summary.md -->" in text


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_block_and_value_is_current(path: Path):
    assert stale(path.read_text()) == [], "run: python -m pipeline.report.blocks"


# A typed number that looks measured: a percentage (other than the 95% confidence level), a ratio (2.4x), a time
# (12 s, 3 min) or a throughput (img/s), outside rendered blocks, code spans and code blocks. Settings and targets
# belong in code spans (`1.3`), measurements in a file rendered by a block.
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_RENDERED = (
    re.compile(r"<!-- include: .*?<!-- end include -->", re.S),
    re.compile(r"<!-- value: .*?<!-- end value -->"),
    re.compile(r"<!-- message: .*?<!-- end message -->", re.S),
)
_CODE = re.compile(r"`[^`\n]*`")
_MEASURED = re.compile(
    r"(?<![\w.])\d+(?:[.,]\d+)*(?:\s?%|x\b|\s?(?:ms|s|sec|min|minutes|seconds|hours|h)\b|"
    r"\s?(?:img|images)/s\b)"
)


def typed_numbers(text: str) -> list[str]:
    for block in _RENDERED:
        text = block.sub(" ", text)
    text = _CODE.sub(" ", _FENCE.sub(" ", text))
    return [m.group(0) for m in _MEASURED.finditer(text) if m.group(0).replace(" ", "") != "95%"]


def test_the_typed_number_check_catches_measurements():
    text = (
        "took 12 min 57 s, 2.4x faster, 92.20% Top-1 and 21,201 img/s; a 95% interval, `1.3x` target,\n"
        "<!-- value: r.json:a:.1f -->54.3<!-- end value -->% and\n```\n3 s\n```\n"
    )
    assert typed_numbers(text) == ["12 min", "57 s", "2.4x", "92.20%", "21,201 img/s"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_measured_number_is_typed(path: Path):
    assert typed_numbers(path.read_text()) == [], "render it from its file (pipeline/report/blocks.py)"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_value_starts_a_line(path: Path):
    """Markdown reads an HTML comment at the start of a line as a block of its own and breaks the paragraph."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("<!-- value:")]
    assert lines == []


def test_a_changed_file_makes_its_block_stale_and_render_mends_it(tmp_path: Path):
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    doc = "intro\n<!-- include: t.md -->\n| a |\n|---|\n| 1 |\n<!-- end include -->\ntail\n"
    assert stale(doc, tmp_path) == []
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 2 |\n")
    assert stale(doc, tmp_path) == ["t.md"]
    assert stale(render(doc, tmp_path), tmp_path) == [] and "| 2 |" in render(doc, tmp_path)
    with pytest.raises(FileNotFoundError, match="include: gone.md does not exist"):
        render("<!-- include: gone.md -->\n<!-- end include -->", tmp_path)


def test_values_are_rendered_from_json_and_yaml_keys(tmp_path: Path):
    (tmp_path / "r.json").write_text(
        json.dumps(
            {
                "cam": {"share": 54.343397, "n": 1000},
                "rows": [{"delta": -0.833, "low": -1.72, "high": 0.0546, "verdict": "no detectable difference"}],
            }
        )
    )
    (tmp_path / "p.yaml").write_text("baseline:\n  replicates: [0, 1, 2]\n")
    doc = (
        "puts <!-- value: r.json:cam.share:.1f -->42.7<!-- end value -->% of <!-- value: r.json:cam.n:,d -->"
        "?<!-- end value --> images; <!-- value: r.json:rows.0:interval -->x<!-- end value --> "
        "(<!-- value: r.json:rows.0:verdict --><!-- end value -->), <!-- value: p.yaml:baseline.replicates: -->"
        "<!-- end value -->\n"
    )
    assert stale(doc, tmp_path) == [
        "r.json:cam.share",
        "r.json:cam.n",
        "r.json:rows.0",
        "r.json:rows.0",
        "p.yaml:baseline.replicates",
    ]
    fresh = render(doc, tmp_path)
    assert "-->54.3<!-- end value -->%" in fresh and "-->1,000<!--" in fresh
    assert "-->\u22120.83 [\u22121.72, +0.05]<!--" in fresh and "-->no detectable difference<!--" in fresh
    assert "-->[0, 1, 2]<!--" in fresh and stale(fresh, tmp_path) == []
    with pytest.raises(KeyError, match="r.json:cam.missing: no 'missing' there"):
        render("<!-- value: r.json:cam.missing:.1f --><!-- end value -->", tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.json does not exist"):
        render("<!-- value: gone.json:a --><!-- end value -->", tmp_path)


def test_formats():
    assert format_value(-0.004, "delta") == "0.00" and format_value(1.5, "delta") == "+1.50"
    assert format_value(0.9, ".0%") == "90%" and format_value(3, "") == "3"


def test_check_mode_reports_stale_blocks_and_the_default_rewrites_them(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "r.json").write_text('{"a": 2}')
    page = tmp_path / "page.md"
    page.write_text("a <!-- value: r.json:a: -->1<!-- end value -->\n")
    monkeypatch.setattr("pipeline.report.blocks.ROOT", tmp_path)
    assert main(["--check", str(page)]) == 1 and "stale block r.json:a" in capsys.readouterr().err
    assert main([str(page)]) == 0 and "-->2<!--" in page.read_text()
    assert main(["--check", str(page)]) == 0
