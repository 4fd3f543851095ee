"""Data loaders: each task's splits as padded sequences (see `load_task`)."""

from __future__ import annotations

from ..config import DataConfig
from .batching import Batch, Split, TaskData, batches
from .spikes import load_spike_h5

__all__ = ["Batch", "Split", "TaskData", "batches", "load_spike_h5", "load_task"]


def load_task(cfg: DataConfig) -> TaskData:
    """The splits of the configured task."""
    if cfg.task == "jsb":
        from .jsb import load_jsb

        return load_jsb(cfg.path, cfg.max_sequences)
    if cfg.task == "synthetic":
        from .synthetic import synthetic_jsb

        return synthetic_jsb(cfg.synthetic_sequences, cfg.synthetic_length)
    from .spikes import load_spike_task

    return load_spike_task(cfg)
