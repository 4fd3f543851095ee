"""The analog backend: ideal tiles reproduce the digital backend; pulses are written and counted right."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("aihwkit")

from imc_osttp import device_configs  # noqa: E402
from imc_osttp.backends import pulses  # noqa: E402
from imc_osttp.backends.analog import AnalogBackend, PulsedTile  # noqa: E402
from imc_osttp.backends.digital import DigitalBackend  # noqa: E402
from imc_osttp.builder import build_network  # noqa: E402
from imc_osttp.config import load_run_config  # noqa: E402
from imc_osttp.data.batching import batches  # noqa: E402
from imc_osttp.data.synthetic import synthetic_jsb  # noqa: E402
from imc_osttp.errors import ConfigError  # noqa: E402
from imc_osttp.network import SNUNet, init_feedback, init_parameters, trainable_names  # noqa: E402
from imc_osttp.rules import compute_update  # noqa: E402

M, N, K = 10, 12, 10
DW = 0.0625  # a power of two: pulse counts times DW are exact in float32
NOISE_FREE = f"""
rpu_config:
  class: SingleRPUConfig
  forward: {{is_perfect: true}}
  backward: {{is_perfect: true}}
  device: {{class: ConstantStepDevice, dw_min: {DW}, dw_min_dtod: 0.0, dw_min_std: 0.0, up_down: 0.0,
           up_down_dtod: 0.0, w_max: 10000.0, w_min: -10000.0, w_max_dtod: 0.0, w_min_dtod: 0.0}}
