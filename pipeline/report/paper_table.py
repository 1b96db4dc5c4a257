"""This repository's experiments in the layout of the paper's Table 2 (METHOD.md 7.1), beside its numbers.

    python -m pipeline.report.paper_table [--csv] [-A]         # or: make paper-table

Reads `dvc exp show --json` (the workspace, the baseline commit(s) and every experiment; `-A` for all
commits), or a file of that JSON with `--exp-json FILE`. Each run with a `reports/metrics.json` is one
setting: its params `dataset`, `backbone`, `family` (default `cam` where the param is absent) and the
training-side ablations `finetune.head_init` and `finetune.bn_mode`. One markdown table per dataset, rows
backbone x method x setting: the CAM row from a CAM-family run, the Grad-CAM, Grad-CAM++, XGrad-CAM and
LayerCAM rows from a gradient-family run (the paper's layout); columns Top-1 Cls (the softmax branch
classifies, so one number) and Top-1 Loc, GT-known Loc, MaxBoxAccV2, PxAP for the softmax and the sigmoid
branch side by side. Where the paper reports a number (pipeline/report/paper_numbers.py: ImageNet
Top-1 Cls/Loc, GT-known, MaxBoxAccV2; OpenImages Top-1 Cls, PxAP; CAM and Grad-CAM on vgg16, resnet50,
inception) the cell reads `ours (paper)`. A metric that is absent, not a number (a variant marked not
applicable) or not finite reads `n/a`.

Runs of the same setting with the same numbers (the workspace after `dvc exp run` applied an experiment,
a commit and its copy) are one row that names them all; runs of the same setting with other numbers (they
differ in a param that is not part of the setting) are separate rows, told apart by the Experiment column.

`--csv` writes one flat CSV instead: one row per table row, our value and the paper's in separate columns
(empty where there is none).

Exit status: 0; 2 for an error the user can fix (not a DVC repository, an unknown family, an unreadable
JSON file); 1 when dvc is missing or fails. Nothing here imports torch or DVC's Python API.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cams import variants
from pipeline.models.names import ALIASES
from pipeline.report.paper_numbers import DATASETS as PAPER_DATASETS
from pipeline.report.paper_numbers import SOURCE, paper_value

METRICS_FILE = "reports/metrics.json"
PARAMS_FILE = "params.yaml"
DEFAULT_FAMILY = "cam"
# The paper's rows per model family (METHOD.md 7.1 and 1.1): the CAM family gives CAM, the gradient family
# the four gradient variants. Keys and labels as in reports/metrics.json and the report.
METHODS = {  # the CAM family's own method (CAM), and the gradient family's variants, from the registry
    "cam": tuple((v.name, v.label) for v in variants.for_family("cam") if not v.applies_to("grad")),
    "grad": tuple((v.name, v.label) for v in variants.for_family("grad")),
}
BRANCHES = ("softmax", "sigmoid")
BRANCH_METRICS = (("top1_loc", "Top-1 Loc"), ("gt_known_loc", "GT-known Loc"), ("maxboxacc_v2", "MaxBoxAccV2"),
                  ("pxap", "PxAP"))
SETTING_PARAMS = ("finetune.head_init", "finetune.bn_mode")  # training-side ablations: one row each
BACKBONE_ORDER = ("vgg16", "resnet50", "inception")  # the paper's order; any other backbone after, by name
NA = "n/a"


class UserError(Exception):
    """A mistake the user can fix (exit status 2)."""


@dataclass(frozen=True)
class Run:
    """One run with metrics: a name (workspace, a commit, an experiment), its params and metrics."""

    name: str
    params: dict
    metrics: dict


@dataclass(frozen=True)
class Setting:
    dataset: str
    backbone: str
    family: str
    ablations: tuple[tuple[str, str], ...]  # (param, value) of SETTING_PARAMS

    def label(self) -> str:
        return ", ".join(f"{key.split('.')[-1]}={value}" for key, value in self.ablations)

    def sort_key(self):
        order = BACKBONE_ORDER.index(self.backbone) if self.backbone in BACKBONE_ORDER else len(BACKBONE_ORDER)
        return (self.dataset, order, self.backbone, list(METHODS).index(self.family), self.ablations)


def _get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def setting_of(run: Run) -> Setting:
    p = run.params
    family = p.get("family", DEFAULT_FAMILY)
    family = DEFAULT_FAMILY if family is None else str(family)
    if family not in METHODS:
        raise UserError(f"{run.name}: params.yaml `family: {family}` is not a model family; valid: "
                        f"{', '.join(METHODS)}")
    backbone = str(p.get("backbone"))
    ablations = tuple((key, "-" if _get(p, key) is None else str(_get(p, key))) for key in SETTING_PARAMS)
    return Setting(str(p.get("dataset")), ALIASES.get(backbone, backbone), family, ablations)


def runs_from_exp_show(entries: list) -> list[Run]:
    """Every run of `dvc exp show --json` that has reports/metrics.json, in its order (names as DVC shows)."""
    runs: list[Run] = []

    def visit(rev: dict) -> None:
        data = rev.get("data") or {}
        name = rev.get("name") or (rev.get("rev", "")[:7] if rev.get("rev") != "workspace" else "workspace")
        params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
        metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
        if not rev.get("error") and isinstance(params, dict) and isinstance(metrics, dict):
            runs.append(Run(name, params, metrics))
        for group in rev.get("experiments") or []:
            for child in group.get("revs") or []:
                visit(child)

    for entry in entries:
        visit(entry)
    return runs


def _cells(run: Run, setting: Setting, variant: str) -> dict[str, tuple[float | None, float | None]]:
    """column key -> (ours, paper) for one row."""
    ds, bb = setting.dataset, setting.backbone
    cells = {"top1_cls": (_number(run.metrics.get("top1_cls")), paper_value(ds, bb, variant, None, "top1_cls"))}
    entry = run.metrics.get(variant)
    for metric, _ in BRANCH_METRICS:
        for branch in BRANCHES:
            ours = _get(entry, f"{branch}.{metric}") if isinstance(entry, dict) else None
            cells[f"{branch}.{metric}"] = (_number(ours), paper_value(ds, bb, variant, branch, metric))
    return cells


COLUMNS = ("top1_cls", *(f"{branch}.{metric}" for metric, _ in BRANCH_METRICS for branch in BRANCHES))


def rows(runs: Iterable[Run]) -> list[dict]:
    """The table rows: one per setting x method (x distinct numbers), in the paper's order."""
    groups: dict[Setting, list[tuple[list[str], Run]]] = {}
    for run in runs:
        setting = setting_of(run)
        same = groups.setdefault(setting, [])
        for names, kept in same:
            if kept.metrics == run.metrics:
                names.append(run.name)
                break
        else:
            same.append(([run.name], run))
    out = []
    for setting in sorted(groups, key=Setting.sort_key):
        for variant, label in METHODS[setting.family]:
            for names, run in groups[setting]:
                out.append({"setting": setting, "variant": variant, "method": label, "experiments": names,
                            "cells": _cells(run, setting, variant)})
    return out


