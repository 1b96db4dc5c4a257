"""Helpers shared by the tests that run the real stages in a temporary copy of the project."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> Path:
    """Copy the tracked and untracked-but-not-ignored project files, without data/ and reports/, to `dest`."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("data/", "reports/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def digests(repo: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under the given paths (files or folders) of `repo`, by relative path."""
    out = {}
    for rel in paths:
        root = repo / rel
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def make_dvc_repo(tmp_path_factory, name: str, files=("Makefile",)) -> Path:
    """A throw-away git + DVC repository with the project's `files` copied in, for tests that run make targets
    and `dvc exp` there (skipped where the venv was not made by `make setup`: make would install into it)."""
    import pytest

    from tests.report.test_compare import BIN, VENV, sh

    if not (VENV / ".installed").is_file():
        pytest.skip(f"{VENV} has no .installed stamp (not made by `make setup`): make would install into it")
    repo = tmp_path_factory.mktemp(name) / "repo"
    repo.mkdir()
    sh(["git", "-c", "init.defaultBranch=main", "init", "-q"], repo)
    sh([str(BIN / "dvc"), "init", "-q"], repo)
    for rel in files:
        shutil.copy(ROOT / rel, repo / rel)
    return repo


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` with this interpreter's bin/ first on PATH (dvc), offline, no progress bars or analytics;
    raises AssertionError with both outputs when it fails and `check`."""
    import os
    import sys

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def smoke_repo(dest: Path) -> subprocess.CompletedProcess:
    """`dest`: a copy of the project as a git repository on configs/smoke.yaml, committed, then `dvc repro`
    (the whole pipeline); returns that repro's process."""
    import sys

    copy_project(dest)
    run(["git", "init", "-q"], dest)
    run([sys.executable, "-m", "pipeline.params", "apply", "configs/smoke.yaml"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], dest)
    return run(["dvc", "repro"], dest)


def copy_repo(src: Path, dest: Path) -> Path:
    """A byte copy of a git + DVC repository (work tree, .git, .dvc/cache), without .dvc/tmp (DVC's locks, state
    database and queue, which name the original's paths; DVC rebuilds them)."""
    shutil.copytree(src, dest, symlinks=True, ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dest