"""


def make_cfg(device: str = "ideal", feedback: str = "ideal", seed: int = 0, **extra):
    tree = {"seed": seed, "backend": {"kind": "analog", "device_config": device, "feedback_config": feedback},
            "model": {"hidden": N, "recurrent": True}, "optim": {"lr": 0.05}, "data": {"task": "synthetic"}}
    for section, values in extra.items():
        tree.setdefault(section, {}).update(values)
    return load_run_config(extra=tree)


def make_params(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return init_parameters(cfg.model, M, K, g), init_feedback(K, N, 1.0, g)


def both_backends(cfg):
    params, B = make_params(cfg)
    names = trainable_names(cfg)
    return AnalogBackend(cfg, params, B, names), DigitalBackend(cfg, params, B, names), names


def random_grads(names, params, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(params[n].shape, generator=g) for n in names}


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp(min=1e-12))


def noise_free(tmp_path, writer: str = "") -> str:
    path = tmp_path / "noise_free.yaml"
    path.write_text(NOISE_FREE + writer)
    return str(path)


# ------------------------------------------------------------------ ideal tiles = digital backend


def test_ideal_products_match_digital():
    analog, digital, _ = both_backends(make_cfg())
    x = torch.rand(3, M)
    for name, inp in (("W1", x), ("H1", torch.rand(3, N)), ("W2", torch.rand(3, N))):
        assert rel_err(analog.mvm(name, inp), digital.mvm(name, inp)) < 1e-6
    d = torch.randn(3, K)
    assert rel_err(analog.mvm_t("W2", d), digital.mvm_t("W2", d)) < 1e-6
    assert rel_err(analog.feedback(d), digital.feedback(d)) < 1e-6
    assert torch.allclose(torch.diagonal(analog.read("H1")), torch.diagonal(digital.read("H1")))


def test_ideal_dense_updates_match_digital_through_the_lr_schedule():
    cfg = make_cfg(optim={"decay_every": 1, "decay_factor": 0.5})
    analog, digital, names = both_backends(cfg)
    for epoch in range(2):
        grads = random_grads(names, digital.parameters(), seed=epoch)
        analog.apply(grads)
        digital.apply(grads)
        assert analog.end_epoch()["lr"] == digital.end_epoch()["lr"]
    for name in names:
        assert rel_err(analog.parameters()[name], digital.parameters()[name]) < 1e-5, name


def test_lr_scale_sets_each_parameters_step_on_both_backends():
    """optim.lr_scale multiplies one parameter's SGD step, on tensors and through tile pulses alike (0 freezes
    it: not trained at all), and the schedule decays every scaled rate; the logged lr stays the unscaled one."""
    scale = {"W2": 0.25, "H1": 2.0, "W1": 0.0}
    cfg = make_cfg(optim={"decay_every": 1, "decay_factor": 0.5, "lr_scale": scale})
    analog, digital, names = both_backends(cfg)
    assert "W1" not in names
    for epoch, lr in enumerate((0.05, 0.025)):
        before = {n: v.detach().clone() for n, v in digital.parameters().items()}
        grads = random_grads(["W1", *names], digital.parameters(), seed=epoch)
        analog.apply(grads)
        digital.apply(grads)
        assert torch.equal(analog.parameters()["W1"], before["W1"]) and torch.equal(digital.parameters()["W1"],
                                                                                     before["W1"])
        for name in names:
            step = digital.parameters()[name].detach() - before[name]
            assert rel_err(step, -lr * scale.get(name, 1.0) * grads[name]) < 1e-6, name
            assert rel_err(analog.parameters()[name], digital.parameters()[name]) < 1e-5, name
        assert analog.end_epoch()["lr"] == digital.end_epoch()["lr"] == pytest.approx(lr / 2)


def test_frozen_tile_takes_no_pulses(tmp_path):
    """A parameter frozen by lr_scale 0 is not written at all on a pulsed tile (no pulses, no counter),
    while the others are; freezing everything is a config error, not an optimizer without parameters."""
    cfg = make_cfg(noise_free(tmp_path), optim={"lr": 0.5, "lr_scale": {"W1": 0}})
    params, B = make_params(cfg)
    analog = AnalogBackend(cfg, params, B, trainable_names(cfg))
    analog.apply(random_grads(trainable_names(cfg), params))
    metrics = analog.end_epoch()
    assert "pulses/W1" not in metrics and metrics["pulses/W2"] > 0 and metrics["pulses/H1"] > 0
    assert torch.equal(analog.parameters()["W1"].detach(), params["W1"])
    frozen = make_cfg(optim={"lr_scale": dict.fromkeys(["W1", "H1", "b1", "W2", "c2"], 0)})
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        build_network(frozen, M, K)


@pytest.mark.parametrize("traces", ["exact", "factorised"])
@pytest.mark.parametrize("timing", ["sequence", "step"])
def test_ideal_online_rule_matches_digital(traces, timing):
    cfg = make_cfg(rule={"traces": traces, "update_timing": timing})
    analog, digital, names = both_backends(cfg)
    start = {n: digital.parameters()[n].detach().clone() for n in names}
    batch = next(iter(batches(synthetic_jsb(4, 12).train, 4)))
    batch.x, batch.y = batch.x[..., :M], batch.y[..., :K]
    for backend in (analog, digital):
        net = SNUNet(cfg.model, backend, M, K)
        grads, _ = compute_update(cfg.rule, net, batch)
        if grads:
            backend.apply(grads)
            if backend is analog:
                # factorised traces reach W1/H1 as rank-1 trains; exact ones, summed backwards over the
                # chunk, as a dense update; the readout's local gradient is always rank-1 trains
                for name in ("W1", "H1"):
                    assert hasattr(grads[name], "factors") == (traces == "factorised"), name
                assert hasattr(grads["W2"], "factors")
    for name in names:
        change = digital.parameters()[name].detach() - start[name]
        assert rel_err(analog.parameters()[name].detach() - start[name], change) < 1e-5, name


def test_dense_and_factored_parts_of_one_parameter_are_both_applied():
    analog, digital, names = both_backends(make_cfg())
    acc = analog.accumulator()
    dense, left, right = torch.randn(M, N), torch.rand(5, M), torch.randn(5, N)
    acc.add("W1", dense)
    acc.add_outer("W1", left, right)
    grads = acc.take(0.5)
    assert grads["W1"].factors.dense is not None
    assert torch.allclose(grads["W1"], 0.5 * (dense + left.T @ right), atol=1e-6)
    analog.apply(grads)
    digital.apply({n: grads[n].clone() for n in names})
    assert rel_err(analog.parameters()["W1"], digital.parameters()["W1"]) < 1e-5


def test_bptt_gradients_flow_through_analog_products():
    cfg = make_cfg(rule={"name": "bptt"})
    analog, digital, names = both_backends(cfg)
    batch = next(iter(batches(synthetic_jsb(2, 8).train, 2)))
    batch.x, batch.y = batch.x[..., :M], batch.y[..., :K]
    grads = {b.kind: compute_update(cfg.rule, SNUNet(cfg.model, b, M, K), batch)[0]
             for b in (analog, digital)}
    for name in names:
        assert rel_err(grads["analog"][name], grads["digital"][name]) < 1e-5, name


# ------------------------------------------------------------------ pulses


def test_exact_writer_fires_exactly_the_requested_counts(tmp_path):
    cfg = make_cfg(noise_free(tmp_path, "writer: {policy: exact, rounding: carry}\n"), optim={"lr": 0.5})
    analog, _, names = both_backends(cfg)
    start = analog.parameters()["W1"].detach().clone()
    n = torch.randint(-5, 6, (M, N), generator=torch.Generator().manual_seed(3)).float()
    grads = {name: torch.zeros_like(analog.parameters()[name]) for name in names}
    grads["W1"] = -n * DW / 0.5  # ΔW = -lr·grad = n pulses of DW
    analog.apply(grads)
    assert torch.allclose(analog.parameters()["W1"].detach() - start, n * DW, atol=1e-6)
    metrics = analog.end_epoch()
    assert metrics["pulses/W1"] == n.abs().sum()
    assert metrics["pulses/W1_max_device"] == n.abs().max()
    assert metrics["pulses/W2"] == 0


def test_carry_writer_keeps_the_remainder_digitally(tmp_path):
    cfg = make_cfg(noise_free(tmp_path, "writer: {policy: exact, rounding: carry}\n"), optim={"lr": 1.0})
    analog, _, names = both_backends(cfg)
    start = analog.parameters()["W1"].detach().clone()
    grads = {name: torch.zeros_like(analog.parameters()[name]) for name in names}
    grads["W1"] = torch.full((M, N), -0.25 * DW)
    for _ in range(10):  # 10 x 1/4 pulse: 2 pulses fired, half a pulse still carried
        analog.apply(grads)
    assert torch.allclose(analog.parameters()["W1"].detach() - start, torch.full((M, N), 2 * DW), atol=1e-6)
    assert analog.end_epoch()["pulses/W1"] == 2 * M * N
    assert torch.allclose(analog.tiles["W1"].residual, torch.full((N, M), 0.5))


@pytest.mark.parametrize("boost", [1.0, 2000.0])
def test_stochastic_pulse_counts_match_the_expected_value(tmp_path, boost):
    """aihwkit's pulses cannot be seeded: compare the realised count with E[n] = Σ_b BL·p·q.

    With boost, the update asks for more than BL pulses and update management clips it.
    """
    spec = device_configs.load_spec(noise_free(tmp_path))
    tile = PulsedTile(torch.zeros(M, N), spec, torch.Generator(), seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, M, generator=g)
    sign = torch.where(torch.rand(N, generator=g) < 0.5, -1.0, 1.0)  # one direction per cell
    d = torch.rand(3, N, generator=g) * sign * boost
    lr = 0.05
    tile.tile.set_learning_rate(lr)
    for _ in range(400):
        tile.tile.update(x, d)
    realised = tile.weight().abs().sum() / DW
    expected = (tile.counter.up + tile.counter.down).sum()
    assert expected > 5000
    assert float(abs(realised - expected) / expected) < 0.05
    bl, _, _ = pulses.pulse_trains(x, d, lr, DW, spec.rpu_config.update)
    assert bool((bl == spec.rpu_config.update.desired_bl).all()) == (boost > 1)


def test_feedback_tile_is_programmed_once_and_never_updated():
    cfg = make_cfg("pcm_4device", "feedback_programmed", optim={"lr": 0.01})
    params, B = make_params(cfg)
    analog = AnalogBackend(cfg, params, B, trainable_names(cfg))
    programmed = analog.B.weight().clone()
    assert 0 < rel_err(programmed, B) < 0.3  # programming noise, not a different matrix
    for seed in range(3):
        analog.apply(random_grads(trainable_names(cfg), params, seed))
    assert torch.equal(analog.B.weight(), programmed)
    assert not any(key.startswith("pulses/B") for key in analog.end_epoch())


def test_knobs_reach_the_tiles_and_the_feedback_tile():
    cfg = make_cfg("pcm_4device", "feedback_programmed",
                   backend={"knobs": {"feedback_prog_noise": 0.0, "dw_min_std": 0.1}})
    params, B = make_params(cfg)
    analog = AnalogBackend(cfg, params, B, trainable_names(cfg))
    assert rel_err(analog.B.weight(), B) < 1e-5
    cells = analog.tiles["W1"].tile.rpu_config.device.unit_cell_devices
    assert all(dev.dw_min_std == 0.1 for cell in cells for dev in cell.unit_cell_devices)


def test_pcm_tiles_count_pulses_for_every_trainable_tile():
    cfg = make_cfg("pcm_4device", optim={"lr": 0.01})
    analog, _, names = both_backends(cfg)
    analog.apply(random_grads(names, analog.parameters()))
    metrics = analog.end_epoch()
    for name in ("W1", "H1", "W2"):
        assert metrics[f"pulses/{name}"] > 0
        assert 0 < metrics[f"pulses/{name}_max_device"] <= metrics[f"pulses/{name}"]


@pytest.mark.parametrize("seed", [0, 172])
def test_baseline_raises_both_devices_and_keeps_the_weights(seed):
    """Both devices of a pair rise by the baseline, or by what the fuller one's bound allows, never past
    it: the weights are kept exactly. With construction seed 1, seed 172 puts a near-largest weight on a
    device whose bound leaves less than the baseline (a clipped rise would move that weight by 0.02)."""
    spec = device_configs.load_spec("pcm_4device").model_copy(update={"baseline": 0.5})
    w = torch.rand(M, N, generator=torch.Generator().manual_seed(seed)) * 0.4 - 0.2
    plain = PulsedTile(w, spec.model_copy(update={"baseline": None}), torch.Generator(), seed=1)
    tile = PulsedTile(w, spec, torch.Generator(), seed=1)
    before, hidden = plain.tile.get_hidden_parameters(), tile.tile.get_hidden_parameters()
    devices = [k for k in hidden if k.startswith("hidden_weights_") and k.count("_") == 3]
    assert len(devices) == 4
    assert torch.allclose(tile.weight(), w, atol=1e-6)
    for pair in (["hidden_weights_0_0", "hidden_weights_1_0"], ["hidden_weights_0_1", "hidden_weights_1_1"]):
        rise = [hidden[k] - before[k] for k in pair]
        assert torch.allclose(rise[0], rise[1], atol=1e-6)  # the pair's difference, hence W, is kept
        assert float(rise[0].max()) == pytest.approx(0.5, abs=1e-6)
        for k in pair:
            assert bool((hidden[k] <= hidden[k.replace("hidden_weights", "max_bound")] + 1e-6).all())
    limited = any(float((hidden[k] - before[k]).min()) < 0.5 - 1e-3 for k in devices)
    assert limited == (seed == 172)


def test_analog_tiles_refuse_optimizers_that_pulses_cannot_implement():
    with pytest.raises(ConfigError, match="plain SGD"):
        both_backends(make_cfg(optim={"name": "adam"}))


def test_device_to_device_variation_follows_the_seed():
    """aihwkit's cycle-to-cycle noise cannot be seeded, but its device-to-device variation can."""
    def hidden(seed):
        cfg = make_cfg("pcm_4device", "ideal", seed=seed)
        params, B = make_params(cfg)
        backend = AnalogBackend(cfg, params, B, trainable_names(cfg))
        return backend.tiles["W1"].tile.get_hidden_parameters()

    a, b, c = hidden(0), hidden(0), hidden(1)
    varied = [k for k in a if k.startswith("dwmin_up")]
    assert varied and all(torch.equal(a[k], b[k]) for k in varied)
    assert any(not torch.equal(a[k], c[k]) for k in varied)


