"""`make plots` writes a plots page that needs no network (issue 14.5).

A throw-away git + DVC repository holds the project's dvc.yaml, its committed reports/ (the plot CSVs, the
DVCLive TSVs and the PNG figures) and the real Makefile and pipeline/ package; `make plots` runs there with
VENV pointing at this interpreter's virtualenv (nothing is installed: see tests/report/test_compare.py).
The page is then read as HTML: no element, style or vega spec may point at an http(s) address, every vega
plot DVC's own page shows is there with its data inline, and the inlined script defines `vegaEmbed`.

Whether the page really draws is checked by eye in a headless browser with the network off (README); this
test needs no browser.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from pipeline.report import plots_page
from tests.project import make_dvc_repo
from tests.report.test_compare import BIN, ROOT, VENV, git, sh

URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9]""")  # http://, https:// or protocol-relative //host
CSS_URL = re.compile(r"""url\(\s*['"]?\s*(?:https?:)?//|@import""", re.IGNORECASE)
SPEC = re.compile(r"var spec = (\{.*?\});\s*vegaEmbed\('#([^']+)', spec\);", re.DOTALL)
URL_ATTRS = {"src", "href", "srcset", "action", "data", "poster", "background", "xlink:href", "content"}


class Page(HTMLParser):
    """Every tag with its attributes, every script's and style's text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.styles: list[str] = []
        self._in: tuple[str, dict] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag in ("script", "style"):
            self._in = (tag, attrs)
            if tag == "script":
                self.scripts.append((attrs, ""))
            else:
                self.styles.append("")

    def handle_endtag(self, tag):
        if self._in and tag == self._in[0]:
            self._in = None

    def handle_data(self, data):
        if self._in and self._in[0] == "script":
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif self._in:
            self.styles[-1] += data


def network_references(html: str) -> list[str]:
    """What in the page would make the browser fetch from the network (empty: the page is offline)."""
    page = Page()
    page.feed(html)
    found = []
    for tag, attrs in page.tags:
        if tag == "link":
            found.append(f"<link {attrs}>")
        if (
            tag == "meta"
            and (attrs.get("http-equiv") or "").lower() == "refresh"
            and "url=" in (attrs.get("content") or "").lower()
        ):
            found.append(f"<meta refresh {attrs}>")
        for name, value in attrs.items():
            if name in URL_ATTRS - {"content"} and value and URL.match(value.strip()):
                found.append(f"<{tag} {name}={value}>")
            if name == "style" and value and CSS_URL.search(value):
                found.append(f"<{tag} style={value}>")
    found += [f"<style> {css.strip()[:80]}" for css in page.styles if CSS_URL.search(css)]
    for spec_text, div in SPEC.findall(html):
        found += [
            f"spec {div}: {key}={value}"
            for key, value in walk(json.loads(spec_text))
            if key == "url" or (key in ("href", "image") and isinstance(value, str))
        ]
    return found


def walk(node, key=None):
    """(key, value) of every entry of a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_dvc_repo(tmp_path_factory, "plots", ("Makefile", "dvc.yaml", "params.yaml", ".gitignore"))
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "reports", repo / "reports")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the project's plots")
    return repo


@pytest.fixture(scope="module")
def made(repo) -> str:
    proc = sh(["make", "plots", f"VENV={VENV}"], repo, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (repo / "dvc_plots/index.html").read_text(encoding="utf8")


@pytest.fixture(scope="module")
def dvc_default(repo) -> str:
    """DVC's own page for the same plots (its CDN scripts), for comparison."""
    sh([str(BIN / "dvc"), "plots", "show", "-o", "build/dvc_default"], repo)
    return (repo / "build/dvc_default/index.html").read_text(encoding="utf8")


def test_the_check_catches_dvcs_own_page(dvc_default):
    found = network_references(dvc_default)
    assert len(found) == 3 and all("cdn.jsdelivr.net" in f for f in found), found  # vega, vega-lite, vega-embed


def test_make_plots_page_references_no_network_address(made):
    assert network_references(made) == []


def test_every_vega_plot_is_there_with_inline_data(made, dvc_default):
    ours = {div: json.loads(spec) for spec, div in SPEC.findall(made)}
    theirs = {div: json.loads(spec) for spec, div in SPEC.findall(dvc_default)}
    root = Path(__file__).resolve().parents[1]
    curves = len(list((root / "reports").rglob("plots/metrics/**/*.tsv")))  # DVCLive: baselines + their replicates
    p = yaml.safe_load((root / "params.yaml").read_text())
    bases, replicates = p["baseline"]["replicates"], p["finetune"]["replicates"]
    assert curves == 4 * len(bases) + 4 * len(bases) * len(replicates)
    assert len(ours) == len(theirs) == 4 + curves  # 4 from dvc.yaml's top level, the DVCLive training curves
    assert sorted(
        s.get("title", {}).get("text") if isinstance(s.get("title"), dict) else s.get("title") for s in ours.values()
    ) == sorted(
        s.get("title", {}).get("text") if isinstance(s.get("title"), dict) else s.get("title") for s in theirs.values()
    )
    for div, spec in ours.items():
        values = spec["data"]["values"]
        assert len(values) > 1, div


def test_images_are_local_files(made, repo):
    srcs = [attrs["src"] for tag, attrs in _tags(made) if tag == "img"]
    assert len(srcs) == 4
    for src in srcs:
        assert (repo / "dvc_plots" / src).is_file(), src


def test_the_inlined_script_defines_the_three_globals(made):
    page = Page()
    page.feed(made)
    libraries = [text for attrs, text in page.scripts if "vegaEmbed(" not in text or "window.vegaEmbed" in text]
    assert len(libraries) == 1
    assert all(f"window.{name}=" in libraries[0].replace(" ", "") for name in ("vegaEmbed", "vega", "vegaLite"))
    assert not any("src" in attrs for attrs, _ in page.scripts)


def _tags(html):
    page = Page()
    page.feed(html)
    return page.tags


# ----------------------------------------------------------------------------------------------------
# the template on its own


def test_template_is_deterministic_and_keeps_only_dvcs_plot_placeholder(tmp_path):
    a = plots_page.write_template(tmp_path / "a.html")
    b = plots_page.write_template(tmp_path / "b.html")
    text = a.read_text(encoding="utf8")
    assert text == b.read_text(encoding="utf8")
    assert text.count("{plot_divs}") == 1 and "{scripts}" not in text and plots_page.BUNDLE_MARK not in text


@pytest.mark.parametrize("bad", ["{plot_divs}", "{scripts}", "{refresh_tag}", "</script>"])
def test_a_bundle_that_would_break_the_template_is_refused(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad if bad != "</script>" else "</script"))):
        plots_page.render_template(f"var a = '{bad}';")


def test_unknown_vega_lite_version_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'4\.17'.*valid: .*5\.21"):
        plots_page.vega_bundle("4.17")
