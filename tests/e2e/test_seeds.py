"""Baseline and fine-tuning replicates on the real DVC (smoke sizes, a temporary copy of the repository): each
model's stages are cached on their own, adding a fine-tuning replicate or a baseline runs only its stages, and
`dvc exp run -S finetune.seed=7` reruns nothing before clone_head."""

import json
import re
import sys

import pytest
import yaml

from tests.e2e.test_pipeline import run
from tests.project import copy_project, digests

# slow group (`make test-slow`): four repros up to cams and an experiment, on its own one-replicate project
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def ran(stdout: str) -> set[str]:
    """The stages that ran, but `validate` and `source`, which run on every repro (always_changed)."""
    return set(re.findall(r"Running stage '([^']+)'", stdout)) - {"validate", "source"}


def commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def test_replicates_are_cached_on_their_own_and_finetune_seed_reruns_only_from_clone_head(tmp_path):
    """Targets `cams` (evaluate and report add minutes and nothing to what is checked); the issue's literal
    command is checked on the whole pipeline with `dvc status`, then run up to cams."""
    repo = copy_project(tmp_path)
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "pipeline.params", "apply", "configs/smoke.yaml"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    seed = params["finetune"]["seed"]
    params["finetune"]["replicates"] = [0]
    params["baseline"]["replicates"] = [0]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit(repo, "smoke, one replicate")  # DVCLive needs a commit
    first = run(["dvc", "repro", "cams"], repo)
    assert {"baseline@0", "clone_head@0-0", "finetune@0-0", "cams@0-0"} <= ran(first.stdout)
    before = digests(repo, "data/models", "data/cams")

    # (b) a second replicate: only its stages run; the first's files stay
    params["finetune"]["replicates"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    added = run(["dvc", "repro", "cams"], repo)
    assert ran(added.stdout) == {"clone_head@0-1", "finetune@0-1", "cams@0-1"}, added.stdout
    after = digests(repo, "data/models", "data/cams")
    assert {k: v for k, v in after.items() if k in before} == before
    assert any(k.startswith("data/cams/baseline_0/replicate_1/test/") for k in after)
    assert (
        after["data/models/baseline_0/replicate_0/finetuned.pt"]
        != after["data/models/baseline_0/replicate_1/finetuned.pt"]
    )
    cls = [
        json.loads((repo / f"reports/finetune/baseline_0/replicate_{k}/classification.json").read_text())
        for k in (0, 1)
    ]
    assert [c["finetune_seed"] for c in cls] == [seed, seed + 1]

    # (c) a second baseline: only its training and its models' stages run, with seeds baseline.seed + 1 and
    # finetune.seed + 1000 + k
    params["baseline"]["replicates"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    more = run(["dvc", "repro", "cams"], repo)
    assert ran(more.stdout) == {"baseline@1"} | {
        f"{s}@1-{k}" for s in ("clone_head", "finetune", "cams") for k in (0, 1)
    }, more.stdout
    again = digests(repo, "data/models", "data/cams")
    assert {k: v for k, v in again.items() if k in after} == after
    assert again["data/models/baseline_0/baseline.pt"] != again["data/models/baseline_1/baseline.pt"]
    cls = json.loads((repo / "reports/finetune/baseline_1/replicate_1/classification.json").read_text())
    assert cls["finetune_seed"] == seed + 1001 and cls["baseline_replicate"] == 1
    params["baseline"]["replicates"] = [0]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # (a) the check: a new first fine-tuning seed reruns clone_head onwards only
    commit(repo, "smoke, two replicates")
    params["finetune"]["seed"] = 7  # what -S finetune.seed=7 writes; dvc status over the whole pipeline
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "validate"], repo)  # the stages are keyed on data/params.json, which validate writes
    changed = set(json.loads(run(["dvc", "status", "--json"], repo).stdout))
    # the stages keyed on finetune.seed (cams declares it too: it seeds the cams process's generators); nothing
    # before clone_head
    assert changed - {"validate", "source", "evaluate", "report"} == {
        f"{s}@0-{k}" for s in ("clone_head", "finetune", "cams") for k in (0, 1)
    }
    run(["git", "checkout", "params.yaml"], repo)
    exp = run(["dvc", "exp", "run", "-S", "finetune.seed=7", "cams"], repo)
    assert ran(exp.stdout) == {f"{s}@0-{k}" for s in ("clone_head", "finetune", "cams") for k in (0, 1)}, exp.stdout
    cls = json.loads((repo / "reports/finetune/baseline_0/replicate_1/classification.json").read_text())
    assert cls["finetune_seed"] == 8
    assert digests(repo, "data/models/baseline_0/baseline.pt") == {
        "data/models/baseline_0/baseline.pt": before["data/models/baseline_0/baseline.pt"]
    }
