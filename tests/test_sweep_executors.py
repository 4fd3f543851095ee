"""The Ray executor: it gets its data from the driver, and a refused cluster is one line. A real Ray cluster is
tests/test_ray_cluster.py; pool workers dying with their driver, tests/test_pipeline.py."""

from __future__ import annotations

import mlflow
import pytest
import yaml

from imc_osttp.cli import main
from imc_osttp.pipeline.run import run_spec
from imc_osttp.pipeline.spec import parse_spec

TINY = {"data": {"task": "jsb", "max_sequences": 4}, "model": {"hidden": 16}, "train": {"epochs": 1, "batch_size": 2}}


def tiny_sweep(name: str, paths: list[str], tmp_path) -> dict:
    """A digital sweep over data files (each with its own learning rate: the data's place is no part of a
    run's key), one seed."""
    values = {f"file{i}": {"data.path": path, "optim.lr": 0.001 * (i + 1)} for i, path in enumerate(paths)}
    return {"name": name, "base": TINY, "seeds": [0], "output_dir": str(tmp_path / "results"),
            "axes": [{"kind": "variants", "name": "data", "values": values}]}


# ------------------------------------------------------------------ Ray


def test_a_dataset_the_ray_driver_cannot_read_fails_only_its_run(tmp_path, jsb_path, mlflow_uri):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'imc-osttp[ray]'")
    spec = parse_spec(tiny_sweep("ray_data", [str(jsb_path), str(tmp_path / "missing.json")], tmp_path))
    summary = run_spec(spec, "sweep", workers=1, executor="ray", progress=False)
    assert (summary.finished, summary.failed) == (1, 1)
    mlf = mlflow.MlflowClient(mlflow_uri)
    children = mlf.search_runs([mlf.get_experiment_by_name("ray_data").experiment_id],
                               "tags.`mlflow.parentRunId` != ''")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(children) == 2 and len(failed) == 1
    assert "DataError: jsb-chorales-quarter.json: not found at " in failed[0].data.tags["error"]


def test_an_unreachable_ray_cluster_is_one_line_and_creates_no_runs(tmp_path, jsb_path, mlflow_uri, capfd):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'imc-osttp[ray]'")
    path = tmp_path / "no_cluster.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep("no_cluster", [str(jsb_path)], tmp_path)))
    assert main(["sweep", str(path), "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("imc-osttp: error: cannot connect to the Ray cluster at 127.0.0.1:1: ")
    assert "refused" in err and "\n" not in err
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("no_cluster") is None
