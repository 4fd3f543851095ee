"""Named device non-idealities ("knobs") and how each one lands in an aihwkit rpu_config.

A sweep varies one physical property at a time (step noise, DAC bits, drift)
without knowing where aihwkit keeps it: `dw_min_std` lives on every pulsed
device inside nested unit cells, `inp_res` in the forward and backward IO
parameters, `feedback_prog_noise` in the noise model of B's config. A knob
names the property once; `apply_knobs` writes it everywhere it lives, and
fails (instead of silently doing nothing) when the configuration has no
place for it.

Conventions:

- DAC/ADC resolution (`inp_res`, `out_res`) is given in **bits**: b bits is
  aihwkit's bin width 1/(2^b − 2) (7 bits = 1/126, the PCM preset's DAC);
  0 bits means no quantisation (aihwkit's −1).
- IO knobs set the forward and the backward pass of the trainable tiles (the
  same periphery reads both ways); `w_noise` > 0 on a config without a read
  noise type switches it to ADDITIVE_CONSTANT.
- `ideal` is the value "everything ideal except one" gives a knob; `None`
  marks a scale rather than a non-ideality (`dw_min`, `w_max`, `w_min`,
  `desired_bl`): there is no ideal value, the device's own one stays.
- Each knob belongs to one role: "device" (the trainable tiles' config,
  `backend.device_config`) or "feedback" (B's, `backend.feedback_config`);
  `drift_time` is not an rpu_config field but the DeviceSpec's
  `program.drift_time`, and belongs to both.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

Role = Literal["device", "feedback"]
ROLES: tuple[Role, ...] = ("device", "feedback")
KnobValue = float | int | str


def device_tree(rpu: Any) -> Iterator[Any]:
    """Every device and unit cell of an rpu_config, outermost first (VectorUnitCell, OneSided, compounds)."""
    stack = [getattr(rpu, "device", None)]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        yield node
        stack.extend(reversed(getattr(node, "unit_cell_devices", None) or []))
        inner = getattr(node, "device", None)  # MixedPrecisionCompound / DigitalRankUpdateCell
        if inner is not None and inner is not node:
            stack.append(inner)


def pulsed_devices(rpu: Any) -> list[Any]:
    from aihwkit.simulator.configs.devices import PulsedDevice

    return [d for d in device_tree(rpu) if isinstance(d, PulsedDevice)]


def drift_parameters(rpu: Any) -> list[Any]:
    return [d.drift for d in pulsed_devices(rpu) if getattr(d, "drift", None) is not None]


def _cells(rpu: Any) -> list[Any]:
    return [d for d in device_tree(rpu) if hasattr(d, "refresh_every")]


def _io(rpu: Any) -> list[Any]:
    return [p for p in (getattr(rpu, "forward", None), getattr(rpu, "backward", None)) if p is not None]


def _update(rpu: Any) -> list[Any]:
    update = getattr(rpu, "update", None)
    return [update] if update is not None and hasattr(update, "desired_bl") else []


def _noise_model(rpu: Any) -> list[Any]:
    model = getattr(rpu, "noise_model", None)
    return [model] if model is not None and hasattr(model, "prog_noise_scale") else []


def bits_to_res(bits: float) -> float:
    """aihwkit's bin width for a converter of `bits` bits; 0 bits: no quantisation (-1)."""
    return -1.0 if bits <= 0 else 1.0 / (2.0 ** bits - 2.0)


def res_to_bits(res: float) -> float:
    """Inverse of `bits_to_res`; aihwkit also accepts a step count (> 1) in place of the width."""
    if res <= 0:
        return 0.0
    steps = res if res > 1 else 1.0 / res
    return round(math.log2(steps + 2.0), 6)


def _set_w_noise(io: Any, value: float) -> None:
    from aihwkit.simulator.parameters import WeightNoiseType

    io.w_noise = value
    if value > 0 and io.w_noise_type == WeightNoiseType.NONE:
        io.w_noise_type = WeightNoiseType.ADDITIVE_CONSTANT