@pytest.mark.parametrize("device", ["aihwkit_mixed_precision_pcm", "aihwkit_cttv2_reram"])
def test_aihwkits_own_training_algorithms_are_accepted_with_unobservable_pulses(device):
    """MixedPrecisionCompound (a DigitalRankUpdateCell) and c-TTv2 (a TransferCompound) train by aihwkit's
    own update: the weights learn, but the pulses that move them fire inside aihwkit, so no pulse metric
    is reported rather than a wrong one, and the exact writer (which needs single pulses) is refused."""
    cfg = make_cfg(device, "feedback_programmed", optim={"lr": 0.2})
    params, B = make_params(cfg)
    with pytest.warns(UserWarning, match="not observable on the CPU"):
        analog = AnalogBackend(cfg, params, B, trainable_names(cfg))
    assert all(t.algorithm and t.counter is None for t in analog.tiles.values())
    before = {n: analog.parameters()[n].detach().clone() for n in analog.tiles}
    for seed in range(20):  # c-TTv2 moves the visible weights only once its fast device has transferred
        analog.apply(random_grads(trainable_names(cfg), params, seed))
    assert all(not torch.equal(analog.parameters()[n].detach(), before[n]) for n in analog.tiles)
    assert not any(k.startswith("pulses/") for k in analog.end_epoch())
    spec = device_configs.load_spec(device)
    exact = spec.model_copy(update={"writer": spec.writer.model_copy(update={"policy": "exact"})})
    with pytest.raises(ConfigError, match="own algorithm"):
        PulsedTile(params["W1"], exact, torch.Generator(), seed=1)


