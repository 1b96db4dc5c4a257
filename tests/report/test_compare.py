"""`make compare` / pipeline.report.compare on throw-away git + DVC repositories; nothing trains.

`repo`: three commits, `bare` (dvc init only, no reports), `main` (small metrics without intervals, params
and the ten box-accuracy CSVs) and `feature` (checked out: some metrics, one param and one CSV changed), and
a worktree of `main` beside it (a base folder for --base-dir). The real Makefile and pipeline/ package are
copied in; `make` runs with VENV pointing at this interpreter's virtualenv (only `make setup` installs).

`bench`: the committed reports/metrics.json (with its `intervals`), sign.json, evaluation.json and
params.yaml of this repository on `main`, a data/params.json that a stage declares (as `validate` writes
it), and one worktree per pull request: `readme` (README only), `loc` (evaluate.loc_threshold and the
evaluation numbers it moves) and `perturbed` (every metric and data/params.json changed).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.report import compare

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the virtualenv running the tests (`make test` runs them in .venv)
BIN = Path(sys.executable).parent

OLD_METRICS = {
    "top1_cls": 90.5,
    "cam": {"softmax": {"maxboxacc": 24.5, "pxap": 36.25}, "sigmoid": {"maxboxacc": 30.0, "pxap": 35.5}},
    "gradcam": {"softmax": {"maxboxacc": 22.0, "pxap": 33.0}, "sigmoid": {"maxboxacc": 28.0, "pxap": 34.0}},
}
NEW_METRICS = json.loads(json.dumps(OLD_METRICS))
NEW_METRICS["top1_cls"] = 91.25
NEW_METRICS["cam"]["softmax"]["maxboxacc"] = 26.75
OLD_PARAMS = "seed: 42\nevaluate:\n  threshold: 0.5\n"
NEW_PARAMS = "seed: 42\nevaluate:\n  threshold: 0.65\n"
CHANGED_CSV = "cam_softmax"
SHIFT = 2.5  # percentage points added to every value of CHANGED_CSV on `feature`
FULL = "build/compare/full-diff.md"  # where `make compare` writes the full diff


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", GIT_CONFIG_NOSYSTEM="1")
    for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # under `make test`: no "Entering directory" lines
        e.pop(var, None)
    return e


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args], repo)


def curve(variant: str, branch: str) -> pd.DataFrame:
    """A bell-shaped box-accuracy curve per IoU, different for every variant and branch."""
    t = np.arange(1000) / 1000
    centre = 0.35 + 0.02 * compare.VARIANTS.index(variant) + (0.05 if branch == "sigmoid" else 0.0)
    df = pd.DataFrame({"threshold": t})
    for iou, height in ((30, 88.0), (50, 30.0), (70, 3.0)):
        df[f"iou{iou}"] = height * np.exp(-(((t - centre) / 0.2) ** 2))
    df["largest_contour_iou50"] = df["iou50"] * 0.9
    return df


def write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out["threshold"] = out["threshold"].map(lambda v: f"{v:.3f}")
    out.to_csv(path, index=False, float_format="%.4f")


def new_repo(repo: Path) -> None:
    """git + dvc init, this repository's pipeline/ copied in and committed (the CLI imports it from there)."""
    repo.mkdir()
    sh(["git", "-c", "init.defaultBranch=main", "init", "-q"], repo)
    sh([str(BIN / "dvc"), "init", "-q"], repo)
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / ".gitignore").write_text("/build/\n__pycache__/\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("compare") / "repo"
    new_repo(repo)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "bare: dvc init, no reports")
    git(repo, "tag", "bare")

    (repo / "dvc.yaml").write_text("metrics:\n  - reports/metrics.json\n")
    (repo / "params.yaml").write_text(OLD_PARAMS)
    (repo / "reports").mkdir()
    (repo / "reports/metrics.json").write_text(json.dumps(OLD_METRICS, indent=2) + "\n")
    for variant in compare.VARIANTS:
        for branch in compare.BRANCHES:
            write_csv(curve(variant, branch), repo / compare.CURVES_DIR / f"{variant}_{branch}.csv")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results on main")

    git(repo, "checkout", "-qb", "feature")
    (repo / "reports/metrics.json").write_text(json.dumps(NEW_METRICS, indent=2) + "\n")
    (repo / "params.yaml").write_text(NEW_PARAMS)
    changed = curve(*CHANGED_CSV.split("_"))
    changed[["iou30", "iou50", "iou70"]] += SHIFT
    write_csv(changed, repo / compare.CURVES_DIR / f"{CHANGED_CSV}.csv")
    git(repo, "commit", "-qam", "feature: better softmax CAM")
    git(repo, "worktree", "add", "-q", "--detach", str(repo.parent / "main-checkout"), "main")
    return repo


