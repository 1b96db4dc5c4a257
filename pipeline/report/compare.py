"""Compare the workspace with a base (a git revision or a reproduced checkout) as a short pull-request comment.

    python -m pipeline.report.compare [--base REV] [--base-dir DIR] [--full FILE] [--out-dir DIR]
                                      [--variant cam] [--max-chars N]
    make compare BASE=REV [BASE_DIR=DIR] [FULL=FILE]

The comment, printed to stdout, shows what changed and whether a change is larger than the noise; a row with
no change is never listed:

- the headline verdicts: the `intervals` of reports/metrics.json for the headline protocol (reports/
  evaluation.json `postprocess`): sigmoid minus softmax branch, its interval and verdict, per variant and
  metric, a verdict that differs from the base's marked;
- the verdicts that flipped against the base, in any protocol;
- the metrics that changed by more than their interval's half-width (the sigmoid-softmax interval of the
  same protocol, variant and metric, the base's, else the workspace's), or whose interval's verdict flipped.
  Changes within the half-width are counted, not listed. Changes of metrics without an interval (Top-1 Cls,
  best thresholds, sign diagnostics, training logs, strings) are listed apart; added and removed metrics and
  changed interval fields other than the delta (bounds, half-width, any key added later) are counted;
- the params.yaml keys that changed, flattened to dotted names (data/params.json, the resolved copy the
  `validate` stage writes, is left out: it repeats params.yaml);
- box accuracy against the CAM threshold for one CAM variant, one panel per IoU (30/50/70), softmax / sigmoid
  branch as colours, the base dashed and the workspace solid, saved as `<out-dir>/threshold_curves.png` and
  linked with a path relative to the current folder (CML uploads it when the report is posted from the
  repository root); not drawn when both sides' curves are identical.

Long tables are cut (the rest counted) so the comment stays under --max-chars (default 20,000; GitHub refuses
a comment over 65,536 characters). `--full FILE` writes the complete diff there: every metric of every file,
changed or not, with its half-width and how it was judged, every flipped verdict and every changed
params.yaml key (for the job summary or an artifact).

The base is a git revision (`--base REV`, default main: metrics from `dvc metrics diff --json --all REV`,
files from `git show REV:path`; nothing in the workspace changes) or a folder (`--base-dir DIR`: a checkout
of the base, e.g. a git worktree where `dvc repro` ran on the same machine as the workspace's, so that
training noise between machines is not shown as a change; metrics from `dvc metrics show --json` run there,
files read from it; `--base` then only names it, default the folder's name).

Exit status: 0 on success; 2 for an error the user can fix (unknown variant, unknown revision, not a git
repository, a base folder that is not a DVC checkout); 1 when git or dvc is missing or a dvc command fails.
Messages go to stderr.

Nothing here imports torch: the module runs in a second or two.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.cams import variants as registry  # torch-free
from pipeline.concepts import BRANCHES, IOUS, PALETTE
from pipeline.metrics import curves as curve_files  # torch-free

VARIANTS = registry.names()
CURVES_DIR = (curve_files.PLOTS_DIR / curve_files.BOX_DIR).as_posix()
METRICS_FILE = "reports/metrics.json"  # holds `intervals`: {protocol: {variant: {metric: {delta, ...}}}}
EVALUATION_FILE = "reports/evaluation.json"  # its `postprocess` names the headline protocol
PARAMS_FILE = "params.yaml"
DEFAULT_BASE = "main"
DEFAULT_OUT_DIR = Path("build/compare")  # relative to the repository root
FIGURE_NAME = "threshold_curves.png"
FIGSIZE = (12.0, 4.0)  # inches
DPI = 120  # -> 1440 x 480 pixels
WORKSPACE = "workspace"
CURVE_COLUMNS = ["variant", "branch", "revision", "threshold", "iou", "accuracy"]
COMMENT_LIMIT = 20_000  # characters; GitHub refuses a comment over 65,536
TITLE = "# CAM benchmark report"
VERDICT_WORDS = {"sigmoid better": "**better**", "sigmoid worse": "**worse**", "no detectable difference": "≈"}
# Table caps of the comment (rows beyond are counted); halved until the comment fits --max-chars.
CAPS = {"flips": 20, "beyond": 30, "no_interval": 15, "params": 40, "names": 8}

# How a metric row is judged.
UNCHANGED = "unchanged"
BEYOND = "beyond interval"
WITHIN = "within interval"
NO_INTERVAL = "no interval"
VERDICT = "verdict"
DETAIL = "interval field"
ADDED = "added"
REMOVED = "removed"


class CompareError(Exception):
    """A problem reported as one message; `code` is the exit status (2: the user's input, 1: a tool)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------------
# git and dvc


def _run(cmd: Sequence[str], cwd: Path | str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, check=False)


def _git(args: Sequence[str], cwd: Path | str) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        raise CompareError("git not found on PATH; install git to compare revisions", code=1)
    return _run(["git", *args], cwd)


def repo_root(cwd: Path | str) -> Path:
    """The top folder of the git repository that holds `cwd`."""
    cwd = Path(cwd)
    if not cwd.is_dir():
        raise CompareError(f"{cwd}: no such folder")
    proc = _git(["rev-parse", "--show-toplevel"], cwd)
    if proc.returncode != 0:
        raise CompareError(
            f"{cwd} is not inside a git repository ({proc.stderr.strip()}); run this from a clone of the benchmark"
        )
    return Path(proc.stdout.strip())


def _refs(cwd: Path | str, limit: int = 12) -> list[str]:
    proc = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads", "refs/remotes", "refs/tags"], cwd)
    names = [n for n in proc.stdout.split() if not n.endswith("/HEAD")] if proc.returncode == 0 else []
    return names[:limit] + (["..."] if len(names) > limit else [])


def resolve_rev(rev: str, cwd: Path | str) -> str:
    """The commit sha `rev` names in the repository at `cwd`; CompareError (listing valid refs) if none."""
    if not rev or rev.startswith("-"):
        raise CompareError(f"invalid git revision {rev!r}: give a branch, tag or commit sha")
    proc = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"], cwd)
    if proc.returncode != 0:
        refs = ", ".join(_refs(cwd)) or "none (no commits yet)"
        raise CompareError(
            f"unknown git revision {rev!r}: not a commit in {repo_root(cwd)}; "
            f"valid: a commit sha or one of these refs: {refs}"
        )
    return proc.stdout.strip()


def validate_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise CompareError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    return variant


def _dvc_command() -> list[str]:
    """`dvc` from PATH, else the one next to this interpreter (a venv's python run without activating)."""
    found = shutil.which("dvc")
    if found:
        return [found]
    sibling = Path(sys.executable).parent / "dvc"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)]
    raise CompareError(
        f"`dvc` not found on PATH nor next to {sys.executable}; run `make setup` and activate .venv", code=1
    )