# ------------------------------------------------------------------ the chip clock: drift of trained weights


def drifting(tmp_path, **knobs):
    """A noise-free pulsed device whose weights drift; 100 s of chip time per applied update."""
    cfg = make_cfg(noise_free(tmp_path), optim={"lr": 0.5},
                   backend={"time_per_update": 100.0, "knobs": {"drift_nu": 0.05, **knobs}})
    params, B = make_params(cfg)
    return AnalogBackend(cfg, params, B, trainable_names(cfg)), params


def zero_grads(backend):
    return {n: torch.zeros_like(v) for n, v in backend.parameters().items() if n in backend.trainable}


def test_a_drifting_trainable_tile_loses_weight_by_the_power_law(tmp_path):
    """Updates that write nothing still take chip time: after k of them every device has drifted for k·100 s,
    W = W_0 (t/t_0)^(−ν), t_0 = 1 s; with a device-to-device spread of ν the mean follows the mean ν."""
    analog, params = drifting(tmp_path, drift_nu_dtod=0.2)
    w0 = {n: analog.parameters()[n].detach().clone() for n in analog.tiles}
    for _ in range(5):
        analog.apply(zero_grads(analog))
    for name, before in w0.items():
        ratio = analog.parameters()[name].detach() / before
        assert float(ratio.mean()) == pytest.approx(500.0 ** -0.05, rel=0.01), name
        assert float(ratio.std()) > 0.005, name  # ν differs from device to device
    assert torch.equal(analog.parameters()["b1"], params["b1"])  # thresholds are digital: no drift


