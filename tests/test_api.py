"""The public Python API: configs and specs as objects, mappings, paths or names train the same thing, a study
from a mapping writes its table, bad input is one line, and `import imc_osttp` stays cheap."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml

import imc_osttp
from imc_osttp import ConfigError, DataError, UserError

TINY = {"name": "tiny", "data": {"task": "synthetic", "synthetic_sequences": 4, "synthetic_length": 12},
        "model": {"hidden": 8}, "train": {"epochs": 2, "batch_size": 2}, "tracking": {"enabled": False}}


def curves(result: imc_osttp.RunResult) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k != "epoch_time"} for epoch in result.history]


def test_a_config_as_a_mapping_a_file_or_an_object_trains_the_same_run(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "rule": {"name": "ostl"}}))
    from_dict = imc_osttp.train(TINY, {"rule.name": "ostl"}, progress=False)
    from_file = imc_osttp.train(path, progress=False)
    from_object = imc_osttp.train(from_file.config, progress=False)
    assert isinstance(from_dict.config, imc_osttp.RunConfig) and from_dict.config.rule.name == "ostl"
    assert len(from_dict.history) == 2 and from_dict.run_id is None and from_dict.net is not None
    assert curves(from_dict) == curves(from_file) == curves(from_object)
    other = imc_osttp.train(from_file.config, {"seed": 1}, progress=False)
    assert curves(other) != curves(from_dict)


def test_a_tracked_run_names_its_mlflow_run(mlflow_uri):
    result = imc_osttp.train(TINY, {"tracking.enabled": True, "train.epochs": 1}, progress=False)
    run = mlflow.MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["rule.name"] == "osttp"


def test_a_study_from_a_mapping_writes_its_table_and_a_rerun_trains_nothing(tmp_path):
    spec = {"name": "api_mini", "seeds": [0, 1], "output_dir": str(tmp_path), "base": TINY,
            "variants": {"bptt": {"rule.name": "bptt"}, "osttp": {"rule.name": "osttp"}}}
    plan = imc_osttp.run_study(spec, dry_run=True)
    assert len(plan.summary.todo) == 4 and plan.report is None and not (tmp_path / "api_mini.csv").exists()

    done = imc_osttp.run_study(spec, progress=False)
    assert (done.summary.finished, done.summary.failed) == (4, 0)
    table = pd.read_csv(tmp_path / "api_mini.csv")
    assert sorted(zip(table["variant"], table["seed"], strict=True)) == [
        ("bptt", 0), ("bptt", 1), ("osttp", 0), ("osttp", 1)]
    assert list(done.runs["run_id"].fillna("")) == list(table["run_id"].fillna(""))
    assert list(done.table.index) == ["bptt", "osttp"] and list(done.table["seeds"]) == [2, 2]
    means = table.groupby("variant")["test_nll"].mean()
    assert done.table["test_nll_mean"].to_dict() == pytest.approx(means.to_dict())
    assert all(path.is_file() for path in done.report.files)

    again = imc_osttp.run_study(done.spec, {"workers": 2}, progress=False)
    assert (again.summary.skipped, again.summary.finished) == (4, 0)
    assert imc_osttp.report(spec).table.equals(done.table)


def test_a_sweep_from_a_mapping_reports_its_points_when_asked(tmp_path):
    spec = {"name": "api_sweep", "output_dir": str(tmp_path), "base": TINY,
            "axes": [{"kind": "grid", "key": "optim.lr", "values": [0.01, 0.1]}]}
    quiet = imc_osttp.run_sweep(spec, progress=False)
    assert quiet.summary.finished == 2 and quiet.report is None and len(quiet.runs) == 2
    done = imc_osttp.run_sweep(spec, progress=False, report=True)
    assert done.summary.skipped == 2 and list(done.table["optim.lr"]) == ["0.01", "0.1"]
    assert (tmp_path / "api_sweep_points.csv").is_file() and all(path.is_file() for path in done.report.files)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: imc_osttp.train({**TINY, "optim": {"lr": -1}}), ConfigError, "optim.lr: Input should be greater than 0"),
    (lambda: imc_osttp.train({"modle": {}}), ConfigError, "modle: unknown key; did you mean 'model'?"),
    (lambda: imc_osttp.train(TINY, {"rule.name": "ostt"}), ConfigError, "'osttp' (got 'ostt')"),
    (lambda: imc_osttp.train(42), ConfigError, "config: expected a RunConfig, a mapping"),
    (lambda: imc_osttp.train("jsb_osttq"), ConfigError, "config 'jsb_osttq': not found; did you mean 'jsb_osttp'?"),
    (lambda: imc_osttp.train({"data": {"path": "/nowhere/jsb.json"}}), DataError, "/nowhere/jsb.json"),
    (lambda: imc_osttp.run_study({"name": "x", "base": TINY, "variants": {"a": {"rule.name": "nope"}}}),
     ConfigError, "x, point {'variant': 'a'}: rule.name"),
    (lambda: imc_osttp.run_study({"name": "x", "base": TINY, "times": [1.0]}), ConfigError,
     "times: only deploy files have it"),
    (lambda: imc_osttp.run_study("jsb_quick", executor="slurm"), ConfigError, "executor: 'slurm'"),
    (lambda: imc_osttp.run_deploy({"name": "x", "base": TINY, "modes": ["frozen"]}), ConfigError, "has no chip clock"),
    (lambda: imc_osttp.report(), ConfigError, "report: give one of"),
])
def test_bad_input_is_one_line(call, error, message):
    with pytest.raises(error) as caught:
        call()
    assert isinstance(caught.value, UserError) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_importing_the_package_imports_no_heavy_library():
    heavy = "('torch', 'pandas', 'mlflow', 'aihwkit')"
    code = f"import sys, imc_osttp; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert set(imc_osttp.__all__) <= set(dir(imc_osttp))
