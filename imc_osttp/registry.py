"""Plugins: learning rules, tasks, neuron models and device-configuration folders, registered by name.

Config validation reads this registry, not a fixed list of names, so a rule or a task
registered here is valid wherever a built-in one is: `rule.name`, `data.task`, `model.neuron`,
a sweep's axes, the CLI. The built-in rules, tasks and neurons register themselves in the
modules that define them (`imc_osttp.rules`, `imc_osttp.data`, `imc_osttp.neurons.snu`, `.alif`), exactly
as a plugin does.

Two ways in:

- user code calls `register_rule`, `register_task`, `register_neuron` or `register_device_configs`
  (also exported as `imc_osttp.register_rule`, ...) before it builds a config;
- an installed package declares an entry point in the group `imc_osttp.plugins`,
  the convention of pytest's `pytest11` and MLflow's plugin groups:

      [project.entry-points."imc_osttp.plugins"]
      my_plugin = "my_plugin:register"

  The entry point names a callable that makes the `register_*` calls (or a module that
  makes them when imported). Entry points are loaded once, the first time the registry
  is read, so the `imc-osttp` command and every worker process find them.

A registration in user code lives in that process only: process-pool workers started by
`spawn` re-import the main script (so top-level registrations reach them), Ray workers do
not. Installed plugins reach every process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, PluginError

GROUP = "imc_osttp.plugins"
# the modules that register the built-in rules and tasks (as pytest's own plugins are listed)
BUILTINS = ("imc_osttp.rules.online", "imc_osttp.data", "imc_osttp.neurons.snu", "imc_osttp.neurons.alif")

TraceKind = Literal["exact", "factorised", "none"]
# a learning signal: (net, chunk, readout error p - y*, target y*) -> g_l = L_l ⊙ ψ_l of every
# hidden layer, each [B, K, n_l] (see imc_osttp.rules.online for the built-in ones)
Signal = Callable[..., list[Any]]


@dataclass(frozen=True)
class Rule:
    """A learning rule: the learning signal of every hidden layer and the trace it multiplies."""

    name: str
    # None only for BPTT, which backpropagates through time instead of running the online engine
    signal: Signal | None
    # the eligibility trace: None follows the config's `rule.traces` (exact or factorised);
    # "none" keeps no memory of the past, the eligibility being ψ^t x^t (DRTP)
    traces: TraceKind | None = None


@dataclass(frozen=True)
class Task:
    """A task: its splits, the readout it needs, and (through the splits' `kind`) its metric."""

    name: str
    # DataConfig -> TaskData (train/valid/test splits, sizes, and `kind`: "multilabel" is scored by
    # NLL per frame with the epoch chosen on the valid split, "classification" by accuracy)
    load: Callable[[Any], Any]
    readout: str | None = None  # the `model.readout` the task needs ("sigmoid", "leaky"); None: any


@dataclass
class _Registry:
    rules: dict[str, Rule]
    tasks: dict[str, Task]
    neurons: dict[str, Any]  # name -> imc_osttp.neurons.base.Neuron
    device_configs: list[Path]  # folders of YAML files, or single files
    builtins_loaded: bool = False
    plugins_loaded: bool = False


_REGISTRY = _Registry({}, {}, {}, [])


def register_rule(name: str, signal: Signal | None, traces: TraceKind | None = None) -> None:
    """Add a learning rule: `signal(net, chunk, err, target)` returns every hidden layer's
    g_l = L_l ⊙ ψ_l; `traces` is the eligibility it multiplies (None: the config's `rule.traces`).
    A `signal` of None trains by backpropagation through time, as the built-in `bptt` does."""
    if signal is not None and not callable(signal):
        raise PluginError(f"rule '{name}': its signal must be callable, got {signal!r}")
    if traces not in (None, "exact", "factorised", "none"):
        raise PluginError(f"rule '{name}': traces must be 'exact', 'factorised', 'none' or None, got {traces!r}")
    _add(_REGISTRY.rules, Rule(name, signal, traces), "rule")


def register_task(name: str, load: Callable[[Any], Any], readout: str | None = None) -> None:
    """Add a task: `load(data_config)` returns its `TaskData`; `readout` is the model.readout it needs."""
    if not callable(load):
        raise PluginError(f"task '{name}': its loader must be callable, got {load!r}")
    _add(_REGISTRY.tasks, Task(name, load, readout), "task")


def register_neuron(neuron: Any) -> None:
    """Add a neuron model (an `imc_osttp.neurons.base.Neuron`: its step, Jacobian and gradients written
    once, run by both engines); `model.neuron: <its name>` selects it."""
    from .neurons.base import Neuron

    if not isinstance(neuron, Neuron):
        raise PluginError(f"neuron {neuron!r}: expected an imc_osttp.neurons.base.Neuron")
    _add(_REGISTRY.neurons, neuron, "neuron")


def register_device_configs(path: str | Path) -> None:
    """Add a folder of device-configuration YAML files (or one file), found by name after the
    folders of IMC_OSTTP_DEVICE_CONFIGS and before the shipped ones."""
    path = Path(path)
    if not (path.is_dir() or (path.is_file() and path.suffix in (".yaml", ".yml"))):
        raise PluginError(f"device configs {path}: neither a folder nor a .yaml file")
    _builtins()
    if path not in _REGISTRY.device_configs:
        _REGISTRY.device_configs.append(path)


def rule(name: str) -> Rule:
    """The registered rule `name`."""
    return _get(_read().rules, name, "rule")


def task(name: str) -> Task:
    """The registered task `name`."""
    return _get(_read().tasks, name, "task")


def neuron(name: str) -> Any:
    """The registered neuron model `name`."""
    return _get(_read().neurons, name, "neuron")


def rule_names() -> tuple[str, ...]:
    """Every registered rule, built-in ones first."""
    return tuple(_read().rules)


def task_names() -> tuple[str, ...]:
    """Every registered task, built-in ones first."""
    return tuple(_read().tasks)


def neuron_names() -> tuple[str, ...]:
    """Every registered neuron model, built-in ones first."""
    return tuple(_read().neurons)


def device_config_paths() -> list[Path]:
    """Folders (or files) of device configurations that plugins added."""
    return list(_read().device_configs)


def _add(table: dict[str, Any], entry: Any, kind: str) -> None:
    _builtins()
    if not entry.name or not entry.name.replace("_", "").isalnum():
        raise PluginError(f"{kind} name {entry.name!r}: use letters, digits and '_'")
    if entry.name in table:
        raise PluginError(f"{kind} '{entry.name}' is already registered")
    table[entry.name] = entry


def _get(table: dict[str, Any], name: str, kind: str) -> Any:
    if name not in table:
        raise ConfigError(f"no {kind} '{name}' is registered (registered: {', '.join(table)})")
    return table[name]


def _builtins() -> None:
    """Import the modules that register the built-in rules and tasks (once; a module that is
    importing already is returned as it is, so their own registrations do not recurse)."""
    if not _REGISTRY.builtins_loaded:
        _REGISTRY.builtins_loaded = True
        for module in BUILTINS:
            importlib.import_module(module)


def _read() -> _Registry:
    """The registry with the built-ins and every installed plugin in it (plugins loaded once)."""
    _builtins()
    if not _REGISTRY.plugins_loaded:
        _REGISTRY.plugins_loaded = True
        for point in entry_points(group=GROUP):
            try:
                plugin = point.load()
                if callable(plugin):
                    plugin()
            except PluginError as exc:
                raise PluginError(f"plugin '{point.name}' ({point.value}): {exc}") from None
            except Exception as exc:
                raise PluginError(f"plugin '{point.name}' ({point.value}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return _REGISTRY
