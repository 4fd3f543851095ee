"""Config → network + backend: the one place a run's objects are made from its config."""

from __future__ import annotations

import torch

from .backends import make_backend
from .config import RunConfig
from .data.batching import TaskData
from .errors import ConfigError
from .network import SNUNet, init_feedback, init_parameters, trainable_names
from .seeds import generator

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_device(cfg: RunConfig) -> torch.device:
    """The torch device of the run (a backend may restrict it further: its `validate`)."""
    try:
        device = torch.device(cfg.train.device)
    except RuntimeError:
        raise ConfigError(f"train.device: {cfg.train.device!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but this torch has no usable CUDA device")
    return device


def build_network(cfg: RunConfig, n_in: int, n_out: int) -> SNUNet:
    """Parameters and B are drawn on the CPU from seeded streams, then moved: the same seed gives
    the same initial network on every device."""
    dtype, device = DTYPES[cfg.train.dtype], check_device(cfg)
    params = init_parameters(cfg.model, n_in, n_out, generator(cfg.seed, "params"), dtype)
    params = {name: value.to(device) for name, value in params.items()}
    feedback = init_feedback(n_out, cfg.model.widths, cfg.rule.feedback_scale,
                             generator(cfg.seed, "feedback"), dtype).to(device)
    trainable = trainable_names(cfg)
    if not trainable:
        raise ConfigError("optim.lr_scale: every parameter is frozen (0), so nothing would train")
    backend = make_backend(cfg, params, feedback, trainable)
    return SNUNet(cfg.model, backend, n_in, n_out, cfg.train.engine)


def build_for_task(cfg: RunConfig, data: TaskData) -> SNUNet:
    return build_network(cfg, data.n_in, data.n_out)
