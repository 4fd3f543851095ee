"""Named device configurations: every one builds a tile, files round-trip, typos and bad values are named."""

from __future__ import annotations

import dataclasses
import enum
import re

import pytest
import torch

pytest.importorskip("aihwkit")

from aihwkit.simulator.configs import UnitCellRPUConfig  # noqa: E402
from aihwkit.simulator.parameters import PulseType  # noqa: E402
from aihwkit.simulator.presets import PCMPreset  # noqa: E402

from imc_osttp import device_configs  # noqa: E402
from imc_osttp.errors import ConfigError  # noqa: E402

SHIPPED = ["ideal", "pcm_preset", "pcm_4device", "pcm_4device_naive", "pcm_4device_scaled", "constant_step",
           "feedback_programmed"]


def test_the_required_names_are_shipped():
    assert set(SHIPPED) <= set(device_configs.available())


@pytest.mark.parametrize("name", device_configs.available())
def test_every_shipped_config_builds_a_tile(name):
    rpu = device_configs.load(name)
    tile = rpu.tile_class(3, 4, rpu)
    tile.set_weights(torch.full((3, 4), 0.1))
    assert tile.forward(torch.ones(2, 4)).shape == (2, 3)


@pytest.mark.parametrize("name", device_configs.available())
def test_save_then_load_round_trips(name, tmp_path):
    spec = device_configs.load_spec(name)
    device_configs.save(spec, tmp_path / "copy.yaml")
    again = device_configs.load_spec(tmp_path / "copy.yaml")
    assert device_configs.to_dict(again.rpu_config) == device_configs.to_dict(spec.rpu_config)
    assert again.model_dump(exclude={"rpu_config", "description"}) == spec.model_dump(
        exclude={"rpu_config", "description"})


def test_round_trip_keeps_nested_fields_enums_and_device_lists(tmp_path):
    rpu = PCMPreset()
    rpu.device.refresh_every = 7
    rpu.device.unit_cell_devices[1].dw_min_std = 0.3
    rpu.update.pulse_type = PulseType.STOCHASTIC
    rpu.mapping.weight_scaling_omega = 0.8
    device_configs.save(rpu, tmp_path / "pcm.yaml")
    again = device_configs.load_spec(tmp_path / "pcm.yaml").rpu_config
    assert again == rpu
    assert type(again) is PCMPreset
    text = (tmp_path / "pcm.yaml").read_text()
    assert "STOCHASTIC" in text and "dw_min_std: 0.3" in text


def test_only_fields_that_differ_from_the_defaults_are_written():
    assert device_configs.to_dict(PCMPreset()) == {"class": "PCMPreset"}
    assert device_configs.to_dict(UnitCellRPUConfig())["class"] == "UnitCellRPUConfig"


def _write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_a_misspelled_field_names_the_closest_valid_one(tmp_path):
    path = _write(tmp_path, """
rpu_config:
  class: UnitCellRPUConfig
  device:
    class: VectorUnitCell
    unit_cell_devices:
    - {class: PCMPresetUnitCell}
    - {class: PCMPresetDevice, dw_min_sdt: 0.1}
""")
    with pytest.raises(ConfigError, match=r"dw_min_sdt.*did you mean 'dw_min_std'"):
        device_configs.load(path)