def make_compare(repo: Path, base: str, *extra: str) -> subprocess.CompletedProcess:
    return sh(["make", "compare", f"BASE={base}", f"VENV={VENV}", *extra], repo, check=False)


@pytest.fixture(scope="module")
def made(repo) -> subprocess.CompletedProcess:
    if not (VENV / ".installed").is_file():
        pytest.skip(f"{VENV} has no .installed stamp (not made by `make setup`): make would install into it")
    return make_compare(repo, "main")


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.lstrip().startswith("|")
    ]


def sections(markdown: str) -> dict[str, str]:
    """{heading: its text} for every `## heading`; "" holds the text before the first."""
    parts = re.split(r"^## (.*)$", markdown, flags=re.M)
    return {"": parts[0], **{parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}}


def metric_rows(markdown: str) -> list[list[str]]:
    """Rows of every metrics table (the ones with a Path column), header rows left out."""
    return [row for row in table_rows(markdown) if row[0] != "Path" and "/" in row[0]]


# ----------------------------------------------------------------------------------------------------
# make compare, end to end (small metrics without intervals)


def test_make_compare_prints_only_the_markdown(made):
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("# CAM benchmark report\n"), made.stdout[:300]  # `make compare > report.md`


def test_changed_metrics_without_an_interval_are_listed_apart(made):
    rows = metric_rows(sections(made.stdout)["Changed, no interval to judge by"])
    assert rows == [
        ["reports/metrics.json", "`cam.softmax.maxboxacc`", "24.5", "26.75", "+2.25"],
        ["reports/metrics.json", "`top1_cls`", "90.5", "91.25", "+0.75"],
    ]
    assert "gradcam.sigmoid.pxap" not in made.stdout  # unchanged: never listed
    assert "**Changed:** 0 metrics beyond their interval" in made.stdout
    assert "2 metrics without an interval" in made.stdout and "; 7 metrics unchanged." in made.stdout


def test_make_compare_writes_the_full_diff_with_every_metric(made, repo):
    full = (repo / FULL).read_text()
    rows = metric_rows(full)
    assert ["reports/metrics.json", "`cam.softmax.maxboxacc`", "24.5", "26.75", "+2.25", "", "", "no interval"] in rows
    assert ["reports/metrics.json", "`gradcam.sigmoid.pxap`", "34", "34", "", "", "", "unchanged"] in rows
    assert len(rows) == 9  # every metric, changed or not
    assert f"`{FULL}`" in made.stdout  # the comment names it


def test_params_diff_names_the_changed_param(made):
    rows = table_rows(sections(made.stdout)["Params (`params.yaml`)"])
    assert rows == [["Param", "`main`", "workspace"], ["---", "---", "---"], ["evaluate.threshold", "0.5", "0.65"]]


def test_figure_is_linked_and_a_png_of_the_expected_size(made, repo):
    from PIL import Image

    link = "build/compare/threshold_curves.png"
    assert f"]({link})" in made.stdout
    png = repo / link
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.size == (round(compare.FIGSIZE[0] * compare.DPI), round(compare.FIGSIZE[1] * compare.DPI))
        im.verify()


def test_curve_change_summary_lists_only_changed_branches(made):
    rows = table_rows(made.stdout)
    assert ["softmax", f"{SHIFT:.4f}", f"{SHIFT:.4f}", f"{SHIFT:.4f}"] in rows
    assert not any(row[0] == "sigmoid" for row in rows)  # all zero: not listed
    assert "absent" not in made.stdout


def test_make_compare_with_an_unknown_base_fails_naming_it(repo, made):
    proc = make_compare(repo, "no-such-rev")
    assert proc.returncode != 0
    assert "unknown git revision 'no-such-rev'" in proc.stderr
    assert proc.stdout == ""


