"""The command line end to end: training into a temporary MLflow store, studies, alignment."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from imc_osttp.cli import main


def tiny_config(tmp_path, jsb_path, **extra) -> str:
    cfg = {"name": "tiny", "data": {"task": "jsb", "path": str(jsb_path), "max_sequences": 6},
           "model": {"hidden": 16}, "train": {"epochs": 2, "batch_size": 3}}
    cfg.update(extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_logs_run_with_metrics(tmp_path, jsb_path, mlflow_uri, capsys):
    assert main(["train", tiny_config(tmp_path, jsb_path), "--set", "rule.name=ostl"]) == 0
    assert "MLflow run" in capsys.readouterr().out
    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["rule.name"] == "ostl" and run.data.tags["rule"] == "ostl"
    assert run.data.tags["backend"] == "digital" and "git_commit" in run.data.tags
    assert run.info.run_name == "tiny, seed 0" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "best/test_nll" in run.data.params and not any(k.startswith("best/") for k in run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "test_nll")
    assert [m.step for m in history] == [1, 2] and all(np.isfinite(m.value) for m in history)
    for key in ("valid_nll", "train_nll", "epoch_time", "spike_rate"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", "final_parameters.npz"} <= artifacts


def test_same_seed_same_numbers(tmp_path, jsb_path, capsys):
    from imc_osttp.config import load_run_config
    from imc_osttp.data import load_task
    from imc_osttp.training import train

    cfg = load_run_config(tiny_config(tmp_path, jsb_path), ["tracking.enabled=false"])
    data = load_task(cfg.data)
    runs = [train(cfg, data, progress=False).history for _ in range(2)]
    strip = [[{k: v for k, v in h.items() if k != "epoch_time"} for h in r] for r in runs]
    assert strip[0] == strip[1]
    other = train(cfg.model_copy(update={"seed": 1}), data, progress=False).history
    assert other[-1]["test_nll"] != runs[0][-1]["test_nll"]


def test_bad_config_is_one_line(tmp_path, jsb_path, capsys):
    assert main(["train", tiny_config(tmp_path, jsb_path), "--set", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imc-osttp: error:") and "optim.lr" in err and "Traceback" not in err


def test_missing_data_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "nothing.json")}}))
    assert main(["train", str(cfg)]) == 2
    assert "not found" in capsys.readouterr().err


def test_align_json_and_dump(tmp_path, jsb_path, capsys):
    out = tmp_path / "dump"
    assert main(["align", tiny_config(tmp_path, jsb_path), "--json", "--dump", str(out),
                 "--set", "train.dtype=float64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"bptt", "ostl", "ostl_rnd", "drtp", "osttp"}
    assert report["bptt"]["W1"]["cosine"] == pytest.approx(1.0)
    assert report["ostl"]["W1"]["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert report["osttp"]["W1"]["cosine"] < 0.99
    params = np.load(out / "params.npz")
    assert set(params) == {"W1", "b1", "W2", "c2"} and params["W1"].shape == (88, 16)
    batch = np.load(out / "batch.npz")
    assert batch["x"].shape[0] == 3 and batch["y"].shape == batch["x"].shape
    meta = json.loads((out / "meta.json").read_text())
    assert meta["reset"] == "full" and meta["surrogate"] == "tanh" and meta["readout"] == "sigmoid"
    upd = np.load(out / "updates_osttp.npz")
    assert upd["W1"].shape == (88, 16)


def test_study_writes_table_figure_and_resumes(tmp_path, jsb_path, mlflow_uri, capsys):
    study = {"name": "mini", "seeds": [0, 1], "output_dir": str(tmp_path / "results"),
             "base": {"data": {"task": "jsb", "path": str(jsb_path), "max_sequences": 4},
                      "model": {"hidden": 8}, "train": {"epochs": 2, "batch_size": 4}},
             "variants": {"bptt": {"rule.name": "bptt"}, "osttp": {"rule.name": "osttp"}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "reference: no_context" in out and "mlflow ui" in out
    runs = pd.read_csv(tmp_path / "results" / "mini.csv")
    pairs = sorted(zip(runs["rule"], runs["seed"], strict=True))
    assert pairs == [("bptt", 0), ("bptt", 1), ("osttp", 0), ("osttp", 1)]
    assert (tmp_path / "results" / "mini.png").stat().st_size > 0
    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("mini")
    mlruns = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in mlruns)  # 4 runs + the summary, which holds the table as params
    assert names == ["bptt, seed 0", "bptt, seed 1", "mini (summary)", "osttp, seed 0", "osttp, seed 1"]
    summary = next(r for r in mlruns if r.info.run_name == "mini (summary)")
    assert not summary.data.metrics and {"bptt/test_nll_mean", "osttp/seeds"} <= summary.data.params.keys()
    assert main(["study", str(path)]) == 0  # rerun: nothing left to train
    assert len(pd.read_csv(tmp_path / "results" / "mini.csv")) == 4

    # a run interrupted after its history but before its row is trained again, its old curve dropped
    table = pd.read_csv(tmp_path / "results" / "mini.csv")
    table[table["run_id"] != runs["run_id"].iloc[-1]].to_csv(tmp_path / "results" / "mini.csv", index=False)
    assert main(["study", str(path)]) == 0
    again = pd.read_csv(tmp_path / "results" / "mini.csv")
    assert len(again) == 4 and runs["run_id"].iloc[-1] not in set(again["run_id"])
    assert pd.read_csv(tmp_path / "results" / "mini_history.csv").groupby(["variant", "seed"]).size().eq(2).all()
    runs = again

    # moving the data is no change; changing a variant retrains it and sets its old rows aside
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / jsb_path.name).write_bytes(jsb_path.read_bytes())
    study["base"]["data"]["path"] = str(moved / jsb_path.name)
    study["variants"]["osttp"]["rule.traces"] = "factorised"
    path.write_text(yaml.safe_dump(study))
    capsys.readouterr()
    assert main(["study", str(path)]) == 0
    assert "variant 'osttp' changed since its rows were written (seeds [0, 1])" in capsys.readouterr().err
    now = pd.read_csv(tmp_path / "results" / "mini.csv")
    stale = pd.read_csv(tmp_path / "results" / "mini_stale.csv")
    assert sorted(zip(now["rule"], now["seed"], strict=True)) == pairs
    assert set(now[now["rule"] == "bptt"]["run_id"]) == set(runs[runs["rule"] == "bptt"]["run_id"])
    assert set(stale["run_id"]) == set(runs[runs["rule"] == "osttp"]["run_id"])
    assert not set(now["run_id"]) & set(stale["run_id"])
    history = pd.read_csv(tmp_path / "results" / "mini_history.csv")
    assert len(history) == 4 * 2 and len(pd.read_csv(tmp_path / "results" / "mini_stale_history.csv")) == 2 * 2

    # a seed removed from the study file stays in its table but leaves its report
    study["seeds"] = [0]
    path.write_text(yaml.safe_dump(study))
    capsys.readouterr()
    assert main(["study", str(path)]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("bptt", "osttp"))]
    assert [(row[0], row[3]) for row in table] == [("bptt", "1"), ("osttp", "1")]
    assert len(pd.read_csv(tmp_path / "results" / "mini.csv")) == 4


def test_unusable_mlflow_store_is_one_line(tmp_path, jsb_path, monkeypatch, capsys):
    bad = tmp_path / "broken.db"
    bad.write_bytes(b"this is not an sqlite database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{bad}")
    assert main(["train", tiny_config(tmp_path, jsb_path)]) == 2
    err = capsys.readouterr().err
    assert "MLflow store" in err and "unusable" in err and "Traceback" not in err


def test_align_and_dump_at_depth(tmp_path, jsb_path, capsys):
    """Every layer's parameters, B_l in feedback.npz, the layers in meta.json; after training, the
    rule's own update is compared too, and seeds give mean ± std rows in a CSV."""
    out = tmp_path / "dump"
    config = tiny_config(tmp_path, jsb_path, model={"hidden": [16, 12], "recurrent": [True, False]})
    assert main(["align", config, "--json", "--dump", str(out), "--set", "train.dtype=float64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["osttp"]) == {"W1", "H1", "b1", "W2", "b2", "W3", "c3"}
    assert report["ostl"]["W2"]["cosine"] == pytest.approx(1.0, abs=1e-9)  # the top layer: exact
    params = np.load(out / "params.npz")
    assert {k: params[k].shape for k in params} == {"W1": (88, 16), "H1": (16, 16), "b1": (16,), "W2": (16, 12),
                                                    "b2": (12,), "W3": (12, 88), "c3": (88,)}
    feedback = np.load(out / "feedback.npz")
    assert {k: feedback[k].shape for k in feedback} == {"B1": (88, 16), "B2": (88, 12)}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["layers"] == [{"n": 16, "recurrent": True, "reset": "full", "decay": 0.6},
                              {"n": 12, "recurrent": False, "reset": "full", "decay": 0.6}]
    csv = tmp_path / "align.csv"
    assert main(["align", config, "--after-epochs", "1", "--seeds", "0", "1", "--csv", str(csv)]) == 0
    assert "after 1 epochs of osttp, 2 seed(s)" in capsys.readouterr().out
    table = pd.read_csv(csv)
    assert len(table) == 5 * 7 and (table["cosine_std"][table["rule"] == "osttp"] > 0).any()
