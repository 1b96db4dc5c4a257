"""The GitHub workflows, checked offline.

actionlint is not installable here (its PyPI package downloads a Go binary at build time), so:
- the structure is checked against SchemaStore's GitHub-workflow schema, vendored in check-jsonschema
  (and a broken copy must fail that check, so it is not vacuous);
- the project-level rules actionlint would otherwise cover are checked below in Python.
"""
from __future__ import annotations

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
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, check=False)


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
    for step in steps(load(path)):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+|[0-9a-f]{40})", step["uses"]), (
                f"{step['uses']}: pin to a major version tag (@v4) or a full commit sha")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_make_targets_exist(path):
    targets = makefile_targets()
    used = []
    for script in run_blocks(load(path)):
        for line in script.splitlines():
            for m in re.finditer(r"(?:^|[;&|(]\s*)make((?:\s+(?:-\S+|[A-Za-z_]\w*=\S*))*)\s+([A-Za-z][\w.-]*)",
                                 line.strip()):
                used.append(m.group(2))
    assert set(used) <= targets, f"make target(s) {sorted(set(used) - targets)} not in the Makefile"


def test_make_target_pattern_sees_every_target():
    # Guards the two tests above against a pattern that silently matches nothing.
    assert {"setup", "repro", "test", "compare"} <= makefile_targets()
    doc = load(PR_REPORT)
    assert any("make setup" in s for s in run_blocks(doc))
    assert any(re.search(r"make -s compare BASE=", s) for s in run_blocks(doc))


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
    assert any(s.get("uses") == "iterative/setup-cml@v2" for s in all_steps)

    scripts = run_blocks(doc)
    order = [next(i for i, s in enumerate(scripts) if needle in s)
             for needle in ("download.pytorch.org/whl/cpu", "make setup", "make repro", "compare", "cml comment")]
    assert order == sorted(order), "steps out of order: CPU torch, make setup, make repro, compare, comment"
    cpu = next(s for s in scripts if "download.pytorch.org/whl/cpu" in s)
    assert "python -m venv .venv" in cpu and ".venv/bin/python -m pip install torch==" in cpu

    (comment,) = [s for s in all_steps if "cml comment" in s.get("run", "")]
    assert "cml comment update" in comment["run"]
    assert '--watermark-title="CAM benchmark report"' in comment["run"]
    assert comment["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


def test_workflow_torch_pins_match_requirements():
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    cpu = next(s for s in run_blocks(load(PR_REPORT)) if "download.pytorch.org/whl/cpu" in s)
    for name, version in pins.items():
        assert f"{name}=={version}" in cpu.split(), f"workflow installs another {name} than requirements.txt"
