"""Deployment over time: every (mode, time) row, drift compensation by the power law, copies of a
trained chip that evolve on their own, and the modes agreeing where nothing drifts."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("aihwkit")

from imc_osttp.cli import main  # noqa: E402
from imc_osttp.config import load_run_config  # noqa: E402
from imc_osttp.data import load_task  # noqa: E402
from imc_osttp.data.batching import batches  # noqa: E402
from imc_osttp.deploy import MODES, AdaptationConfig, MitigationConfig, copy_chip, deploy_mode  # noqa: E402
from imc_osttp.pipeline.jobs import STEPS_PER_DECADE  # noqa: E402
from imc_osttp.rules import compute_update  # noqa: E402
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


def trained_chip(tmp_path, nu: float, scaled: bool = False):
    """A noise-free pulsed chip trained for one epoch; its devices drift with exponent `nu`. `scaled`: weights
    mapped to the conductance range with a digital output scale (weight_scaling_omega), as pcm_4device does."""
    device = tmp_path / "noise_free.yaml"
    device.write_text(NOISE_FREE + ("  mapping: {weight_scaling_omega: 1.0}\n" if scaled else ""))
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


@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "output_scale"])
def test_global_drift_compensation_undoes_a_uniform_power_law(tmp_path, scaled):
    """Every device drifts by (t/1 s)^-ν: the frozen chip's metric moves, the compensated one stays at its
    1 s value at every time, and after every step the compensation factor of every tile is t^ν. With a
    digital output scale (one element, which aihwkit overwrites in place) a compensation that kept aihwkit's
    own scale tensor as its base compounded its factors from the second step on (issue 22: frozen_gdc in
    results/jsb_deploy.csv rose and fell in log time alike on every seed)."""
    cfg, data, net = trained_chip(tmp_path, nu=0.05, scaled=scaled)
    times = [1.0, 60.0, 3600.0, 86400.0, 31536000.0]
    frozen = [r["test_nll"] for r in deploy_mode(cfg, net, data, "frozen", times, None)]
    gdc = [r["test_nll"] for r in deploy_mode(cfg, net, data, "frozen_gdc", times, None)]
    assert frozen[0] == pytest.approx(gdc[0], rel=1e-6)
    assert abs(frozen[-1] - frozen[0]) > 0.05
    assert gdc == pytest.approx([gdc[0]] * len(times), rel=1e-4)

    chip = copy_chip(net)
    chip.backend.start_drift_compensation()
    now = 0.0
    for t in times:
        chip.backend.advance_clock(t - now)
        now = t
        factors = chip.backend.compensate_drift()
        assert set(factors) == {"W1", "W2"}
        for name, factor in factors.items():
            assert factor == pytest.approx(t ** 0.05, rel=1e-4), (name, t)


def test_per_column_compensation_undoes_a_uniform_power_law_in_every_column(tmp_path):
    cfg, data, net = trained_chip(tmp_path, nu=0.05, scaled=True)
    chip = copy_chip(net)
    chip.backend.start_drift_compensation(per_column=True)
    chip.backend.advance_clock(3600.0)
    chip.backend.compensate_drift()
    for name, pulsed in chip.backend.tiles.items():
        factor = chip.backend._gdc_factor[name]
        assert factor.numel() == pulsed.tile.out_size
        assert factor.tolist() == pytest.approx([3600.0 ** 0.05] * factor.numel(), rel=1e-4), name


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


def test_digital_learning_never_writes_the_array(tmp_path):
    """learning_digital moves only thresholds and biases: no pulse in a deployment, and a write leaves every
    device as it was while the digital parameters move."""
    cfg, data, net = trained_chip(tmp_path, nu=0.05, scaled=True)
    row = deploy_mode(cfg, net, data, "learning_digital", [8 * 3600.0], AdaptationConfig(rate=1.0))[0]
    assert row["updates"] == 2 and row["writes"] == 2 and row["pulses"] == 0
    chip = copy_chip(net)
    mode = copy.deepcopy(MODES["learning_digital"])
    mode.start(chip.backend, MitigationConfig())
    devices = {n: t.tile.tile.get_weights().clone() for n, t in chip.backend.tiles.items()}
    digital = {n: p.detach().clone() for n, p in chip.backend.digital.items()}
    grads, _ = compute_update(cfg.rule, chip, next(batches(data.train, 4)))
    assert mode.write(chip.backend, grads, 1.0)
    for name, tile in chip.backend.tiles.items():
        assert torch.equal(tile.tile.tile.get_weights(), devices[name]), name
    assert any(not torch.equal(p.detach(), digital[n]) for n, p in chip.backend.digital.items())


def test_error_gate_opens_only_when_the_running_mean_exceeds_the_reference_by_the_margin():
    """The first `gate_window` updates set the reference and are not written; afterwards an update is written
    only while the mean of the last `gate_window` NLLs is above reference + margin."""
    from imc_osttp.deploy_modes import GatedMode

    gate = GatedMode(learns=True, compensated=True, margin=0.1, window=2)
    decisions = [gate.accept(nll) for nll in (1.0, 1.0, 1.05, 1.3, 1.0, 0.9)]
    assert gate.reference == 1.0
    assert decisions == [False, False, False, True, True, False]


def test_a_transfer_reprograms_every_device_and_restarts_every_clock(tmp_path):
    """After a transfer the chip holds the host's weights and all its devices are young again: the fresh
    compensation's factor an hour later is 3600^ν, whatever the chip's age at the transfer."""
    from imc_osttp.deploy_modes import TransferMode

    cfg, data, net = trained_chip(tmp_path, nu=0.05, scaled=True)
    chip = copy_chip(net)
    chip.backend.advance_clock(86400.0)  # an old chip
    mode = TransferMode(learns=True, compensated=True)
    mode.start(chip.backend, MitigationConfig(program_noise="none", read_repeats=1))
    host = {name: w.clone() for name, w in mode.weights.items()}
    mode.event(chip.backend)
    for name, tile in chip.backend.tiles.items():
        assert torch.allclose(tile.tile.get_weights()[0], host[name], atol=1e-5), name
    assert mode.programmed > 0 and mode.transfers == 1 and mode.next_event() == 2 * 86400.0
    chip.backend.advance_clock(1.0)  # the step at which aihwkit notices the writes and restarts the clocks
    chip.backend.advance_clock(3600.0)
    for name, factor in chip.backend.compensate_drift().items():
        assert factor == pytest.approx(3601.0 ** 0.05, rel=1e-3), name


def test_a_transfer_due_at_an_evaluation_time_comes_after_it(tmp_path):
    """learning_transfer is evaluated at the end of its interval: a transfer due at an evaluation time is
    counted in the next row, not in that one."""
    cfg, data, net = trained_chip(tmp_path, nu=0.05, scaled=True)
    rows = deploy_mode(cfg, net, data, "learning_transfer", [7200.0, 7201.0], AdaptationConfig(rate=1.0, lr=1e-9),
                       mitigation=MitigationConfig(transfer_every=7200.0, program_noise="none", read_repeats=1))
    assert rows[0]["programmed"] == 0 and rows[1]["programmed"] > 0