def run_dvc(args: Sequence[str], cwd: Path | str) -> str:
    """stdout of `dvc ARGS` run in `cwd`; CompareError naming the command and its stderr if it fails."""
    cmd = [*_dvc_command(), *args]
    shown = "dvc " + " ".join(args)
    try:
        proc = _run(cmd, cwd)
    except OSError as exc:
        raise CompareError(f"`{shown}` could not start: {exc}", code=1) from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or "(no output)"
        raise CompareError(f"`{shown}` failed in {cwd} (exit {proc.returncode}):\n{detail}", code=1)
    return proc.stdout.strip()


# ----------------------------------------------------------------------------------------------------
# The two sides


@dataclass(frozen=True)
class Side:
    """One side of the comparison: the workspace (`rev` None) or the base, a git revision or a folder.

    Files come from `git show REV:path` when `rev` is set, else from `root`, the folder dvc runs in.
    """

    label: str
    root: Path
    rev: str | None = None
    sha: str | None = None

    def source(self, rel: str) -> str:
        return f"{self.rev}:{rel}" if self.rev is not None else str(self.root / rel)

    def read_text(self, rel: str) -> str | None:
        """The file's text, None when it is absent on this side."""
        if self.rev is None:
            path = self.root / rel
            return path.read_text() if path.is_file() else None
        proc = _git(["show", f"{self.rev}:{rel}"], self.root)
        return proc.stdout if proc.returncode == 0 else None


def workspace_side(cwd: Path | str) -> Side:
    return Side(WORKSPACE, repo_root(cwd))


def rev_side(rev: str, cwd: Path | str) -> Side:
    root = repo_root(cwd)
    return Side(rev, root, rev=rev, sha=resolve_rev(rev, root))


def dir_side(folder: Path | str, cwd: Path | str, label: str | None = None) -> Side:
    """A checkout of the base (a git worktree, say, where `dvc repro` ran); `label` names it (default: its name)."""
    folder = (Path(cwd) / folder).resolve()
    if not folder.is_dir():
        raise CompareError(f"--base-dir {folder}: no such folder")
    if not (folder / ".dvc").is_dir():
        raise CompareError(
            f"--base-dir {folder}: not a DVC checkout (no .dvc folder); give a checkout of the "
            "base revision, e.g. `git worktree add DIR REV`"
        )
    proc = _git(["rev-parse", "--verify", "--quiet", "HEAD"], folder)
    sha = proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None
    label = label or folder.name
    if label == WORKSPACE:
        label = f"{WORKSPACE} (base)"
    return Side(label, folder, sha=sha)


# ----------------------------------------------------------------------------------------------------
# Metrics and params


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted.key: leaf} (lists are leaves), the way `dvc metrics diff` names metrics."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _json(text: str, command: str) -> Any:
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise CompareError(f"`{command}` printed no JSON ({exc}):\n{text[:500]}", code=1) from exc