def test_a_write_restarts_the_clock_of_the_written_devices_only(tmp_path):
    """Devices written by an update start drifting from their new value again; the others keep their clock."""
    analog, _ = drifting(tmp_path)
    for _ in range(5):
        analog.apply(zero_grads(analog))
    before = analog.parameters()["W1"].detach().clone()
    grads = zero_grads(analog)
    grads["W1"][0] = 1.0  # input row 0: the devices of W1's first row, and no others
    analog.apply(grads)  # the write, then this update's 100 s, which restarts the written devices' clock
    written = analog.parameters()["W1"].detach().clone()
    assert torch.allclose(written[0], before[0] - 0.5 * 1.0, atol=DW)  # written: moved by -lr·grad, no drift
    assert torch.allclose(written[1:], before[1:] * (600.0 / 500.0) ** -0.05, rtol=1e-4)  # only drifted
    for _ in range(3):
        analog.apply(zero_grads(analog))
    ratio = analog.parameters()["W1"].detach() / written
    assert torch.allclose(ratio[0], torch.full_like(ratio[0], 300.0 ** -0.05), rtol=1e-4)  # clock from 0
    others = (900.0 / 600.0) ** -0.05  # the old clock: 600 s → 900 s
    assert torch.allclose(ratio[1:], torch.full_like(ratio[1:], others), rtol=1e-4)


def test_no_chip_clock_means_no_drift(tmp_path):
    cfg = make_cfg(noise_free(tmp_path), backend={"knobs": {"drift_nu": 0.1}})
    params, B = make_params(cfg)
    analog = AnalogBackend(cfg, params, B, trainable_names(cfg))
    w0 = analog.parameters()["W1"].detach().clone()
    analog.apply(zero_grads(analog))
    assert torch.equal(analog.parameters()["W1"].detach(), w0)


def test_with_a_huge_reset_tolerance_a_write_keeps_the_devices_clock(tmp_path):
    """drift_reset_tol: aihwkit restarts a device's clock only when a write moves it by more than the tolerance."""
    analog, _ = drifting(tmp_path, drift_reset_tol=1e9)
    for _ in range(5):
        analog.apply(zero_grads(analog))
    grads = zero_grads(analog)
    grads["W1"][0] = 1.0
    analog.apply(grads)
    written = analog.parameters()["W1"].detach().clone()
    for _ in range(3):
        analog.apply(zero_grads(analog))
    ratio = analog.parameters()["W1"].detach() / written
    assert torch.allclose(ratio, torch.full_like(ratio, (900.0 / 600.0) ** -0.05), rtol=1e-4)  # one clock for all
