"""This repository's experiments in the layout of the paper's Table 2 (METHOD.md 7.1), beside its numbers.

    python -m pipeline.report.paper_table [--csv] [-A]         # or: make paper-table
    python -m pipeline.report.paper_table --check-workspace    # make exp-table: is the workspace row current?

Reads `dvc exp show --json` (the workspace, the baseline commit(s) and every experiment; `-A` for all
commits), or a file of that JSON with `--exp-json FILE`. Each run with a `reports/metrics.json` is one
setting: its params `dataset`, `backbone`, `family` (default `cam` where the param is absent), the
training-side ablations `finetune.head_init` and `finetune.bn_mode`, and the size of the data it used: the
classes and test images of reports/metrics.json's `dataset` block (the evaluate stage records them, and
whether they are the full dataset's). One markdown table per dataset and size, rows backbone x method x
setting: the CAM row from a CAM-family run, the Grad-CAM, Grad-CAM++, XGrad-CAM and LayerCAM rows from a
gradient-family run (the paper's layout); columns Top-1 Cls (the softmax branch classifies, so one number)
and Top-1 Loc, GT-known Loc, MaxBoxAccV2, PxAP for the softmax and the sigmoid branch side by side. Where
the paper reports a number (pipeline/report/paper_numbers.py: ImageNet Top-1 Cls/Loc, GT-known,
MaxBoxAccV2; OpenImages Top-1 Cls, PxAP; CAM and Grad-CAM on vgg16, resnet50, inception) and the run used
the full dataset (`full` true), the cell reads `ours (paper)`. A run on a subset sits in its own table,
headed e.g. `ilsvrc (subset: 4 of 1,000 classes, 200 of 50,000 test images; ...)`, with no paper value;
so does a run whose metrics.json has no `dataset` block (made before the evaluate stage recorded it). A
metric that is absent, not a number (a variant marked not applicable) or not finite reads `n/a`.

The workspace row is there only when reports/ were made from the params.yaml beside them: the evaluate
stage records `params_digest` (pipeline/stages/evaluate.py: a hash of every param the numbers depend on),
and this compares it with the digest of params.yaml as it is now (resolved and validated as the stages do,
with the keys of this checkout's dvc.yaml; also with --exp-json). On a mismatch (an experiment in progress,
a failed `dvc exp run`, `dvc repro` not run yet), no digest or an invalid params.yaml, the workspace is left
out and one line on stderr says why. `--check-workspace` does only this check, on reports/metrics.json,
and exits 1 (with that line) when the workspace row should be left out, else 0. A run whose metrics.json
names another dataset than its params is left out the same way.

Runs of the same setting with the same numbers (the workspace after `dvc exp run` applied an experiment,
a commit and its copy) are one row that names them all; runs of the same setting with other numbers (they
differ in a param that is not part of the setting) are separate rows, told apart by the Experiment column.

`--csv` writes one flat CSV instead: one row per table row, with the dataset's size columns (`full`: true,
false or empty), our value and the paper's in separate columns (the paper's empty where there is none or
the run is not on the full dataset).

Exit status: 0; 2 for an error the user can fix (not a DVC repository, an unknown family, an unreadable
JSON file); 1 when dvc is missing or fails. Nothing here imports torch or DVC's Python API (validating
params.yaml asks timm only for a backbone outside params.yaml's `backbones` table).
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
from pipeline.concepts import BRANCHES, DEFAULT_FAMILY
from pipeline.metrics import registry as metrics_registry
from pipeline.models.archs import ALIASES
from pipeline.params import lookup
from pipeline.report.paper_numbers import DATASETS as PAPER_DATASETS
from pipeline.report.paper_numbers import SOURCE, paper_value

METRICS_FILE = "reports/metrics.json"
PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
WORKSPACE = "workspace"
# The paper's rows per model family (METHOD.md 7.1 and 1.1): the CAM family gives CAM, the gradient family
# the four gradient variants. Keys and labels as in reports/metrics.json and the report.
METHODS = {  # the CAM family's own method (CAM), and the gradient family's variants, from the registry
    "cam": tuple((v.name, v.label) for v in variants.for_family("cam") if not v.applies_to("grad")),
    "grad": tuple((v.name, v.label) for v in variants.for_family("grad")),
}
BRANCH_METRICS = tuple(
    (key, metrics_registry.label(key)) for key in ("top1_loc", "gt_known_loc", "maxboxacc_v2", "pxap")
)
SETTING_PARAMS = ("finetune.head_init", "finetune.bn_mode")  # training-side ablations: one row each
BACKBONE_ORDER = ("vgg16", "resnet50", "inception")  # the paper's order; any other backbone after, by name
NA = "n/a"
STALE = (
    f"{WORKSPACE}: reports/ were produced from other params than {PARAMS_FILE} (an experiment in progress, "
    "a failed `dvc exp run`, or `dvc repro` not run yet); run `dvc repro` to include it"
)


class UserError(Exception):
    """A mistake the user can fix (exit status 2)."""


@dataclass(frozen=True)
class Run:
    """One run with metrics: a name (workspace, a commit, an experiment), its params and metrics."""

    name: str
    params: dict
    metrics: dict
    workspace: bool = False  # DVC's workspace entry (its reports/ may be of other params than its params.yaml)


@dataclass(frozen=True)
class Size:
    """The data a run used (reports/metrics.json `dataset`): None where metrics.json does not record it."""

    num_classes: int | None
    test_images: int | None
    full: bool | None  # the full dataset's classes and test images (None: not known, or no full size: SynthBirds)

    @property
    def recorded(self) -> bool:
        return self.num_classes is not None and self.test_images is not None

    def sort_key(self):
        return (self.full is not True, -(self.num_classes or 0), -(self.test_images or 0))


@dataclass(frozen=True)
class Setting:
    dataset: str
    backbone: str
    family: str
    ablations: tuple[tuple[str, str], ...]  # (param, value) of SETTING_PARAMS
    size: Size = Size(None, None, None)

    def label(self) -> str:
        return ", ".join(f"{key.split('.')[-1]}={value}" for key, value in self.ablations)

    @property
    def paper(self) -> bool:
        """Whether the paper's numbers may stand beside this setting's: a run on the full dataset only."""
        return self.size.full is True

    def sort_key(self):
        order = BACKBONE_ORDER.index(self.backbone) if self.backbone in BACKBONE_ORDER else len(BACKBONE_ORDER)
        return (
            self.dataset,
            self.size.sort_key(),
            order,
            self.backbone,
            list(METHODS).index(self.family),
            self.ablations,
        )


def _get(tree: dict, dotted: str):
    return lookup(tree, dotted, None)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _count(value) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def size_of(run: Run) -> Size:
    block = run.metrics.get("dataset")
    if not isinstance(block, dict):
        return Size(None, None, None)
    full = block.get("full")
    return Size(
        _count(block.get("num_classes")), _count(block.get("test_images")), full if isinstance(full, bool) else None
    )


def setting_of(run: Run) -> Setting:
    p = run.params
    family = p.get("family", DEFAULT_FAMILY)
    family = DEFAULT_FAMILY if family is None else str(family)
    if family not in METHODS:
        raise UserError(
            f"{run.name}: params.yaml `family: {family}` is not a model family; valid: {', '.join(METHODS)}"
        )
    backbone = str(p.get("backbone"))
    ablations = tuple((key, "-" if _get(p, key) is None else str(_get(p, key))) for key in SETTING_PARAMS)
    return Setting(str(p.get("dataset")), ALIASES.get(backbone, backbone), family, ablations, size_of(run))


def runs_from_exp_show(entries: list) -> list[Run]:
    """Every run of `dvc exp show --json` that has reports/metrics.json, in its order (names as DVC shows)."""
    runs: list[Run] = []

    def visit(rev: dict) -> None:
        data = rev.get("data") or {}
        workspace = rev.get("rev") == WORKSPACE
        name = rev.get("name") or (WORKSPACE if workspace else rev.get("rev", "")[:7])
        params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
        metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
        if not rev.get("error") and isinstance(params, dict) and isinstance(metrics, dict):
            runs.append(Run(name, params, metrics, workspace))
        for group in rev.get("experiments") or []:
            for child in group.get("revs") or []:
                visit(child)

    for entry in entries:
        visit(entry)
    return runs


# ----------------------------------------------------------------------------------------------------
# Which runs may stand in the table


def current_digest(params_file: str | Path = PARAMS_FILE, dvc_file: str | Path = DVC_FILE) -> str:
    """The params digest of `params_file` as it is now: validated and resolved as the stages see it
    (pipeline.params), under the keys `dvc_file` declares; the evaluate stage records the same function's value
    for the params it used (reports/metrics.json `params_digest`)."""
    from pipeline.params import load_params, resolved
    from pipeline.stages.evaluate import digest_keys, params_digest

    return params_digest(resolved(load_params(params_file)), digest_keys(dvc_file))


def workspace_problem(
    metrics: dict | None, params_file: str | Path = PARAMS_FILE, dvc_file: str | Path = DVC_FILE
) -> str | None:
    """Why the workspace's reports/metrics.json (`metrics`) cannot stand for `params_file` (one line, for
    stderr), or None when it was made from those params."""
    import yaml

    from pipeline.params import ParamsError

    if not isinstance(metrics, dict):
        return f"{WORKSPACE}: no {METRICS_FILE}; run `dvc repro` to include it"
    recorded = metrics.get("params_digest")
    if not isinstance(recorded, str):
        return (
            f"{WORKSPACE}: {METRICS_FILE} records no params_digest (it was made before the evaluate stage "
            f"recorded one), so it cannot be matched to {PARAMS_FILE}; run `dvc repro` to include it"
        )
    try:
        current = current_digest(params_file, dvc_file)
    except ParamsError as exc:
        problems = " ".join("; ".join(exc.problems).split())  # one line
        return (
            f"{WORKSPACE}: {params_file} is not valid ({problems}), so reports/ cannot be matched to it; "
            f"fix it and run `dvc repro` to include it"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        return f"{WORKSPACE}: cannot compute the digest of {params_file} ({' '.join(str(exc).split())}); left out"
    return None if current == recorded else STALE


def screen(
    runs: Iterable[Run], params_file: str | Path = PARAMS_FILE, dvc_file: str | Path = DVC_FILE
) -> tuple[list[Run], list[str]]:
    """The runs whose numbers are of their params, and one line per run left out, saying why: the workspace
    when its reports/ were not made from params.yaml (`workspace_problem`), any run whose metrics.json names
    another dataset than its params."""
    kept, notes = [], []
    for run in runs:
        if run.workspace:
            problem = workspace_problem(run.metrics, params_file, dvc_file)
            if problem is not None:
                notes.append(problem)
                continue
        name = _get(run.metrics, "dataset.name")
        if isinstance(name, str) and name != str(run.params.get("dataset")):
            notes.append(
                f"{run.name}: {METRICS_FILE} is of dataset {name}, its params.yaml says "
                f"{run.params.get('dataset')}; left out"
            )
            continue
        kept.append(run)
    return kept, notes


# ----------------------------------------------------------------------------------------------------
# Rows and tables


def _cells(run: Run, setting: Setting, variant: str) -> dict[str, tuple[float | None, float | None]]:
    """column key -> (ours, paper) for one row; the paper's number only for a run on the full dataset."""
    ds, bb = setting.dataset, setting.backbone

    def paper(branch, metric):
        return paper_value(ds, bb, variant, branch, metric) if setting.paper else None

    cells = {"top1_cls": (_number(run.metrics.get("top1_cls")), paper(None, "top1_cls"))}
    entry = run.metrics.get(variant)
    for metric, _ in BRANCH_METRICS:
        for branch in BRANCHES:
            ours = _get(entry, f"{branch}.{metric}") if isinstance(entry, dict) else None
            cells[f"{branch}.{metric}"] = (_number(ours), paper(branch, metric))
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
                out.append(
                    {
                        "setting": setting,
                        "variant": variant,
                        "method": label,
                        "experiments": names,
                        "cells": _cells(run, setting, variant),
                    }
                )
    return out


