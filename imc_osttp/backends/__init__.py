"""Where the weights live and how an update reaches them (digital tensors or analog tiles)."""

from __future__ import annotations

from torch import Tensor

from ..config import RunConfig
from .base import Backend


def backend_class(cfg: RunConfig) -> type[Backend]:
    """The backend the config names: its class answers `validate`, `run_tags` and `results_version`."""
    if cfg.backend.kind == "analog":
        from .analog import AnalogBackend  # imports aihwkit

        return AnalogBackend
    from .digital import DigitalBackend

    return DigitalBackend


def make_backend(cfg: RunConfig, params: dict[str, Tensor], feedback: Tensor, trainable: list[str]) -> Backend:
    """Build the backend the config names, holding `params` and the fixed feedback matrix."""
    cls = backend_class(cfg)
    cls.validate(cfg)
    return cls(cfg, params, feedback, trainable)