def metrics_show(folder: Path | str) -> dict[tuple[str, str], Any]:
    """Every metric of the checkout at `folder`, {(file, dotted key): value}, from `dvc metrics show --json`.

    A metrics file that is declared but absent or unreadable is left out.
    """
    data = _json(run_dvc(["metrics", "show", "--json"], folder), "dvc metrics show --json")
    out: dict[tuple[str, str], Any] = {}
    for entry in data.values():  # one entry, "" (the workspace of that checkout)
        for path, content in ((entry or {}).get("data") or {}).items():
            if isinstance(content, dict) and isinstance(content.get("data"), dict):
                out.update({(path, key): value for key, value in flatten(content["data"]).items()})
    return out


def metrics_diff(rev: str, cwd: Path | str) -> dict[tuple[str, str], tuple[Any, Any]]:
    """{(file, dotted key): (value at REV, workspace value)} for every metric, from `dvc metrics diff --json --all`.

    A side where the metric is absent reads None.
    """
    data = _json(run_dvc(["metrics", "diff", "--json", "--all", rev], cwd), f"dvc metrics diff --json --all {rev}")
    return {
        (path, key): (entry.get("old"), entry.get("new"))
        for path, metrics in data.items()
        if isinstance(metrics, dict)
        for key, entry in metrics.items()
        if isinstance(entry, dict)
    }


def metric_pairs(base: Side, workspace: Side) -> dict[tuple[str, str], tuple[Any, Any]]:
    """{(file, dotted key): (base value, workspace value)} for every metric either side has (None: absent)."""
    if base.rev is not None:
        pairs = metrics_diff(base.rev, workspace.root)
    else:
        old, new = metrics_show(base.root), metrics_show(workspace.root)
        pairs = {key: (old.get(key), new.get(key)) for key in set(old) | set(new)}
    return dict(sorted(pairs.items()))


def intervals_from(values: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """{(protocol, variant, metric): {delta, low, high, half_width, verdict}} from METRICS_FILE's `intervals`.

    Only those five keys are read; other keys of a leaf are ignored, a missing one is simply absent.
    """
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (path, key), value in values.items():
        parts = key.split(".")
        if path == METRICS_FILE and len(parts) == 5 and parts[0] == "intervals":
            leaf = out.setdefault((parts[1], parts[2], parts[3]), {})
            if parts[4] in ("delta", "low", "high", "half_width", "verdict") and value is not None:
                leaf[parts[4]] = value
    return out


def headline_protocol(
    side: Side, values: Mapping[tuple[str, str], Any], intervals: Mapping[tuple[str, str, str], Any]
) -> str | None:
    """The protocol of the top-level numbers: EVALUATION_FILE's `postprocess`; failing that, the one protocol
    of `intervals` that METRICS_FILE does not list under `protocols` (None if that is not one)."""
    text = side.read_text(EVALUATION_FILE)
    if text:
        try:
            postprocess = json.loads(text).get("postprocess")
        except (json.JSONDecodeError, AttributeError):
            postprocess = None
        if isinstance(postprocess, str) and postprocess:
            return postprocess
    listed = {key.split(".")[1] for path, key in values if path == METRICS_FILE and key.startswith("protocols.")}
    rest = {protocol for protocol, _, _ in intervals} - listed
    return rest.pop() if len(rest) == 1 else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _half_width(leaf: Mapping[str, Any] | None) -> float | None:
    value = (leaf or {}).get("half_width")
    return float(value) if _number(value) and math.isfinite(value) and value >= 0 else None


def interval_key(
    path: str, key: str, headline: str | None, known: set[tuple[str, str, str]]
) -> tuple[str, str, str] | None:
    """The interval that judges metric `key` of `path`: (protocol, variant, metric), or None.

    `intervals.P.V.M.*` -> (P, V, M); `protocols.P.V.<branch>.M` -> (P, V, M); `V.<branch>.M` (the top-level
    numbers, of the headline protocol) -> (headline, V, M).
    """
    if path != METRICS_FILE:
        return None
    parts = key.split(".")
    if parts[0] == "intervals":
        found = tuple(parts[1:4]) if len(parts) >= 5 else None
    elif parts[0] == "protocols":
        found = (parts[1], parts[2], parts[4]) if len(parts) == 5 else None
    else:
        found = (headline, parts[0], parts[2]) if len(parts) == 3 and headline else None
    return found if found in known else None


@dataclass
class MetricRow:
    path: str
    key: str
    old: Any
    new: Any
    status: str = UNCHANGED
    change: float | None = None
    half_width: float | None = None
    flipped: bool = False  # its interval's verdict differs between the two sides

    @property
    def ratio(self) -> float:
        """|change| / half-width (inf without a half-width, or a zero one)."""
        if self.change is None or not self.half_width:
            return math.inf
        return abs(self.change) / self.half_width


@dataclass
class Flip:
    protocol: str
    variant: str
    metric: str
    old: Any
    new: Any
    old_delta: Any
    new_delta: Any


def verdict_flips(
    old: Mapping[tuple[str, str, str], Mapping], new: Mapping[tuple[str, str, str], Mapping]
) -> list[Flip]:
    """Intervals whose verdict differs between the two sides (both sides have one)."""
    flips = []
    for key in sorted(set(old) & set(new)):
        a, b = old[key].get("verdict"), new[key].get("verdict")
        if a is not None and b is not None and a != b:
            flips.append(Flip(*key, a, b, old[key].get("delta"), new[key].get("delta")))
    return flips


def classify(
    pairs: Mapping[tuple[str, str], tuple[Any, Any]],
    headline: str | None,
    base_intervals: Mapping[tuple[str, str, str], Mapping],
    ws_intervals: Mapping[tuple[str, str, str], Mapping],
) -> list[MetricRow]:
    """One MetricRow per metric, judged:

    UNCHANGED; ADDED / REMOVED (absent on one side); VERDICT (an interval's verdict string changed); DETAIL
    (any other field of an interval both sides have, but its delta: bounds, half-width, keys added later,
    a null on one side included); BEYOND (|change| > the half-width of its interval, the base's if it has
    one, or its interval's verdict flipped); WITHIN; NO_INTERVAL (no interval judges it, or not a number).
    """
    known = set(base_intervals) | set(ws_intervals)
    both = set(base_intervals) & set(ws_intervals)
    flipped = {(f.protocol, f.variant, f.metric) for f in verdict_flips(base_intervals, ws_intervals)}
    rows = []
    for (path, key), (old, new) in pairs.items():
        if old is None and new is None:
            continue
        row = MetricRow(path, key, old, new)
        found = interval_key(path, key, headline, known)
        field_name = ".".join(key.split(".")[4:]) if key.startswith("intervals.") else None  # delta, low, ...
        if found is not None:
            row.half_width = _half_width(base_intervals.get(found))
            if row.half_width is None:
                row.half_width = _half_width(ws_intervals.get(found))
            row.flipped = found in flipped
        if _number(old) and _number(new) and not _same(old, new):
            row.change = new - old
        if _same(old, new):
            row.status, row.flipped = UNCHANGED, False
        elif found in both and field_name not in (None, "delta", "verdict"):
            row.status = DETAIL
        elif old is None or new is None:
            row.status = ADDED if old is None else REMOVED
        elif field_name == "verdict" and found is not None:
            row.status = VERDICT
        elif row.change is None or row.half_width is None:
            row.status = NO_INTERVAL
        elif abs(row.change) > row.half_width or row.flipped:
            row.status = BEYOND
        else:
            row.status = WITHIN
        rows.append(row)
    return rows


def read_params(side: Side) -> dict[str, Any] | None:
    """PARAMS_FILE of `side`, flattened to dotted keys; None when the file is absent there."""
    text = side.read_text(PARAMS_FILE)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CompareError(f"{side.source(PARAMS_FILE)}: not valid YAML ({exc})", code=1) from exc
    return flatten(data) if isinstance(data, dict) else {}


def params_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """[(dotted key, base value, workspace value)] of every key whose value differs (None: absent)."""
    old, new = old or {}, new or {}
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if key not in old or key not in new or not _same(old[key], new[key])
    ]


