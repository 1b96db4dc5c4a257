"""The GitHub workflows, checked offline.

actionlint is not installable here (its PyPI package downloads a Go binary at build time), so:
- the structure is checked against SchemaStore's GitHub-workflow schema, vendored in check-jsonschema
  (and a broken copy must fail that check, so it is not vacuous);
- the project-level rules actionlint would otherwise cover are checked below in Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
PR_REPORT = ROOT / ".github" / "workflows" / "pr-report.yml"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)


def schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1 reads the key `on` as the boolean True
        doc["on"] = doc.pop(True)
    return doc


def steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def run_blocks(doc: dict) -> list[str]:
    return [step["run"] for step in steps(doc) if "run" in step]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def test_there_are_workflows():
    assert PR_REPORT in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path):
    proc = schema_check(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("breakage", ["runs-on misspelt", "uses and run in one step"])
def test_schema_check_rejects_a_broken_workflow(tmp_path, breakage):
    text = PR_REPORT.read_text()
    if breakage == "runs-on misspelt":
        broken = text.replace("runs-on:", "runs_on:", 1)
    else:
        step = "        run: make setup"
        broken = text.replace(step, "        uses: actions/cache@v4\n" + step, 1)
    assert broken != text
    copy = tmp_path / "broken.yml"
    copy.write_text(broken)
    proc = schema_check(copy)
    assert proc.returncode != 0, f"the schema check accepted a workflow with {breakage}:\n{proc.stdout}"
    assert "Schema validation errors" in proc.stdout, proc.stdout + proc.stderr  # rejected, not crashed


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_blocks_are_valid_bash(path):
    bash = shutil.which("bash")
    assert bash, "bash not found"
    for script in run_blocks(load(path)):
        plain = EXPRESSION.sub("PLACEHOLDER", script)
        proc = subprocess.run([bash, "-n"], input=plain, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"bash -n rejects:\n{script}\n{proc.stderr}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_github_context_interpolated_into_scripts(path):
    # ${{ github.* }} inside a script is a script-injection hole (a branch name is attacker-controlled);
    # pass such values through `env:` and read them as shell variables.
    for script in run_blocks(load(path)):
        assert not re.search(r"\$\{\{\s*github\.", script), f"pass github.* through env:, not inline:\n{script}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned(path):
    """Every action by a full commit sha (a tag such as @v5 can be moved to other code), its release named in a
    comment on the same line so that a reader and a dependency bot see which version it is."""
    used = [step["uses"] for step in steps(load(path)) if "uses" in step]
    assert used
    for uses in used:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses), f"{uses}: pin to a full commit sha"
    lines = [line for line in path.read_text().splitlines() if re.search(r"\buses:", line)]
    assert len(lines) == len(used)
    for line in lines:
        assert re.search(r"@[0-9a-f]{40}\s+# v\d+(\.\d+)*\s*$", line), f"{line.strip()}: name the release (# vX.Y.Z)"


@pytest.mark.parametrize(
    "uses, ok",
    [
        ("actions/checkout@v5", False),
        ("actions/checkout@main", False),
        ("actions/checkout@fbc6f39", False),
        ("actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09", True),
    ],
)
def test_the_pin_check_refuses_tags_and_short_shas(tmp_path, uses, ok):
    wf = tmp_path / "w.yml"
    wf.write_text(f"on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: {uses}  # v5.1.0\n")
    if ok:
        test_actions_are_pinned(wf)
    else:
        with pytest.raises(AssertionError, match="pin to a full commit sha"):
            test_actions_are_pinned(wf)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_make_targets_exist(path):
    targets = makefile_targets()
    used = []
    for script in run_blocks(load(path)):
        for line in script.splitlines():
            for m in re.finditer(
                r"(?:^|[;&|(]\s*)make((?:\s+(?:-\S+|[A-Za-z_]\w*=\S*))*)\s+([A-Za-z][\w.-]*)", line.strip()
            ):
                used.append(m.group(2))
    assert set(used) <= targets, f"make target(s) {sorted(set(used) - targets)} not in the Makefile"


def test_make_target_pattern_sees_every_target():
    # Guards the two tests above against a pattern that silently matches nothing.
    assert {"setup", "repro", "test", "compare"} <= makefile_targets()
    doc = load(PR_REPORT)
    assert any("make setup" in s for s in run_blocks(doc))
    assert any(re.search(r"make -s compare BASE=", s) for s in run_blocks(doc))
    assert any(re.search(r"make -s compare BASE=\S+ BASE_DIR=", s) for s in run_blocks(doc))


def test_pr_report_workflow_shape():
    doc = load(PR_REPORT)
    on = doc["on"]
    assert set(on) == {"pull_request"}, on
    assert on["pull_request"]["branches"] == ["main"]
    assert doc["permissions"]["pull-requests"] == "write"
    assert doc["permissions"]["contents"] == "read"
    assert doc["concurrency"]["cancel-in-progress"] is True
    assert "github.event.pull_request.number" in doc["concurrency"]["group"]
    (job,) = doc["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] > 0
    assert str(job["env"]["HF_HUB_OFFLINE"]) == "1"

    all_steps = steps(doc)
    (checkout,) = [s for s in all_steps if s.get("uses", "").startswith("actions/checkout@")]
    assert checkout["with"]["fetch-depth"] == 0
    (python,) = [s for s in all_steps if s.get("uses", "").startswith("actions/setup-python@")]
    assert str(python["with"]["python-version"]) == "3.11" and python["with"]["cache"] == "pip"
    assert any(s.get("uses", "").startswith("iterative/setup-cml@") for s in all_steps)

    scripts = run_blocks(doc)
    needles = (
        "download.pytorch.org/whl/cpu",
        "make setup",
        "git worktree add",
        "dvc repro",
        "make repro",
        "make -s compare",
        "GITHUB_STEP_SUMMARY",
        "cml comment",
    )
    order = [next(i for i, s in enumerate(scripts) if needle in s) for needle in needles]
    assert order == sorted(order), f"steps out of order: {', '.join(needles)}"
    cpu = next(s for s in scripts if "download.pytorch.org/whl/cpu" in s)
    assert "python -m venv .venv" in cpu and ".venv/bin/python -m pip install torch==" in cpu

    (comment,) = [s for s in all_steps if "cml comment" in s.get("run", "")]
    assert "cml comment update" in comment["run"]
    assert '--watermark-title="CAM benchmark report"' in comment["run"]
    assert comment["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


def test_workflow_torch_pins_match_requirements():
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements" / "run.txt").read_text(), re.M))
    cpu = next(s for s in run_blocks(load(PR_REPORT)) if "download.pytorch.org/whl/cpu" in s)
    for name, version in pins.items():
        assert f"{name}=={version}" in cpu.split(), f"workflow installs another {name} than requirements/run.txt"


# ----------------------------------------------------------------------------------------------------
# The base reproduced on the same runner, one DVC cache for both sides, the full diff beside the comment


def named(doc: dict, name: str) -> tuple[int, dict]:
    """(index, step) of the step called `name`."""
    (found,) = [(i, step) for i, step in enumerate(steps(doc)) if step.get("name") == name]
    return found


def using(doc: dict, action: str) -> tuple[int, dict]:
    (found,) = [(i, step) for i, step in enumerate(steps(doc)) if step.get("uses", "").startswith(action + "@")]
    return found


def test_dvc_cache_is_restored_before_the_base_runs_and_saved_after_the_pr():
    doc = load(PR_REPORT)
    restore_at, restore = using(doc, "actions/cache/restore")
    save_at, save = using(doc, "actions/cache/save")
    base_at, base = named(doc, "Reproduce the base")
    pr_at, _ = named(doc, "Reproduce the pull request")
    worktree_at, _ = named(doc, "Check out the base in a worktree sharing the DVC cache")
    assert restore_at < worktree_at < base_at < pr_at < save_at

    assert restore["with"]["path"] == save["with"]["path"] == ".dvc/cache"  # cached outputs and runs/ (run-cache)
    key = restore["with"]["key"]
    assert "hashFiles('dvc.lock')" in key
    restore_keys = [k for k in restore["with"]["restore-keys"].splitlines() if k.strip()]
    assert len(restore_keys) >= 2 and all(key.startswith(k) and k != key for k in restore_keys)
    assert save["with"]["key"] == f"${{{{ steps.{restore['id']}.outputs.cache-primary-key }}}}"
    assert "!cancelled()" in save["if"] and f"steps.{restore['id']}.outputs.cache-hit" in save["if"]


def test_the_comparison_is_against_the_reproduced_base():
    doc = load(PR_REPORT)
    _, worktree = named(doc, "Check out the base in a worktree sharing the DVC cache")
    assert 'git worktree add --detach "$base_dir" "origin/$BASE_REF"' in worktree["run"]
    assert 'cache dir --local "$GITHUB_WORKSPACE/.dvc/cache"' in worktree["run"]
    assert 'BASE_DIR=$base_dir" >> "$GITHUB_ENV"' in worktree["run"]
    assert worktree["env"]["BASE_REF"] == "${{ github.base_ref }}"
    _, base = named(doc, "Reproduce the base")
    assert 'cd "$BASE_DIR"' in base["run"] and "dvc repro" in base["run"] and base["id"] == "base"
    _, comparing = named(doc, "Compare with the base")
    assert 'BASE_DIR="$BASE_DIR" FULL=build/compare/full-diff.md > report.md' in comparing["run"]
    assert comparing["env"]["REPRODUCED"] == "${{ steps.base.outputs.reproduced }}"
    _, upload = using(doc, "actions/upload-artifact")
    assert "build/compare/full-diff.md" in upload["with"]["path"].split()
    (comment,) = [s for s in steps(doc) if "cml comment" in s.get("run", "")]
    assert comment["run"].endswith(" report.md")


def script_env(tmp_path: Path, **extra: str) -> dict:
    """The runner's variables a step reads, with .venv/bin/{python,dvc,activate} of this interpreter."""
    venv = tmp_path / "ws" / ".venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    for tool in ("python", "dvc"):
        if not (venv / tool).exists():
            (venv / tool).symlink_to(bin_dir / tool if (bin_dir / tool).exists() else shutil.which(tool))
    (venv / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = dict(
        os.environ,
        GITHUB_WORKSPACE=str(tmp_path / "ws"),
        RUNNER_TEMP=str(tmp_path / "runner"),
        GITHUB_ENV=str(tmp_path / "github_env"),
        GITHUB_OUTPUT=str(tmp_path / "github_output"),
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        DVC_NO_ANALYTICS="1",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    (tmp_path / "runner").mkdir(exist_ok=True)
    return {**env, **extra}


def run_step(doc: dict, name: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    _, step = named(doc, name)
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_job_summary_is_cut_to_one_mebibyte_at_a_character_boundary(tmp_path):
    env = script_env(tmp_path)
    ws = tmp_path / "ws"
    (ws / "build" / "compare").mkdir(parents=True)
    (ws / "report.md").write_text("# CAM benchmark report\n\n![figure](build/compare/threshold_curves.png)\nshort\n")
    (ws / "build" / "compare" / "full-diff.md").write_text("| é | ü |\n" * 200_000)  # 2.2 MB, 2-byte characters
    run_step(load(PR_REPORT), "Job summary", ws, env)
    data = (tmp_path / "summary.md").read_bytes()
    assert len(data) <= 1024 * 1024
    text = data.decode()  # valid UTF-8
    assert text.startswith("# CAM benchmark report\n") and "![" not in text and "short" in text
    assert text.rstrip().endswith("the artifact compare-full-diff has all of it.")


def test_base_worktree_shares_the_cache_and_run_cache(tmp_path):
    """The workflow's own scripts on a tiny pipeline: the base's run fills the PR's run-cache."""
    doc = load(PR_REPORT)
    env = script_env(tmp_path, BASE_REF="main")
    ws, log = tmp_path / "ws", tmp_path / "runs.log"
    origin = tmp_path / "origin"
    origin.mkdir()

    def sh(*cmd: str, cwd: Path) -> str:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    sh("git", "-c", "init.defaultBranch=main", "init", "-q", cwd=origin)
    sh("dvc", "init", "-q", cwd=origin)
    (origin / "data.txt").write_text("data\n")  # a stage without deps has no run-cache
    (origin / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: echo ran >> {log} && cat data.txt > model.txt\n"
        "    deps:\n      - data.txt\n    outs:\n      - model.txt\n"
    )
    sh("git", "add", "-A", cwd=origin)
    sh("git", "commit", "-qm", "base", cwd=origin)
    sh("git", "clone", "-q", str(origin), str(ws / "checkout"), cwd=tmp_path)
    for item in (ws / "checkout").iterdir():  # the PR's checkout is GITHUB_WORKSPACE, beside its .venv
        item.rename(ws / item.name)

    run_step(doc, "Check out the base in a worktree sharing the DVC cache", ws, env)
    base_dir = Path(env["RUNNER_TEMP"]) / "base"
    assert (tmp_path / "github_env").read_text() == f"BASE_DIR={base_dir}\n"
    assert sh("dvc", "cache", "dir", cwd=base_dir).strip() == str(ws / ".dvc" / "cache")

    run_step(doc, "Reproduce the base", ws, dict(env, BASE_DIR=str(base_dir)))
    assert (tmp_path / "github_output").read_text() == "reproduced=true\n"
    assert (base_dir / "model.txt").read_text() == "data\n" and log.read_text() == "ran\n"
    assert any((ws / ".dvc" / "cache" / "runs").rglob("*")), "no run-cache entry in the shared cache"

    out = sh("dvc", "repro", cwd=ws)  # the PR, same stage: restored from the run-cache, not rerun
    assert log.read_text() == "ran\n", out
    assert (ws / "model.txt").read_text() == "data\n"
