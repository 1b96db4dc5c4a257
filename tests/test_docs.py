"""The docs site builds offline with `mkdocs build --strict` (a broken link, a missing page or a page left out of
the nav fails it), and the README stays a front page."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the detail to docs/"


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert sorted(pages) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    for name in ("params.md", "datasets.md", "extending.md", "reproducibility.md", "statistics.md"):
        assert name in pages


def test_mkdocs_builds_strict_and_offline(tmp_path: Path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(Path(sys.executable).parent), "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index and "fonts.gstatic.com" not in index  # theme.font: false
    # a link to a repository file outside docs/ points at its copy in the site
    assert 'href="repo/reports/README.md"' in index and (site / "repo/reports/README.md").is_file()
    results = (site / "results" / "index.html").read_text()
    assert 'href="../repo/reports/README.md"' in results
    assert not (site / "hooks").exists()  # the hook is configuration, not a page


def test_a_link_to_a_missing_repository_file_fails_the_strict_build(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hooks").mkdir()
    (docs / "hooks" / "repo_links.py").write_text((ROOT / "docs/hooks/repo_links.py").read_text())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "README.md").write_text("# r\n")
    (docs / "index.md").write_text("# Home\n\n[report](../reports/README.md)\n")
    config = {
        "site_name": "t",
        "theme": {"name": "material", "font": False},
        "hooks": ["docs/hooks/repo_links.py"],
        "exclude_docs": "hooks/\n",
        "nav": ["index.md"],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PATH": str(Path(sys.executable).parent), "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)},
        )

    ok = build()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (docs / "index.md").write_text("# Home\n\n[report](../reports/GONE.md)\n")
    broken = build()
    assert broken.returncode != 0 and "../reports/GONE.md" in broken.stderr
