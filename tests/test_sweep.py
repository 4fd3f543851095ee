"""Sweeps: axis expansion, nested MLflow runs, resume after an interruption, crashing points, the report, Ray's
one-line refusals (a real Ray cluster, in a network namespace of its own: tests/test_ray_cluster.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from imc_osttp.cli import main
from imc_osttp.errors import ConfigError
from imc_osttp.pipeline import figures, mirror
from imc_osttp.pipeline.record import Record
from imc_osttp.pipeline.run import run_spec
from imc_osttp.pipeline.spec import parse_spec

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "sweep_smoke.yaml"
TINY = {"data": {"task": "jsb", "max_sequences": 4}, "model": {"hidden": 16}, "train": {"epochs": 1, "batch_size": 2}}
PCM = {**TINY, "backend": {"kind": "analog", "device_config": "pcm_4device"}}


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds); each test has its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def digital_sweep(jsb_path, tmp_path, name="tiny", axes=None, seeds=(0, 1)) -> dict:
    base = {**TINY, "data": {**TINY["data"], "path": str(jsb_path)}}
    axes = axes or [{"kind": "grid", "key": "optim.lr", "values": [0.0005, 0.001]}]
    return {"name": name, "base": base, "seeds": list(seeds), "axes": axes, "output_dir": str(tmp_path / "results")}


def run_sweep(spec, **kwargs):
    return run_spec(spec, "sweep", progress=False, **kwargs)


def runs_of(uri: str, experiment: str) -> tuple[list, list]:
    """(parents, children) in the experiment."""
    mlf = mlflow.MlflowClient(uri)
    runs = mlf.search_runs([mlf.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


# ------------------------------------------------------------------ expansion


def test_grid_axes_form_a_product_and_ids_are_stable_and_distinct():
    axes = [{"kind": "grid", "key": "optim.lr", "values": [1e-3, 5e-4]},
            {"kind": "grid", "key": "model.hidden", "values": [8, 16, 32]}]
    spec = parse_spec({"name": "g", "base": TINY, "seeds": [0, 1], "axes": axes})
    jobs = spec.jobs()
    assert len(jobs) == 12 and len({j.key for j in jobs}) == 6
    assert {(j.cfg.optim.lr, j.cfg.model.hidden) for j in jobs} == {(a, b) for a in (1e-3, 5e-4)
                                                                    for b in (8, 16, 32)}
    assert jobs[0].labels == {"optim.lr": "0.001", "model.hidden": "8"}
    assert [j.seed for j in jobs[:2]] == [0, 1] and jobs[0].cfg.tracking.experiment == "g"
    assert jobs[0].version == "train1.digital1"
    # the key hashes the resolved config: not the axis order, the sweep's name or the seed
    again = parse_spec({"name": "other", "base": TINY, "seeds": [5], "axes": axes[::-1]}).jobs()
    assert {j.key for j in again} == {j.key for j in jobs}


def test_ablation_and_mirror_set_ideal_and_realistic_values():
    knobs = ["dw_min_std", "out_noise", "w_noise"]
    spec = parse_spec({"name": "a", "base": PCM, "digital_reference": True, "axes": [
        {"kind": "rule", "values": {"osttp": {"model.decay": 0.6}}},
        {"kind": "ablation", "knobs": knobs, "realistic": {"w_noise": 0.02}},
        {"kind": "ablation_mirror", "knobs": knobs, "realistic": {"w_noise": 0.02}}]})
    points = {p.labels["ablation"]: p for p in spec.jobs()}
    ideal, real = {"dw_min_std": 0.0, "out_noise": 0.0, "w_noise": 0.0}, {"dw_min_std": 0.6, "out_noise": 0.1,
                                                                          "w_noise": 0.02}
    assert points["ideal"].cfg.backend.knobs == ideal and points["realistic"].cfg.backend.knobs == real
    for k in knobs:
        assert points[f"only:{k}"].cfg.backend.knobs == {**ideal, k: real[k]}
        assert points[f"all_but:{k}"].cfg.backend.knobs == {**real, k: ideal[k]}
    digital = points["digital"].cfg
    assert digital.backend.kind == "digital" and digital.backend.knobs == {} and digital.model.decay == 0.6
    assert len(points) == 2 + 2 * len(knobs) + 1 and len({p.key for p in points.values()}) == len(points)


@pytest.mark.parametrize(("axes", "message"), [
    ([{"kind": "grid", "key": "dw_min_sdt", "values": [0.1]}], "did you mean 'dw_min_std'.*valid knobs"),
    ([{"kind": "grid", "key": "optim.lrr", "values": [0.1]}], "optim.lrr: unknown key"),
    ([{"kind": "ablation", "knobs": ["w_noise"]}], "w_noise.*ideal value.*realistic"),
    ([{"kind": "ablation", "knobs": ["w_max"]}], "no ideal value"),
    ([{"kind": "grid", "key": "dw_min_std", "values": [0.1]}, {"kind": "ablation", "knobs": ["dw_min_std"]}],
     "both set backend.knobs.dw_min_std"),
])
def test_bad_axes_fail_before_training(axes, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec({"name": "bad", "base": PCM, "axes": axes}).jobs()


def test_knobs_need_the_analog_backend():
    with pytest.raises(ConfigError, match="need backend.kind: analog"):
        parse_spec({"name": "d", "base": TINY, "axes": [{"kind": "grid", "key": "out_noise", "values": [0.0]}]}).jobs()


def test_figures_draw_each_axis_and_a_heatmap(tmp_path):
    rows = [{"point_id": f"{a}-{b}", "backend": "analog", "dw_min": str(a), "dw_min_std": str(b),
             "test_nll_mean": 10 + a + b, "test_nll_std": 0.1} for a in (0.005, 0.01) for b in (0.0, 0.3, 0.6)]
    rows.append({"point_id": "d", "backend": "digital", "dw_min": "digital", "dw_min_std": "digital",
                 "test_nll_mean": 9.5, "test_nll_std": 0.0})
    grid = pd.DataFrame(rows)
    refs = {"no_context": 10.8}
    assert figures.axis_figure(grid, "dw_min", ["dw_min_std"], "test_nll", tmp_path / "a.png", "t", refs).is_file()
    assert figures.heatmap(grid, "dw_min", "dw_min_std", [], "test_nll", tmp_path / "h.png", "t").is_file()
    ablation = pd.DataFrame({"point_id": list("abcd"), "backend": "analog", "test_nll_mean": 10.0,
                             "test_nll_std": 0.1, "ablation": ["realistic", "only:x", "ideal", "all_but:x"]})
    assert figures.axis_figure(ablation, "ablation", [], "test_nll", tmp_path / "c.png", "t", refs).is_file()
    assert sorted(ablation["ablation"], key=figures.category_key) == ["ideal", "only:x", "realistic", "all_but:x"]


# ------------------------------------------------------------------ running


def test_smoke_sweep_nests_four_runs_under_one_parent_and_a_rerun_adds_none(tmp_path, jsb_path, store_uri,
                                                                            capsys):
    args = [str(SMOKE), "--set", f"base.data.path={jsb_path}", "--set", f"output_dir={tmp_path / 'results'}"]
    assert main(["sweep", *args]) == 0
    assert len(pd.read_csv(tmp_path / "results" / "sweep_smoke.csv")) == 4  # the record
    (parent,), children = runs_of(store_uri, "sweep_smoke")
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {(c.data.params["backend.knobs.dw_min_std"], c.data.tags["seed"]) for c in children} == {
        (v, s) for v in ("0.0", "0.3") for s in ("0", "1")}
    assert len({c.data.tags["point_id"] for c in children}) == 2
    assert all("best/test_nll" in c.data.params and c.data.params["rule.name"] == "osttp" for c in children)
    assert not any(c.data.metrics.keys() & {"best/test_nll", "train_seconds", "diverged"} for c in children)

    assert main(["sweep", *args]) == 0
    assert "4 already done, 0 finished now" in capsys.readouterr().out
    (again,), children_again = runs_of(store_uri, "sweep_smoke")
    assert again.info.run_id == parent.info.run_id and len(children_again) == 4

    assert main(["report", *args]) == 0
    out = capsys.readouterr().out
    assert "test_nll" in out and "reference no_context" in out
    results = tmp_path / "results"
    for name in ("sweep_smoke_points.csv", "sweep_smoke_points.parquet", "sweep_smoke_runs.parquet",
                 "sweep_smoke_dw_min_std.png"):
        assert (results / name).is_file(), name
    logged = {a.path for a in mlflow.MlflowClient(store_uri).list_artifacts(parent.info.run_id, "report")}
    assert "report/sweep_smoke_dw_min_std.png" in logged
    assert main(["report", "--run-id", parent.info.run_id, "--output-dir", str(tmp_path / "by_id")]) == 0


def test_interrupted_sweep_keeps_its_finished_point_and_a_rerun_trains_only_the_rest(tmp_path, jsb_path, store_uri,
                                                                                     monkeypatch):
    spec = parse_spec(digital_sweep(jsb_path, tmp_path))
    add = Record.add
    calls = []

    def ctrl_c_at_second(self, *args):
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        return add(self, *args)

    monkeypatch.setattr(Record, "add", ctrl_c_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, workers=1)
    (parent,), children = runs_of(store_uri, "tiny")
    assert parent.info.status == "KILLED" and sorted(c.info.status for c in children) == ["FINISHED", "KILLED"]
    assert len(pd.read_csv(tmp_path / "results" / "tiny.csv")) == 1
    # a child its driver left RUNNING (kill -9 while it trained) is squared with the record: KILLED
    job = next(j for j in spec.jobs() if j.key not in {c.data.tags["point_id"] for c in children})
    mlf = mlflow.MlflowClient(store_uri)
    stale = mlf.create_run(parent.info.experiment_id, tags={
        "mlflow.parentRunId": parent.info.run_id, mirror.TAG_SPEC: "tiny", "config_hash": job.key,
        "seed": str(job.seed), "results_version": job.version})

    monkeypatch.setattr(Record, "add", add)
    summary = run_sweep(spec, workers=1)
    assert (summary.total, summary.skipped, summary.finished, summary.failed) == (4, 1, 3, 0)
    (parent,), children = runs_of(store_uri, "tiny")
    assert parent.info.status == "FINISHED"
    assert mlf.get_run(stale.info.run_id).info.status == "KILLED"
    finished = [(c.data.tags["point_id"], c.data.tags["seed"]) for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4 and len(set(finished)) == 4  # no FINISHED pair twice
    table = pd.read_csv(tmp_path / "results" / "tiny.csv", dtype={"config_hash": str})
    assert sorted(zip(table["config_hash"], table["seed"].astype(str), strict=True)) == sorted(finished)


def test_a_crashing_point_is_failed_with_its_error_and_the_others_finish(tmp_path, jsb_path, store_uri):
    axes = [{"kind": "variants", "name": "data", "values": {
        "here": {"optim.lr": 0.001}, "missing": {"optim.lr": 0.002, "data.path": str(tmp_path / "missing.json")}}}]
    spec = parse_spec(digital_sweep(jsb_path, tmp_path, "crash", axes, seeds=[0]))
    summary = run_sweep(spec, workers=1)
    assert (summary.finished, summary.failed) == (1, 1)
    (parent,), children = runs_of(store_uri, "crash")
    by_status = {c.info.status: c for c in children}
    assert set(by_status) == {"FINISHED", "FAILED"}
    assert "DataError" in by_status["FAILED"].data.tags["error"]
    assert parent.info.status == "FAILED" and "1 of 2 runs failed" in parent.data.tags["error"]
    # once the cause is fixed, a rerun trains only the failed point
    shutil.copy(jsb_path, tmp_path / "missing.json")
    summary = run_sweep(spec, workers=1)
    assert (summary.skipped, summary.finished, summary.failed) == (1, 1, 0)
    (parent,), children = runs_of(store_uri, "crash")
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED", "FINISHED"]


def test_missing_ray_is_one_line_and_creates_no_runs(jsb_path, store_uri, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    path = tmp_path / "no_ray.yaml"
    path.write_text(yaml.safe_dump(digital_sweep(jsb_path, tmp_path, "no_ray")))
    assert main(["sweep", str(path), "--executor", "ray"]) == 2
    assert "pip install 'imc-osttp[ray]'" in capsys.readouterr().err
    assert mlflow.MlflowClient(store_uri).get_experiment_by_name("no_ray") is None


def test_an_unreachable_ray_cluster_is_one_line_and_creates_no_runs(tmp_path, jsb_path, store_uri, capfd):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'imc-osttp[ray]'")
    path = tmp_path / "no_cluster.yaml"
    path.write_text(yaml.safe_dump(digital_sweep(jsb_path, tmp_path, "no_cluster")))
    assert main(["sweep", str(path), "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("imc-osttp: error: cannot connect to the Ray cluster at 127.0.0.1:1: ")
    assert "refused" in err and "\n" not in err
    assert mlflow.MlflowClient(store_uri).get_experiment_by_name("no_cluster") is None
