"""Sweep files: a base run config, axes of variation and seeds, expanded into the points to train.

    name: pcm_ablation
    base_config: jsb_osttp.yaml            # optional run config, relative to this file; `base` merges over it
    base: {backend: {kind: analog, device_config: pcm_4device}}
    seeds: [0, 1, 2]
    digital_reference: true                # also train the digital backend once per non-knob setting
    axes:
      - {kind: grid, key: dw_min_std, values: [0.0, 0.3, 0.6]}     # a knob or a dotted config key
      - {kind: ablation, knobs: [dw_min_std, out_noise]}           # all ideal but one (+ all ideal)
      - {kind: ablation_mirror, knobs: [dw_min_std, out_noise]}    # all realistic but one (+ all realistic)
      - {kind: rule, values: {osttp: {model.decay: 0.6}, ostl: {model.decay: 0.5}}}

Axes combine as a cartesian product, except that the ablation axes join
into one (they vary the same knobs); points that resolve to the same config
are trained once, under the first one's labels. "Realistic" is the value the device
config itself gives a knob (after the base's knobs), or the axis'
`realistic:` entry. A point's id hashes its resolved config, so it does not
depend on the order of the axes, on labels or on the sweep's name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .. import knobs as knoblib
from ..config import RuleName, RunConfig, _Strict, build, config_hash, flatten, merge, read_yaml, set_dotted
from ..errors import ConfigError
from ..named import study_file

KNOB_PREFIX = "backend.knobs."
DIGITAL = "digital"


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


class AblationAxis(_Strict):
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

    @property
    def label(self) -> str:
        return self.name or "ablation"

    @property
    def is_knob(self) -> bool:
        return True

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


class RuleAxis(_Strict):
    """Learning rules, each with optional overrides of its own (decay, learning rate...)."""

    kind: Literal["rule"]
    values: dict[RuleName, dict[str, Any]] = Field(min_length=1)  # a list of names: no overrides
    name: str | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _names(cls, values: Any) -> Any:
        return {v: {} for v in values} if isinstance(values, list) else values

    @property
    def label(self) -> str:
        return self.name or "rule"

    @property
    def is_knob(self) -> bool:
        return False

    def settings(self, base: RunConfig) -> list[Setting]:
        return [Setting(rule, {"rule.name": rule, **flatten(extra)}) for rule, extra in self.values.items()]


class SeedAxis(_Strict):
    """The seeds every point is trained with (the same as the top-level `seeds`)."""

    kind: Literal["seed"]
    values: list[int] = Field(min_length=1)


Axis = Annotated[GridAxis | AblationAxis | RuleAxis | SeedAxis, Field(discriminator="kind")]


@dataclass(frozen=True)
class Dimension:
    """One factor of the cartesian product of points: one axis, or the union of the ablation axes.

    `ablation` and `ablation_mirror` vary the same knobs, so their points are
    alternatives (a union: ideal, realistic, only:k, all_but:k), not a product.
    """

    label: str
    kind: str
    key: str | None
    axes: tuple[GridAxis | AblationAxis | RuleAxis, ...]

    @property
    def is_knob(self) -> bool:
        return all(a.is_knob for a in self.axes)

    def settings(self, base: RunConfig) -> list[Setting]:
        return [s for axis in self.axes for s in axis.settings(base)]


class SweepSpec(_Strict):
    """A sweep file, validated; `expand` turns it into points."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # a file name and an MLflow tag value
    description: str = ""
    base: dict[str, Any] = {}
    seeds: list[int] | None = Field(None, min_length=1)  # default [0]; or a `seed` axis
    axes: list[Axis] = []
    digital_reference: bool = False
    workers: int = Field(1, ge=1)
    output_dir: str = "results"

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        seed_axes = [a for a in self.axes if isinstance(a, SeedAxis)]
        if len(seed_axes) > 1 or (seed_axes and self.seeds is not None):
            raise ValueError("seeds: give them once, as `seeds` or as one `seed` axis")
        labels = [d.label for d in self.dimensions()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"axes: two axes share a name ({labels}); give one a `name`")
        return self

    def dimensions(self) -> list[Dimension]:
        """The factors of the product: each grid or rule axis, and all ablation axes joined into one."""
        out: list[Dimension] = []
        ablations = [a for a in self.axes if isinstance(a, AblationAxis)]
        for axis in self.axes:
            if isinstance(axis, AblationAxis):
                if axis is ablations[0]:
                    out.append(Dimension(axis.label, "ablation", None, tuple(ablations)))
            elif not isinstance(axis, SeedAxis):
                out.append(Dimension(axis.label, axis.kind, getattr(axis, "key", None), (axis,)))
        return out

    def seed_list(self) -> list[int]:
        seed_axes = [a.values for a in self.axes if isinstance(a, SeedAxis)]
        return seed_axes[0] if seed_axes else self.seeds or [0]


