"""imc-osttp: on-chip learning of spiking networks on simulated analog in-memory computing tiles.

The public API (`imc_osttp.api`): `train`, `run_study`, `run_sweep`, `run_deploy`, `report`, `align`,
`encode_audio`, and the plugin registrations `register_rule`, `register_task`, `register_neuron`,
`register_device_configs` (`imc_osttp.registry`). `RunConfig` and `Spec` are the validated run config
and study spec. Importing the package imports neither torch nor pandas: the functions import what they
run, the types load when first named.
"""

from typing import Any

from .api import StudyResult, align, encode_audio, report, run_deploy, run_study, run_sweep, train
from .errors import ConfigError, DataError, PluginError, UserError
from .registry import register_device_configs, register_neuron, register_rule, register_task

__version__ = "0.1.0"
_LAZY = {"RunConfig": "config", "Spec": "pipeline.spec", "RunResult": "training", "Report": "pipeline.report",
         "Alignment": "alignment"}  # module of each type, imported when first asked for
__all__ = ["__version__", "train", "run_study", "run_sweep", "run_deploy", "report", "align", "encode_audio",
           "register_rule", "register_task", "register_neuron", "register_device_configs", "RunConfig", "Spec",
           "RunResult",
           "StudyResult", "Report", "Alignment", "ConfigError", "DataError", "PluginError", "UserError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