def test_make_compare_with_a_base_folder(repo, made):
    base = repo.parent / "main-checkout"
    proc = make_compare(repo, "main", f"BASE_DIR={base}", "FULL=build/compare/from-dir.md")
    assert proc.returncode == 0, proc.stderr
    assert f"compared with `main` (`{compare.resolve_rev('main', repo)[:12]}`), checked out in `{base}`" in proc.stdout
    # The same numbers as against the revision main.
    assert (
        sections(proc.stdout)["Changed, no interval to judge by"]
        == sections(made.stdout)["Changed, no interval to judge by"]
    )
    assert (repo / "build/compare/from-dir.md").is_file()


# ----------------------------------------------------------------------------------------------------
# The CLI's errors (run directly: `make` turns every failure into exit status 2)


def cli(repo: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "pipeline.report.compare", *args], cwd or repo, check=False)


def test_unknown_variant_exits_2_listing_the_valid_ones(repo):
    proc = cli(repo, "--variant", "gradcam++")
    assert proc.returncode == 2
    assert "unknown variant 'gradcam++'" in proc.stderr
    assert "cam, gradcam, gradcampp, xgradcam, layercam" in proc.stderr
    assert proc.stdout == ""


def test_unknown_base_exits_2_listing_refs(repo):
    proc = cli(repo, "--base", "no-such-rev")
    assert proc.returncode == 2
    assert "unknown git revision 'no-such-rev'" in proc.stderr
    assert "feature" in proc.stderr and "main" in proc.stderr and "bare" in proc.stderr


