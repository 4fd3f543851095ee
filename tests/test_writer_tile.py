"""WriterTile, the device configurations' writer as an aihwkit tile class: any aihwkit model built from
`device_configs.load` trains through AnalogSGD with it, pulses are exact and counted, the cheap re-derivation
of a refreshing cell's visible weights writes what the full one does, and the done-when regression of issue 20."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

pytest.importorskip("aihwkit")

from aihwkit.nn import AnalogConv2d, AnalogLinear, AnalogLSTMCell, AnalogRNN, AnalogSequential  # noqa: E402
from aihwkit.optim import AnalogSGD  # noqa: E402
from aihwkit.simulator.parameters import IOParameters, PulseType, UpdateParameters  # noqa: E402
from aihwkit.simulator.presets import MixedPrecisionPCMPreset  # noqa: E402

from imc_osttp import device_configs  # noqa: E402
from imc_osttp.backends.tile import WriterTile, WriterUnitCellRPUConfig, tile_pulses, total_pulses  # noqa: E402
from imc_osttp.examples.other_study import Regression  # noqa: E402
from imc_osttp.knobs import device_tree  # noqa: E402

DW = 0.0625  # a power of two: pulse counts times DW are exact in float32
NOISE_FREE = f"""
rpu_config:
  class: SingleRPUConfig
  mapping: {{weight_scaling_omega: 1.0, weight_scaling_lr_compensation: LRCOMP}}
  forward: {{is_perfect: true}}
  backward: {{is_perfect: true}}
  device: {{class: ConstantStepDevice, dw_min: {DW}, dw_min_dtod: 0.0, dw_min_std: 0.0, up_down: 0.0,
           up_down_dtod: 0.0, w_max: 10000.0, w_min: -10000.0, w_max_dtod: 0.0, w_min_dtod: 0.0}}
writer: {{policy: exact, rounding: carry, step: {DW}}}
"""


def test_load_carries_the_writer_inside_the_rpu_config(tmp_path):
    rpu = device_configs.load("pcm_4device")
    spec = device_configs.load_spec("pcm_4device")
    assert isinstance(rpu, WriterUnitCellRPUConfig) and rpu.tile_class is WriterTile
    assert rpu.writer == spec.writer and rpu.writer.policy == "exact"
    assert device_configs.to_dict(device_configs.load_spec("pcm_4device").rpu_config) == device_configs.to_dict(
        spec.rpu_config)
    again = pickle.loads(pickle.dumps(rpu))
    assert again == rpu and again.writer == rpu.writer
    device_configs.save(rpu, tmp_path / "copy.yaml")  # the writer goes back to its own section
    assert device_configs.load(tmp_path / "copy.yaml") == rpu


@pytest.mark.parametrize("compensation", [False, True])
def test_analog_sgd_fires_the_exact_pulse_counts_through_pre_update(tmp_path, compensation):
    """An AnalogLinear stepped by AnalogSGD fires trunc(-lr·Σ d xᵀ/(α·step)) pulses per device and carries the
    rest: aihwkit's pre_update divides d by the mapping scale α (and mapping_lr_scale, which the tile's learning
    rate carries back), so the logical weights move by -lr·grad up to the carry."""
    path = tmp_path / "noise_free.yaml"
    path.write_text(NOISE_FREE.replace("LRCOMP", str(compensation).lower()))
    layer = AnalogLinear(4, 3, bias=False, rpu_config=device_configs.load(path))
    w = torch.tensor([[1.0, -0.5, 0.25, 2.0], [0.5, 0.0, -1.0, 0.75], [-2.0, 1.5, 0.5, -0.25]])
    layer.set_weights(w)
    tile = next(layer.analog_tiles())
    alpha = float(tile.get_mapping_scales())
    assert alpha == 2.0 and tile.mapping_lr_scale == (0.5 if compensation else 1.0)
    g = torch.Generator().manual_seed(0)
    grad = torch.randint(-40, 41, (4, 3), generator=g).float() * DW / 4  # dL/dy for input rows e_1..e_4
    lr = 0.5
    optimizer = AnalogSGD(layer.parameters(), lr=lr)
    (layer(torch.eye(4)) * grad).sum().backward()
    optimizer.step()
    target = -lr * grad.T / (alpha * DW)
    n = torch.trunc(target)
    assert torch.equal(tile.pulses_up - tile.pulses_down, n.double())
    assert torch.equal(tile.residual, target - n)
    assert torch.allclose(layer.get_weights()[0] - w, alpha * n * DW, atol=1e-6)


@pytest.mark.parametrize("model", ["mapped_linear", "conv2d", "lstm"])
def test_any_aihwkit_model_trains_on_writer_tiles(model):
    """AnalogLinear split over several physical tiles (mapping max sizes), AnalogConv2d and an LSTM of
    AnalogLSTMCell: every tile aihwkit builds from the config is a WriterTile and takes counted pulses."""
    rpu = device_configs.load("pcm_4device")
    torch.manual_seed(0)
    if model == "mapped_linear":
        rpu.mapping.max_input_size, rpu.mapping.max_output_size = 8, 6
        net, x = AnalogLinear(20, 10, rpu_config=rpu), torch.rand(4, 20)
    elif model == "conv2d":
        net, x = AnalogConv2d(2, 4, 3, rpu_config=rpu), torch.rand(2, 2, 6, 6)
    else:
        net, x = AnalogRNN(AnalogLSTMCell, 5, 6, rpu_config=rpu), torch.rand(7, 3, 5)
    tiles = list(net.analog_tiles())
    assert len(tiles) == (6 if model == "mapped_linear" else 2 if model == "lstm" else 1)
    assert all(isinstance(t, WriterTile) for t in tiles)
    before = [t.tile.get_weights().clone() for t in tiles]
    optimizer = AnalogSGD(net.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        out = net(x)
        (out[0] if isinstance(out, tuple) else out).pow(2).sum().backward()
        optimizer.step()
    counts = tile_pulses(net)
    assert len(counts) == len(tiles) and all(c > 0 for c in counts.values())
    assert total_pulses(net) == pytest.approx(sum(counts.values()))
    assert all(not torch.equal(t.tile.get_weights(), b) for t, b in zip(tiles, before, strict=True))


def test_pulses_are_zero_without_devices_and_unknown_where_aihwkit_fires_them():
    digital = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ideal = AnalogLinear(3, 2, rpu_config=device_configs.load("ideal"))
    mixed = AnalogLinear(3, 2, rpu_config=MixedPrecisionPCMPreset())
    assert total_pulses(digital) == 0 and total_pulses(ideal) == 0
    assert math.isnan(total_pulses(mixed))


def noise_free_4device():
    """The 4-device PCM cell with every random part switched off: no cycle-to-cycle or reset noise, exact
    refresh reads and a deterministic refresh write (aihwkit's CPU noise cannot be seeded)."""
    rpu = device_configs.load("pcm_4device")
    rpu.device.construction_seed = 3
    for cell in rpu.device.unit_cell_devices:
        cell.refresh_forward = IOParameters(is_perfect=True)
        cell.refresh_update = UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, desired_bl=31)
    for device in device_tree(rpu):
        for name in ("dw_min_std", "dw_min_std_add", "dw_min_std_slope", "reset_std", "write_noise_std"):
            if hasattr(device, name):
                setattr(device, name, 0.0)
    return rpu


