"""The HERMES chip model: ν per device from the chip's ν(G), redrawn only when a write restarts the device's
clock; t0 before which a written device holds its conductance; B ageing with the chip clock."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("aihwkit")

from aihwkit.inference import HermesNoiseModel  # noqa: E402

from imc_osttp import device_configs  # noqa: E402
from imc_osttp.backends.analog import PulsedTile, conductance_drift  # noqa: E402
from imc_osttp.builder import build_network  # noqa: E402
from imc_osttp.config import load_run_config  # noqa: E402
from imc_osttp.knobs import apply_to_spec  # noqa: E402


def hermes_tile(rows: int = 60, cols: int = 50, knobs: dict | None = None) -> tuple[PulsedTile, object]:
    spec = apply_to_spec(device_configs.load_spec("hermes_pcm"), knobs or {}, "device")
    weight = torch.linspace(-1.0, 1.0, rows * cols).reshape(rows, cols)
    return PulsedTile(weight, spec, torch.Generator().manual_seed(0), seed=1), spec


def device_rows(tile, prefix: str) -> torch.Tensor:
    names = list(tile.tile.tile.get_hidden_parameter_names())  # the C++ tile's, in the model's order
    hidden = tile.tile.tile.get_hidden_parameters()
    return torch.stack([hidden[i] for i, n in enumerate(names) if n.startswith(prefix) and n.count("_") == 3])


def test_nu_follows_the_chips_distribution_at_each_devices_conductance():
    """After the first clock step every device's ν is HERMES's: low-G devices drift faster than high-G ones,
    and the mean of each group is the fit's mean at that conductance (w_max = 2 is the fit's 10.35 µS)."""
    tile, spec = hermes_tile()
    model = conductance_drift(tile.tile, spec)
    model.before(tile.tile)
    g, nu = device_rows(tile, "hidden_weights_"), device_rows(tile, "drift_nu_")
    hermes = HermesNoiseModel(num_devices=1)
    high, low = g > 0.8, (g > 0.05) & (g < 0.15)
    assert high.sum() > 500 and low.sum() > 500
    for group in (high, low):
        reference = torch.stack([hermes.generate_drift_coefficients(g[group] * 10.35 / 2.0) for _ in range(20)])
        assert float(nu[group].mean()) == pytest.approx(float(reference.mean()), rel=0.05)
    assert float(nu[low].mean()) > float(nu[high].mean()) + 0.01


def test_nu_is_redrawn_only_for_devices_a_write_moved():
    tile, spec = hermes_tile()
    backend_model = conductance_drift(tile.tile, spec)
    for _ in range(2):  # two clock steps: ν set once for every device, then kept
        backend_model.before(tile.tile)
        tile.tile.drift_weights(1.0)
        backend_model.after(tile.tile)
    nu_before = device_rows(tile, "drift_nu_")
    grad = torch.zeros(60, 50)
    grad[3, 4] = -50.0  # one weight: pulses on the devices of one cell
    tile.write(grad, lr=0.01)
    moved = (device_rows(tile, "hidden_weights_") - backend_model.last).abs() > 1e-7
    assert 0 < int(moved.sum()) <= 4 * 2
    backend_model.before(tile.tile)
    changed = device_rows(tile, "drift_nu_") != nu_before
    assert torch.equal(changed, moved)


def test_a_written_device_holds_its_conductance_for_t0():
    """drift_t0 = 200 s (HERMES's first read): no drift before t0 after a write, the power law after it."""
    tile, _ = hermes_tile(knobs={"drift_t0": 200.0})
    before = device_rows(tile, "hidden_weights_")
    tile.tile.drift_weights(150.0)
    assert torch.equal(device_rows(tile, "hidden_weights_"), before)
    tile.tile.drift_weights(250.0)  # 400 s after the first drift step
    after = device_rows(tile, "hidden_weights_")
    on = before > 0.1
    assert bool((after[on] < before[on]).all())


def test_the_feedback_array_ages_with_the_chip_clock():
    cfg = load_run_config(extra={"backend": {"kind": "analog", "device_config": "hermes_pcm",
                                             "feedback_config": "hermes_feedback", "time_per_update": 1.0},
                                 "model": {"hidden": 12}, "tracking": {"enabled": False}})
    backend = build_network(cfg, 6, 5).backend
    assert set(backend.drift_models) == {"W1", "W2"}
    b0 = backend.B.tile.get_weights()[0].clone()
    backend.advance_clock(3600.0)
    assert backend.B.age == 3600.0
    assert not torch.equal(backend.B.tile.get_weights()[0], b0)


def test_no_drift_switches_the_conductance_model_off():
    cfg = load_run_config(extra={"backend": {"kind": "analog", "device_config": "hermes_pcm",
                                             "knobs": {"drift_nu": 0.0}},
                                 "model": {"hidden": 12}, "tracking": {"enabled": False}})
    backend = build_network(cfg, 6, 5).backend
    assert backend.drift_models == {}


@pytest.mark.parametrize("tolerance, kept", [(1e-7, True), (1e9, False)])
def test_a_write_below_the_reset_tolerance_is_undone_at_the_next_drift_step(tolerance, kept):
    """What knob drift_reset_tol means in aihwkit: a write that moves a device by more than the tolerance
    restarts its clock and stays; a smaller one is overwritten by the drifted old value at the next drift
    step (so a huge tolerance does not keep clocks running: it undoes every write)."""
    from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig
    from aihwkit.simulator.parameters.inference import DriftParameter

    rpu = SingleRPUConfig(device=ConstantStepDevice(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, w_max=1.0,
                                                    w_min=-1.0, drift=DriftParameter(nu=0.05, reset_tol=tolerance)))
    rpu.forward.is_perfect = True
    tile = rpu.tile_class(1, 1, rpu)
    tile.set_weights(torch.tensor([[0.5]]))
    tile.drift_weights(10.0)
    drifted = float(tile.get_weights()[0])
    tile.set_learning_rate(0.01)
    for _ in range(10):  # ten pulses up
        tile.update(torch.tensor([[1.0]]), torch.tensor([[-1.0]]))
    written = float(tile.get_weights()[0])
    tile.drift_weights(10.0)
    after = float(tile.get_weights()[0])
    assert written > drifted + 0.02  # stochastic trains: about ten pulses of 0.01
    if kept:
        assert after == pytest.approx(written, abs=1e-6)  # the clock restarted: held for t0, no drift yet
    else:
        assert after == pytest.approx(0.5 * 20.0 ** -0.05, rel=1e-5)  # the old value drifted 20 s: write gone
