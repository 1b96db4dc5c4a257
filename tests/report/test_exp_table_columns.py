"""pipeline.report.exp_table (`make exp-table`) on canned `dvc exp show --json` output: the params that differ
among the rows shown, the headline numbers from the metric registry, the workspace row's hiding.

The real `dvc exp run` round trip is tests/report/test_exp_table.py; these need no DVC repository.
"""

from __future__ import annotations

import json

from pipeline.cams import variants
from pipeline.concepts import BRANCHES
from pipeline.metrics import registry
from pipeline.report import exp_table

PARAMS = {
    "dataset": "synthbirds",
    "backbone": "resnet10t",
    "seed": 42,
    "finetune": {"lr": 0.01, "epochs": 5, "replicates": [0]},
    "evaluate": {"relu": None, "postprocess": "clean", "protocols": "official"},
}


def metrics(base: float, digest: str | None = None) -> dict:
    out = {"top1_cls": 50.0 + base, "dataset": {"name": "synthbirds", "num_classes": 10, "test_images": 1000}}
    for i, variant in enumerate(variants.names()):
        out[variant] = {
            b: {
                "maxboxacc_v2": base + i + j,
                "top1_loc": base + i + j + 0.5,
                "pxap": base + i + j + 0.25,
                "gt_known_loc": 1.0,
            }
            for j, b in enumerate(BRANCHES)
        }
    if digest is not None:
        out["params_digest"] = digest
    return out


def rev(rev: str, name: str | None, params: dict, metrics_data: dict | None, experiments=None, error=None) -> dict:
    data = {
        "rev": rev,
        "params": {"params.yaml": {"data": params}, "data/params.json": {"data": {"x": rev}}},
        "metrics": {} if metrics_data is None else {"reports/metrics.json": {"data": metrics_data}},
    }
    return {"rev": rev, "name": name, "data": data, "error": error, "experiments": experiments}


def with_changes(**changes) -> dict:
    params = json.loads(json.dumps(PARAMS))
    for dotted, value in changes.items():
        node = params
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return params


def exp_show() -> list:
    """The workspace (reports/ without a params digest: stale), main, three experiments: one changes an
    evaluation option, one the learning rate, one failed."""
    experiments = [
        {"revs": [rev("aaaa111", "exp-relu", with_changes(evaluate__relu=True), metrics(2.0))]},
        {"revs": [rev("bbbb222", "exp-lr", with_changes(finetune__lr=0.1), metrics(3.0))]},
        {"revs": [rev("cccc333", "exp-broken", with_changes(finetune__epochs=99), None, error={"msg": "failed"})]},
    ]
    return [
        rev("workspace", None, with_changes(finetune__lr=0.1), metrics(3.0)),
        rev("0123456789abcdef", "main", PARAMS, metrics(1.0), experiments),
    ]


def test_rows_keep_dvcs_order_and_leave_failed_runs_out():
    rows, notes = exp_table.rows_from_exp_show(exp_show())
    assert [r.name for r in rows] == ["workspace", "main", "exp-relu", "exp-lr"]
    assert rows[0].workspace and not rows[1].workspace
    assert notes == ["exp-broken: DVC reports it failed; left out"]
    assert rows[2].params["evaluate.relu"] is True and rows[2].params["finetune.replicates"] == [0]


def test_only_the_params_that_differ_among_the_rows_shown():
    rows, _ = exp_table.rows_from_exp_show(exp_show())
    assert exp_table.differing_params(rows) == ["evaluate.relu", "finetune.lr"]
    assert exp_table.differing_params(rows[1:3]) == ["evaluate.relu"]  # an evaluation-only experiment
    assert exp_table.differing_params(rows[:1]) == []
    absent = [*rows[1:2], exp_table.Row("x", {**rows[1].params, "family": "grad"}, {}, False)]
    assert exp_table.differing_params(absent) == ["family"]  # absent in one row, set in another


def test_metric_columns_come_from_the_registry():
    rows, _ = exp_table.rows_from_exp_show(exp_show())
    columns = exp_table.metric_columns(rows)
    first, names = variants.names()[0], variants.names()
    keys = [k for k, _ in columns]
    assert keys[:3] == ["top1_cls", "dataset.num_classes", "dataset.test_images"]  # no `full` in any row
    assert keys[3:] == [
        f"{v}.{b}.{m.key}"
        for m in registry.METRICS
        if m.exp_table
        for v in (names if m.exp_table == "every" else [first])
        for b in BRANCHES
    ]
    headers = dict(columns)
    label = variants.get(first).label
    assert headers["top1_cls"] == registry.RUN_METRICS["top1_cls"]
    assert headers[f"{first}.{BRANCHES[1]}.maxboxacc_v2"] == f"{label} {registry.label('maxboxacc_v2')} {BRANCHES[1]}"
    assert not any(k.endswith("gt_known_loc") for k in keys)  # not marked for the exp table


def test_markdown_table_and_the_stale_workspace_is_hidden(tmp_path, capsys):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(exp_show()))
    assert exp_table.main(["--exp-json", str(path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    head = lines[0].split(" | ")
    assert head[:3] == ["| Experiment", "evaluate.relu", "finetune.lr"]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| main", "| exp-relu", "| exp-lr"]
    assert lines[2].split(" | ")[1:4] == ["null", "0.01", "51.00"]  # main: evaluate.relu is null in params.yaml
    assert lines[3].split(" | ")[1:4] == ["true", "0.01", "52.00"]
    assert lines[4].split(" | ")[1:4] == ["null", "0.1", "53.00"]
    assert "records no params_digest" in err and "exp-broken" in err
    assert len({line.count("|") for line in lines}) == 1  # every row has every column


def test_a_workspace_made_from_its_params_stays(monkeypatch):
    monkeypatch.setattr(exp_table.paper_table, "workspace_problem", lambda metrics, *a: None)
    rows, _ = exp_table.rows_from_exp_show(exp_show())
    kept, notes = exp_table.hide_stale_workspace(rows)
    assert [r.name for r in kept][0] == "workspace" and notes == []


def test_bad_input_exits_2(tmp_path, capsys):
    path = tmp_path / "exp.json"
    path.write_text("{}")
    assert exp_table.main(["--exp-json", str(path)]) == 2
    assert "not a list of revisions" in capsys.readouterr().err
