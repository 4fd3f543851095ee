"""Config → network + backend: the one place a run's objects are made from its config."""

from __future__ import annotations

import torch

from .backends import make_backend
from .config import RunConfig
from .data.batching import TaskData
from .network import SNUNet, init_feedback, init_parameters, trainable_names

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Independent streams per purpose, so that e.g. changing the batch order never changes B.
SEED_PARAMS, SEED_FEEDBACK, SEED_ORDER = 1, 2, 3


def generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


def build_network(cfg: RunConfig, n_in: int, n_out: int) -> SNUNet:
    dtype = DTYPES[cfg.train.dtype]
    params = init_parameters(cfg.model, n_in, n_out, generator(cfg.seed, SEED_PARAMS), dtype)
    feedback = init_feedback(n_out, cfg.model.hidden, cfg.rule.feedback_scale,
                             generator(cfg.seed, SEED_FEEDBACK), dtype)
    backend = make_backend(cfg, params, feedback, trainable_names(cfg.model))
    return SNUNet(cfg.model, backend, n_in, n_out)


def build_for_task(cfg: RunConfig, data: TaskData) -> SNUNet:
    return build_network(cfg, data.n_in, data.n_out)
