"""Knobs land in every device of real aihwkit configs, and the configs still build tiles."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("aihwkit")

from aihwkit.simulator.configs import MixedPrecisionCompound, SingleRPUConfig  # noqa: E402
from aihwkit.simulator.parameters import WeightNoiseType  # noqa: E402
from aihwkit.simulator.presets import PCMPresetDevice  # noqa: E402

from imc_osttp import device_configs  # noqa: E402
from imc_osttp.errors import ConfigError  # noqa: E402
from imc_osttp.knobs import (  # noqa: E402
    KNOBS,
    apply_knobs,
    apply_to_spec,
    bits_to_res,
    check_knobs,
    current,
    device_tree,
    ideal,
    names,
    res_to_bits,
)


def pulsed(rpu):
    from aihwkit.simulator.configs.devices import PulsedDevice

    return [d for d in device_tree(rpu) if isinstance(d, PulsedDevice)]


def builds(rpu) -> None:
    tile = rpu.tile_class(3, 4, rpu)
    tile.set_weights(torch.full((3, 4), 0.1))
    assert tile.forward(torch.ones(2, 4)).shape == (2, 3)


def test_device_knobs_reach_all_four_pcm_devices_and_the_original_is_untouched():
    original = device_configs.load("pcm_4device")
    rpu = apply_knobs(original, {"dw_min_std": 0.1, "up_down_dtod": 0.0, "write_noise_std": 0.5,
                                 "drift_nu": 0.05, "refresh_every": 0})
    devices = pulsed(rpu)
    assert len(devices) == 4  # VectorUnitCell -> 2 PCMPresetUnitCell -> 2 PCMPresetDevice each
    assert all(d.dw_min_std == 0.1 and d.up_down_dtod == 0.0 and d.write_noise_std == 0.5 for d in devices)
    assert all(d.drift.nu == 0.05 for d in devices)
    assert [c.refresh_every for c in rpu.device.unit_cell_devices] == [0, 0]
    assert all(d.dw_min_std == 0.6 for d in pulsed(original))
    builds(rpu)


def test_io_knobs_are_bits_on_forward_and_backward():
    rpu = apply_knobs(device_configs.load("pcm_4device"), {"inp_res": 8, "out_res": 0, "out_noise": 0.0,
                                                          "w_noise": 0.02})
    for io in (rpu.forward, rpu.backward):
        assert io.inp_res == pytest.approx(1 / 254) and io.out_res == -1 and io.out_noise == 0.0
        assert io.w_noise == 0.02 and io.w_noise_type == WeightNoiseType.ADDITIVE_CONSTANT
    assert rpu.update.desired_bl == 31
    builds(rpu)


def test_bits_round_trip_and_match_aihwkit_defaults():
    assert bits_to_res(7) == pytest.approx(1 / 126) and res_to_bits(1 / 510) == 9
    assert res_to_bits(bits_to_res(0)) == 0 and res_to_bits(126) == 7  # aihwkit also takes a step count


def test_mixed_precision_compound_is_walked():
    rpu = SingleRPUConfig(device=MixedPrecisionCompound(device=PCMPresetDevice()))
    out = apply_knobs(rpu, {"dw_min_dtod": 0.0, "desired_bl": 5})
    assert [d.dw_min_dtod for d in pulsed(out)] == [0.0] and out.update.desired_bl == 5
    builds(out)


def test_constant_step_and_feedback_configs():
    rpu = apply_knobs(device_configs.load("constant_step"), {"dw_min": 0.002, "w_max": 0.8, "w_min": -0.8})
    (device,) = pulsed(rpu)
    assert (device.dw_min, device.w_max, device.w_min) == (0.002, 0.8, -0.8)
    builds(rpu)
    with pytest.raises(ConfigError, match="write_noise_std.*ConstantStepDevice.*has no such field"):
        apply_knobs(device_configs.load("constant_step"), {"write_noise_std": 0.1})
    spec = apply_to_spec(device_configs.load_spec("feedback_programmed"),
                         {"feedback_prog_noise": 0.0, "drift_time": 3600, "dw_min_std": 0.3}, "feedback")
    assert spec.rpu_config.noise_model.prog_noise_scale == 0.0 and spec.program.drift_time == 3600.0
    builds(spec.rpu_config)


def test_unknown_knob_lists_the_valid_ones_and_values_are_checked():
    with pytest.raises(ConfigError, match=r"dw_min_sdt': unknown; did you mean 'dw_min_std'.*valid knobs: dw_min"):
        apply_knobs(device_configs.load("pcm_4device"), {"dw_min_sdt": 0.1})
    with pytest.raises(ConfigError, match="rule.*sweep axis"):
        check_knobs({"rule": "osttp"})
    with pytest.raises(ConfigError, match="refresh_every.*integer"):
        check_knobs({"refresh_every": 1.5})
    with pytest.raises(ConfigError, match="out_noise.*>= 0"):
        check_knobs({"out_noise": -0.1})
    assert check_knobs({"dw_min_std": 0, "refresh_every": 3.0}) == {"dw_min_std": 0.0, "refresh_every": 3}


def test_ideal_values_switch_every_non_ideality_off_and_current_reads_them_back():
    spec = device_configs.load_spec("pcm_4device")
    idealised = {n: ideal(n) for n in KNOBS if ideal(n) is not None and KNOBS[n].role == "device"}
    off = apply_to_spec(spec, idealised, "device")
    for name, value in idealised.items():
        assert current(off, name) == value, name
    assert current(spec, "dw_min_std") == 0.6 and current(spec, "inp_res") == 7.0
    assert current(spec, "feedback_prog_noise") is None  # lives in B's config
    assert set(names()) >= {"dw_min", "w_noise", "drift_time", "feedback_prog_noise", "desired_bl"}
    builds(off.rpu_config)


def test_dw_min_scales_the_writers_calibrated_step():
    from imc_osttp import device_configs
    from imc_osttp.knobs import apply_to_spec

    spec = device_configs.load_spec("pcm_4device")
    assert spec.writer.step
    assert apply_to_spec(spec, {"dw_min": 0.005}, "device").writer.step == pytest.approx(spec.writer.step / 2)
    assert apply_to_spec(spec, {"dw_min_std": 0.1}, "device").writer.step == spec.writer.step
