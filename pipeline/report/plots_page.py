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

The curve plots of dvc.yaml (box accuracy per IoU, pixel precision-recall: one line per variant_branch file)
are drawn by the Vega-Lite template `pipeline/report/templates/curves.json` (curves.TEMPLATE), which
`curve_template()` generates from the registries and this command rewrites: every variant has its own hue
(VARIANT_HUES, in registry order), the sigmoid branch its dark shade as a solid line and the softmax branch its
light shade dashed, so the branches of a variant read as a pair and the two branches apart at a glance. The
revision (`dvc plots diff`) sets the line width: the first revision (alphabetically) wide, the others thin.
DVC's own `linear` / `simple` templates colour by revision only, so every curve of one revision had one colour.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.concepts import BRANCHES
from pipeline.metrics import curves

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
    except ImportError as exc:  # pragma: no cover - requirements/run.txt pins it
        raise RuntimeError(
            "the offline plots page needs vl-convert-python (pinned in requirements/run.txt): "
            "pip install -r requirements/run.txt"
        ) from exc
    known = vl_convert.get_vegalite_versions()
    if vl_version not in known:
        raise ValueError(
            f"Vega-Lite version {vl_version!r} is not in vl-convert-python "
            f"{getattr(vl_convert, '__version__', '?')}; valid: {', '.join(known)}"
        )
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


# ColorBrewer "Paired" (colour-blind aware as far as five hues go): (light, dark) per variant, in registry order.
VARIANT_HUES = (
    ("#a6cee3", "#1f78b4"),
    ("#b2df8a", "#33a02c"),
    ("#fb9a99", "#e31a1c"),
    ("#fdbf6f", "#ff7f00"),
    ("#cab2d6", "#6a3d9a"),
    ("#ffff99", "#b15928"),
)
# (shade index in VARIANT_HUES' pairs, Vega-Lite strokeDash) per branch: softmax light and dashed, sigmoid dark
# and solid. Keyed by concepts.BRANCHES (a test checks every branch has one).
BRANCH_STYLE = {BRANCHES[0]: (0, [6, 3]), BRANCHES[1]: (1, [1, 0])}


def curve_template(variants: Sequence[str] | None = None) -> dict:
    """The Vega-Lite template (DVC anchors) of dvc.yaml's curve plots: colour and dash per variant_branch file
    (a file's stem, from DVC's `filename` field), line width per revision."""
    if variants is None:
        from pipeline.cams import variants as registry

        variants = registry.names()
    domain, colours, dashes = [], [], []
    for k, variant in enumerate(variants):
        for branch in BRANCHES:
            shade, dash = BRANCH_STYLE[branch]
            domain.append(curves.curve_name(variant, branch))
            colours.append(VARIANT_HUES[k % len(VARIANT_HUES)][shade])
            dashes.append(dash)
    legend = {"title": "variant_branch", "orient": "right", "symbolStrokeWidth": 2.5, "symbolSize": 300}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": "<DVC_METRIC_TITLE>",
        "width": 520,
        "height": 360,
        # DVC's `filename` is the file's path below the plot's common folder, e.g. cam_softmax.csv
        "transform": [{"calculate": "replace(datum.filename, regexp('(^.*/)|([.]csv$)', 'g'), '')", "as": "curve"}],
        "mark": {"type": "line", "tooltip": True},
        "encoding": {
            "x": {"field": "<DVC_METRIC_X>", "type": "quantitative", "title": "<DVC_METRIC_X_LABEL>"},
            "y": {
                "field": "<DVC_METRIC_Y>",
                "type": "quantitative",
                "title": "<DVC_METRIC_Y_LABEL>",
                "scale": {"zero": False},
            },
            "color": {
                "field": "curve",
                "type": "nominal",
                "scale": {"domain": domain, "range": colours},
                "legend": legend,
            },
            "strokeDash": {
                "field": "curve",
                "type": "nominal",
                "scale": {"domain": domain, "range": dashes},
                "legend": legend,
            },
            "strokeWidth": {
                "field": "rev",
                "type": "nominal",
                "scale": {"range": [2.0, 1.0]},
                "legend": {"title": "revision"},
            },
            "tooltip": [{"field": "rev"}, {"field": "curve"}, {"field": "<DVC_METRIC_X>"}, {"field": "<DVC_METRIC_Y>"}],
        },
    }


def curve_template_text(variants: Sequence[str] | None = None) -> str:
    """curve_template() as the committed file's text (sorted keys, two-space indent)."""
    return json.dumps(curve_template(variants), indent=2, sort_keys=True) + "\n"


def write_curve_template(path: Path | str = curves.TEMPLATE) -> Path:
    path = Path(path)
    text = curve_template_text()
    if not path.is_file() or path.read_text(encoding="utf8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    try:
        write_template(args.out)
        write_curve_template()
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