def test_misspelled_extras_enums_and_classes_are_named(tmp_path):
    cases = {
        "rpu_config: {class: PCMPreset}\nbasline: 0.5\n": r"basline.*did you mean 'baseline'",
        "rpu_config: {class: PCMPreset, update: {pulse_type: STOCHASTIC_COMPRESED}}\n":
            r"STOCHASTIC_COMPRESED.*did you mean 'STOCHASTIC_COMPRESSED'",
        "rpu_config: {class: PCMPrest}\n": r"PCMPrest.*did you mean 'PCMPreset'",
        "rpu_config: {class: PCMPreset}\nwriter: {policy: exakt}\n": r"writer.policy",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            device_configs.load_spec(_write(tmp_path, text))


def test_unknown_names_suggest_a_shipped_one():
    with pytest.raises(ConfigError, match="did you mean 'pcm_4device'"):
        device_configs.load("pcm_4devise")


def test_extra_folders_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("rpu_config: {class: PCMPreset}\nbaseline: 0.4\n")
    monkeypatch.setenv(device_configs.ENV_FOLDERS, str(tmp_path))
    assert "mine" in device_configs.available()
    assert device_configs.load_spec("mine").baseline == 0.4


@pytest.mark.parametrize("value, message", [
    ("-5", r"greater than 0 \(got -5\)"),
    ("0", r"greater than 0 \(got 0\)"),
    ('"abc"', r"a valid number \(got 'abc'\)"),
    ("true", r"a valid number \(got True\)"),
])
def test_a_bad_step_is_one_line_naming_file_field_and_value(tmp_path, value, message):
    path = _write(tmp_path, f"rpu_config:\n  class: SingleRPUConfig\n  device:\n    class: ConstantStepDevice\n"
                            f"    dw_min: {value}\n")
    line = rf"^{re.escape(str(path))}: rpu_config\.device\.dw_min: .*{message}$"
    with pytest.raises(ConfigError, match=line) as info:
        device_configs.load(path)
    assert "\n" not in str(info.value)


def test_ranges_and_types_aihwkit_documents_are_checked_at_any_depth(tmp_path):
    cases = {
        # a probability above 1, inside a device list
        "rpu_config:\n  class: UnitCellRPUConfig\n  device:\n    class: VectorUnitCell\n    unit_cell_devices:\n"
        "    - {class: PCMPresetUnitCell}\n    - {class: PCMPresetDevice, corrupt_devices_prob: 1.5}\n":
            r"rpu_config\.device\.unit_cell_devices\[1\]\.corrupt_devices_prob: .*less than or equal to 1 \(got 1\.5\)",
        # a negative bit width, two dataclasses deep
        "rpu_config:\n  class: QuantizedTorchInferenceRPUConfig\n  pre_post: {periph_quant: {n_bits: -4}}\n":
            r"rpu_config\.pre_post\.periph_quant\.n_bits: .*greater than or equal to 0 \(got -4\)",
        # a negative standard deviation
        "rpu_config: {class: PCMPreset, forward: {out_noise: -0.1}}\n":
            r"rpu_config\.forward\.out_noise: .*greater than or equal to 0 \(got -0\.1\)",
        # an int field given a fraction, and a list entry that is not a number
        "rpu_config: {class: PCMPreset, update: {desired_bl: 2.5}}\n": r"rpu_config\.update\.desired_bl: .*integer",
        "rpu_config:\n  class: UnitCellRPUConfig\n  device: {class: VectorUnitCell, gamma_vec: [0.5, x]}\n":
            r"rpu_config\.device\.gamma_vec\[1\]: .*valid number \(got 'x'\)",
        # a plain (non-dataclass) aihwkit class: the noise model's constructor annotations
        "rpu_config: {class: InferenceRPUConfig, noise_model: {class: PCMLikeNoiseModel, t_read: fast}}\n":
            r"rpu_config\.noise_model\.t_read: .*valid number",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            device_configs.load(_write(tmp_path, text))


def test_values_in_range_are_kept():
    rpu = device_configs.from_dict({"class": "SingleRPUConfig", "device": {
        "class": "ConstantStepDevice", "dw_min": 0.002, "corrupt_devices_prob": 1, "dw_min_std": 0}})
    assert (rpu.device.dw_min, rpu.device.corrupt_devices_prob, rpu.device.dw_min_std) == (0.002, 1, 0)


def _numbers(obj) -> dict:
    """Every number a dataclass holds, nested dataclasses as nested mappings: a file setting all of them."""
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, (int, float)) and not isinstance(value, enum.Enum):
            out[field.name] = value
        elif dataclasses.is_dataclass(value) and field.init:
            same_class = type(value) is type(getattr(type(obj)(), field.name))
            out[field.name] = _numbers(value) if same_class else {"class": type(value).__name__, **_numbers(value)}
    return out


def test_every_aihwkit_default_and_preset_value_passes_the_checks():
    """The ranges are aihwkit's own: no default or preset value of any aihwkit class is refused."""
    checked = 0
    for name, cls in device_configs._registry().items():
        if dataclasses.is_dataclass(cls) and not issubclass(cls, enum.Enum):
            data = _numbers(cls())
            device_configs.from_dict({"class": name, **data})
            checked += 1
    assert checked > 50