# ----------------------------------------------------------------------------------------------------
# Threshold curves


def _long(text: str, variant: str, branch: str, revision: str, source: str) -> pd.DataFrame:
    try:
        long = curve_files.read_box(text, source)
    except curve_files.CurveError as exc:
        raise CompareError(str(exc), code=1) from exc
    return long.assign(variant=variant, branch=branch, revision=revision)[CURVE_COLUMNS]


def read_curves_at(side: Side, variant: str) -> pd.DataFrame:
    """Box-accuracy curves of `variant` on `side`, both branches, as a long frame with columns CURVE_COLUMNS.

    A branch whose CSV is absent is left out (check `frame.branch`); neither present gives an empty frame.
    `revision` holds the side's label, `iou` is 30/50/70 and `accuracy` is in %.
    """
    validate_variant(variant)
    frames = []
    for branch in BRANCHES:
        rel = curve_files.box_path(variant, branch).as_posix()
        text = side.read_text(rel)
        if text is None:
            continue
        frames.append(_long(text, variant, branch, side.label, side.source(rel)))
    if not frames:
        return pd.DataFrame(
            {c: pd.Series(dtype="float64" if c in ("threshold", "accuracy") else "object") for c in CURVE_COLUMNS}
        )
    return pd.concat(frames, ignore_index=True)


def read_curves(rev: str | None, variant: str, cwd: Path | str) -> pd.DataFrame:
    """read_curves_at for the workspace (`rev` None; `revision` "workspace") or a git revision (`revision` REV)."""
    validate_variant(variant)
    root = repo_root(cwd)
    return read_curves_at(Side(WORKSPACE, root) if rev is None else Side(rev, root, rev=rev), variant)


def curve_changes(df: pd.DataFrame, base: str) -> pd.DataFrame:
    """Largest |workspace - base| box accuracy over thresholds, per branch and IoU (percentage points)."""
    ws = df[df.revision == WORKSPACE].set_index(["branch", "iou", "threshold"])["accuracy"]
    old = df[df.revision == base].set_index(["branch", "iou", "threshold"])["accuracy"]
    both = pd.concat({"workspace": ws, "base": old}, axis=1).dropna()
    if both.empty:
        return pd.DataFrame(columns=["branch", "iou", "max_abs_change"])
    change = (both["workspace"] - both["base"]).abs().groupby(level=["branch", "iou"]).max()
    return change.rename("max_abs_change").reset_index()