class FullResync(WriterTile):
    """The write path before issue 22: the devices' parameters set back as read after every write."""

    def resync_visible(self) -> None:
        self.tile.set_hidden_parameters(self.tile.get_hidden_parameters())


def test_the_cheap_rederivation_leaves_the_devices_as_the_full_one_does():
    """Refreshes, multi-pulse writes and the carry, on a noise-free 4-device cell: after every write the new
    path (aihwkit's drift step as a pure reduction) and the old one (hidden parameters set back) hold the
    same conductances, bounds, visible weights and pulse counts, bit for bit."""
    rpu = noise_free_4device()
    new, old = WriterTile(10, 12, rpu), FullResync(10, 12, copy.deepcopy(rpu))
    w = torch.randn(10, 12, generator=torch.Generator().manual_seed(0)) * 0.3
    new.set_weights(w)
    old.set_weights(w)
    g = torch.Generator().manual_seed(2)
    falls = 0
    for i in range(60):  # alternating strong updates: both devices of many pairs rise, pairs refresh
        grad = torch.randn(12, 10, generator=g) * (0.6 if i % 2 else -0.4) * (torch.rand(12, 10, generator=g) < 0.3)
        before = new.get_hidden_parameters()
        for tile in (new, old):
            tile.set_learning_rate(0.5)
            tile.update(torch.eye(12), grad)
        hn, ho = new.get_hidden_parameters(), old.get_hidden_parameters()
        assert all(torch.equal(hn[k], ho[k]) for k in hn)
        assert torch.equal(new.tile.get_weights(), old.tile.get_weights())
        assert torch.equal(new.pulses_up, old.pulses_up) and torch.equal(new.pulses_down, old.pulses_down)
        devices = [k for k in hn if k.startswith("hidden_weights_") and k.count("_") == 3]
        falls += sum(int((before[k] - hn[k] > 0.3).sum()) for k in devices)
    assert falls > 0  # pairs were refreshed (reset and rewritten)
    assert float(new.pulses_up.max()) > 1  # writes of several pulses per device


def test_an_aihwkit_model_on_pcm_4device_learns_within_3x_of_ideal_and_checkpoints():
    """Issue 20's done-when, quick version: an AnalogSequential of two AnalogLinear trained by AnalogSGD (lr 0.1,
    the issue's) on the teacher regression, from `load` alone; its state_dict round trip keeps the trained chip."""
    task = Regression()
    train, test = task.sample(256, 1), task.sample(512, 3)

    def fit(name: str) -> AnalogSequential:
        torch.manual_seed(0)
        net = task.model(device_configs.load(name))
        optimizer = AnalogSGD(net.parameters(), lr=0.1)
        order = torch.Generator().manual_seed(0)
        for _ in range(10):
            for batch in task.batches(train, order):
                optimizer.zero_grad()
                task.loss(net, batch).backward()
                optimizer.step()
        return net.eval()

    ideal, pcm = fit("ideal"), fit("pcm_4device")
    with torch.no_grad():
        assert task.metric_of(pcm, test) < 3 * task.metric_of(ideal, test)
    again = task.model(device_configs.load("pcm_4device"))
    again.load_state_dict(pcm.state_dict())
    for a, b in zip(pcm.analog_tiles(), again.analog_tiles(), strict=True):
        assert torch.equal(a.tile.get_weights(), b.tile.get_weights())
        ha, hb = a.get_hidden_parameters(), b.get_hidden_parameters()
        assert all(torch.equal(ha[k], hb[k]) for k in ha)
        assert torch.equal(a.residual, b.residual) and torch.equal(a.pulses_up, b.pulses_up)