@dataclass(frozen=True)
class Knob:
    """One named property: where it lives in an rpu_config, its units, its ideal value."""

    name: str
    doc: str
    role: Role
    targets: Callable[[Any], list[Any]]  # the objects of an rpu_config that hold the field
    attr: str
    ideal: KnobValue | None
    kind: type = float
    minimum: float | None = 0.0  # inclusive; None: any sign
    to_aihwkit: Callable[[Any], Any] = lambda v: v
    from_aihwkit: Callable[[Any], Any] = lambda v: v
    setter: Callable[[Any, Any], None] | None = None  # default: setattr(target, attr, to_aihwkit(value))

    def holders(self, rpu: Any) -> list[Any]:
        """The objects of `rpu` that have this knob's field (not every device models write noise)."""
        return [t for t in self.targets(rpu) if hasattr(t, self.attr)]

    def assign(self, target: Any, value: KnobValue) -> None:
        if self.setter is not None:
            self.setter(target, value)
        else:
            setattr(target, self.attr, self.to_aihwkit(value))


def _device(name: str, doc: str, ideal: float | None, minimum: float | None = 0.0) -> Knob:
    return Knob(name, doc, "device", pulsed_devices, name, ideal, minimum=minimum)


KNOBS: dict[str, Knob] = {k.name: k for k in [
    _device("dw_min", "mean weight step of one pulse", None),
    _device("dw_min_dtod", "device-to-device variation of the step (relative)", 0.0),
    _device("dw_min_std", "cycle-to-cycle noise of the step (relative)", 0.0),
    _device("up_down", "up/down step asymmetry", 0.0, minimum=None),
    _device("up_down_dtod", "device-to-device variation of the asymmetry", 0.0),
    _device("w_max", "upper conductance bound", None, minimum=None),
    _device("w_min", "lower conductance bound", None, minimum=None),
    _device("w_max_dtod", "device-to-device variation of the upper bound", 0.0),
    _device("w_min_dtod", "device-to-device variation of the lower bound", 0.0),
    _device("write_noise_std", "write noise, in units of dw_min (devices that model it)", 0.0),
    Knob("drift_nu", "drift exponent nu of every pulsed device (acts when the tile is drifted: "
         "backend.time_per_update)", "device", drift_parameters, "nu", 0.0),
    Knob("drift_nu_dtod", "device-to-device spread of nu (relative)", "device", drift_parameters, "nu_dtod", 0.0),
    Knob("drift_nu_std", "spread of nu redrawn at every drift step (relative; aihwkit draws it per drift call, "
         "not per write)", "device", drift_parameters, "nu_std", 0.0),
    Knob("drift_t0", "the drift power law's t0 in seconds: a written device holds its conductance for t0, then "
         "drifts as (t/t0)^-nu", "device", drift_parameters, "t_0", None, minimum=1e-3),
    Knob("drift_reset_tol", "a device's drift clock restarts when a write moves it by more than this. A change "
         "below it is not kept: aihwkit sets the device to its drifted value at the next drift step, so a huge "
         "tolerance undoes every write there (it does not keep old clocks running)", "device", drift_parameters,
         "reset_tol", 1e-7),
    Knob("refresh_every", "updates between refreshes of one-sided pairs; 0: never", "device", _cells,
         "refresh_every", 0, kind=int),
    Knob("desired_bl", "maximum pulse-train length per update", "device", _update, "desired_bl", None,
         kind=int, minimum=1),
    Knob("inp_res", "DAC resolution in bits; 0: none", "device", _io, "inp_res", 0.0,
         to_aihwkit=bits_to_res, from_aihwkit=res_to_bits),
    Knob("out_res", "ADC resolution in bits; 0: none", "device", _io, "out_res", 0.0,
         to_aihwkit=bits_to_res, from_aihwkit=res_to_bits),
    Knob("out_noise", "output (summation) noise std of every MVM", "device", _io, "out_noise", 0.0),
    Knob("w_noise", "read noise of the weights in every MVM", "device", _io, "w_noise", 0.0,
         setter=_set_w_noise),
    Knob("feedback_prog_noise", "scale of B's PCM programming noise", "feedback", _noise_model,
         "prog_noise_scale", 0.0),
]}
# not an rpu_config field: the DeviceSpec's program.drift_time, for every tile the backend drifts
DRIFT_TIME = "drift_time"
SPEC_KNOBS = {DRIFT_TIME: "seconds between programming and reading (drift); 0: none"}
SWEEP_AXES = ("rule", "seed")  # varied by the sweep itself, not knobs


