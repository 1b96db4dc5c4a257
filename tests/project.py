"""Helpers shared by the tests that run the real stages in a temporary copy of the project."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> Path:
    """Copy the tracked and untracked-but-not-ignored project files, without data/ and reports/, to `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
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


def make_dvc_repo(tmp_path_factory, name: str, files=("Makefile", "requirements.txt")) -> Path:
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