@dataclass(frozen=True)
class Point:
    """One setting of every axis: a resolved config (trained once per seed) and its stable id."""

    id: str
    labels: dict[str, str]  # axis label -> this point's value on it
    cfg: RunConfig  # with the sweep's first seed; `config(seed)` for the others

    def config(self, seed: int) -> RunConfig:
        return self.cfg.model_copy(update={"seed": seed})


def parse_sweep(data: dict[str, Any], folder: str | Path = ".", source: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping; `base_config` (a run-config YAML) is read relative to `folder`."""
    data = dict(data)
    ref = data.pop("base_config", None)
    if ref is not None:
        data["base"] = merge(read_yaml(Path(folder) / ref), data.get("base") or {})
    return build(SweepSpec, data, source=source)


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    path = study_file(path)  # a path, or a shipped study's name
    data = read_yaml(path)
    return parse_sweep(merge(data, overrides) if overrides else data, Path(path).parent, str(path))


def point_id(cfg: RunConfig) -> str:
    """The config's hash without tracking, name, seed (labels and replicates) and the engine (the same run)."""
    return config_hash(cfg, {"tracking": True, "name": True, "seed": True, "train": {"engine"}})


def sweep_hash(points: list[Point], seeds: list[int]) -> str:
    """Identifies the set of runs, so a rerun of the same sweep finds its parent run again."""
    keys = sorted(f"{p.id}:{s}" for p in points for s in seeds)
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:12]


def runs(spec: SweepSpec, points: list[Point]) -> list[tuple[Point, int]]:
    return [(p, s) for p in points for s in spec.seed_list()]


def expand(spec: SweepSpec) -> list[Point]:
    """Every point of the sweep, validated up front so a typo fails before any training."""
    base = merge({"tracking": {"experiment": spec.name}}, spec.base)
    base_cfg = _resolve(spec, base, source=f"sweep {spec.name}: base")
    if not base_cfg.tracking.enabled:
        raise ConfigError(f"sweep {spec.name}: base.tracking.enabled is false; a sweep records its runs "
                          "in MLflow (that is how it resumes)")
    axes = spec.dimensions()
    choices = [_settings(spec, axis, base_cfg) for axis in axes]
    _check_disjoint(axes, choices)
    points = [_point(spec, base, dict(zip([a.label for a in axes], combo, strict=True)))
              for combo in product(*choices)]
    if spec.digital_reference:
        points += _digital_references(spec, base, axes, choices)
    unique: dict[str, Point] = {}
    for point in points:  # e.g. with two knobs, only:a is all_but:b: trained once, under the first label
        unique.setdefault(point.id, point)
    return list(unique.values())


def default_ablation_knobs(cfg: RunConfig) -> list[str]:
    """Knobs with an ideal value that the device configs of `cfg` hold at a non-ideal value."""
    specs = _specs(cfg)
    out = []
    for name in knoblib.names():
        ideal = knoblib.ideal(name)
        values = [knoblib.current(specs[r], name) for r in knoblib.roles(name)]
        if ideal is not None and any(v is not None and v != ideal for v in values):
            out.append(name)
    return out


def _settings(spec: SweepSpec, axis: Dimension, base: RunConfig) -> list[Setting]:
    try:
        return axis.settings(base)
    except ConfigError as exc:
        raise ConfigError(f"sweep {spec.name}, axis '{axis.label}': {exc}") from None


