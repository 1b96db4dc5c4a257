"""An HTML template for `dvc plots show/diff --html-template` that renders every plot with no network.

    python -m pipeline.report.plots_page [OUT]      # default build/plots/template.html; used by `make plots`

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN (`<script src="https://cdn...">`), so
offline every vega plot is blank. This writes `templates/plots.html` with those three libraries inlined
as one classic `<script>`: the bundle comes from the pinned PyPI package vl-convert-python
(`vl_convert.javascript_bundle`, which vendors the libraries; nothing is downloaded), and sets
`window.vegaEmbed`, `window.vega` and `window.vegaLite` before DVC's plot divs call `vegaEmbed(...)`.

DVC fills a template by plain string replacement of `{plot_divs}`, `{scripts}` and `{refresh_tag}`
(dvc_render.html.HTML.embed). The template has no `{scripts}` (where DVC would put its CDN tags), and the
bundle is checked not to contain any of the three placeholders, nor `</script`, which would end the script
element early.

Why hand-written: DVC has no offline mode for its page, and no package ships a DVC template; the
template itself is fifteen lines and the libraries come from a package.

Same package version, same bytes: the bundle is deterministic for a given vl-convert-python and
VEGA_LITE_VERSION.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

SKELETON = Path(__file__).with_name("templates") / "plots.html"
BUNDLE_MARK = "/*VEGA_BUNDLE*/"
DEFAULT_OUT = Path("build/plots/template.html")
# DVC's vega templates write Vega-Lite v5 specs ($schema .../vega-lite/v5.json); the newest v5 that
# vl-convert-python 1.9 ships (vl_convert.get_vegalite_versions()).
VEGA_LITE_VERSION = "5.21"
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def vega_bundle(vl_version: str = VEGA_LITE_VERSION) -> str:
    """Vega + Vega-Lite `vl_version` + Vega-Embed as one script that sets the three window globals."""
    try:
        import vl_convert
    except ImportError as exc:  # pragma: no cover - requirements.txt pins it
        raise RuntimeError("the offline plots page needs vl-convert-python (pinned in requirements.txt): "
                           "pip install -r requirements.txt") from exc
    known = vl_convert.get_vegalite_versions()
    if vl_version not in known:
        raise ValueError(f"Vega-Lite version {vl_version!r} is not in vl-convert-python "
                         f"{getattr(vl_convert, '__version__', '?')}; valid: {', '.join(known)}")
    return vl_convert.javascript_bundle(vl_version=vl_version)


def render_template(bundle: str, skeleton: str | None = None) -> str:
    """The skeleton with `bundle` inlined, wrapped in a function so its top-level names stay private."""
    skeleton = SKELETON.read_text(encoding="utf8") if skeleton is None else skeleton
    if skeleton.count(BUNDLE_MARK) != 1 or "{plot_divs}" not in skeleton or "{scripts}" in skeleton:
        raise ValueError(f"{SKELETON}: needs exactly one {BUNDLE_MARK}, a {{plot_divs}} and no {{scripts}}")
    for bad in (*DVC_PLACEHOLDERS, "</script"):
        if bad in bundle:
            raise ValueError(f"the vega bundle contains {bad!r}, which would break the DVC template")
    return skeleton.replace(BUNDLE_MARK, "(function () {\n" + bundle + "\n})();")


def write_template(out: Path, vl_version: str = VEGA_LITE_VERSION) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_template(vega_bundle(vl_version))
    if not out.is_file() or out.read_text(encoding="utf8") != text:
        out.write_text(text, encoding="utf8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    try:
        write_template(args.out)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
