"""Validated run configuration: YAML in, typed frozen data out.

Every run is described by one `RunConfig`. Unknown keys and bad values raise
`ConfigError` naming the dotted key (and the closest valid key for typos), so
a misspelled option never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from . import registry
from .errors import ConfigError
from .layers import LayerSpec, Reset, param_names
from .named import config_file


def _registered(names: Callable[[], tuple[str, ...]]) -> AfterValidator:
    """A name valid when registered (imc_osttp.registry): built-in or from a plugin. The error
    lists the valid names as a Literal's would."""

    def check(value: str) -> str:
        valid = names()
        if value not in valid:
            quoted = [repr(n) for n in valid]
            listed = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": listed})
        return value

    return AfterValidator(check)


RuleName = Annotated[str, _registered(registry.rule_names)]
TaskName = Annotated[str, _registered(registry.task_names)]
NeuronName = Annotated[str, _registered(registry.neuron_names)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Strict):
    """Where the data comes from and how much of it a run uses."""

    task: TaskName = "jsb"  # a registered task (imc_osttp.registry): jsb, shd, fsdd, synthetic or a plugin's
    path: str | None = None  # file (JSB json) or directory; else IMC_OSTTP_DATA, cache, download
    max_sequences: int | None = Field(None, ge=1)  # per split, for quick runs and tests
    # spike-data binning (SHD/FSDD)
    n_steps: int = Field(100, ge=1)
    max_time: float = Field(1.0, gt=0)
    # synthetic data (benchmarks)
    synthetic_length: int = Field(128, ge=2)
    synthetic_sequences: int = Field(64, ge=1)


Decay = Annotated[float, Field(ge=0.0, le=1.0)]
Width = Annotated[int, Field(ge=1)]


class ALIFConfig(_Strict):
    """The adaptive threshold b + β a^t of `neuron: alif`, a^t = decay · a^{t-1} + y^{t-1} (imc_osttp/neurons/alif.py).

    Defaults from e-prop's TIMIT network (Bellec et al. 2020, Nat. Commun. 11:3625; its code's flags
    tau_a = 200 ms, tau_v = 20 ms, beta = 1.8, thr = 0.01, rescaled there to beta 0.184 and threshold
    0.205 for a membrane without the (1 - alpha) input factor, as ours): a spike raises the threshold by
    0.9 of its baseline (β = 0.45 at threshold_init 0.5), and the adaptation lasts 10 membrane time
    constants (decay 0.6^(1/10) = 0.95 at the default model.decay 0.6). Set both for another time step."""

    beta: float = Field(0.45, ge=0)
    decay: Decay = 0.95


class ModelConfig(_Strict):
    """L hidden layers of spiking neurons and their readout (SPEC §1, §6).

    `neuron` names the model of every hidden unit (imc_osttp/neurons): the SNU, or e-prop's adaptive
    LIF, whose own settings are the section of its name (`alif`).

    `hidden` is one width or a list of widths, one per layer; `recurrent`, `reset` and `decay`
    take one value for every layer or a list with one value per layer. An int `hidden` is the
    single-layer network whose configs, names and hashes predate depth.
    """

    hidden: Width | Annotated[list[Width], Field(min_length=1)] = 150
    neuron: NeuronName = "snu"  # a registered neuron (imc_osttp.registry): snu, alif or a plugin's
    alif: ALIFConfig = ALIFConfig()
    recurrent: bool | list[bool] = False
    reset: Reset | list[Reset] = "full"
    decay: Decay | list[Decay] = 0.6
    surrogate: Literal["tanh", "fast_sigmoid"] = "tanh"
    threshold_init: float = 0.5
    train_threshold: bool = True
    readout: Literal["sigmoid", "leaky"] = "sigmoid"
    readout_bias: bool = True
    tau: float = Field(0.99, ge=0.0, le=1.0)
    init_gain: float = Field(1.0, gt=0)  # multiplies the uniform ±1/sqrt(fan_in) initialisation

    @property
    def widths(self) -> list[int]:
        return list(self.hidden) if isinstance(self.hidden, list) else [self.hidden]

    @property
    def depth(self) -> int:
        return len(self.widths)

    def per_layer(self, field: str) -> list[Any]:
        """A per-layer field as one value per hidden layer (a scalar applies to every layer)."""
        value = getattr(self, field)
        return list(value) if isinstance(value, list) else [value] * self.depth

    def layers(self) -> list[LayerSpec]:
        section = getattr(self, self.neuron, None)
        own = tuple(section.model_dump().items()) if isinstance(section, BaseModel) else ()
        return [LayerSpec(i + 1, n, rec, reset, decay, self.neuron, own) for i, (n, rec, reset, decay) in enumerate(
            zip(self.widths, *(self.per_layer(f) for f in PER_LAYER), strict=True))]

    @model_validator(mode="after")
    def _one_value_per_layer(self) -> ModelConfig:
        for field in PER_LAYER:
            value = getattr(self, field)
            if isinstance(value, list) and len(value) != self.depth:
                raise ValueError(f"model.{field}: {len(value)} values for {self.depth} hidden layer(s) "
                                 f"(give one value for every layer, or a list of {self.depth})")
        return self


PER_LAYER = ("recurrent", "reset", "decay")


class RuleConfig(_Strict):
    """The learning rule and how its update is formed (SPEC §2-3)."""

    name: RuleName = "osttp"  # a registered rule (imc_osttp.registry): bptt, ostl, ostl_rnd, drtp, osttp or a plugin's
    traces: Literal["exact", "factorised"] = "exact"
    update_timing: Literal["sequence", "step"] = "sequence"
    feedback_scale: float = Field(1.0, gt=0)  # B ~ U(±scale/sqrt(k))

    @model_validator(mode="after")
    def _bptt_per_sequence(self) -> RuleConfig:
        if self.name == "bptt" and self.update_timing == "step":
            raise ValueError("rule.update_timing: 'step' needs an online rule; bptt updates per sequence")
        return self