def _check_disjoint(axes: list[Dimension], choices: list[list[Setting]]) -> None:
    owner: dict[str, str] = {}
    for axis, settings in zip(axes, choices, strict=True):
        for key in set().union(*(s.keys() for s in settings)):
            if owner.setdefault(key, axis.label) != axis.label:
                raise ConfigError(f"axes '{owner[key]}' and '{axis.label}' both set {key}")


def _resolve(spec: SweepSpec, data: dict[str, Any], source: str) -> RunConfig:
    return build(RunConfig, merge(data, {"seed": spec.seed_list()[0]}), source=source)


def _with(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return merge(data, tree)


def _point(spec: SweepSpec, base: dict[str, Any], settings: dict[str, Setting]) -> Point:
    labels = {axis: s.label for axis, s in settings.items()}
    where = f"sweep {spec.name}, point {labels}"
    data = base
    for setting in settings.values():
        data = _with(data, setting.overrides)
    lazy = {k: v for s in settings.values() for k, v in s.realistic.items()}
    if lazy:
        cfg = _resolve(spec, data, where)
        data = _with(data, {KNOB_PREFIX + k: _realistic(cfg, k, v, where) for k, v in lazy.items()})
    cfg = _resolve(spec, merge(data, {"name": _name(spec, labels)}), where)
    _check_knobs_apply(cfg, where)
    return Point(point_id(cfg), labels, cfg)


def _name(spec: SweepSpec, labels: dict[str, str]) -> str:
    return spec.name + ("/" + ",".join(f"{a}={v}" for a, v in labels.items()) if labels else "")


def _realistic(cfg: RunConfig, name: str, given: Any, where: str) -> knoblib.KnobValue:
    if given is not None:
        return knoblib.check_knobs({name: given})[name]
    specs = _specs(cfg)
    values = [knoblib.current(specs[r], name) for r in knoblib.roles(name)]
    value = next((v for v in values if v is not None), None)
    if value is None:
        raise ConfigError(f"{where}: knob '{name}' has no place in {cfg.backend.device_config} "
                          f"or {cfg.backend.feedback_config}")
    if value == knoblib.ideal(name):
        raise ConfigError(f"{where}: the device config holds knob '{name}' at its ideal value {value}; "
                          f"give a realistic value under the axis' `realistic:`")
    return value


def _check_knobs_apply(cfg: RunConfig, where: str) -> None:
    if not cfg.backend.knobs:
        return
    if cfg.backend.kind != "analog":
        raise ConfigError(f"{where}: knobs {sorted(cfg.backend.knobs)} need backend.kind: analog")
    try:
        for role, spec in _specs(cfg).items():
            knoblib.apply_to_spec(spec, cfg.backend.knobs, role)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _specs(cfg: RunConfig) -> dict[str, Any]:
    """The DeviceSpecs of both roles, with the config's knobs applied."""
    from .. import device_configs  # imports aihwkit: only sweeps over knobs need it

    names = {"device": cfg.backend.device_config, "feedback": cfg.backend.feedback_config}
    return {role: knoblib.apply_to_spec(device_configs.load_spec(name), cfg.backend.knobs, role)
            for role, name in names.items()}


def _digital_references(spec: SweepSpec, base: dict[str, Any], axes: list[Dimension],
                        choices: list[list[Setting]]) -> list[Point]:
    """The digital backend once per combination of the axes that are not knobs (rule, config keys)."""
    digital = _with(base, {"backend.kind": DIGITAL})
    digital["backend"] = {k: v for k, v in digital["backend"].items() if k != "knobs"}
    plain = [(a, c) for a, c in zip(axes, choices, strict=True) if not a.is_knob]
    out = []
    for combo in product(*(c for _, c in plain)):
        data = digital
        chosen = {}
        for (axis, _), setting in zip(plain, combo, strict=True):
            data = _with(data, setting.overrides)
            chosen[axis.label] = setting.label
        labels = {a.label: chosen.get(a.label, DIGITAL) for a in axes}
        cfg = _resolve(spec, merge(data, {"name": _name(spec, labels)}), f"sweep {spec.name}, digital reference")
        out.append(Point(point_id(cfg), labels, cfg))
    return out
