"""Deployment over time: every (mode, time) row, drift compensation by the power law, copies of a
trained chip that evolve on their own, and the modes agreeing where nothing drifts."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("aihwkit")

from imc_osttp.cli import main  # noqa: E402
from imc_osttp.config import load_run_config  # noqa: E402
from imc_osttp.data import load_task  # noqa: E402
from imc_osttp.deploy import AdaptationConfig, copy_chip, deploy_mode  # noqa: E402
from imc_osttp.pipeline.jobs import STEPS_PER_DECADE  # noqa: E402
from imc_osttp.training import train  # noqa: E402

NOISE_FREE = """
rpu_config:
  class: SingleRPUConfig
  forward: {is_perfect: true}
  backward: {is_perfect: true}
  device: {class: ConstantStepDevice, dw_min: 0.001, dw_min_dtod: 0.0, dw_min_std: 0.0, up_down: 0.0,
           up_down_dtod: 0.0, w_max: 10000.0, w_min: -10000.0, w_max_dtod: 0.0, w_min_dtod: 0.0}
"""
DATA = {"task": "synthetic", "synthetic_sequences": 8, "synthetic_length": 24}
MODEL = {"hidden": 16, "recurrent": False, "reset": "full", "decay": 0.6, "threshold_init": 0.2,
         "init_gain": 2.0}


def deploy_file(tmp_path, **extra) -> str:
    tree = {"name": "tiny_deploy", "seeds": [0], "output_dir": str(tmp_path / "results"),
            "base": {"data": DATA, "model": MODEL, "rule": {"name": "osttp"}, "optim": {"lr": 0.01},
                     "train": {"epochs": 1, "batch_size": 4},
                     "backend": {"kind": "analog", "device_config": "pcm_4device", "knobs": {"drift_nu": 0.06}}},
            "times": [1.0, 3600.0, 86400.0], "modes": ["frozen", "frozen_gdc", "learning"],
            "adaptation": {"rate": 1.0}, **extra}
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_deploy_writes_every_mode_and_time_to_csv_mlflow_and_a_figure(tmp_path, mlflow_uri, capsys):
    import mlflow

    assert main(["deploy", deploy_file(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "results" / "tiny_deploy.csv")
    assert set(zip(rows["mode"], rows["time_s"], strict=True)) == {
        (m, t) for m in ("frozen", "frozen_gdc", "learning") for t in (1.0, 3600.0, 86400.0)}
    assert rows["test_nll"].map(math.isfinite).all()
    learning = rows[rows["mode"] == "learning"].set_index("time_s")
    # 1 sequence per hour in batches of 4: the first update at 4 h, six by one day; each fires pulses
    assert list(learning["updates"]) == [0, 0, 6]
    assert learning.loc[86400.0, "pulses"] > 0
    assert (rows[rows["mode"] != "learning"]["pulses"] == 0).all()
    assert (tmp_path / "results" / "tiny_deploy.png").stat().st_size > 0
    assert "frozen_gdc" in out and "1 day" in out
    runs = mlflow.search_runs(experiment_names=["tiny_deploy"])
    modes = runs[runs["tags.deploy_mode"].notna()]
    assert sorted(modes["tags.deploy_mode"]) == ["frozen", "frozen_gdc", "learning"]
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(modes["run_id"].iloc[0], "test_nll")]
    assert sorted(steps) == [round(STEPS_PER_DECADE * math.log10(t)) for t in (1.0, 3600.0, 86400.0)]
    assert (runs["tags.mlflow.runName"] == "trained, seed 0").sum() == 1

    # a second call finds every row done: nothing is trained again
    assert main(["deploy", deploy_file(tmp_path), "--workers", "1"]) == 0
    assert len(pd.read_csv(tmp_path / "results" / "tiny_deploy.csv")) == len(rows)
    assert (mlflow.search_runs(experiment_names=["tiny_deploy"])["tags.mlflow.runName"]
            == "trained, seed 0").sum() == 1


@pytest.mark.parametrize("change, message", [
    ({"base": {"backend": {"kind": "digital"}}}, "has no chip clock"),
    ({"adaptation": None}, "adaptation.rate"),
    ({"times": [60.0, 1.0]}, "positive and increasing"),
    ({"modes": ["thawed"]}, "modes.0"),
])
def test_bad_deploy_files_are_one_line(tmp_path, capsys, change, message):
    path = deploy_file(tmp_path)
    tree = yaml.safe_load(open(path))
    for key, value in change.items():
        if isinstance(value, dict):
            tree[key] = {**tree[key], **value}
        elif value is None:
            del tree[key]
        else:
            tree[key] = value
    open(path, "w").write(yaml.safe_dump(tree))
    assert main(["deploy", path]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def trained_chip(tmp_path, nu: float):
    """A noise-free pulsed chip trained for one epoch; its devices drift with exponent `nu`."""
    device = tmp_path / "noise_free.yaml"
    device.write_text(NOISE_FREE)
    cfg = load_run_config(extra={"data": DATA, "model": MODEL, "rule": {"name": "osttp"}, "optim": {"lr": 0.01},
                                 "train": {"epochs": 1, "batch_size": 4}, "tracking": {"enabled": False},
                                 "backend": {"kind": "analog", "device_config": str(device),
                                             "feedback_config": "ideal", "knobs": {"drift_nu": nu}}})
    data = load_task(cfg.data)
    return cfg, data, train(cfg, data, progress=False).net


def test_without_drift_every_mode_agrees_at_one_second(tmp_path):
    cfg, data, net = trained_chip(tmp_path, nu=0.0)
    adaptation = AdaptationConfig(rate=1.0)
    values = {mode: deploy_mode(cfg, net, data, mode, [1.0], adaptation)[0]["test_nll"]
              for mode in ("frozen", "frozen_gdc", "learning", "learning_gdc")}
    assert len(set(values.values())) == 1, values


def test_global_drift_compensation_undoes_a_uniform_power_law(tmp_path):
    """Every device drifts by (t/1 s)^-ν: the frozen chip's metric moves, the compensated one stays at its
    1 s value, and the compensation factor of every tile is t^ν."""
    cfg, data, net = trained_chip(tmp_path, nu=0.05)
    times = [1.0, 3600.0, 31536000.0]
    frozen = [r["test_nll"] for r in deploy_mode(cfg, net, data, "frozen", times, None)]
    gdc = [r["test_nll"] for r in deploy_mode(cfg, net, data, "frozen_gdc", times, None)]
    assert frozen[0] == pytest.approx(gdc[0], rel=1e-6)
    assert abs(frozen[2] - frozen[0]) > 0.05
    assert gdc[2] == pytest.approx(gdc[0], rel=1e-4)

    chip = copy_chip(net)
    chip.backend.start_drift_compensation()
    chip.backend.advance_clock(3600.0)
    factors = chip.backend.compensate_drift()
    assert set(factors) == {"W1", "W2"}
    for name, factor in factors.items():
        assert factor == pytest.approx(3600.0 ** 0.05, rel=1e-4), name


def test_a_copied_chip_drifts_and_learns_on_its_own(tmp_path):
    """Deploying copies the trained chip: the original neither drifts nor learns, and a copy keeps every
    device's drift clock (the same time of drift keeps original and copy equal)."""
    cfg, data, net = trained_chip(tmp_path, nu=0.05)
    before = {n: w.detach().clone() for n, w in net.backend.parameters().items()}
    rows = deploy_mode(cfg, net, data, "learning", [8 * 3600.0], AdaptationConfig(rate=1.0))
    assert rows[0]["updates"] == 2 and rows[0]["pulses"] > 0
    assert all(torch.equal(net.backend.parameters()[n].detach(), w) for n, w in before.items())
    net.backend.advance_clock(1000.0)
    twin = copy_chip(net)
    assert torch.equal(net.backend.parameters()["W1"].detach(), twin.backend.parameters()["W1"].detach())
    net.backend.advance_clock(50.0)
    twin.backend.advance_clock(50.0)
    assert torch.equal(net.backend.parameters()["W1"].detach(), twin.backend.parameters()["W1"].detach())
    assert not torch.equal(net.backend.parameters()["W1"].detach(), before["W1"])