class OptimConfig(_Strict):
    """The torch optimizer every rule hands its update to."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(5e-4, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    decay_every: int | None = Field(None, ge=1)  # epochs between learning-rate decays
    decay_factor: float = Field(0.6, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    # per-parameter multipliers of lr, e.g. {W2: 0.001}: plain SGD (the only rule pulses can apply)
    # needs them when one layer's gradient is orders of magnitude larger than another's; 0 freezes
    # a parameter, which then is not trained at all (e.g. {W1: 0, H1: 0}: a fixed random
    # reservoir, only the readout learns)
    # (names per layer: W1, H1, b1, …, W{L+1}, c{L+1}; checked against the model)
    lr_scale: dict[Annotated[str, Field(pattern=r"^[WHbc][1-9][0-9]*$")], Annotated[float, Field(ge=0)]] = {}


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)
    # the time loops: "fused" runs them as compiled kernels (imc_osttp/fused.py) where they apply,
    # "eager" step by step in torch, the reference the fused loops are tested against
    engine: Literal["fused", "eager"] = "fused"


class BackendConfig(_Strict):
    """Where the weights live: torch tensors, or aihwkit analog tiles."""

    kind: Literal["digital", "analog"] = "digital"
    device_config: str = "pcm_4device"
    feedback_config: str = "feedback_programmed"
    knobs: dict[str, float | int | str] = {}  # named non-idealities over the device configs (imc_osttp.knobs)
    # the chip clock: seconds of device time per applied update; after each update every trainable tile
    # drifts by that much (aihwkit's power law, drift_nu > 0), a written device's clock restarting
    time_per_update: float = Field(0.0, ge=0)


class TrackingConfig(_Strict):
    enabled: bool = True
    experiment: str | None = None  # default: the run's name
    uri: str | None = None  # default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    log_params_file: bool = True


class RunConfig(_Strict):
    """Everything one training run needs; the single source of truth for a run."""

    name: str = "run"
    seed: int = 0
    # built on first use, not at import: validating a rule, task or neuron name reads the registry, whose
    # built-ins import modules that import this one
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    rule: RuleConfig = Field(default_factory=RuleConfig)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    backend: BackendConfig = BackendConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        needed = registry.task(self.data.task).readout
        if needed is not None and self.model.readout != needed:
            raise ValueError(f"model.readout: the {self.data.task} task needs the '{needed}' readout")
        names = param_names(self.model.layers(), self.model.readout_bias)
        unknown = sorted(set(self.optim.lr_scale) - set(names))
        if unknown:
            raise ValueError(f"optim.lr_scale.{unknown[0]}: not a parameter of this model "
                             f"(it has {', '.join(names)})")
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, for MLflow params and CSV columns."""
        return flatten(self.model_dump())


def config_hash(cfg: RunConfig, exclude: dict[str, Any]) -> str:
    """sha1 of the canonical JSON of the config less `exclude` (pydantic's nested exclude form):
    two runs with the same hash train the same thing. Fields at their defaults are left out, so
    adding an option with a default keeps every earlier hash (and the results stored under it)."""
    data = cfg.model_dump(mode="json", exclude=exclude, exclude_defaults=True)
    return hashlib.sha1(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested dict, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge, values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-3", "rule.name=ostl"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. optim.lr=0.001")
        key, raw = pair.split("=", 1)
        set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def nest(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`{"optim.lr": 1e-3, "train": {"epochs": 2}}` -> one nested dict: dotted keys and sections alike, later
    entries over earlier ones."""
    tree: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        one: dict[str, Any] = {}
        set_dotted(one, str(key), value)
        tree = merge(tree, one)
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that `loc` points into."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
    return list(getattr(cls, "model_fields", {}))


def build(model: type[BaseModel], data: dict[str, Any], source: str = "config") -> Any:
    """Validate `data` as `model`, turning pydantic's report into one `ConfigError` line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(loc[-1]), _valid_keys(model, loc), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                lines.append(f"{key}: unknown key{hint}")
            elif err["type"] == "value_error" and re.match(r"Value error, [a-z_]+(\.\w+)*: ", str(err["msg"])):
                lines.append(str(err["msg"]).removeprefix("Value error, "))  # our validators name the key
            else:
                lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


ConfigSource = RunConfig | Mapping[str, Any] | str | Path
"""A run config as the API takes it: validated, a mapping shaped like the YAML, or a YAML file's path or the name
of a shipped one (`jsb_osttp`)."""


def as_run_config(config: ConfigSource, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated `RunConfig` from any `ConfigSource`, with `overrides` (dotted keys or sections, see `nest`)
    over it; anything invalid is one `ConfigError` naming the key."""
    if isinstance(config, RunConfig):
        data, source = config.model_dump(), config.name
    elif isinstance(config, Mapping):
        data, source = dict(config), "config"
    elif isinstance(config, str | Path):
        path = config_file(config)
        data, source = read_yaml(path), str(path)
    else:
        raise ConfigError(f"config: expected a RunConfig, a mapping or a YAML file's path or name, "
                          f"not {type(config).__name__}")
    return build(RunConfig, merge(data, nest(overrides)), source=source)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    extra: dict[str, Any] | None = None) -> RunConfig:
    """Read a run config from YAML (or its shipped name), apply dict and `key=value` overrides, validate."""
    tree = merge(extra or {}, parse_overrides(overrides or []))
    return as_run_config({} if path is None else path, tree)


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
