"""Measured tables in the README, rendered from the files that hold them, never typed.

A markdown file marks a rendered block with

    <!-- include: benchmarks/results/calibration.md -->
    ...the file's text...
    <!-- end include -->

`python -m pipeline.report.blocks README.md` rewrites every block from its file (paths relative to the
repository root); `stale(text)` lists the blocks that differ from their files (tests/test_readme_blocks.py fails
on any), so a table that a benchmark or a report rewrote cannot go stale in the prose.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def render(text: str, root: Path = ROOT) -> str:
    """`text` with every include block replaced by its file's current text."""
    def fill(m: re.Match) -> str:
        path = root / m["path"]
        if not path.is_file():
            raise FileNotFoundError(f"include: {m['path']} does not exist (run the benchmark or stage that writes it)")
        body = path.read_text()
        return m.group(1) + body + ("" if body.endswith("\n") else "\n") + m.group(4)
    return BLOCK.sub(fill, text)


def stale(text: str, root: Path = ROOT) -> list[str]:
    """The paths of the include blocks of `text` whose body is not their file's text."""
    fresh = {m["path"]: m["body"] for m in BLOCK.finditer(render(text, root))}
    return [m["path"] for m in BLOCK.finditer(text) if m["body"] != fresh[m["path"]]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m pipeline.report.blocks FILE.md [FILE.md ...]", file=sys.stderr)
        return 2
    for name in argv:
        path = Path(name)
        path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
