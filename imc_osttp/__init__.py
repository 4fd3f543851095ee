"""imc-osttp: on-chip learning of spiking networks on simulated analog in-memory computing tiles.

Plugins register learning rules, tasks and device configurations here (see `imc_osttp.registry`).
"""

from .registry import register_device_configs, register_rule, register_task

__version__ = "0.1.0"
__all__ = ["__version__", "register_device_configs", "register_rule", "register_task"]
