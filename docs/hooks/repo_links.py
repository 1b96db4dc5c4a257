"""mkdocs hook: links from a docs page to a file of the repository outside docs/ (reports/README.md,
benchmarks/results/*.md, ...), written as relative paths so that they also work when the page is read on the
forge (`../reports/README.md`).

mkdocs resolves only links between pages of docs/; under `--strict` any other relative link fails the build. This
hook checks each such link against the repository (a missing file is a warning, so `--strict` still fails on it),
rewrites it to a copy under `repo/` in the built site, and copies the linked files there after the build. No
network, no plugin: `hooks:` is plain mkdocs.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_links")
LINK = re.compile(r"(\]\()([^)\s]+)(\))")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MARK = "repo-file:"  # a placeholder scheme: mkdocs leaves URLs with a scheme alone; on_page_content resolves it
_linked: set[str] = set()


def on_config(config):
    _linked.clear()
    return config


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_path).parent

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if SCHEME.match(target) or target.startswith(("#", "/")):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (here / path).resolve()
        if resolved.is_relative_to(docs):
            return m.group(0)  # a page or file of the docs: mkdocs checks it
        if not resolved.is_relative_to(root) or not resolved.exists():
            log.warning(f"Doc file '{page.file.src_path}' links to '{target}', which is not a file of the repository")
            return m.group(0)
        rel = resolved.relative_to(root).as_posix()
        _linked.add(rel)
        return f"{m.group(1)}{MARK}{rel}{'#' + anchor if anchor else ''}{m.group(3)}"

    return LINK.sub(fix, markdown)


def on_page_content(html, page, config, files):
    """The placeholders, now that mkdocs has checked the page's own links, as URLs relative to the page."""
    return html.replace(MARK, "../" * page.url.count("/") + "repo/")


def on_post_build(config):
    root = Path(config["docs_dir"]).resolve().parent
    site = Path(config["site_dir"])
    for rel in sorted(_linked):
        src, dst = root / rel, site / "repo" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