def plot_threshold_diff(
    df: pd.DataFrame, path: Path | str, *, base: str | None = None, title: str | None = None
) -> Path:
    """Box accuracy against CAM threshold, one panel per IoU; hue = branch, base dashed, workspace solid.

    `df` is read_curves' frame for one variant, the base revision's and the workspace's concatenated;
    `base` names the base revision in the title when its curves are missing from `df`. Written as a
    FIGSIZE-inch PNG at DPI, without a tight bbox, so the pixel size is fixed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.lines import Line2D

    if df.empty:
        raise ValueError("no curves to plot")
    variants = sorted(df["variant"].unique())
    revisions = list(dict.fromkeys(df["revision"]))
    bases = [r for r in revisions if r != WORKSPACE]
    dashes = {r: (4, 2) for r in bases} | {WORKSPACE: ""}
    if title is None:
        against = (
            f"{', '.join(bases)} (dashed) vs workspace (solid)"
            if bases
            else f"workspace only ({base or 'the base revision'} has no curves)"
        )
        title = f"{', '.join(variants)}: box accuracy against CAM threshold, {against}"
    branches = [b for b in BRANCHES if b in set(df["branch"])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(IOUS), figsize=FIGSIZE, dpi=DPI, sharey=True, layout="constrained")
        for ax, iou in zip(axes, IOUS):
            panel = df[df["iou"] == iou]
            sns.lineplot(
                data=panel,
                x="threshold",
                y="accuracy",
                hue="branch",
                hue_order=branches,
                palette=PALETTE,
                style="revision",
                style_order=[WORKSPACE, *bases],
                dashes=dashes,
                estimator=None,
                errorbar=None,
                linewidth=1.4,
                legend=False,
                ax=ax,
            )
            ax.set_title(f"IoU ≥ {iou}%")
            ax.set_xlabel("CAM threshold (fraction of the map's max)")
            ax.set_ylabel("box accuracy (%)" if ax is axes[0] else "")
            ax.set_xlim(0, 1)
            ax.set_ylim(bottom=0)
        handles = [Line2D([], [], color=PALETTE[b], lw=2, label=f"{b} branch") for b in branches]
        handles += [
            Line2D([], [], color="0.3", lw=1.4, dashes=dashes[r] or (None, None), label=r)
            for r in [*bases, WORKSPACE]
            if r in revisions
        ]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        fig.suptitle(title)
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------
# Markdown


@dataclass
class Report:
    """Everything the comment and the full diff show; built by compare_sides."""

    base: Side
    workspace: Side
    variant: str
    headline: str | None = None
    base_intervals: dict = field(default_factory=dict)
    ws_intervals: dict = field(default_factory=dict)
    rows: list[MetricRow] = field(default_factory=list)
    flips: list[Flip] = field(default_factory=list)
    params: list[tuple[str, Any, Any]] = field(default_factory=list)
    params_notes: list[str] = field(default_factory=list)
    figure: str | None = None
    curve_notes: list[str] = field(default_factory=list)
    curve_changes: pd.DataFrame | None = None
    full: str | None = None  # where the full diff was written, as the comment names it

    def with_status(self, *statuses: str) -> list[MetricRow]:
        return [row for row in self.rows if row.status in statuses]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.6g}"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _against(report: Report) -> str:
    base = report.base
    sha = f" (`{base.sha[:12]}`)" if base.sha else ""
    where = f", checked out in `{base.root}`" if base.rev is None else ""
    return f"Workspace compared with `{base.label}`{sha}{where}."


def _rest(shown: int, total: int) -> list[str]:
    return [f"... and {total - shown} more (in the full diff).", ""] if total > shown else [""]


def _word(verdict: Any) -> str:
    return VERDICT_WORDS.get(verdict, _cell(verdict)) if isinstance(verdict, str) else _cell(verdict)


def _verdict_cell(leaf: Mapping[str, Any] | None, old_leaf: Mapping[str, Any] | None) -> str:
    if not leaf:
        return ""
    verdict = leaf.get("verdict")
    parts = [_word(verdict) if verdict is not None else "?"]
    delta, low, high = leaf.get("delta"), leaf.get("low"), leaf.get("high")
    if _number(delta):
        parts.append(f"{delta:+.2f}")
    if _number(low) and _number(high):
        parts.append(f"[{low:.2f}, {high:.2f}]")
    old = (old_leaf or {}).get("verdict")
    if old is not None and verdict is not None and old != verdict:
        parts.append(f"⚠ was {_word(old)}")
    return " ".join(parts)


def _summary(report: Report) -> str:
    counts = {
        status: len(report.with_status(status))
        for status in (BEYOND, WITHIN, NO_INTERVAL, ADDED, REMOVED, DETAIL, UNCHANGED)
    }
    if not any(n for status, n in counts.items() if status != UNCHANGED) and not report.params and not report.flips:
        return (
            f"**Nothing changed**: every metric and every `{PARAMS_FILE}` value is the same as at "
            f"`{report.base.label}` ({_count(counts[UNCHANGED], 'metric')} compared)."
        )
    parts = [
        f"{_count(counts[BEYOND], 'metric')} beyond their interval",
        f"{_count(len(report.flips), 'verdict')} flipped",
        f"{_count(counts[WITHIN], 'metric')} within their interval",
        f"{_count(counts[NO_INTERVAL], 'metric')} without an interval",
    ]
    parts += [f"{_count(counts[s], 'metric')} {s}" for s in (ADDED, REMOVED) if counts[s]]
    if counts[DETAIL]:
        parts.append(_count(counts[DETAIL], "interval field"))
    parts.append(f"{_count(len(report.params), 'key')} of `{PARAMS_FILE}`")
    return f"**Changed:** {', '.join(parts)}; {_count(counts[UNCHANGED], 'metric')} unchanged."


def _headline_lines(report: Report) -> list[str]:
    protocol = report.headline
    lines = [f"## Headline verdicts: protocol `{protocol}`" if protocol else "## Headline verdicts", ""]
    leaves = {(v, m): leaf for (p, v, m), leaf in report.ws_intervals.items() if p == protocol}
    if not leaves:
        why = (
            f"no headline protocol (no `postprocess` in {EVALUATION_FILE})"
            if protocol is None
            else f"no `intervals.{protocol}` in the workspace's {METRICS_FILE}"
        )
        return lines + [f"{why}: no verdicts to show.", ""]
    order = {v: i for i, v in enumerate(VARIANTS)}
    variants = sorted({v for v, _ in leaves}, key=lambda v: (order.get(v, len(order)), v))
    metrics = sorted({m for _, m in leaves})
    lines += [
        "Sigmoid minus softmax branch: the delta and its interval [low, high]; **better** / **worse** "
        "when the interval excludes 0, ≈ (no detectable difference) otherwise; ⚠ marks a verdict that "
        f"differs from `{report.base.label}`'s.",
        "",
        "| metric | " + " | ".join(f"`{v}`" for v in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for metric in metrics:
        cells = [
            _verdict_cell(leaves.get((v, metric)), report.base_intervals.get((protocol, v, metric))) for v in variants
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines + [""]


def _flip_lines(report: Report, cap: int | None) -> list[str]:
    if not report.flips:
        return []
    shown = report.flips if cap is None else report.flips[:cap]
    lines = [
        "## Verdicts that flipped",
        "",
        f"| protocol | variant | metric | `{report.base.label}` | workspace | delta |",
        "|---|---|---|---|---|---|",
    ]
    for f in shown:
        delta = f"{_cell(f.old_delta)} → {_cell(f.new_delta)}"
        lines.append(f"| {f.protocol} | {f.variant} | {f.metric} | {_word(f.old)} | {_word(f.new)} | {delta} |")
    return lines + _rest(len(shown), len(report.flips))


def _metric_table(rows: Sequence[MetricRow], base: str, *, judged: bool, full: bool = False) -> list[str]:
    head = ["Path", "Metric", f"`{base}`", "workspace", "Change"]
    if judged:
        head += ["± half-width", "× half-width"]
    if full:
        head.append("Judged")
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for row in rows:
        cells = [
            row.path,
            f"`{row.key}`" + (" ⚠" if row.flipped and not full else ""),
            _cell(row.old),
            _cell(row.new),
            _signed(row.change),
        ]
        if judged:
            ratio = row.ratio
            cells += [
                "" if row.half_width is None else f"±{row.half_width:.3g}",
                "" if row.half_width is None or math.isinf(ratio) else f"{ratio:.2f}",
            ]
        if full:
            cells.append(row.status + (", verdict flipped" if row.flipped and row.status == BEYOND else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _param_lines(report: Report, cap: int | None) -> list[str]:
    lines = [f"## Params (`{PARAMS_FILE}`)", ""]
    lines += [f"{note}." for note in report.params_notes] + ([""] if report.params_notes else [])
    if not report.params:
        return lines + [f"No `{PARAMS_FILE}` value changed.", ""]
    shown = report.params if cap is None else report.params[:cap]
    lines += [f"| Param | `{report.base.label}` | workspace |", "|---|---|---|"]
    lines += [f"| {key} | {_cell(old)} | {_cell(new)} |" for key, old, new in shown]
    return lines + _rest(len(shown), len(report.params))


def _curve_lines(report: Report) -> list[str]:
    variant, base = report.variant, report.base.label
    lines = [f"## Box accuracy against CAM threshold: `{variant}`", ""]
    if report.figure is not None:
        alt = f"{variant}: box accuracy against CAM threshold, {base} dashed, workspace solid"
        lines += [f"![{alt}]({report.figure})", ""]
    lines += [f"- {note}" for note in report.curve_notes] + ([""] if report.curve_notes else [])
    changes = report.curve_changes
    if changes is not None and not changes.empty:
        moved = changes[changes.max_abs_change > 0]
        if moved.empty:
            lines += [f"The curves are identical at `{base}` and in the workspace: not drawn.", ""]
        else:
            lines += [
                "Largest |workspace - base| box-accuracy difference over all thresholds (percentage points):",
                "",
                "| branch | " + " | ".join(f"IoU {d}" for d in IOUS) + " |",
                "|---|" + "---:|" * len(IOUS),
            ]
            for branch in BRANCHES:
                row = moved[moved.branch == branch].set_index("iou")["max_abs_change"]
                if not row.empty:
                    cells = [f"{row[d]:.4f}" if d in row.index else "" for d in IOUS]
                    lines.append(f"| {branch} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _relative(row: MetricRow) -> float:
    """|change| relative to the base value (inf for a change that is not a number, or from 0)."""
    if row.change is None or not row.old:
        return math.inf
    return abs(row.change) / abs(row.old)


def _comment(report: Report, caps: Mapping[str, int]) -> str:
    base = report.base.label
    lines = [TITLE, "", _against(report), "", _summary(report), ""]
    lines += _headline_lines(report)
    lines += _flip_lines(report, caps["flips"])

    beyond = sorted(report.with_status(BEYOND), key=lambda r: (-r.ratio, r.path, r.key))
    if beyond:
        shown = beyond[: caps["beyond"]]
        lines += [
            "## Changed beyond their interval",
            "",
            "Metrics whose change exceeds the half-width of their interval (sigmoid minus softmax, same "
            "protocol, variant and metric) or whose interval's verdict flipped (⚠); largest change "
            "relative to the half-width first.",
            "",
        ]
        lines += _metric_table(shown, base, judged=True) + _rest(len(shown), len(beyond))
    within = report.with_status(WITHIN)
    if within:
        top = max(row.ratio for row in within)
        lines += [
            f"**{_count(len(within), 'metric')} changed within their interval** (by at most "
            f"{top:.2f} of its half-width): not listed, see the full diff.",
            "",
        ]
    loose = sorted(report.with_status(NO_INTERVAL), key=lambda r: (-_relative(r), r.path, r.key))
    if loose:
        shown = loose[: caps["no_interval"]]
        lines += ["## Changed, no interval to judge by", "", "Largest change relative to the base's value first.", ""]
        lines += _metric_table(shown, base, judged=False) + _rest(len(shown), len(loose))
    other = []
    for status, what in ((ADDED, "in the workspace only"), (REMOVED, f"at `{base}` only")):
        rows = report.with_status(status)
        if rows:
            names = ", ".join(f"`{r.key}`" for r in rows[: caps["names"]])
            names += ", ..." if len(rows) > caps["names"] else ""
            other.append(f"{_count(len(rows), 'metric')} {what}: {names}.")
    details = report.with_status(DETAIL)
    if details:
        other.append(
            f"{_count(len(details), 'interval field')} besides the deltas (low, high, half-width, ...) "
            "changed: in the full diff."
        )
    lines += other + ([""] if other else [])

    lines += _param_lines(report, caps["params"])
    lines += _curve_lines(report)
    if report.full:
        lines += [
            f"The full diff (every metric, unchanged ones included, and every changed param): `{report.full}`.",
            "",
        ]
    return "\n".join(lines)


def render_comment(report: Report, *, max_chars: int = COMMENT_LIMIT) -> str:
    """The pull-request comment; its tables are cut (CAPS halved) until it fits `max_chars`, then the text."""
    caps = dict(CAPS)
    while True:
        text = _comment(report, caps)
        if len(text) <= max_chars or not any(caps.values()):
            break
        caps = {name: cap // 2 for name, cap in caps.items()}
    if len(text) > max_chars:
        note = f"\n\n... (cut at {max_chars} characters; the full diff has everything)\n"
        text = text[: max(0, max_chars - len(note))] + note
    return text


def render_full(report: Report) -> str:
    """The complete diff: every metric of every file (unchanged ones too), every flip, every changed param."""
    base = report.base.label
    lines = [
        f"{TITLE}: full diff",
        "",
        _against(report),
        "",
        _summary(report),
        "",
        "## Metrics: every metric of every file",
        "",
        "`Judged`: beyond / within interval (|change| against the half-width of the sigmoid minus softmax "
        "interval of the same protocol, variant and metric), no interval, unchanged, added, removed, "
        "verdict, interval field.",
        "",
    ]
    lines += _metric_table(report.rows, base, judged=True, full=True) + [""]
    lines += _flip_lines(report, None)
    lines += _param_lines(report, None)
    return "\n".join(lines)


def _link(path: Path, cwd: Path) -> str:
    """`path` relative to `cwd` when it lies below it (the form CML uploads), else absolute."""
    path = Path(path).resolve()
    return path.relative_to(cwd).as_posix() if path.is_relative_to(cwd) else path.as_posix()


def compare_sides(
    base: str | None,
    variant: str,
    out_dir: Path | str | None,
    cwd: Path | str,
    *,
    base_dir: Path | str | None = None,
    full: str | None = None,
) -> Report:
    """Validates, collects both sides' metrics, params and curves, judges every change, draws the figure.

    The base is the git revision `base` (default main), or the checkout `base_dir` (then `base` only names it).
    `full` is the full diff's path as the comment should name it (None: not mentioned).
    """
    cwd = Path(cwd).resolve()
    validate_variant(variant)
    workspace = workspace_side(cwd)
    root = workspace.root
    if base_dir is not None:
        base_side = dir_side(base_dir, cwd, base)
        if base_side.root == root:
            raise CompareError(f"--base-dir {base_side.root} is the workspace itself; give a checkout of the base")
    else:
        base_side = rev_side(base or DEFAULT_BASE, root)

    pairs = metric_pairs(base_side, workspace)
    old_values = {key: old for key, (old, _) in pairs.items() if old is not None}
    new_values = {key: new for key, (_, new) in pairs.items() if new is not None}
    base_intervals, ws_intervals = intervals_from(old_values), intervals_from(new_values)
    base_headline = headline_protocol(base_side, old_values, base_intervals)
    ws_headline = headline_protocol(workspace, new_values, ws_intervals)
    report = Report(
        base_side,
        workspace,
        variant,
        headline=ws_headline or base_headline,
        base_intervals=base_intervals,
        ws_intervals=ws_intervals,
        full=full,
        rows=classify(pairs, base_headline or ws_headline, base_intervals, ws_intervals),
        flips=verdict_flips(base_intervals, ws_intervals),
    )

    old_params, new_params = read_params(base_side), read_params(workspace)
    for params, where in ((old_params, f"at `{base_side.label}`"), (new_params, "in the workspace")):
        if params is None:
            report.params_notes.append(f"No `{PARAMS_FILE}` {where}")
    report.params = params_changes(old_params, new_params)

    out = root / DEFAULT_OUT_DIR if out_dir is None else cwd / Path(out_dir)
    old = read_curves_at(base_side, variant)
    new = read_curves_at(workspace, variant)
    for frame, where, consequence in (
        (old, f"at `{base_side.label}`", "drawn for the workspace only"),
        (new, "in the workspace", "not drawn (run the evaluate stage)"),
    ):
        absent = [b for b in BRANCHES if b not in set(frame["branch"])]
        if absent:
            files = ", ".join(f"`{curve_files.box_path(variant, b).as_posix()}`" for b in absent)
            report.curve_notes.append(f"{files} absent {where}: {consequence}.")
    frames = [f for f in (old, new) if not f.empty]
    if frames:
        curves = pd.concat(frames, ignore_index=True)
        report.curve_changes = curve_changes(curves, base_side.label)
        identical = (
            not report.curve_changes.empty
            and not report.curve_notes
            and (report.curve_changes.max_abs_change == 0).all()
        )
        if not identical:
            png = plot_threshold_diff(curves, out / FIGURE_NAME, base=base_side.label)
            report.figure = _link(png, cwd)
    else:
        report.curve_notes.append("no threshold curves at either side: nothing to plot.")
    return report


def build_report(
    base: str | None,
    variant: str,
    out_dir: Path | str | None,
    cwd: Path | str,
    *,
    base_dir: Path | str | None = None,
    full: Path | str | None = None,
    max_chars: int = COMMENT_LIMIT,
) -> str:
    """Everything `main` prints (the comment); writes the full diff to `full` (relative to `cwd`) if given."""
    report = compare_sides(
        base, variant, out_dir, cwd, base_dir=base_dir, full=None if full is None else Path(full).as_posix()
    )
    if full is not None:
        path = Path(cwd) / full
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render_full(report))
        except OSError as exc:
            raise CompareError(f"--full {full}: cannot write it ({exc})") from exc
    return render_comment(report, max_chars=max_chars)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report.compare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base",
        default=None,
        help=f"git revision to compare with (default: {DEFAULT_BASE}); with --base-dir, only the "
        "name the report gives that folder (default: the folder's name)",
    )
    parser.add_argument(
        "--base-dir",
        default=None,
        metavar="DIR",
        help="compare with this checkout of the base instead of a git revision (a git worktree "
        "where `dvc repro` ran): its reports/ and params.yaml are read there",
    )
    parser.add_argument(
        "--full",
        default=None,
        metavar="FILE",
        help="also write the complete diff here (every metric, changed or not; every changed param)",
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=COMMENT_LIMIT,
        help=f"cut the comment's tables until it fits (default: {COMMENT_LIMIT})",
    )
    parser.add_argument(
        "--out-dir", default=None, help=f"folder for the figure (default: {DEFAULT_OUT_DIR} under the repository root)"
    )
    parser.add_argument(
        "--variant",
        default=VARIANTS[0],
        help=f"CAM variant to plot: {', '.join(VARIANTS)} "
        f"(default: {VARIANTS[0]}; a gradient-family run has no {VARIANTS[0]}: pick another)",
    )
    args = parser.parse_args(argv)
    try:
        markdown = build_report(
            args.base,
            args.variant,
            args.out_dir,
            Path.cwd(),
            base_dir=args.base_dir,
            full=args.full,
            max_chars=args.max_chars,
        )
    except CompareError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return exc.code
    sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