def _fmt(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}"


def full_size(dataset: str) -> tuple[int, int] | None:
    """(classes, test images) of the full dataset (pipeline.data.real), None for one without (SynthBirds)."""
    from pipeline.data.real import DATASETS

    module = DATASETS.get(dataset)
    return None if module is None else (module.NUM_CLASSES, module.TEST_IMAGES)


def heading(dataset: str, size: Size) -> str:
    """A table's heading: the dataset, the size its runs used and whether the paper's numbers are beside them."""
    no_paper = "the paper reports no numbers for this dataset"
    if not size.recorded:
        return (
            f"{dataset} (size not recorded: {METRICS_FILE} has no `dataset` block, made before the evaluate "
            f"stage recorded it; no paper numbers shown)"
        )
    k, n = size.num_classes, size.test_images
    if size.full is False:
        full = full_size(dataset)
        of = (
            f"{k:,} of {full[0]:,} classes, {n:,} of {full[1]:,} test images"
            if full
            else f"{k:,} classes, {n:,} test images"
        )
        note = "; the paper's numbers are on the full dataset, not shown" if dataset in PAPER_DATASETS else ""
        return f"{dataset} (subset: {of}{note})"
    if size.full is True:
        note = "the full dataset" + ("" if dataset in PAPER_DATASETS else f"; {no_paper}")
    elif dataset in PAPER_DATASETS:
        note = "not recorded as the full dataset; no paper numbers shown"
    else:
        note = no_paper
    return f"{dataset}: {k:,} classes, {n:,} test images ({note})"


