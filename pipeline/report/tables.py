"""The paper-style results table (METHOD.md 7.1): softmax-branch CAM vs sigmoid-branch CAM, with deltas.

`results_frame` flattens the evaluate stage's metrics into one row per (backbone, variant) with, for each
metric, the softmax value, the sigmoid value and the delta (sigmoid - softmax); `results_markdown` renders
it as a few markdown tables that a person can read, with the better branch in bold (lower is better for
Average Drop), and `options_markdown` lists the choices the numbers depend on. The variants, their order
and labels come from the registry (`pipeline.cams.variants`); a variant the run's model family does not
have (CAM for the gradient family) is a row of "n/a" with the registry's footnote, not a number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from pipeline.cams import variants as registry
from pipeline.concepts import BRANCHES
from pipeline.metrics import registry as metric_registry
from pipeline.metrics.registry import Metric

VARIANT_LABELS = {v.name: v.label for v in registry.REGISTRY.values()}
NOT_APPLICABLE = "n/a"

# The markdown tables: (title, metric keys). Every registered metric (pipeline/metrics/registry.py) appears in
# exactly one (tests/report/test_tables.py); a table's columns use the metrics' short labels.
TABLES = (
    ("Localization", ("top1_loc", "gt_known_loc", "maxboxacc_v2")),
    ("MaxBoxAccV2 by IoU threshold, and MaxBoxAcc (largest contour, IoU 50)", (*metric_registry.IOU_KEYS, "maxboxacc")),
    ("Pixel average precision and explanation fidelity", ("pxap", "avg_drop", "inc_conf")),
)
# The metrics in the tables' order: the columns of reports/results.csv.
METRICS: tuple[Metric, ...] = tuple(metric_registry.get(k) for _, keys in TABLES for k in keys)
BY_KEY = metric_registry.BY_KEY


def results_frame(metrics: Mapping, backbone: str, family: str = registry.DEFAULT_FAMILY) -> pd.DataFrame:
    """One row per registered variant for `backbone`, from `metrics` (the evaluate stage's metrics.json).

    Columns: backbone, variant, top1_cls, then <metric>_softmax, <metric>_sigmoid, <metric>_delta for every
    metric present in the file (PxAP needs masks, Avg Drop / Inc Conf need `evaluate.fidelity`). A variant
    that `family` does not have gets a row with empty metric values (shown as n/a).
    """
    expected = [v.name for v in registry.for_family(family)]
    missing = [v for v in expected if v not in metrics]
    if missing or "top1_cls" not in metrics:
        raise ValueError(
            f"metrics: expected top1_cls and the variants {', '.join(expected)}; missing: "
            f"{', '.join(missing or ['top1_cls'])} -- rerun the evaluate stage"
        )
    rows = []
    for variant in registry.names():
        if variant not in expected:  # not defined for this family: no numbers at all, Top-1 Cls included
            rows.append({"backbone": backbone, "variant": variant})
            continue
        row = {"backbone": backbone, "variant": variant, "top1_cls": float(metrics["top1_cls"])}
        for branch in BRANCHES:
            if branch not in metrics[variant]:
                raise ValueError(f"metrics: {variant} has no '{branch}' branch; found {', '.join(metrics[variant])}")
        for m in METRICS:
            values = [metrics[variant][b].get(m.key) for b in BRANCHES]
            if any(v is None for v in values):
                continue
            soft, sig = (float(v) for v in values)
            row.update({f"{m.key}_softmax": soft, f"{m.key}_sigmoid": sig, f"{m.key}_delta": sig - soft})
        rows.append(row)
    return pd.DataFrame(rows)


def not_applicable(family: str) -> list[registry.CamVariant]:
    """The registered variants a run of `family` does not have, in registry order."""
    return [v for v in registry.REGISTRY.values() if not v.applies_to(family)]


def footnotes(family: str) -> str:
    """The markdown footnote lines explaining each n/a row ('' when there is none)."""
    return "".join(f"n/a: {v.not_applicable}\n\n" for v in not_applicable(family))


def write_csv_text(frame: pd.DataFrame) -> str:
    """The frame as CSV text with a fixed float format (byte-stable across runs)."""
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _delta(value: float) -> str:
    rounded = round(value, 2)
    if rounded == 0:
        return "0.00"
    return f"{rounded:+.2f}".replace("-", "\u2212")


def _pair(m: Metric, soft: float, sig: float) -> tuple[str, str]:
    """The two values, the better one (after rounding) in bold."""
    a, b = round(soft, 2), round(sig, 2)
    if a == b:
        return _fmt(soft), _fmt(sig)
    sig_better = (b > a) == m.higher_is_better
    return (_fmt(soft), f"**{_fmt(sig)}**") if sig_better else (f"**{_fmt(soft)}**", _fmt(sig))


def results_markdown(frame: pd.DataFrame, family: str = registry.DEFAULT_FAMILY) -> str:
    """The results as markdown tables (values in %), softmax | sigmoid | delta per metric; the variants that
    `family` does not have read n/a, with a footnote under the tables."""
    absent = {v.name for v in not_applicable(family)}
    out = []
    for title, keys in TABLES:
        keys = [k for k in keys if f"{k}_softmax" in frame.columns]
        if not keys:
            continue
        with_cls = title == TABLES[0][0]
        head = ["Backbone", "Variant"] + ([metric_registry.RUN_METRICS["top1_cls"]] if with_cls else [])
        cells = []
        for k in keys:
            arrow = "" if BY_KEY[k].higher_is_better else f" ({BY_KEY[k].direction})"
            label = BY_KEY[k].short + arrow
            cells += [f"{label}: softmax", "sigmoid", "\u0394"]
        lines = [
            f"**{title}** (%)",
            "",
            "| " + " | ".join(head + cells) + " |",
            "|" + "---|" * 2 + "---:|" * (len(head) - 2 + len(cells)),
        ]
        for _, row in frame.iterrows():
            values = [str(row["backbone"]), VARIANT_LABELS.get(row["variant"], row["variant"])]
            if with_cls:
                values.append(NOT_APPLICABLE if row["variant"] in absent else _fmt(row["top1_cls"]))
            for k in keys:
                if row["variant"] in absent:
                    values += [NOT_APPLICABLE] * 3
                    continue
                soft, sig = row[f"{k}_softmax"], row[f"{k}_sigmoid"]
                values += [*_pair(BY_KEY[k], soft, sig), _delta(row[f"{k}_delta"])]
            lines.append("| " + " | ".join(values) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n" + ("\n" + footnotes(family).rstrip("\n") + "\n" if absent else "")


def sign_markdown(sign: Mapping) -> str:
    """The sign diagnostics ({variant: {branch: {key: %}}}) as one markdown table."""
    head = ["Variant"]
    for branch in BRANCHES:
        head += [f"{branch}: negative inside box", "negative outside box", "box net negative"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for variant in registry.names():
        if variant not in sign:
            continue
        values = [VARIANT_LABELS[variant]]
        for branch in BRANCHES:
            s = sign[variant][branch]
            values += [_fmt(s["neg_share_inside"]), _fmt(s["neg_share_outside"]), _fmt(s["net_negative_inside"])]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _clamp_text(evaluation: Mapping) -> str:
    clamp = evaluation.get("weight_clamp")
    if clamp is None:
        return (
            "sigmoid branch only (official preset)"
            if evaluation.get("postprocess") == "official"
            else "none (clean preset)"
        )
    return {"none": "none", "sigmoid": "sigmoid branch only", "both": "both branches"}[clamp]


def options_markdown(evaluation: Mapping, classification: Mapping) -> str:
    """A bullet list of the run and the official-code options that the numbers depend on."""
    e, c = evaluation, classification
    post = e.get("postprocess")
    relu = e.get("relu")
    if relu is None:
        relu_text = "off for CAM, on for the gradient variants (official)" if post == "official" else "on"
    else:
        relu_text = "on" if relu else "off"
    upsample = e.get("upsample") or (
        "bicubic for CAM, bilinear for the gradient variants" if post == "official" else "bilinear"
    )
    split = e.get("threshold_split")
    lines = [
        f"- Run: dataset `{e['dataset']}`, backbone `{e['backbone']}`, {e['images']} test images; "
        + (
            f"hyperparameters from params.yaml, its nulls filled by the preset "
            f"`datasets.{e['preset'].replace('/', '.presets.')}` (METHOD.md 6.2)."
            if e.get("preset")
            else "hyperparameters from params.yaml (no dataset preset for this backbone)."
        ),
        f"- Classification: Top-1 Cls {_fmt(c['top1_cls_softmax'])}% (softmax head, frozen: its parameters, buffers "
        f"and logits are bit-identical after fine-tuning: `{str(c['softmax_branch_unchanged']).lower()}`); "
        f"the sigmoid head's own "
        f"Top-1 is {_fmt(c['top1_cls_sigmoid'])}%. Top-1 Loc of both branches counts the softmax prediction.",
        f"- Sigmoid head: `head_init: {e['head_init']}`, BatchNorm during fine-tuning: `bn_mode: {e['bn_mode']}`.",
        f"- Post-processing: `{post}` preset; weight clamp: {_clamp_text(e)}; ReLU: {relu_text}; "
        f"upsampling: {upsample}.",
        f"- Boxes: GT box rule `{e['gt_box_match']}` "
        f"({'best of all GT boxes' if e['gt_box_match'] == 'max' else 'first GT box only, official'}); "
        f"threshold grid `{e['threshold_grid']}`; MaxBoxAcc thresholds chosen on "
        f"`{split}`{' and applied to test' if split == 'val' else ' (oracle, official)'}; "
        f"GT-known and Top-1 Loc at CAM threshold {e['loc_threshold']}.",
    ]
    if e.get("fidelity"):
        lines.append(f"- Avg Drop / Inc Conf: maps of the `{e['fidelity_target']}` class, scored by the softmax head.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Deltas with their 95% intervals (pipeline/metrics/intervals.py rows)

ABLATION_METRICS = ("maxboxacc_v2", "gt_known_loc", "pxap")


def _interval(row: Mapping) -> str:
    return f"{_delta(row['delta'])} [{_delta(row['low'])}, {_delta(row['high'])}]"


def _metric_label(key: str) -> str:
    return metric_registry.label(key)


def intervals_markdown(rows: Sequence[Mapping], protocol: str) -> str:
    """One row per (variant, metric) of `protocol`: both branches (means over seeds), the delta with its
    interval, the half-width (the smallest effect this run detects) and the verdict."""
    chosen = [r for r in rows if r["protocol"] == protocol]
    if not chosen:
        raise ValueError(f"intervals: no rows for protocol '{protocol}'")
    level = f"{100 * chosen[0]['confidence']:.0f}%"
    lines = [
        f"| variant | metric | softmax | sigmoid | \u0394 [{level} interval] | half-width | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in chosen:
        lines.append(
            f"| {VARIANT_LABELS.get(r['variant'], r['variant'])} | {_metric_label(r['metric'])} | "
            f"{_fmt(r['softmax'])} | {_fmt(r['sigmoid'])} | {_interval(r)} | {_fmt(r['half_width'])} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def ablation_markdown(rows: Sequence[Mapping], metrics: Sequence[str] = ABLATION_METRICS) -> str:
    """Rows variant x protocol, one column per metric: the delta [interval] and the verdict, so the official
    protocol's difference reads as post-processing asymmetry (official vs official_symmetric) plus the branch
    itself (clean / official_symmetric)."""
    shown = [m for m in metrics if any(r["metric"] == m for r in rows)]
    by_key = {(r["variant"], r["protocol"], r["metric"]): r for r in rows}
    pairs = list(dict.fromkeys((r["variant"], r["protocol"]) for r in rows))
    pairs.sort(key=lambda vp: list(dict.fromkeys(r["variant"] for r in rows)).index(vp[0]))
    lines = [
        "| variant | protocol | " + " | ".join(_metric_label(m) for m in shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for variant, protocol in pairs:
        cells = []
        for m in shown:
            r = by_key.get((variant, protocol, m))
            cells.append(NOT_APPLICABLE if r is None else _cell(r))
        lines.append(f"| {VARIANT_LABELS.get(variant, variant)} | `{protocol}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: Mapping) -> str:
    """A delta with its interval and short verdict, e.g. '+1.50 [+0.50, +2.50] (better)'."""
    return f"{_interval(row)} {_short_verdict(row['verdict'])}"


def _short_verdict(text: str) -> str:
    return {"sigmoid better": "(better)", "sigmoid worse": "(worse)", "no detectable difference": "(n.s.)"}[text]


SUMMARY_METRICS = ("maxboxacc_v2", "gt_known_loc", "top1_loc", "pxap", "avg_drop")


def summary_markdown(rows: Sequence[Mapping], headline: str, metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """The answer in two small tables (reports/summary.md, rendered into the project README): per distinct map
    set of the headline protocol (variants whose every interval is the same share a row) the delta [interval]
    and verdict of each metric, then each protocol's deltas for the first map set."""
    chosen = [r for r in rows if r["protocol"] == headline and r["metric"] in metrics]
    shown = [m for m in metrics if any(r["metric"] == m for r in chosen)]
    groups: dict[tuple, list[str]] = {}
    for variant in dict.fromkeys(r["variant"] for r in chosen):
        key = tuple((r["metric"], r["delta"], r["low"], r["high"]) for r in chosen if r["variant"] == variant)
        groups.setdefault(key, []).append(variant)
    by_key = {(r["variant"], r["protocol"], r["metric"]): r for r in rows}
    models = chosen[0]["models"] if chosen else []
    lines = [
        f"Sigmoid \u2212 softmax, headline protocol `{headline}`, {len(models)} model(s) "
        f"({len({j for j, _ in models})} baseline(s)); 95% intervals over images, fine-tuning and baseline.",
        "",
        "| map set | " + " | ".join(_metric_label(m) for m in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for variants in groups.values():
        cells = [
            _cell(by_key[(variants[0], headline, m)]) if (variants[0], headline, m) in by_key else NOT_APPLICABLE
            for m in shown
        ]
        lines.append(f"| {' = '.join(VARIANT_LABELS.get(v, v) for v in variants)} | " + " | ".join(cells) + " |")
    first = next(iter(groups.values()))[0] if groups else None
    protocols = list(dict.fromkeys(r["protocol"] for r in rows if r["variant"] == first))
    if len(protocols) > 1:
        lines += [
            "",
            f"{VARIANT_LABELS.get(first, first)} under each protocol:",
            "",
            "| protocol | " + " | ".join(_metric_label(m) for m in shown) + " |",
            "|---|" + "---|" * len(shown),
        ]
        for p in protocols:
            cells = [_cell(by_key[(first, p, m)]) if (first, p, m) in by_key else NOT_APPLICABLE for m in shown]
            lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DF_INFINITE = 1e6  # degrees of freedom shown as infinity


def levels_markdown(rows: Sequence[Mapping], protocol: str, metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """Per (variant, metric) of `protocol`: the half-width and each level's share of the variance (images,
    fine-tuning, baseline; None -> 'n/s' when the run has more than one baseline but one replicate each, '-'
    when the level is absent)."""
    chosen = [r for r in rows if r["protocol"] == protocol and r["metric"] in metrics]
    lines = [
        "| variant | metric | half-width | images | fine-tuning | baseline | df |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in chosen:
        levels = r["levels"]
        several = len({j for j, _ in r["models"]}) > 1

        def share(level: str, levels: dict = levels, several: bool = several) -> str:
            value = levels.get(level)
            if value is None:
                return "n/s" if level == "finetune" and several else "-"
            return f"{100 * value:.0f}%"

        # Satterthwaite's df grows without bound as the baseline level's variance share goes to 0: past
        # DF_INFINITE the t quantile equals the normal one to every printed digit, so the table says so.
        df = "\u221e" if r.get("df") is None or r["df"] > DF_INFINITE else f"{r['df']:.1f}"
        lines.append(
            f"| {VARIANT_LABELS.get(r['variant'], r['variant'])} | {_metric_label(r['metric'])} | "
            f"{_fmt(r['half_width'])} | {share('images')} | {share('finetune')} | {share('baseline')} | "
            f"{df} |"
        )
    return "\n".join(lines) + "\n"


def power_markdown(rows: Sequence[Mapping], protocol: str) -> str:
    """The smallest effect the run can detect per metric: the median and the largest half-width over the
    variants of `protocol`."""
    chosen = [r for r in rows if r["protocol"] == protocol]
    metrics = list(dict.fromkeys(r["metric"] for r in chosen))
    lines = ["| metric | half-width, median over variants | largest |", "|---|---|---|"]
    for m in metrics:
        widths = sorted(r["half_width"] for r in chosen if r["metric"] == m)
        half = len(widths) // 2
        median = widths[half] if len(widths) % 2 else (widths[half - 1] + widths[half]) / 2
        lines.append(f"| {_metric_label(m)} | {_fmt(median)} | {_fmt(widths[-1])} |")
    return "\n".join(lines) + "\n"
