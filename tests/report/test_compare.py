"""`make compare` / pipeline.report.compare on a throw-away git + DVC repository.

The repository has three commits: `bare` (dvc init only, no reports), `main` (metrics, params and the ten
box-accuracy CSVs) and `feature` (checked out: some metrics, one param and one CSV changed). The real
Makefile and pipeline/ package are copied in; `make` runs with VENV pointing at this interpreter's
virtualenv, whose `.installed` stamp is newer than the copied requirements.txt, so nothing is installed.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.report import compare

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the virtualenv running the tests (`make test` runs them in .venv)
BIN = Path(sys.executable).parent

OLD_METRICS = {"top1_cls": 90.5,
               "cam": {"softmax": {"maxboxacc": 24.5, "pxap": 36.25}, "sigmoid": {"maxboxacc": 30.0, "pxap": 35.5}},
               "gradcam": {"softmax": {"maxboxacc": 22.0, "pxap": 33.0},
                           "sigmoid": {"maxboxacc": 28.0, "pxap": 34.0}}}
NEW_METRICS = json.loads(json.dumps(OLD_METRICS))
NEW_METRICS["top1_cls"] = 91.25
NEW_METRICS["cam"]["softmax"]["maxboxacc"] = 26.75
OLD_PARAMS = "seed: 42\nevaluate:\n  threshold: 0.5\n"
NEW_PARAMS = "seed: 42\nevaluate:\n  threshold: 0.65\n"
CHANGED_CSV = "cam_softmax"
SHIFT = 2.5  # percentage points added to every value of CHANGED_CSV on `feature`


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


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("compare") / "repo"
    repo.mkdir()
    sh(["git", "-c", "init.defaultBranch=main", "init", "-q"], repo)
    sh([str(BIN / "dvc"), "init", "-q"], repo)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / ".gitignore").write_text("/build/\n__pycache__/\n")
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
    shutil.copy(ROOT / "requirements.txt", repo / "requirements.txt")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results on main")

    git(repo, "checkout", "-qb", "feature")
    (repo / "reports/metrics.json").write_text(json.dumps(NEW_METRICS, indent=2) + "\n")
    (repo / "params.yaml").write_text(NEW_PARAMS)
    changed = curve(*CHANGED_CSV.split("_"))
    changed[["iou30", "iou50", "iou70"]] += SHIFT
    write_csv(changed, repo / compare.CURVES_DIR / f"{CHANGED_CSV}.csv")
    git(repo, "commit", "-qam", "feature: better softmax CAM")
    # Older than the venv's stamp, so `make` does not reinstall the requirements.
    os.utime(repo / "requirements.txt", (0, 0))
    return repo


def make_compare(repo: Path, base: str) -> subprocess.CompletedProcess:
    return sh(["make", "compare", f"BASE={base}", f"VENV={VENV}"], repo, check=False)


@pytest.fixture(scope="module")
def made(repo) -> subprocess.CompletedProcess:
    if not (VENV / ".installed").is_file():
        pytest.skip(f"{VENV} has no .installed stamp (not made by `make setup`): make would install into it")
    return make_compare(repo, "main")


def table_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.lstrip().startswith("|")]


# ----------------------------------------------------------------------------------------------------
# make compare, end to end


def test_make_compare_prints_only_the_markdown(made):
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("# CAM benchmark report\n"), made.stdout[:300]  # `make compare > report.md`


def test_metrics_diff_table_has_old_and_new_values(made):
    rows = table_rows(made.stdout)
    assert ["Path", "Metric", "main", "workspace", "Change"] in rows
    assert ["reports/metrics.json", "cam.softmax.maxboxacc", "24.5", "26.75", "2.25"] in rows
    assert ["reports/metrics.json", "top1_cls", "90.5", "91.25", "0.75"] in rows
    # --all: unchanged metrics are listed too
    assert ["reports/metrics.json", "gradcam.sigmoid.pxap", "34.0", "34.0", "0.0"] in rows


def test_params_diff_names_the_changed_param(made):
    rows = table_rows(made.stdout)
    assert ["params.yaml", "evaluate.threshold", "0.5", "0.65"] in rows
    assert not any("seed" in row for row in rows)  # unchanged params are not listed


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


def test_curve_change_summary(made):
    rows = table_rows(made.stdout)
    assert ["softmax", f"{SHIFT:.4f}", f"{SHIFT:.4f}", f"{SHIFT:.4f}"] in rows
    assert ["sigmoid", "0.0000", "0.0000", "0.0000"] in rows
    assert "absent" not in made.stdout


def test_make_compare_with_an_unknown_base_fails_naming_it(repo, made):
    proc = make_compare(repo, "no-such-rev")
    assert proc.returncode != 0
    assert "unknown git revision 'no-such-rev'" in proc.stderr
    assert proc.stdout == ""


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


def test_not_a_git_repository_exits_2(repo, tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline.report.compare"], cwd=outside, capture_output=True,
                          text=True, env=dict(env(), PYTHONPATH=str(repo), GIT_CEILING_DIRECTORIES=str(tmp_path)))
    assert proc.returncode == 2
    assert f"{outside} is not inside a git repository" in proc.stderr


def test_dvc_failure_names_the_command(repo, monkeypatch):
    monkeypatch.setattr(compare, "_dvc_command", lambda: [sys.executable, "-c", "import sys; "
                                                          "sys.exit('boom from dvc')", "--"])
    with pytest.raises(compare.CompareError) as info:
        compare.metrics_diff_md("main", repo)
    assert info.value.code == 1
    assert "dvc metrics diff --md --all main" in str(info.value) and "boom from dvc" in str(info.value)


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
    assert ["reports/metrics.json", "cam.softmax.maxboxacc", "-", "26.75", "-"] in table_rows(markdown)


def test_render_markdown_sections():
    md = compare.render_markdown(base="main", base_sha="0123456789abcdef", variant="gradcam",
                                 metrics_md="| Path | Metric |\n|---|---|\n| m.json | a |", params_md="",
                                 figure="build/compare/threshold_curves.png", notes=["a note."])
    lines = md.splitlines()
    assert lines[0] == "# CAM benchmark report"
    assert "`0123456789ab`" in md
    assert lines.index("## Metrics (`dvc metrics diff --md --all main`)") < lines.index("| m.json | a |")
    params = lines.index("## Params (`dvc params diff --md main`)")
    assert lines[params + 2] == "no params changed"
    figure = next(i for i, line in enumerate(lines) if line.startswith("![gradcam: box accuracy"))
    assert lines[figure].endswith("](build/compare/threshold_curves.png)")
    assert params < figure < lines.index("- a note.")
    assert "![" not in compare.render_markdown(base="main", base_sha="0" * 40, variant="cam", metrics_md="",
                                               params_md="", figure=None)


def test_variant_names_come_from_the_registry_without_torch():
    from pipeline.cams import variants
    from pipeline.cams.engine import BRANCHES

    assert compare.VARIANTS == variants.names() and compare.BRANCHES == BRANCHES
    proc = subprocess.run([sys.executable, "-c", "import sys, pipeline.report.compare; print('torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_read_curves_reports_a_malformed_csv(tmp_path):
    sh(["git", "init", "-q"], tmp_path)
    bad = tmp_path / compare.CURVES_DIR / "cam_softmax.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("threshold,iou30\n0.000,1.0\n")
    with pytest.raises(compare.CompareError, match="cam_softmax.csv: column.*iou50, iou70 missing") as info:
        compare.read_curves(None, "cam", tmp_path)
    assert info.value.code == 1
