"""Compare the workspace with a git revision, as one markdown document (a pull-request comment or a local look).

    python -m pipeline.report.compare [--base REV] [--out-dir DIR] [--variant cam]   # or: make compare BASE=REV

The document, printed to stdout, holds:

- `dvc metrics diff --md --all REV` and `dvc params diff --md REV` (dvc runs from the repository root);
- a figure of box accuracy against the CAM threshold for one CAM variant, one panel per IoU (30/50/70),
  softmax / sigmoid branch as colours, REV dashed and the workspace solid, saved as
  `<out-dir>/threshold_curves.png` and linked with a path relative to the current folder (CML uploads it
  when the report is posted from the repository root). REV's curves are read with `git show`, so nothing
  in the workspace changes.

Exit status: 0 on success; 2 for an error the user can fix (unknown variant, unknown revision, not a git
repository); 1 when git or dvc is missing or a dvc command fails. Messages go to stderr.

Nothing here imports torch: the module runs in a second or two.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.cams import variants as registry  # torch-free

VARIANTS = registry.names()
BRANCHES = ("softmax", "sigmoid")  # as pipeline.cams.engine (not imported from there: that pulls in torch)
IOUS = (30, 50, 70)
CURVES_DIR = "reports/plots/box_accuracy"
DEFAULT_BASE = "main"
DEFAULT_OUT_DIR = Path("build/compare")  # relative to the repository root
FIGURE_NAME = "threshold_curves.png"
FIGSIZE = (12.0, 4.0)  # inches
DPI = 120  # -> 1440 x 480 pixels
PALETTE = {"softmax": "#E69F00", "sigmoid": "#0072B2"}  # Okabe-Ito orange / blue, as the report figures
WORKSPACE = "workspace"
CURVE_COLUMNS = ["variant", "branch", "revision", "threshold", "iou", "accuracy"]


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
        raise CompareError(f"{cwd} is not inside a git repository ({proc.stderr.strip()}); "
                           "run this from a clone of the benchmark")
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
        raise CompareError(f"unknown git revision {rev!r}: not a commit in {repo_root(cwd)}; "
                           f"valid: a commit sha or one of these refs: {refs}")
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
    raise CompareError("`dvc` not found on PATH nor next to "
                       f"{sys.executable}; run `make setup` and activate .venv", code=1)


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


def metrics_diff_md(base: str, cwd: Path | str) -> str:
    """`dvc metrics diff --md --all BASE` (every metric, changed or not) as a markdown table."""
    return run_dvc(["metrics", "diff", "--md", "--all", base], cwd)


def params_diff_md(base: str, cwd: Path | str) -> str:
    """`dvc params diff --md BASE`: the changed params as a markdown table ('' when none changed)."""
    return run_dvc(["params", "diff", "--md", base], cwd)


# ----------------------------------------------------------------------------------------------------
# Threshold curves


def _long(df: pd.DataFrame, variant: str, branch: str, revision: str, source: str) -> pd.DataFrame:
    missing = [c for c in ["threshold", *(f"iou{d}" for d in IOUS)] if c not in df.columns]
    if missing:
        raise CompareError(f"{source}: column(s) {', '.join(missing)} missing; "
                           f"expected threshold,iou30,iou50,iou70[,...], found {','.join(df.columns)}", code=1)
    long = df.melt(id_vars="threshold", value_vars=[f"iou{d}" for d in IOUS], var_name="iou",
                   value_name="accuracy")
    long["iou"] = long["iou"].str.removeprefix("iou").astype(int)
    return long.assign(variant=variant, branch=branch, revision=revision)[CURVE_COLUMNS]


def read_curves(rev: str | None, variant: str, cwd: Path | str) -> pd.DataFrame:
    """Box-accuracy curves of `variant`, both branches, as a long frame with columns CURVE_COLUMNS.

    `rev` None reads the workspace files; a revision reads them with `git show REV:path`. A branch whose
    CSV is absent is left out (check `frame.branch`); neither present gives an empty frame.
    `revision` holds `rev` (or "workspace"), `iou` is 30/50/70 and `accuracy` is in %.
    """
    validate_variant(variant)
    root = repo_root(cwd)
    frames = []
    for branch in BRANCHES:
        rel = f"{CURVES_DIR}/{variant}_{branch}.csv"
        if rev is None:
            path = root / rel
            if not path.is_file():
                continue
            text, source = path.read_text(), str(path)
        else:
            proc = _git(["show", f"{rev}:{rel}"], root)
            if proc.returncode != 0:
                continue
            text, source = proc.stdout, f"{rev}:{rel}"
        try:
            table = pd.read_csv(io.StringIO(text))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise CompareError(f"{source}: not a readable CSV ({exc})", code=1) from exc
        frames.append(_long(table, variant, branch, rev or WORKSPACE, source))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("threshold", "accuracy") else "object")
                             for c in CURVE_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def curve_changes(df: pd.DataFrame, base: str) -> pd.DataFrame:
    """Largest |workspace - base| box accuracy over thresholds, per branch and IoU (percentage points)."""
    ws = df[df.revision == WORKSPACE].set_index(["branch", "iou", "threshold"])["accuracy"]
    old = df[df.revision == base].set_index(["branch", "iou", "threshold"])["accuracy"]
    both = pd.concat({"workspace": ws, "base": old}, axis=1).dropna()
    if both.empty:
        return pd.DataFrame(columns=["branch", "iou", "max_abs_change"])
    change = (both["workspace"] - both["base"]).abs().groupby(level=["branch", "iou"]).max()
    return change.rename("max_abs_change").reset_index()


def plot_threshold_diff(df: pd.DataFrame, path: Path | str, *, base: str | None = None,
                        title: str | None = None) -> Path:
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
        against = (f"{', '.join(bases)} (dashed) vs workspace (solid)" if bases else
                   f"workspace only ({base or 'the base revision'} has no curves)")
        title = f"{', '.join(variants)}: box accuracy against CAM threshold, {against}"
    branches = [b for b in BRANCHES if b in set(df["branch"])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(IOUS), figsize=FIGSIZE, dpi=DPI, sharey=True, layout="constrained")
        for ax, iou in zip(axes, IOUS):
            panel = df[df["iou"] == iou]
            sns.lineplot(data=panel, x="threshold", y="accuracy", hue="branch", hue_order=branches,
                         palette=PALETTE, style="revision", style_order=[WORKSPACE, *bases], dashes=dashes,
                         estimator=None, errorbar=None, linewidth=1.4, legend=False, ax=ax)
            ax.set_title(f"IoU ≥ {iou}%")
            ax.set_xlabel("CAM threshold (fraction of the map's max)")
            ax.set_ylabel("box accuracy (%)" if ax is axes[0] else "")
            ax.set_xlim(0, 1)
            ax.set_ylim(bottom=0)
        handles = [Line2D([], [], color=PALETTE[b], lw=2, label=f"{b} branch") for b in branches]
        handles += [Line2D([], [], color="0.3", lw=1.4, dashes=dashes[r] or (None, None), label=r)
                    for r in [*bases, WORKSPACE] if r in revisions]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        fig.suptitle(title)
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------
# Markdown


def render_markdown(*, base: str, base_sha: str, variant: str, metrics_md: str, params_md: str,
                    figure: str | None, notes: Sequence[str] = (), changes: pd.DataFrame | None = None) -> str:
    """The report: heading, metrics diff, params diff, the threshold-curve figure and notes on it.

    `figure` is the image path as the markdown should link it (None: no figure); `changes` is
    curve_changes' frame (None or empty: no table).
    """
    lines = [
        "# CAM benchmark report",
        "",
        f"Workspace compared with `{base}` (`{base_sha[:12]}`).",
        "",
        f"## Metrics (`dvc metrics diff --md --all {base}`)",
        "",
        metrics_md.strip() or "no metrics found",
        "",
        f"## Params (`dvc params diff --md {base}`)",
        "",
        params_md.strip() or "no params changed",
        "",
        f"## Box accuracy against CAM threshold: `{variant}`",
        "",
    ]
    if figure is not None:
        lines += [f"![{variant}: box accuracy against CAM threshold, {base} dashed, workspace solid]({figure})",
                  ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    if changes is not None and not changes.empty:
        lines += ["Largest |workspace - base| box-accuracy difference over all thresholds (percentage points):", "",
                  "| branch | " + " | ".join(f"IoU {d}" for d in IOUS) + " |",
                  "|---|" + "---:|" * len(IOUS)]
        for branch in BRANCHES:
            row = changes[changes.branch == branch].set_index("iou")["max_abs_change"]
            if not row.empty:
                cells = [f"{row[d]:.4f}" if d in row.index else "" for d in IOUS]
                lines.append(f"| {branch} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _link(path: Path, cwd: Path) -> str:
    """`path` relative to `cwd` when it lies below it (the form CML uploads), else absolute."""
    path = Path(path).resolve()
    return path.relative_to(cwd).as_posix() if path.is_relative_to(cwd) else path.as_posix()


def build_report(base: str, variant: str, out_dir: Path | str | None, cwd: Path | str) -> str:
    """Everything `main` prints: validates, runs dvc, reads both revisions' curves, plots, renders."""
    cwd = Path(cwd).resolve()
    validate_variant(variant)
    root = repo_root(cwd)
    base_sha = resolve_rev(base, root)
    metrics_md = metrics_diff_md(base, root)
    params_md = params_diff_md(base, root)

    out = root / DEFAULT_OUT_DIR if out_dir is None else cwd / Path(out_dir)
    old = read_curves(base, variant, root)
    workspace = read_curves(None, variant, root)
    notes = []
    for frame, where, consequence in ((old, f"at `{base}`", "drawn for the workspace only"),
                                      (workspace, "in the workspace", "not drawn (run the evaluate stage)")):
        absent = [b for b in BRANCHES if b not in set(frame["branch"])]
        if absent:
            files = ", ".join(f"`{CURVES_DIR}/{variant}_{b}.csv`" for b in absent)
            notes.append(f"{files} absent {where}: {consequence}.")
    frames = [f for f in (old, workspace) if not f.empty]
    figure = changes = None
    if frames:
        curves = pd.concat(frames, ignore_index=True)
        png = plot_threshold_diff(curves, out / FIGURE_NAME, base=base)
        figure = _link(png, cwd)
        changes = curve_changes(curves, base)
    else:
        notes.append("no threshold curves at either revision: nothing to plot.")
    return render_markdown(base=base, base_sha=base_sha, variant=variant, metrics_md=metrics_md,
                           params_md=params_md, figure=figure, notes=notes, changes=changes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="git revision to compare with (default: main)")
    parser.add_argument("--out-dir", default=None,
                        help=f"folder for the figure (default: {DEFAULT_OUT_DIR} under the repository root)")
    parser.add_argument("--variant", default=VARIANTS[0], help=f"CAM variant to plot: {', '.join(VARIANTS)} "
                        f"(default: {VARIANTS[0]}; a gradient-family run has no {VARIANTS[0]}: pick another)")
    args = parser.parse_args(argv)
    try:
        markdown = build_report(args.base, args.variant, args.out_dir, Path.cwd())
    except CompareError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return exc.code
    sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
