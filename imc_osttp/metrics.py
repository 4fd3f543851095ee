"""Task metrics and the reference lines every JSB report shows."""

from __future__ import annotations

import math

import torch

from .data.batching import Split, TaskData

EPS = 1e-7


def nll_per_frame(loss_sum: float, frames: int) -> float:
    """JSB negative log-likelihood: BCE summed over keys, totalled over frames, ÷ frames."""
    return loss_sum / max(frames, 1)


def random_nll(keys: int = 88) -> float:
    """Predicting p = 0.5 for every key: keys · ln 2 (61.0 for 88 keys)."""
    return keys * math.log(2.0)


def frequency_nll(train: Split, test: Split) -> float:
    """Each key predicted by its frequency among the training targets, with no context (≈11.09)."""
    freq = torch.cat(train.targets).double().mean(0).clamp(EPS, 1 - EPS)
    targets = torch.cat(test.targets).double()
    bce = -(targets * freq.log() + (1 - targets) * (1 - freq).log()).sum()
    return float(bce) / len(targets)


def reference_lines(train: Split, test: Split, keys: int) -> dict[str, float]:
    return {"random": random_nll(keys), "no_context": frequency_nll(train, test)}


def task_references(data: TaskData) -> dict[str, float]:
    """The lines every report shows: random and no-context NLL (multilabel), or chance accuracy."""
    if data.kind == "classification":
        return {"chance": 1.0 / data.n_out}
    return reference_lines(data.train, data.test, data.n_out)