def markdown(table_rows: list[dict]) -> str:
    if not table_rows:
        return "No experiment with reports/metrics.json found (`dvc exp show`).\n"
    header = [
        "Backbone",
        "Method",
        "Setting",
        metrics_registry.RUN_METRICS["top1_cls"],
        *(f"{label} {branch}" for _, label in BRANCH_METRICS for branch in BRANCHES),
        "Experiment",
    ]
    out = [
        "# This repository's experiments in the layout of the paper's Table 2",
        "",
        "Values in %; softmax = the vanilla map, sigmoid = the sigmoid branch's map; Top-1 Cls is the "
        "softmax branch's. A cell `ours (paper)` gives the paper's number beside ours, from " + SOURCE + ", "
        "for a run on the full dataset only; each table's heading gives the classes and test images its runs "
        "used.",
        "",
    ]
    sections: list[tuple[str, Size]] = []
    for row in table_rows:  # already in order: dataset, then size
        key = (row["setting"].dataset, row["setting"].size)
        if key not in sections:
            sections.append(key)
    for dataset, size in sections:
        out += [
            f"## {heading(dataset, size)}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        for row in table_rows:
            if (row["setting"].dataset, row["setting"].size) != (dataset, size):
                continue
            cells = [
                _fmt(ours) if paper is None else f"{_fmt(ours)} ({paper:.2f})"
                for ours, paper in (row["cells"][key] for key in COLUMNS)
            ]
            line = [
                row["setting"].backbone,
                row["method"],
                row["setting"].label(),
                *cells,
                ", ".join(row["experiments"]),
            ]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def to_csv(table_rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "dataset",
            "num_classes",
            "test_images",
            "full",
            "backbone",
            "family",
            *(key.split(".")[-1] for key in SETTING_PARAMS),
            "method",
            "variant",
            *(f"{key}{suffix}" for key in COLUMNS for suffix in ("", "_paper")),
            "experiments",
        ]
    )
    for row in table_rows:
        s = row["setting"]
        values = [("" if v is None else f"{v:.6g}") for key in COLUMNS for v in row["cells"][key]]
        size = ["" if v is None else str(v).lower() for v in (s.size.num_classes, s.size.test_images, s.size.full)]
        writer.writerow(
            [
                s.dataset,
                *size,
                s.backbone,
                s.family,
                *(value for _, value in s.ablations),
                row["method"],
                row["variant"],
                *values,
                " ".join(row["experiments"]),
            ]
        )
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


def check_workspace() -> int:
    """`--check-workspace`: 0 when reports/metrics.json was made from params.yaml, else 1 and the reason on
    stderr (make exp-table then hides the workspace row)."""
    try:
        metrics = json.loads(Path(METRICS_FILE).read_text(encoding="utf8"))
    except (OSError, ValueError):
        metrics = None
    problem = workspace_problem(metrics)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", action="store_true", help="one flat CSV instead of the markdown tables")
    parser.add_argument("-A", "--all-commits", action="store_true", help="every commit's experiments (dvc -A)")
    parser.add_argument("--exp-json", type=Path, help="read this `dvc exp show --json` output instead of running it")
    parser.add_argument(
        "--check-workspace",
        action="store_true",
        help=f"only check that {METRICS_FILE} was made from {PARAMS_FILE} (exit 1 and say why if not)",
    )
    args = parser.parse_args(argv)
    if args.check_workspace:
        return check_workspace()
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
        runs, notes = screen(runs_from_exp_show(entries))
        table_rows = rows(runs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(note, file=sys.stderr)
    sys.stdout.write(to_csv(table_rows) if args.csv else markdown(table_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
