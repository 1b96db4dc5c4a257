"""`make exp-table`: the experiments side by side, with the params that tell them apart and the headline numbers.

    python -m pipeline.report.exp_table [-A] [--exp-json FILE]      # markdown on stdout

Reads `dvc exp show --json` (or FILE, its saved output) and prints one markdown row per run (the workspace, each
commit, each experiment, in DVC's order) with
* every params.yaml param whose value differs among the rows shown (a `dvc exp run -S evaluate.relu=true`
  shows its `evaluate.relu` column; a param that no row changes is left out), then
* the headline numbers of reports/metrics.json, as the metric registry (pipeline/metrics/registry.py) names them:
  the run's own (Top-1 Cls, the data's classes and test images, whether that is the full dataset) and, per
  metric marked `exp_table`, each variant's (or the first variant's) softmax and sigmoid values; a column no
  row has is left out (DVC drops SynthBirds' null `full`; CAM is absent from a gradient-family run).
A run that DVC reports as failed is left out with one line on stderr. The workspace row is left out (one line on
stderr saying why) unless reports/ were made from the params.yaml beside them (pipeline.report.paper_table's
workspace check: the params digest the evaluate stage recorded against params.yaml's). Exit status: 0, 2 on a
bad input, 1 when dvc fails. Nothing here imports torch or DVC's Python API.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cams import variants as variant_registry
from pipeline.concepts import BRANCHES
from pipeline.metrics import registry
from pipeline.report import paper_table

PARAMS_FILE = paper_table.PARAMS_FILE
METRICS_FILE = paper_table.METRICS_FILE
WORKSPACE = paper_table.WORKSPACE
ABSENT = "-"  # a cell whose run has no such param or metric (as `dvc exp show`)


@dataclass(frozen=True)
class Row:
    name: str
    params: dict  # dotted params.yaml key -> value
    metrics: dict  # nested reports/metrics.json (empty: none)
    workspace: bool


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{dotted key: leaf value} of a nested mapping (lists are values)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def rows_from_exp_show(entries: list) -> tuple[list[Row], list[str]]:
    """Every run of `dvc exp show --json` with params.yaml, in its order, and one note per failed run."""
    rows, notes = [], []

    def visit(rev: dict) -> None:
        data = rev.get("data") or {}
        workspace = rev.get("rev") == WORKSPACE
        name = rev.get("name") or (WORKSPACE if workspace else str(rev.get("rev", ""))[:7])
        params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
        metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
        if rev.get("error") or (data.get("status") == "Failed"):
            notes.append(f"{name}: DVC reports it failed; left out")
        elif isinstance(params, dict):
            rows.append(Row(name, flatten(params), metrics if isinstance(metrics, dict) else {}, workspace))
        for group in rev.get("experiments") or []:
            for child in group.get("revs") or []:
                visit(child)

    for entry in entries:
        visit(entry)
    return rows, notes


def hide_stale_workspace(
    rows: list[Row], params_file: str | Path = PARAMS_FILE, dvc_file: str | Path = paper_table.DVC_FILE
) -> tuple[list[Row], list[str]]:
    """The rows without the workspace's when its reports/ were not made from `params_file`, and why."""
    kept, notes = [], []
    for row in rows:
        if row.workspace:
            problem = paper_table.workspace_problem(row.metrics or None, params_file, dvc_file)
            if problem is not None:
                notes.append(problem)
                continue
        kept.append(row)
    return kept, notes


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def differing_params(rows: Sequence[Row]) -> list[str]:
    """The params whose value (absent counts as a value) is not the same in every row, sorted."""
    keys = sorted({k for row in rows for k in row.params})
    missing = object()
    out = []
    for key in keys:
        values = [row.params.get(key, missing) for row in rows]
        first = values[0]
        if any((v is missing) != (first is missing) or (v is not missing and not _same(v, first)) for v in values):
            out.append(key)
    return out


def _lookup(tree: Mapping, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def metric_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(metrics.json dotted key, header) of the headline numbers that at least one row has, in the registry's
    order (registry.exp_table_columns) with the registry's labels."""
    variants = variant_registry.names()
    out = []
    for key in registry.exp_table_columns(variants, BRANCHES):
        if not any(_lookup(row.metrics, key) is not None for row in rows):
            continue
        if key in registry.RUN_METRICS:
            header = registry.RUN_METRICS[key]
        else:
            variant, branch, metric = key.split(".")
            header = f"{variant_registry.get(variant).label} {registry.label(metric)} {branch}"
        out.append((key, header))
    return out


def _param_cell(value) -> str:
    """A param as written: a string as is, anything else as JSON (null, true, 0.001, [0, 1])."""
    return (value if isinstance(value, str) else json.dumps(value)).replace("|", "\\|")


def _metric_cell(value) -> str:
    """A number (%) with 2 decimals, an integer as is, anything else as a param; ABSENT for none."""
    if value is None:
        return ABSENT
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else _param_cell(value)


def markdown(rows: Sequence[Row]) -> str:
    """The table: Experiment, the differing params, the headline numbers."""
    params = differing_params(rows)
    metrics = metric_columns(rows)
    head = ["Experiment", *params, *(header for _, header in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * len(params) + "---:|" * len(metrics)]
    for row in rows:
        cells = [
            row.name,
            *(_param_cell(row.params[k]) if k in row.params else ABSENT for k in params),
            *(_metric_cell(_lookup(row.metrics, key)) for key, _ in metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-A", "--all-commits", action="store_true", help="every commit's experiments (dvc -A)")
    parser.add_argument("--exp-json", type=Path, help="read this `dvc exp show --json` output instead of running it")
    args = parser.parse_args(argv)
    try:
        if args.exp_json is not None:
            try:
                entries = json.loads(args.exp_json.read_text(encoding="utf8"))
            except (OSError, ValueError) as exc:
                raise paper_table.UserError(f"--exp-json {args.exp_json}: {exc}") from exc
        else:
            entries = paper_table.exp_show_json(args.all_commits)
        if not isinstance(entries, list):
            raise paper_table.UserError("the `dvc exp show --json` output is not a list of revisions")
        rows, notes = rows_from_exp_show(entries)
        rows, hidden = hide_stale_workspace(rows)
    except paper_table.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in [*hidden, *notes]:
        print(note, file=sys.stderr)
    sys.stdout.write(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