def names() -> list[str]:
    return [*KNOBS, *SPEC_KNOBS]


def roles(name: str) -> tuple[Role, ...]:
    return ROLES if name in SPEC_KNOBS else (KNOBS[name].role,)


def ideal(name: str) -> KnobValue | None:
    return 0.0 if name in SPEC_KNOBS else KNOBS[name].ideal


def check_name(name: str) -> None:
    """ConfigError for an unknown knob, naming the closest one and listing the valid ones."""
    if name not in KNOBS and name not in SPEC_KNOBS:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = (" (varied by a sweep axis, not a knob)" if name in SWEEP_AXES
                else f"; did you mean '{close[0]}'?" if close else "")
        raise ConfigError(f"knob '{name}': unknown{hint}; valid knobs: {', '.join(names())}")


def check_knobs(knobs: Mapping[str, Any]) -> dict[str, KnobValue]:
    """Validated knob values, converted to each knob's type (so 0 and 0.0 are the same setting)."""
    out: dict[str, KnobValue] = {}
    for name, value in knobs.items():
        check_name(name)
        kind, minimum = (KNOBS[name].kind, KNOBS[name].minimum) if name in KNOBS else (float, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and float(value) != int(value)):
            raise ConfigError(f"knob '{name}': expected {'an integer' if kind is int else 'a number'}, "
                              f"got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"knob '{name}': must be >= {minimum}, got {value!r}")
        out[name] = kind(value)
    return out


def apply_knobs(rpu_config: Any, knobs: Mapping[str, Any], role: Role = "device") -> Any:
    """A deep copy of `rpu_config` with the knobs of `role` written wherever they live.

    Knobs of the other role and spec-level knobs (drift_time) are left to their
    own config; a knob of this role that has no place in it is a ConfigError.
    """
    rpu = copy.deepcopy(rpu_config)
    for name, value in check_knobs(knobs).items():
        knob = KNOBS.get(name)
        if knob is None or knob.role != role:
            continue
        targets = knob.holders(rpu)
        if not targets:
            raise ConfigError(f"knob '{name}' ({knob.doc}): {describe(rpu)} has no such field")
        for target in targets:
            knob.assign(target, value)
    return rpu


def apply_to_spec(spec: Any, knobs: Mapping[str, Any], role: Role) -> Any:
    """A DeviceSpec (rpu_config + backend settings) with the knobs of `role` applied."""
    rpu = apply_knobs(spec.rpu_config, knobs, role)
    update: dict[str, Any] = {"rpu_config": rpu}
    if DRIFT_TIME in knobs:
        drift = check_knobs({DRIFT_TIME: knobs[DRIFT_TIME]})[DRIFT_TIME]
        update["program"] = spec.program.model_copy(update={"drift_time": drift})
    old_dw, new_dw = current(spec, "dw_min"), current(spec.model_copy(update=update), "dw_min")
    if spec.writer.step and old_dw and new_dw and new_dw != old_dw:
        # the writer's pulse step is calibrated to the device: a device with another step
        # gets the calibration scaled with it, so a dw_min sweep varies the device, not the error
        update["writer"] = spec.writer.model_copy(update={"step": spec.writer.step * new_dw / old_dw})
    return spec.model_copy(update=update)


def current(spec: Any, name: str) -> KnobValue | None:
    """The value a DeviceSpec gives knob `name` (its first holder's), or None if it has no place for it."""
    if name in SPEC_KNOBS:
        return float(spec.program.drift_time)
    knob = KNOBS[name]
    targets = knob.holders(spec.rpu_config)
    if not targets:
        return None
    return knob.kind(knob.from_aihwkit(getattr(targets[0], knob.attr)))


def describe(rpu: Any) -> str:
    """`UnitCellRPUConfig(VectorUnitCell, PCMPresetUnitCell, PCMPresetDevice, ...)`, for error messages."""
    kinds = list(dict.fromkeys(type(d).__name__ for d in device_tree(rpu)))
    return f"{type(rpu).__name__}({', '.join(kinds)})"
