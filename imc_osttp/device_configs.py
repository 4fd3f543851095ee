"""Named analog device configurations: aihwkit rpu_configs as YAML, plus how the backend uses them.

A configuration file describes one aihwkit rpu_config generically: the class
name and every (nested) field that differs from that class's defaults, enums
by name, sub-device lists item by item. Nothing is hand-coded per class, so
any aihwkit configuration can be saved, diffed and reviewed as text, and a
misspelled field is an error that names the closest valid field instead of
an aihwkit default silently taking its place.

Besides `rpu_config`, a file may hold settings that are not rpu_config
fields (a baseline conductance, the pulse writer, when a fixed tile is
read); `load_spec` returns them with the config in a typed `DeviceSpec`.
Named files live in the repository's `device_configs/` folder (installed as
the package `imc_osttp.device_data`), in the folders listed in
IMC_OSTTP_DEVICE_CONFIGS (searched first) and in those plugins register
(`imc_osttp.register_device_configs`, searched next).

Every number a file sets is checked before aihwkit sees it: its type is the
aihwkit field's annotation, and where aihwkit's documentation gives a range
(probabilities, standard deviations, bit widths, the update step) the value
must lie in it, so a bad value is one line naming the field, not a traceback
from deep inside a tile.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import inspect
import os
import re
import types
import typing
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from . import registry
from .config import build, read_yaml
from .errors import ConfigError
from .named import find, named_files

ENV_FOLDERS = "IMC_OSTTP_DEVICE_CONFIGS"
SHIPPED = Path(str(files("imc_osttp.device_data")))
# where class names in the files are looked up
MODULES = ("aihwkit.simulator.configs", "aihwkit.simulator.parameters", "aihwkit.simulator.presets",
           "aihwkit.simulator.tiles", "aihwkit.simulator.tiles.array", "aihwkit.inference")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class WriterSpec(_Strict):
    """How a dense update matrix becomes pulses (rank-1 updates use the tile's own pulse update)."""

    # stochastic: the tile's pulse update, one one-hot row per input; exact: digital rounding to
    # pulse counts, each fired one by one (counts are exact)
    policy: Literal["stochastic", "exact"] = "stochastic"
    # exact writer: unbiased random rounding, or carry the remainder digitally (mixed precision)
    rounding: Literal["stochastic", "carry"] = "stochastic"
    # weight change assumed per pulse in conductance units; default: aihwkit's weight granularity
    step: float | None = Field(None, gt=0)
    max_pulses: int = Field(31, ge=1)  # exact writer: most pulses per device and update


class ProgramSpec(_Strict):
    """When a programmed (never updated) tile is read, for drift."""

    drift_time: float = Field(0.0, ge=0)  # seconds between programming and use; 0: no drift
    # the array ages with the chip clock (backend.time_per_update, deployment): at every clock step it is
    # drifted to drift_time + the chip time since programming (its noise model's drift, 1/f noise, compensation)
    follow_clock: bool = False


class DriftModelSpec(_Strict):
    """A measured chip's conductance-dependent drift exponent for the trainable devices: whenever a write
    restarts a device's drift clock, its ν is drawn anew from the chip's ν(G) distribution at the device's
    new conductance (aihwkit's pulsed devices draw ν once per device, independent of G)."""

    model: Literal["hermes"] = "hermes"  # aihwkit's HermesNoiseModel.generate_drift_coefficients
    num_devices: Literal[1, 2] = 1  # which of its fits: 1 = one device (each device is simulated on its own)
    # the device conductance mapped to the model's g_max; default: the device's upper bound w_max
    g_max: float | None = Field(None, gt=0)


class DeviceSpec(_Strict):
    """A named device configuration: the rpu_config and what the backend does around it."""

    description: str = ""
    rpu_config: Any
    # conductance both devices of every differential pair start from (set after set_weights)
    baseline: float | None = Field(None, ge=0)
    writer: WriterSpec = WriterSpec()
    program: ProgramSpec = ProgramSpec()
    drift: DriftModelSpec | None = None


def available() -> list[str]:
    """Names of the configurations found in the shipped and the user's folders."""
    return sorted(named_files(_places()))


def load(name_or_path: str | Path) -> Any:
    """The aihwkit rpu_config of a named configuration or YAML file, carrying its writer.

    A pulsed training configuration comes back as aihwkit's config class with the writer and the baseline
    as fields and `tile_class` a `WriterTile` (imc_osttp.backends.tile), so any aihwkit model built from it
    (AnalogLinear, AnalogConv2d, AnalogLSTM, layers mapped onto several tiles) and trained by AnalogSGD
    writes its updates as the project's analog backend does; other configurations come back as they are.
    """
    from .backends.tile import with_writer  # imports aihwkit

    spec = load_spec(name_or_path)
    return with_writer(spec.rpu_config, spec.writer, spec.baseline)


def load_spec(name_or_path: str | Path) -> DeviceSpec:
    """The rpu_config with the backend settings stored beside it."""
    path = _resolve(name_or_path)
    data = read_yaml(path)
    if "rpu_config" not in data:
        raise ConfigError(f"{path}: no 'rpu_config' section")
    raw = data.pop("rpu_config")
    spec = build(DeviceSpec, {**data, "rpu_config": None}, source=str(path))
    try:
        rpu_config = from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return spec.model_copy(update={"rpu_config": rpu_config})


def save(config: Any, path: str | Path) -> None:
    """Write an rpu_config (or a whole DeviceSpec) as YAML that `load_spec` reads back equal; the writer and
    baseline of a config from `load` go to their own sections, beside the aihwkit config they extend."""
    if isinstance(config, DeviceSpec):
        spec = config
    elif hasattr(config, "writer"):
        from .backends.tile import without_writer  # imports aihwkit

        spec = DeviceSpec(rpu_config=without_writer(config), writer=config.writer, baseline=config.baseline)
    else:
        spec = DeviceSpec(rpu_config=config)
    data = spec.model_dump(exclude={"rpu_config"}, exclude_defaults=True)
    data["rpu_config"] = to_dict(spec.rpu_config)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def to_dict(obj: Any) -> dict[str, Any]:
    """`{"class": name, field: value, ...}` with only the fields that differ from the class defaults."""
    return {"class": _class_name(type(obj)), **_fields_dict(obj)}


def from_dict(data: Any, default: Any = None, where: str = "rpu_config") -> Any:
    """Inverse of `to_dict`; without a "class" key the class of `default` is used.

    `where` is the field path of `data` in its file, so that an error names the field as written there.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'class' key, got {data!r}")
    data = dict(data)
    name = data.pop("class", None)
    if name is None and default is None:
        raise ConfigError(f"{where}: missing 'class' in {data!r}")
    cls = _lookup(name, where) if name is not None else type(default)
    reference = cls()
    valid = _field_names(reference)
    numbers = _number_fields(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}"
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: unknown field of {cls.__name__}{hint}")
        if key in numbers:
            kwargs[key] = _check_number(numbers[key], value, path)
        else:
            kwargs[key] = _decode(value, getattr(reference, key), path)
    return cls(**kwargs)


# ------------------------------------------------------------------ internals


def _places() -> list[Path]:
    """Where names are looked up, first match winning: IMC_OSTTP_DEVICE_CONFIGS, plugins, the shipped folder."""
    extra = [Path(p) for p in os.environ.get(ENV_FOLDERS, "").split(os.pathsep) if p]
    return [*extra, *registry.device_config_paths(), SHIPPED]


def _resolve(name_or_path: str | Path) -> Path:
    return find(name_or_path, "device config", _places)


@cache
def _registry() -> dict[str, type]:
    """Class name -> class over aihwkit's public configuration namespaces."""
    names: dict[str, type] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and not name.startswith("_"):
                names.setdefault(name, obj)
    return names


def _lookup(name: str, where: str) -> type:
    cls = _registry().get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(_registry()), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown aihwkit class '{name}'{hint}")
    return cls


def _class_name(cls: type) -> str:
    if _registry().get(cls.__name__) is not cls:
        raise ValueError(f"{cls.__module__}.{cls.__name__} is not reachable by name from {MODULES}")
    return cls.__name__


def _field_names(obj: Any) -> list[str]:
    """Dataclass fields, or for plain objects the constructor arguments kept as attributes."""
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj)]
    params = inspect.signature(type(obj).__init__).parameters
    return [p for p in params if p != "self" and hasattr(obj, p)]


