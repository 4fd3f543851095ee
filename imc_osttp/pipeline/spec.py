"""One spec for studies, sweeps and deploys: a base run config, what varies (a study's `variants`, a sweep's
`axes`), the seeds, and the job each (point, seed) runs: `train`, or `deploy` (train, then the chip's year).

    name: jsb_rules
    base: {...}                            # or base_config: a run-config YAML beside this file, `base` over it
    seeds: [0, 1, 2]                       # default [0] with axes, else [0, 1, 2]
    variants: {bptt: {rule.name: bptt}, osttp: {rule.name: osttp}}    # a study: one axis named `variant`
    axes: [{kind: grid, key: dw_min_std, values: [0.0, 0.3]}]          # a sweep (imc_osttp/pipeline/axes.py)
    digital_reference: false               # also the digital backend once per non-knob setting
    times: [...]  modes: [...]  adaptation: {rate: 2}                  # a deploy job (imc_osttp/deploy.py)
    workers: 2
    output_dir: results

Every (point, seed) is a `Job`, validated before anything trains. Its run key is `key` (the hash of its
config less labels, seed, data location, threads and engine; a deploy job's also hashes its times, modes and
adaptation) and `version` (the results version: its job kind's and its backend's), docs/pipeline.md.
Points that resolve to the same config are trained once, under the first one's labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..backends import backend_class
from ..config import RunConfig, _Strict, build, config_hash, merge, read_yaml, set_dotted
from ..deploy import DEFAULT_MODES, DEFAULT_TIMES, MODES, AdaptationConfig, MitigationConfig
from ..errors import ConfigError
from ..named import study_file
from .axes import KNOB_PREFIX, AblationAxis, Axis, Dimension, SeedAxis, Setting, VariantAxis, realistic_value

JobKind = Literal["train", "deploy"]
# bump a kind's number when what its stored rows mean changes; deploy 2: drift compensation no longer compounds
# its factors (issue 22), rows carry writes and devices programmed
JOB_VERSIONS = {"train": 1, "deploy": 2}
DEPLOY_KEYS = ("times", "modes", "adaptation", "mitigation")
DIGITAL = "digital"


class DeploySettings(_Strict):
    """What a deploy job does after training (part of its run key)."""

    times: list[float]
    modes: list[str]
    adaptation: AdaptationConfig | None
    mitigation: MitigationConfig | None = None  # part of the key only where a file gives it


class Spec(_Strict):
    """A study, sweep or deploy file, validated; `jobs` expands it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # a file name and an MLflow tag value
    description: str = ""
    job: JobKind = "train"
    base: dict[str, Any] = {}
    seeds: list[int] | None = Field(None, min_length=1)
    variants: dict[str, dict[str, Any]] | None = Field(None, min_length=1)
    axes: list[Axis] = []
    digital_reference: bool = False
    workers: int = Field(1, ge=1)
    output_dir: str = "results"
    times: list[float] = Field(default_factory=lambda: list(DEFAULT_TIMES), min_length=1)
    modes: list[str] = Field(default_factory=lambda: list(DEFAULT_MODES), min_length=1)
    adaptation: AdaptationConfig | None = None
    mitigation: MitigationConfig | None = None  # the settings of the mitigating modes (imc_osttp/deploy_modes.py)

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        seed_axes = [a for a in self.axes if isinstance(a, SeedAxis)]
        if len(seed_axes) > 1 or (seed_axes and self.seeds is not None):
            raise ValueError("seeds: give them once, as `seeds` or as one `seed` axis")
        labels = self.labels()
        if len(set(labels)) != len(labels):
            raise ValueError(f"axes: two axes share a name ({labels}); give one a `name`")
        if self.job == "train" and self.model_fields_set & set(DEPLOY_KEYS):
            raise ValueError(f"{sorted(self.model_fields_set & set(DEPLOY_KEYS))[0]}: only deploy files have it "
                             "(imc-osttp deploy)")
        if self.times[0] <= 0 or any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError(f"times: seconds after the last write, positive and increasing (got {self.times})")
        for i, mode in enumerate(self.modes):
            if mode not in MODES:
                raise ValueError(f"modes.{i}: unknown mode '{mode}' (known: {', '.join(MODES)})")
        if any(MODES[m].learns for m in self.modes) and self.job == "deploy" and self.adaptation is None:
            raise ValueError("adaptation: the learning modes need adaptation.rate (sequences per hour)")
        return self

    @property
    def nested(self) -> bool:
        """A sweep file: its MLflow runs nest under one parent run."""
        return bool(self.axes)

    def dimensions(self) -> list[Dimension]:
        """The factors of the product: the variants, each grid or rule axis, all ablation axes joined in one."""
        out: list[Dimension] = []
        if self.variants:
            axis = VariantAxis(kind="variants", values=self.variants)
            out.append(Dimension(axis.label, axis.kind, None, (axis,)))
        ablations = [a for a in self.axes if isinstance(a, AblationAxis)]
        for axis in self.axes:
            if isinstance(axis, AblationAxis):
                if axis is ablations[0]:
                    out.append(Dimension(axis.label, "ablation", None, tuple(ablations)))
            elif not isinstance(axis, SeedAxis):
                out.append(Dimension(axis.label, axis.kind, getattr(axis, "key", None), (axis,)))
        return out

    def labels(self) -> list[str]:
        return [d.label for d in self.dimensions()]

    def seed_list(self) -> list[int]:
        seed_axes = [a.values for a in self.axes if isinstance(a, SeedAxis)]
        return seed_axes[0] if seed_axes else self.seeds or ([0] if self.axes else [0, 1, 2])

    def deploy_settings(self) -> DeploySettings | None:
        if self.job != "deploy":
            return None
        return DeploySettings(times=self.times, modes=self.modes, adaptation=self.adaptation,
                              mitigation=self.mitigation)

    def run_config(self, variant: str, seed: int) -> RunConfig:
        """The config of one variant and seed of a study."""
        cfg = next(cfg for labels, cfg in expand(self) if labels.get("variant") == variant)
        return cfg.model_copy(update={"seed": seed})

    def jobs(self) -> list[Job]:
        """Every (point, seed), validated up front so a typo fails before any training; a config reached
        under two labels is one job, under the first."""
        out: dict[tuple[str, int], Job] = {}
        settings = self.deploy_settings()
        for labels, cfg in expand(self):
            for seed in self.seed_list():
                job = make_job(self.job, labels, cfg.model_copy(update={"seed": seed}), settings)
                out.setdefault(job.id, job)
        return list(out.values())


