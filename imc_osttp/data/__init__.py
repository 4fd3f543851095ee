"""Data loaders: each task's splits as padded sequences (see `load_task`).

The built-in tasks register here as a plugin's task would (imc_osttp.registry): a loader from
the `data` config to the splits, and the readout the task needs.
"""

from __future__ import annotations

from .. import registry
from ..config import DataConfig
from .batching import Batch, Split, TaskData, batches
from .spikes import CLASSES, load_spike_h5, load_spike_task

__all__ = ["Batch", "Split", "TaskData", "batches", "load_spike_h5", "load_task"]


def load_task(cfg: DataConfig) -> TaskData:
    """The splits of the configured task."""
    return registry.task(cfg.task).load(cfg)


def _jsb(cfg: DataConfig) -> TaskData:
    from .jsb import load_jsb

    return load_jsb(cfg.path, cfg.max_sequences)


def _synthetic(cfg: DataConfig) -> TaskData:
    from .synthetic import synthetic_jsb

    return synthetic_jsb(cfg.synthetic_sequences, cfg.synthetic_length)


registry.register_task("jsb", _jsb, readout="sigmoid")
for _name in CLASSES:  # shd, fsdd: spike trains, one label per recording
    registry.register_task(_name, load_spike_task, readout="leaky")
registry.register_task("synthetic", _synthetic)  # random JSB-shaped rolls (benchmarks): any readout