def _fields_dict(obj: Any) -> dict[str, Any]:
    reference = type(obj)()
    out = {}
    for name in _field_names(obj):
        value, default = getattr(obj, name), getattr(reference, name, None)
        if not _same(value, default):
            out[name] = _encode(value, default)
    return out


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, type) or isinstance(default, type):
        return value is default
    return _encode(value, default) == _encode(default, default)


def _is_object(value: Any) -> bool:
    """A nested configuration object (dataclass or aihwkit helper class), not a plain value."""
    return dataclasses.is_dataclass(value) or (
        type(value).__module__.startswith("aihwkit.") and not isinstance(value, (enum.Enum, type)))


def _encode(value: Any, default: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, type):
        return _class_name(value)
    if isinstance(value, (list, tuple)):
        return [to_dict(v) if _is_object(v) else _encode(v, None) for v in value]
    if _is_object(value):
        body = _fields_dict(value)
        return body if type(value) is type(default) else {"class": _class_name(type(value)), **body}
    return value


def _decode(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, enum.Enum) and isinstance(value, str):
        members = list(type(default).__members__)
        if value not in members:
            close = difflib.get_close_matches(value, members, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; one of {members}"
            raise ConfigError(f"{where}: '{value}' is not a {type(default).__name__}{hint}")
        return type(default)[value]
    if isinstance(default, type) and isinstance(value, str):
        return _lookup(value, where)
    if isinstance(value, list):
        return [from_dict(v, where=f"{where}[{i}]") if isinstance(v, dict) else v for i, v in enumerate(value)]
    if isinstance(value, dict):
        return from_dict(value, default if _is_object(default) else None, where)
    return value


# Ranges that aihwkit's field docstrings give, keyed by its naming conventions: probabilities
# (corrupt_devices_prob, pdrop, in_chop_prob, pcm_prob_at_*), percentages as fractions,
# standard deviations and relative device-to-device spreads (dw_min_std, w_max_dtod, out_noise,
# std_dev, diffusion), bit widths (n_bits: 0 switches quantisation off), the length of a pulse
# train, and the mean update step of a pulsed device. Every other number is only type-checked.
RANGES: tuple[tuple[str, dict[str, float]], ...] = (
    (r"(^|_)prob(_|$)|^pdrop$|_percentage$", {"ge": 0, "le": 1}),
    (r"_std$|_dtod$|^std_dev$|(^|_)noise$|^diffusion$", {"ge": 0}),
    (r"^n_bits$", {"ge": 0}),
    (r"^desired_bl$", {"ge": 1}),
    (r"^dw_min$", {"gt": 0}),
)
_NUMBER_TYPES = (bool, int, float, type(None))


def _annotations(cls: type) -> dict[str, Any]:
    """Field annotations: dataclass fields, or for plain classes the constructor's parameters."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.type for f in dataclasses.fields(cls)}
    params = inspect.signature(cls.__init__).parameters
    return {name: p.annotation for name, p in params.items() if p.annotation is not p.empty}


def _is_number_type(annotation: Any) -> bool:
    """A number, a bool, or an Optional or list of them (`float`, `Optional[float]`, `List[float]`)."""
    if annotation in _NUMBER_TYPES:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in (list, typing.Union, types.UnionType) and bool(args) and all(
        map(_is_number_type, args))


def _with_range(annotation: Any, name: str) -> Any:
    """`annotation` constrained to the range RANGES gives the field `name`, if any (scalars only)."""
    bounds = next((bounds for pattern, bounds in RANGES if re.search(pattern, name)), None)
    return Annotated[annotation, Field(**bounds)] if bounds and annotation in (int, float) else annotation


@cache
def _number_fields(cls: type) -> dict[str, TypeAdapter]:
    """A strict validator for each numeric field of `cls`; a field whose default is None may be null."""
    reference = cls()
    out = {}
    for name, annotation in _annotations(cls).items():
        if _is_number_type(annotation) and hasattr(reference, name):
            checked = _with_range(annotation, name)
            out[name] = TypeAdapter(checked | None if getattr(reference, name) is None else checked)
    return out


def _check_number(adapter: TypeAdapter, value: Any, where: str) -> Any:
    """`value` if it has the field's type and lies in its range; else one line naming the field and value."""
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        index = "".join(f"[{i}]" for i in err["loc"] if isinstance(i, int))
        raise ConfigError(f"{where}{index}: {err['msg']} (got {err['input']!r})") from None
