"""Measured numbers in the README and the docs, rendered from the files that hold them, never typed.

Two forms. A whole file (a table a stage or a benchmark wrote):

    <!-- include: benchmarks/results/calibration.md -->
    ...the file's text...
    <!-- end include -->

and a single value inside prose, read from a JSON (or YAML) file by a dotted key path (list items by index) and
written with a format:

    <!-- value: reports/sign.json:cam.sigmoid.neg_share_outside:.1f -->54.3<!-- end value -->

The format is a Python format spec (`.1f`, `,d`, `+.2f`, empty: the value as it is), or one of
  `delta`     a signed number with two decimals and a true minus sign, as the report's tables write deltas;
  `interval`  an object with `delta`, `low` and `high` (reports/metrics.json `intervals.<protocol>.<variant>.
              <metric>`) as "−0.83 [−1.72, +0.05]";
  `verdict`   the same object's `verdict` text.

Paths are relative to the repository root. `python -m pipeline.report.blocks [FILE.md ...]` rewrites every block
(default: README.md and docs/*.md, see `documents`); `stale(text)` lists the blocks that differ from their
files (tests/test_readme_blocks.py fails on any), so a number that a benchmark or a report rewrote cannot go
stale in the prose.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)
VALUE = re.compile(
    r"(<!-- value: (?P<path>[^\s:]+):(?P<key>[^\s:]+)(?::(?P<fmt>[^\s]*))? -->)"
    r"(?P<body>[^\n]*?)(<!-- end value -->)"
)
MINUS = "\u2212"


def documents(root: Path = ROOT) -> list[Path]:
    """The markdown files whose blocks are rendered and checked: the README and every page of the docs site."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _load(path: Path, cache: dict) -> object:
    if path not in cache:
        if not path.is_file():
            raise FileNotFoundError(f"value: {path} does not exist (run the benchmark or stage that writes it)")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            cache[path] = yaml.safe_load(text)
        else:
            cache[path] = json.loads(text)
    return cache[path]


def lookup(data: object, key: str, where: str = "") -> object:
    """`data` at the dotted `key` (a list item by its index)."""
    node = data
    for part in key.split("."):
        if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"value: {where}{key}: no '{part}' there")
    return node


def _signed(x: float) -> str:
    rounded = round(float(x), 2)
    return "0.00" if rounded == 0 else f"{rounded:+.2f}".replace("-", MINUS)


def format_value(value: object, fmt: str) -> str:
    """`value` written with `fmt` (see the module's docstring)."""
    if fmt == "delta":
        return _signed(value)
    if fmt == "interval":
        return f"{_signed(value['delta'])} [{_signed(value['low'])}, {_signed(value['high'])}]"
    if fmt == "verdict":
        return str(value["verdict"])
    return format(value, fmt) if fmt else str(value)


def render(text: str, root: Path = ROOT) -> str:
    """`text` with every include block replaced by its file's current text and every value by its file's value."""

    def fill(m: re.Match) -> str:
        path = root / m["path"]
        if not path.is_file():
            raise FileNotFoundError(f"include: {m['path']} does not exist (run the benchmark or stage that writes it)")
        body = path.read_text()
        return m.group(1) + body + ("" if body.endswith("\n") else "\n") + m.group(4)

    cache: dict = {}

    def value(m: re.Match) -> str:
        data = _load(root / m["path"], cache)
        return m.group(1) + format_value(lookup(data, m["key"], f"{m['path']}:"), m["fmt"] or "") + m.group(6)

    return VALUE.sub(value, BLOCK.sub(fill, text))


def stale(text: str, root: Path = ROOT) -> list[str]:
    """The include blocks (their path) and values (`path:key`) of `text` whose body is not their file's."""
    fresh_text = render(text, root)
    fresh = {m["path"]: m["body"] for m in BLOCK.finditer(fresh_text)}
    out = [m["path"] for m in BLOCK.finditer(text) if m["body"] != fresh[m["path"]]]
    values = {m.group(1): m["body"] for m in VALUE.finditer(fresh_text)}
    out += [f"{m['path']}:{m['key']}" for m in VALUE.finditer(text) if m["body"] != values[m.group(1)]]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    names = [a for a in argv if a != "--check"]
    paths = [Path(n) for n in names] if names else documents(ROOT)
    bad = 0
    for path in paths:
        text = path.read_text()
        if check:
            for item in stale(text, ROOT):
                print(f"{path}: stale block {item} (run: python -m pipeline.report.blocks)", file=sys.stderr)
                bad += 1
        else:
            fresh = render(text, ROOT)
            if fresh != text:
                path.write_text(fresh)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
