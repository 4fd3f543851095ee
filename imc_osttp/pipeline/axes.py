"""The axes of a pipeline spec: what varies between its points (imc_osttp/pipeline/spec.py).

    axes:
      - {kind: grid, key: dw_min_std, values: [0.0, 0.3, 0.6]}     # a knob or a dotted config key
      - {kind: ablation, knobs: [dw_min_std, out_noise]}           # all ideal but one (+ all ideal)
      - {kind: ablation_mirror, knobs: [dw_min_std, out_noise]}    # all realistic but one (+ all realistic)
      - {kind: rule, values: {osttp: {model.decay: 0.6}, ostl: {model.decay: 0.5}}}
      - {kind: variants, values: {bptt: {rule.name: bptt}, osttp: {rule.name: osttp}}}   # a study's `variants`
      - {kind: seed, values: [0, 1, 2]}

Axes combine as a cartesian product, except that the ablation axes join
into one (they vary the same knobs). "Realistic" is the value the device
config itself gives a knob (after the base's knobs), or the axis'
`realistic:` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .. import knobs as knoblib
from ..config import RuleName, RunConfig, _Strict, flatten
from ..errors import ConfigError

KNOB_PREFIX = "backend.knobs."


@dataclass(frozen=True)
class Setting:
    """One value of one axis: its label, the dotted overrides it applies, knobs resolved per point."""

    label: str
    overrides: dict[str, Any]
    # knob -> realistic value, or None: read it from the point's device config
    realistic: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> set[str]:
        return set(self.overrides) | {KNOB_PREFIX + k for k in self.realistic}


class GridAxis(_Strict):
    """One key over a list of values; several grid axes form a cartesian product."""

    kind: Literal["grid"]
    key: str  # a knob (imc_osttp.knobs) or a dotted RunConfig key
    values: list[Any] = Field(min_length=1)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.key

    @property
    def is_knob(self) -> bool:
        return "." not in self.key or self.key.startswith(KNOB_PREFIX)

    def settings(self, base: RunConfig) -> list[Setting]:
        if not self.is_knob:
            return [Setting(str(v), {self.key: v}) for v in self.values]
        knob = self.key.removeprefix(KNOB_PREFIX)
        values = [knoblib.check_knobs({knob: v})[knob] for v in self.values]
        return [Setting(str(v), {KNOB_PREFIX + knob: v}) for v in values]


class _NamedAxis(_Strict):
    """An axis of fixed kind whose label is its `name` field (declared by each axis, where its fields put it),
    or the kind's default label."""

    DEFAULT_LABEL: ClassVar[str]
    is_knob: ClassVar[bool] = False  # whether its settings are knobs (they then vary device configs)

    @property
    def label(self) -> str:
        return self.name or self.DEFAULT_LABEL


class AblationAxis(_NamedAxis):
    """One non-ideality at a time: all ideal but one (`ablation`), or all realistic but one (mirror)."""

    kind: Literal["ablation", "ablation_mirror"]
    # default: every knob with an ideal value that the base's device configs do not set ideal
    knobs: list[str] | None = None
    realistic: dict[str, float | int] = {}  # realistic values to use instead of the device config's
    baseline: bool = True  # add the all-ideal (ablation) or all-realistic (mirror) point
    name: str | None = None

    @model_validator(mode="after")
    def _known(self) -> AblationAxis:
        knoblib.check_knobs(self.realistic)
        for name in [*(self.knobs or []), *self.realistic]:
            knoblib.check_name(name)
            if knoblib.ideal(name) is None:
                raise ValueError(f"knob '{name}' is a scale with no ideal value; vary it with a grid axis")
            if name in self.realistic and self.realistic[name] == knoblib.ideal(name):
                raise ValueError(f"realistic.{name}: {self.realistic[name]} is its ideal value")
        return self

    DEFAULT_LABEL: ClassVar[str] = "ablation"
    is_knob: ClassVar[bool] = True

    def settings(self, base: RunConfig) -> list[Setting]:
        names = self.knobs if self.knobs is not None else default_ablation_knobs(base)
        if not names:
            raise ConfigError(f"{self.kind} axis: no knob of the base's device configs is non-ideal")
        ideal = {KNOB_PREFIX + k: knoblib.ideal(k) for k in names}
        real = {k: self.realistic.get(k) for k in names}
        if self.kind == "ablation":
            out = [Setting(f"only:{k}", {i: v for i, v in ideal.items() if i != KNOB_PREFIX + k}, {k: real[k]})
                   for k in names]
            return [Setting("ideal", ideal), *out] if self.baseline else out
        out = [Setting(f"all_but:{k}", {KNOB_PREFIX + k: ideal[KNOB_PREFIX + k]},
                       {j: v for j, v in real.items() if j != k}) for k in names]
        return [Setting("realistic", {}, real), *out] if self.baseline else out