def _fmt(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}"


def markdown(table_rows: list[dict]) -> str:
    if not table_rows:
        return "No experiment with reports/metrics.json found (`dvc exp show`).\n"
    header = ["Backbone", "Method", "Setting", "Top-1 Cls",
              *(f"{label} {branch}" for _, label in BRANCH_METRICS for branch in BRANCHES), "Experiment"]
    out = ["# This repository's experiments in the layout of the paper's Table 2", "",
           "Values in %; softmax = the vanilla map, sigmoid = the sigmoid branch's map; Top-1 Cls is the "
           "softmax branch's. A cell `ours (paper)` gives the paper's number beside ours, from " + SOURCE + ".",
           ""]
    for dataset in sorted({row["setting"].dataset for row in table_rows}):
        note = "" if dataset in PAPER_DATASETS else " (the paper reports no numbers for this dataset)"
        out += [f"## {dataset}{note}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" for _ in header) + "|"]
        for row in table_rows:
            if row["setting"].dataset != dataset:
                continue
            cells = [_fmt(ours) if paper is None else f"{_fmt(ours)} ({paper:.2f})"
                     for ours, paper in (row["cells"][key] for key in COLUMNS)]
            line = [row["setting"].backbone, row["method"], row["setting"].label(), *cells,
                    ", ".join(row["experiments"])]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def to_csv(table_rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "backbone", "family", *(key.split(".")[-1] for key in SETTING_PARAMS), "method",
                     "variant", *(f"{key}{suffix}" for key in COLUMNS for suffix in ("", "_paper")), "experiments"])
    for row in table_rows:
        s = row["setting"]
        values = [("" if v is None else f"{v:.6g}") for key in COLUMNS for v in row["cells"][key]]
        writer.writerow([s.dataset, s.backbone, s.family, *(value for _, value in s.ablations), row["method"],
                         row["variant"], *values, " ".join(row["experiments"])])
    return buf.getvalue()


def exp_show_json(all_commits: bool) -> list:
    beside = Path(sys.executable).with_name("dvc")  # the interpreter's own environment first
    dvc = str(beside) if beside.is_file() else shutil.which("dvc")
    if dvc is None:
        raise RuntimeError("dvc is not on PATH (make setup installs it into .venv)")
    cmd = [dvc, "exp", "show", "--json", *(["-A"] if all_commits else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        if "not a dvc repository" in message.lower() or "you are not inside of a dvc repository" in message.lower():
            raise UserError(message)
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({proc.returncode}): {message}")
    return json.loads(proc.stdout or "[]")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", action="store_true", help="one flat CSV instead of the markdown tables")
    parser.add_argument("-A", "--all-commits", action="store_true", help="every commit's experiments (dvc -A)")
    parser.add_argument("--exp-json", type=Path, help="read this `dvc exp show --json` output instead of running it")
    args = parser.parse_args(argv)
    try:
        if args.exp_json is not None:
            try:
                entries = json.loads(args.exp_json.read_text(encoding="utf8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"--exp-json {args.exp_json}: {exc}") from exc
        else:
            entries = exp_show_json(args.all_commits)
        if not isinstance(entries, list):
            raise UserError("the `dvc exp show --json` output is not a list of revisions")
        table_rows = rows(runs_from_exp_show(entries))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(to_csv(table_rows) if args.csv else markdown(table_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
