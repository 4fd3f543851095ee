"""Where the weights live and how an update reaches them (digital tensors or analog tiles)."""

from __future__ import annotations

from torch import Tensor

from ..config import RunConfig
from .base import Backend


def make_backend(cfg: RunConfig, params: dict[str, Tensor], feedback: Tensor, trainable: list[str]) -> Backend:
    """Build the backend the config names, holding `params` and the fixed feedback matrix."""
    if cfg.backend.kind == "analog":
        from .analog import AnalogBackend  # imports aihwkit

        return AnalogBackend(cfg, params, feedback, trainable)
    from .digital import DigitalBackend

    return DigitalBackend(cfg, params, feedback, trainable)