class RuleAxis(_NamedAxis):
    """Learning rules, each with optional overrides of its own (decay, learning rate...)."""

    kind: Literal["rule"]
    values: dict[RuleName, dict[str, Any]] = Field(min_length=1)  # a list of names: no overrides
    name: str | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _names(cls, values: Any) -> Any:
        return {v: {} for v in values} if isinstance(values, list) else values

    DEFAULT_LABEL: ClassVar[str] = "rule"

    def settings(self, base: RunConfig) -> list[Setting]:
        return [Setting(rule, {"rule.name": rule, **flatten(extra)}) for rule, extra in self.values.items()]


class VariantAxis(_NamedAxis):
    """Named sets of overrides (dotted keys or sections): a study's `variants` are one such axis."""

    kind: Literal["variants"]
    values: dict[str, dict[str, Any]] = Field(min_length=1)
    name: str | None = None

    DEFAULT_LABEL: ClassVar[str] = "variant"

    def settings(self, base: RunConfig) -> list[Setting]:
        return [Setting(name, dict(overrides or {})) for name, overrides in self.values.items()]


class SeedAxis(_Strict):
    """The seeds every point is trained with (the same as the top-level `seeds`)."""

    kind: Literal["seed"]
    values: list[int] = Field(min_length=1)


Axis = Annotated[GridAxis | AblationAxis | RuleAxis | VariantAxis | SeedAxis, Field(discriminator="kind")]


@dataclass(frozen=True)
class Dimension:
    """One factor of the cartesian product of points: one axis, or the union of the ablation axes.

    `ablation` and `ablation_mirror` vary the same knobs, so their points are
    alternatives (a union: ideal, realistic, only:k, all_but:k), not a product.
    """

    label: str
    kind: str
    key: str | None
    axes: tuple[GridAxis | AblationAxis | RuleAxis | VariantAxis, ...]

    @property
    def is_knob(self) -> bool:
        return all(a.is_knob for a in self.axes)

    def settings(self, base: RunConfig) -> list[Setting]:
        return [s for axis in self.axes for s in axis.settings(base)]


def default_ablation_knobs(cfg: RunConfig) -> list[str]:
    """Knobs with an ideal value that the device configs of `cfg` hold at a non-ideal value."""
    specs = device_specs(cfg)
    out = []
    for name in knoblib.names():
        ideal = knoblib.ideal(name)
        values = [knoblib.current(specs[r], name) for r in knoblib.roles(name)]
        if ideal is not None and any(v is not None and v != ideal for v in values):
            out.append(name)
    return out


def realistic_value(cfg: RunConfig, name: str, given: Any, where: str) -> knoblib.KnobValue:
    if given is not None:
        return knoblib.check_knobs({name: given})[name]
    specs = device_specs(cfg)
    values = [knoblib.current(specs[r], name) for r in knoblib.roles(name)]
    value = next((v for v in values if v is not None), None)
    if value is None:
        raise ConfigError(f"{where}: knob '{name}' has no place in {cfg.backend.device_config} "
                          f"or {cfg.backend.feedback_config}")
    if value == knoblib.ideal(name):
        raise ConfigError(f"{where}: the device config holds knob '{name}' at its ideal value {value}; "
                          f"give a realistic value under the axis' `realistic:`")
    return value


def device_specs(cfg: RunConfig) -> dict[str, Any]:
    """The DeviceSpecs of both roles, with the config's knobs applied."""
    from .. import device_configs  # imports aihwkit: only sweeps over knobs need it

    names = {"device": cfg.backend.device_config, "feedback": cfg.backend.feedback_config}
    return {role: knoblib.apply_to_spec(device_configs.load_spec(name), cfg.backend.knobs, role)
            for role, name in names.items()}