@dataclass(frozen=True)
class Job:
    """One (point, seed) of a spec: what to run, its labels and its run key."""

    kind: JobKind
    labels: dict[str, str]  # axis label -> this point's value on it
    cfg: RunConfig
    key: str  # the config hash (and a deploy job's settings)
    version: str  # the results version, e.g. "train1.analog2"
    deploy: DeploySettings | None = field(default=None)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def id(self) -> tuple[str, int]:
        return self.key, self.seed

    @property
    def title(self) -> str:
        """`osttp` for a study's variant, `dw_min=0.01 dw_min_std=0.3` for a sweep's point."""
        if list(self.labels) == ["variant"]:
            return self.labels["variant"]
        return " ".join(f"{k}={v}" for k, v in self.labels.items())


def run_key(cfg: RunConfig) -> str:
    """What a stored result was trained with: the config less its labels (tracking, name), the seed (a column
    of its own), where the data lives, how many threads ran and which engine (the same run)."""
    return config_hash(cfg, {"tracking": True, "name": True, "seed": True, "data": {"path"},
                             "train": {"threads", "engine"}})


def make_job(kind: JobKind, labels: dict[str, str], cfg: RunConfig, settings: DeploySettings | None) -> Job:
    key = run_key(cfg)
    if settings is not None:
        deploy = settings.model_dump(mode="json", exclude={"mitigation"} if settings.mitigation is None else None)
        data = json.dumps({"run": key, "deploy": deploy}, sort_keys=True)
        key = hashlib.sha1(data.encode()).hexdigest()[:16]
    version = f"{kind}{JOB_VERSIONS[kind]}.{backend_class(cfg).results_version}"
    return Job(kind, labels, cfg, key, version, settings)


def parse_spec(data: dict[str, Any], folder: str | Path = ".", source: str = "spec",
               job: JobKind | None = None) -> Spec:
    """Validate a spec mapping for a command's job kind (None: a deploy file if it has deploy keys);
    `base_config` (a run-config YAML) is read relative to `folder`."""
    data = dict(data)
    ref = data.pop("base_config", None)
    if ref is not None:
        data["base"] = merge(read_yaml(Path(folder) / ref), data.get("base") or {})
    given = data.setdefault("job", job or ("deploy" if set(DEPLOY_KEYS) & data.keys() else "train"))
    if job is not None and given != job:
        raise ConfigError(f"{source}: job: '{given}', but this command runs '{job}' jobs")
    return build(Spec, data, source=source)


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None, job: JobKind | None = None) -> Spec:
    """A study, sweep or deploy file, given by path or by a shipped one's name (`jsb_quick`)."""
    path = study_file(path)
    data = read_yaml(path)
    return parse_spec(merge(data, overrides) if overrides else data, Path(path).parent, str(path), job)


