"""The smoke pipeline reproduced once per test session (per xdist worker), shared by the end-to-end modules.

`dvc repro` of configs/smoke.yaml is most of an end-to-end module's time; every module that needs the reproduced
smoke project takes its own byte copy of it (`smoke_copy`), so the modules cannot see each other's edits, and
runs exactly as it did on a repository it reproduced itself. Under pytest-xdist (`--dist loadfile`) it is built
once per worker that runs such a module."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.project import copy_repo, smoke_repo


@pytest.fixture(scope="session")
def smoke_repro(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(the reproduced smoke repository, its `dvc repro` process). Do not edit it: take `smoke_copy`."""
    dest = tmp_path_factory.mktemp("smoke") / "repo"
    dest.mkdir()
    return dest, smoke_repo(dest)


@pytest.fixture(scope="module")
def smoke_copy(smoke_repro, tmp_path_factory) -> Path:
    """This module's own copy of the reproduced smoke repository."""
    return copy_repo(smoke_repro[0], tmp_path_factory.mktemp("smoke_copy") / "repo")