def test_base_dir_that_is_not_a_dvc_checkout_exits_2(repo, tmp_path):
    proc = cli(repo, "--base-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "not a DVC checkout" in proc.stderr and proc.stdout == ""
    proc = cli(repo, "--base-dir", str(repo))
    assert proc.returncode == 2 and "is the workspace itself" in proc.stderr


def test_not_a_git_repository_exits_2(repo, tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.report.compare"],
        cwd=outside,
        capture_output=True,
        text=True,
        env=dict(env(), PYTHONPATH=str(repo), GIT_CEILING_DIRECTORIES=str(tmp_path)),
    )
    assert proc.returncode == 2
    assert f"{outside} is not inside a git repository" in proc.stderr


def test_dvc_failure_names_the_command(repo, monkeypatch):
    monkeypatch.setattr(
        compare, "_dvc_command", lambda: [sys.executable, "-c", "import sys; sys.exit('boom from dvc')", "--"]
    )
    with pytest.raises(compare.CompareError) as info:
        compare.metrics_diff("main", repo)
    assert info.value.code == 1
    assert "dvc metrics diff --json --all main" in str(info.value) and "boom from dvc" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Library functions


def test_read_curves_workspace_and_base(repo):
    ws = compare.read_curves(None, "cam", repo)
    old = compare.read_curves("main", "cam", repo)
    for frame, revision in ((ws, "workspace"), (old, "main")):
        assert list(frame.columns) == compare.CURVE_COLUMNS
        assert len(frame) == 2 * 3 * 1000
        assert set(frame.revision) == {revision} and set(frame.variant) == {"cam"}
        assert set(frame.iou) == {30, 50, 70} and set(frame.branch) == {"softmax", "sigmoid"}
    key = ["branch", "iou", "threshold"]
    diff = ws.set_index(key)["accuracy"] - old.set_index(key)["accuracy"]
    assert np.allclose(diff.loc["softmax"], SHIFT) and np.allclose(diff.loc["sigmoid"], 0.0)
    expected = curve("cam", "sigmoid")["iou50"].round(4).to_numpy()
    got = old[(old.branch == "sigmoid") & (old.iou == 50)].sort_values("threshold")["accuracy"].to_numpy()
    assert np.allclose(got, expected)
    folder = compare.read_curves_at(compare.dir_side(repo.parent / "main-checkout", repo, "main"), "cam")
    pd.testing.assert_frame_equal(folder, old)


def test_read_curves_absent_at_rev_is_empty(repo):
    frame = compare.read_curves("bare", "layercam", repo)
    assert frame.empty and list(frame.columns) == compare.CURVE_COLUMNS


def test_read_curves_rejects_unknown_variant(repo):
    with pytest.raises(compare.CompareError, match="unknown variant 'cams'.*layercam"):
        compare.read_curves(None, "cams", repo)


def test_report_against_a_base_without_curves_draws_the_workspace_only(repo, tmp_path):
    markdown = compare.build_report("bare", "xgradcam", tmp_path / "out", repo)
    assert "absent at `bare`: drawn for the workspace only" in markdown
    assert f"]({(tmp_path / 'out' / compare.FIGURE_NAME).resolve().as_posix()})" in markdown  # outside cwd
    assert (tmp_path / "out" / compare.FIGURE_NAME).is_file()
    assert "9 metrics in the workspace only: `cam.sigmoid.maxboxacc`" in markdown
    assert "No `params.yaml` at `bare`." in markdown
    assert ["seed", "-", "42"] in table_rows(markdown)


def test_flatten_and_params_changes():
    assert compare.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    old = {"a.b": 1, "x": 0.5, "gone": 1, "nan": math.nan}
    new = {"a.b": 1, "x": 0.25, "new": True, "nan": math.nan}
    assert compare.params_changes(old, new) == [("gone", 1, None), ("new", None, True), ("x", 0.5, 0.25)]


def test_classify_judges_against_the_interval_and_flips():
    iv = {
        ("clean", "cam", "pxap"): {
            "delta": -0.2,
            "half_width": 0.5,
            "verdict": "no detectable difference",
            "extra": "ignored",
        },
        ("clean", "cam", "top1_loc"): {"delta": 0.1, "half_width": 1.0, "verdict": "no detectable difference"},
    }
    flipped = {k: dict(v) for k, v in iv.items()}
    flipped[("clean", "cam", "top1_loc")]["verdict"] = "sigmoid better"
    flipped["official", "cam", "maxboxacc"] = {"delta": 0.3, "half_width": 2.0}  # a new interval
    m = compare.METRICS_FILE
    pairs = {
        (m, "cam.sigmoid.pxap"): (60.0, 60.6),
        (m, "cam.softmax.pxap"): (60.0, 60.4),
        (m, "protocols.official.cam.sigmoid.pxap"): (1.0, 9.0),  # no `official` interval
        (m, "cam.sigmoid.top1_loc"): (50.0, 50.1),
        (m, "intervals.clean.cam.top1_loc.delta"): (0.1, 0.2),
        (m, "intervals.clean.cam.top1_loc.verdict"): ("no detectable difference", "sigmoid better"),
        (m, "intervals.clean.cam.top1_loc.low"): (-1.0, -0.9),
        (m, "intervals.clean.cam.top1_loc.n_boot"): (1000, 2000),  # keys added to a leaf later
        (m, "intervals.clean.cam.top1_loc.ci.upper"): (1.0, 1.5),
        (m, "intervals.clean.cam.top1_loc.df"): (None, 12.5),
        (m, "intervals.official.cam.maxboxacc.delta"): (None, 0.3),
        (m, "top1_cls"): (90.0, 90.0),
        ("reports/sign.json", "x"): (None, 1.0),
    }
    rows = {row.key: row for row in compare.classify(pairs, "clean", iv, flipped)}
    assert rows["cam.sigmoid.pxap"].status == compare.BEYOND and rows["cam.sigmoid.pxap"].half_width == 0.5
    assert rows["cam.softmax.pxap"].status == compare.WITHIN
    assert rows["protocols.official.cam.sigmoid.pxap"].status == compare.NO_INTERVAL
    assert rows["cam.sigmoid.top1_loc"].status == compare.BEYOND and rows["cam.sigmoid.top1_loc"].flipped
    assert rows["intervals.clean.cam.top1_loc.delta"].status == compare.BEYOND
    assert rows["intervals.clean.cam.top1_loc.verdict"].status == compare.VERDICT
    assert rows["intervals.official.cam.maxboxacc.delta"].status == compare.ADDED
    for key in ("low", "n_boot", "ci.upper", "df"):
        assert rows[f"intervals.clean.cam.top1_loc.{key}"].status == compare.DETAIL
    assert rows["top1_cls"].status == compare.UNCHANGED and rows["x"].status == compare.ADDED
    assert [(f.metric, f.old, f.new) for f in compare.verdict_flips(iv, flipped)] == [
        ("top1_loc", "no detectable difference", "sigmoid better")
    ]
    values = {
        (m, "intervals.clean.cam.pxap.delta"): 0.5,
        (m, "intervals.clean.cam.pxap.half_width"): 1.0,
        (m, "intervals.clean.cam.pxap.n_boot"): 1000,
        (m, "intervals.clean.cam.pxap.ci.upper"): 2.0,
        ("reports/sign.json", "intervals.clean.cam.pxap.delta"): 9.0,
    }
    assert compare.intervals_from(values) == {("clean", "cam", "pxap"): {"delta": 0.5, "half_width": 1.0}}


def test_variant_names_come_from_the_registry_without_torch():
    from pipeline.cams import variants
    from pipeline.cams.engine import BRANCHES

    assert compare.VARIANTS == variants.names() and compare.BRANCHES == BRANCHES
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, pipeline.report.compare; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "False"


def test_read_curves_reports_a_malformed_csv(tmp_path):
    sh(["git", "init", "-q"], tmp_path)
    bad = tmp_path / compare.CURVES_DIR / "cam_softmax.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("threshold,iou30\n0.000,1.0\n")
    with pytest.raises(compare.CompareError, match="cam_softmax.csv: column.*iou50, iou70 missing") as info:
        compare.read_curves(None, "cam", tmp_path)
    assert info.value.code == 1


# ----------------------------------------------------------------------------------------------------
# Pull requests on the committed, full-size reports (`bench`)


def committed(rel: str) -> str:
    """`rel` as committed in this repository (others may be editing the working copy), else the file."""
    proc = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else (ROOT / rel).read_text()


RESOLVED = {
    "evaluate": {"loc_threshold": 0.2, "postprocess": "clean", "bootstrap_resamples": 1000},
    "model": {"input_size": 96, "feature_stride": 8, "batch_size": 32},
    "data": {"num_classes": 10},
}
BENCH_DVC_YAML = """\
stages:
  evaluate:
    cmd: "true"
    params:
      - data/params.json:
          - evaluate
          - model
          - data
metrics:
  - reports/metrics.json
  - reports/sign.json
"""
LOC_MOVES = ("top1_loc", "gt_known_loc")
BEYOND_KEY = "cam.sigmoid.top1_loc"  # on `loc`, moved by 3 half-widths; the other LOC_MOVES by a quarter


def loc_metrics(metrics: dict, headline: str) -> dict:
    """`metrics` as after a change of evaluate.loc_threshold: Top-1 Loc and GT-known Loc of every variant,
    branch and protocol move, all within their interval's half-width but BEYOND_KEY; the intervals' deltas
    (and bounds) move by a tenth of it, no verdict flips."""
    out = json.loads(json.dumps(metrics))
    iv = out["intervals"]
    for protocol, variants in iv.items():
        for variant, leaves in variants.items():
            for metric in LOC_MOVES:
                leaf = leaves[metric]
                hw = leaf["half_width"]
                for key in ("delta", "low", "high"):
                    leaf[key] = round(leaf[key] + 0.1 * hw, 6)
                branches = out[variant] if protocol == headline else out["protocols"][protocol][variant]
                for branch in compare.BRANCHES:
                    name = f"{variant}.{branch}.{metric}"
                    step = 3.0 if protocol == headline and name == BEYOND_KEY else 0.25
                    branches[branch][metric] = round(branches[branch][metric] + step * hw, 6)
    return out


def perturb(tree, verdicts=("sigmoid better", "sigmoid worse", "no detectable difference")):
    """Every number moved (x 1.013 + 0.37) and every verdict flipped to the next one."""
    if isinstance(tree, dict):
        return {k: perturb(v, verdicts) for k, v in tree.items()}
    if isinstance(tree, bool) or tree is None:
        return tree
    if isinstance(tree, (int, float)):
        return round(tree * 1.013 + 0.37, 6)
    if tree in verdicts:
        return verdicts[(verdicts.index(tree) + 1) % len(verdicts)]
    return tree


def commit_branch(repo: Path, branch: str, files: dict[str, str], message: str) -> Path:
    """A branch off main with `files` changed, checked out in its own worktree beside `repo`."""
    tree = repo.parent / branch
    git(repo, "worktree", "add", "-q", "-b", branch, str(tree), "main")
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", message)
    return tree


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("bench") / "main"
    new_repo(repo)
    metrics = json.loads(committed("reports/metrics.json"))
    sign = json.loads(committed("reports/sign.json"))
    evaluation = json.loads(committed("reports/evaluation.json"))
    # evaluate.loc_threshold written out as RESOLVED's 0.2 (params.yaml may leave it null: the same default)
    params = re.sub(r"^(  loc_threshold:) null\b", r"\1 0.2", committed("params.yaml"), count=1, flags=re.M)
    headline = evaluation["postprocess"]
    files = {
        "dvc.yaml": BENCH_DVC_YAML,
        "params.yaml": params,
        "README.md": "# bench\n",
        "data/params.json": json.dumps(RESOLVED, indent=2),
        "reports/metrics.json": json.dumps(metrics, indent=2),
        "reports/sign.json": json.dumps(sign, indent=2),
        "reports/evaluation.json": json.dumps(evaluation, indent=2),
    }
    for variant in ("cam",):
        for branch in compare.BRANCHES:
            write_csv(curve(variant, branch), repo / compare.CURVES_DIR / f"{variant}_{branch}.csv")
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main: the committed reports")

    loc_params = re.sub(r"^(  loc_threshold:) 0\.2\b", r"\1 0.25", params, count=1, flags=re.M)
    assert yaml.safe_load(loc_params)["evaluate"]["loc_threshold"] == 0.25, "params.yaml's layout changed"
    resolved = json.loads(json.dumps(RESOLVED))
    resolved["evaluate"]["loc_threshold"] = 0.25
    perturbed_resolved = json.loads(json.dumps(RESOLVED))
    perturbed_resolved["model"]["input_size"] = 112
    perturbed_resolved["data"]["num_classes"] = 20
    trees = {
        "readme": commit_branch(repo, "readme", {"README.md": "# bench\n\nBetter words.\n"}, "README only"),
        "loc": commit_branch(
            repo,
            "loc",
            {
                "params.yaml": loc_params,
                "data/params.json": json.dumps(resolved, indent=2),
                "reports/metrics.json": json.dumps(loc_metrics(metrics, headline), indent=2),
            },
            "evaluate.loc_threshold 0.25",
        ),
        "perturbed": commit_branch(
            repo,
            "perturbed",
            {
                "data/params.json": json.dumps(perturbed_resolved, indent=2),
                "reports/metrics.json": json.dumps(perturb(metrics), indent=2),
                "reports/sign.json": json.dumps(perturb(sign), indent=2),
            },
            "every metric moved",
        ),
    }
    return {"repo": repo, "metrics": metrics, "headline": headline, **trees}


def pr_comment(tree: Path, *args: str) -> tuple[str, str]:
    """(the comment, the full diff) of the pull request checked out in `tree` against main."""
    proc = cli(tree, "--base", "main", "--full", "full.md", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, (tree / "full.md").read_text()


@pytest.fixture(scope="module")
def readme_pr(bench):
    return pr_comment(bench["readme"])


@pytest.fixture(scope="module")
def loc_pr(bench):
    return pr_comment(bench["loc"])


@pytest.fixture(scope="module")
def perturbed_pr(bench):
    return pr_comment(bench["perturbed"])


def test_readme_only_change_says_nothing_changed(readme_pr, bench):
    comment, full = readme_pr
    assert "**Nothing changed**" in comment
    assert metric_rows(comment) == []
    parts = sections(comment)
    assert set(parts) == {
        "",
        f"Headline verdicts: protocol `{bench['headline']}`",
        "Params (`params.yaml`)",
        "Box accuracy against CAM threshold: `cam`",
    }
    assert table_rows(parts["Params (`params.yaml`)"]) == []
    assert "No `params.yaml` value changed." in parts["Params (`params.yaml`)"]
    assert "within their interval" not in comment and "⚠ was" not in comment
    assert "identical" in parts["Box accuracy against CAM threshold: `cam`"] and "![" not in comment
    # The full diff still has every metric, each one unchanged.
    rows = metric_rows(full)
    assert len(rows) > 1000 and {row[-1] for row in rows} == {"unchanged"}


def test_readme_only_change_shows_the_headline_verdicts(readme_pr, bench):
    comment, _ = readme_pr
    headline = sections(comment)[f"Headline verdicts: protocol `{bench['headline']}`"]
    leaves = bench["metrics"]["intervals"][bench["headline"]]
    rows = {row[0]: row[1:] for row in table_rows(headline)[2:]}
    variants = [v.strip("`") for v in table_rows(headline)[0][1:]]
    assert set(variants) == set(leaves)
    for variant, metrics in leaves.items():
        for metric, leaf in metrics.items():
            cell = rows[metric][variants.index(variant)]
            word = compare.VERDICT_WORDS[leaf["verdict"]]
            assert cell.startswith(f"{word} {leaf['delta']:+.2f} [{leaf['low']:.2f}, {leaf['high']:.2f}]"), cell


def test_loc_threshold_change_lists_only_that_param(loc_pr):
    comment, full = loc_pr
    expected = [["evaluate.loc_threshold", "0.2", "0.25"]]
    assert table_rows(sections(comment)["Params (`params.yaml`)"])[2:] == expected
    assert table_rows(sections(full)["Params (`params.yaml`)"])[2:] == expected


def test_loc_threshold_change_counts_changes_within_the_interval(loc_pr, bench):
    comment, full = loc_pr
    changed = [row for row in metric_rows(full) if row[-1] != "unchanged"]
    # Only evaluation numbers moved: Top-1 Loc / GT-known Loc and their intervals.
    assert changed and all(
        row[0] == "reports/metrics.json" and row[1].strip("`").split(".")[-1] in (*LOC_MOVES, "delta", "low", "high")
        for row in changed
    )
    within = [row for row in changed if row[-1] == "within interval"]
    bounds = [row for row in changed if row[-1] == "interval field"]
    assert [row[1] for row in changed if row[-1] == "beyond interval"] == [f"`{BEYOND_KEY}`"]
    assert len(within) + len(bounds) + 1 == len(changed)
    assert len(within) > 50 and len(bounds) > 50

    listed = sections(comment)["Changed beyond their interval"]
    assert [row[1] for row in metric_rows(listed)] == [f"`{BEYOND_KEY}`"]
    assert f"**{len(within)} metrics changed within their interval**" in comment
    assert f"{len(bounds)} interval fields besides the deltas (low, high, half-width, ...) changed" in comment
    for row in within:  # counted, never listed
        assert row[1] not in comment
    assert "Changed, no interval to judge by" not in comment and "Verdicts that flipped" not in comment
    assert "**Changed:** 1 metric beyond their interval, 0 verdicts flipped" in comment


def test_params_table_never_shows_data_params_json(loc_pr, perturbed_pr, bench):
    # The fixture is one that would catch it: dvc itself lists data/params.json's changes.
    raw = sh([str(BIN / "dvc"), "params", "diff", "main", "--md"], bench["perturbed"]).stdout
    assert "data/params.json" in raw and "model.input_size" in raw
    for comment, full in (loc_pr, perturbed_pr):
        for text in (comment, full):
            params = sections(text)["Params (`params.yaml`)"]
            assert "data/params.json" not in text
            assert not any(row[0].split(".")[0] in ("model", "data") for row in table_rows(params))
    assert "No `params.yaml` value changed." in sections(perturbed_pr[0])["Params (`params.yaml`)"]
    assert len(table_rows(sections(loc_pr[0])["Params (`params.yaml`)"])) == 3  # header, rule, one key


def test_full_size_perturbed_comment_stays_short(perturbed_pr, bench):
    comment, full = perturbed_pr
    assert len(comment) < 20_000, len(comment)
    assert comment.startswith("# CAM benchmark report\n")
    # Everything is still in the full diff, and the comment says how much it left out.
    rows = metric_rows(full)
    numbers = [row for row in rows if re.fullmatch(r"-?[\d.]+(e[-+]?\d+)?", row[2])]
    assert len(rows) > 1000 and len(numbers) > 800
    assert not any(row[-1] == "unchanged" for row in numbers)
    assert len(full) > 5 * len(comment)
    assert "more (in the full diff)" in comment
    flips = sections(comment)["Verdicts that flipped"]
    assert "⚠ was" in comment and table_rows(flips)
    n_intervals = sum(len(m) for v in bench["metrics"]["intervals"].values() for m in v.values())
    assert f"{n_intervals} verdicts flipped" in comment


def test_comment_is_cut_to_max_chars(bench):
    proc = cli(bench["perturbed"], "--base", "main", "--max-chars", "6000")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) <= 6000
    assert "## Headline verdicts" in proc.stdout and "## Params (`params.yaml`)" in proc.stdout


def test_base_folder_gives_the_same_comparison_as_the_revision(bench, loc_pr):
    base = bench["repo"].parent / "base-checkout"
    git(bench["repo"], "worktree", "add", "-q", "--detach", str(base), "main")
    comment, full = pr_comment(bench["loc"], "--base-dir", str(base))
    by_rev, by_dir = sections(loc_pr[0]), sections(comment)
    assert f"checked out in `{base}`" in by_dir[""]
    assert {k: v for k, v in by_dir.items() if k} == {k: v for k, v in by_rev.items() if k}
    assert metric_rows(full) == metric_rows(loc_pr[1])