SpecSource = Spec | Mapping[str, Any] | str | Path
"""A spec as the API takes it: validated, a mapping shaped like the file, or a file's path or shipped name."""


def as_spec(spec: SpecSource, tree: dict[str, Any] | None = None, job: JobKind | None = None) -> Spec:
    """A validated `Spec` for a command's job kind from any `SpecSource`, with the nested overrides `tree`
    (`config.nest`) over it; a mapping's `base_config` is read relative to the working directory."""
    tree = tree or {}
    if isinstance(spec, Spec):
        if not tree and job in (None, spec.job):
            return spec
        return parse_spec(merge(spec.model_dump(exclude_unset=True), tree), ".", spec.name, job)
    if isinstance(spec, Mapping):
        return parse_spec(merge(dict(spec), tree), ".", str(spec.get("name", "spec")), job)
    if isinstance(spec, str | Path):
        return load_spec(spec, tree, job)
    raise ConfigError(f"spec: expected a Spec, a mapping or a study file's path or name, not {type(spec).__name__}")


def expand(spec: Spec) -> list[tuple[dict[str, str], RunConfig]]:
    """(labels, config) of every point, each config validated by its backend."""
    base = merge({"tracking": {"experiment": spec.name}}, spec.base)
    base_cfg = _resolve(spec, base, source=f"{spec.name}: base")
    axes = spec.dimensions()
    choices = [_settings(spec, axis, base_cfg) for axis in axes]
    _check_disjoint(axes, choices)
    points = [_point(spec, base, dict(zip([a.label for a in axes], combo, strict=True)))
              for combo in product(*choices)]
    if spec.digital_reference:
        points += _digital_references(spec, base, axes, choices)
    return points


def _settings(spec: Spec, axis: Dimension, base: RunConfig) -> list[Setting]:
    try:
        return axis.settings(base)
    except ConfigError as exc:
        raise ConfigError(f"{spec.name}, axis '{axis.label}': {exc}") from None


def _check_disjoint(axes: list[Dimension], choices: list[list[Setting]]) -> None:
    owner: dict[str, str] = {}
    for axis, settings in zip(axes, choices, strict=True):
        for key in set().union(*(s.keys() for s in settings)):
            if owner.setdefault(key, axis.label) != axis.label:
                raise ConfigError(f"axes '{owner[key]}' and '{axis.label}' both set {key}")


def _resolve(spec: Spec, data: dict[str, Any], source: str) -> RunConfig:
    """A validated config: by pydantic, by its backend, and (deploy) for a backend with a chip clock."""
    cfg = build(RunConfig, merge(data, {"seed": spec.seed_list()[0]}), source=source)
    backend = backend_class(cfg)
    try:
        backend.validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if spec.job == "deploy" and not backend.has_clock:
        raise ConfigError(f"{source}: base.backend.kind '{cfg.backend.kind}' has no chip clock (its weights do "
                          "not drift): deploy needs one, e.g. 'analog'")
    return cfg


def _with(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return merge(data, tree)


def _point(spec: Spec, base: dict[str, Any], settings: dict[str, Setting]) -> tuple[dict[str, str], RunConfig]:
    labels = {axis: s.label for axis, s in settings.items()}
    where = f"{spec.name}, point {labels}" if labels else spec.name
    data = base
    for setting in settings.values():
        data = _with(data, setting.overrides)
    lazy = {k: v for s in settings.values() for k, v in s.realistic.items()}
    if lazy:
        cfg = build(RunConfig, data, source=where)
        data = _with(data, {KNOB_PREFIX + k: realistic_value(cfg, k, v, where) for k, v in lazy.items()})
    return labels, _resolve(spec, merge(data, {"name": _name(spec, labels)}), where)


def _name(spec: Spec, labels: dict[str, str]) -> str:
    if list(labels) == ["variant"]:
        return f"{spec.name}/{labels['variant']}"
    return spec.name + ("/" + ",".join(f"{a}={v}" for a, v in labels.items()) if labels else "")


def _digital_references(spec: Spec, base: dict[str, Any], axes: list[Dimension],
                        choices: list[list[Setting]]) -> list[tuple[dict[str, str], RunConfig]]:
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
        cfg = _resolve(spec, merge(data, {"name": _name(spec, labels)}), f"{spec.name}, digital reference")
        out.append((labels, cfg))
    return out

