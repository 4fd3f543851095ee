"""Digital backend: weights are torch tensors and a torch optimizer applies the updates."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from .. import blas
from ..config import RunConfig
from ..errors import ConfigError
from ..optim import base_lr, clip_coefficient, make_optimizer
from .base import Accumulator


class DigitalBackend:
    """Floating-point weights; `apply` is one optimizer step."""

    kind = "digital"
    products_are_reads = True
    results_version = "digital1"
    has_clock = False
    time_per_update = 0.0

    @classmethod
    def validate(cls, cfg: RunConfig) -> None:
        if cfg.backend.knobs:
            raise ConfigError(f"backend.knobs: {sorted(cfg.backend.knobs)} need backend.kind: analog "
                              "(digital weights have no devices)")

    @staticmethod
    def run_tags(cfg: RunConfig) -> dict[str, str]:
        return {"backend": "digital"}

    def __init__(self, cfg: RunConfig, params: dict[str, Tensor], feedback: Tensor,
                 trainable: list[str]) -> None:
        self.params = {name: torch.nn.Parameter(value.clone(), requires_grad=name in trainable)
                       for name, value in params.items()}
        self.trainable = list(trainable)
        self.B = feedback
        self.grad_clip = cfg.optim.grad_clip
        self.optimizer, self.scheduler = make_optimizer({n: self.params[n] for n in self.trainable}, cfg.optim)

    def mvm(self, name: str, x: Tensor) -> Tensor:
        return blas.linear(x, self.params[name])

    def mvm_t(self, name: str, d: Tensor) -> Tensor:
        return blas.linear(d, self.params[name].transpose(0, 1))

    def feedback(self, target: Tensor) -> Tensor:
        return blas.linear(target, self.B)  # the target is sparse spikes (events)

    def feedback_matrix(self) -> Tensor:
        return self.B

    def read(self, name: str) -> Tensor:
        return self.params[name]

    def parameters(self) -> dict[str, Tensor]:
        return dict(self.params)

    def accumulator(self) -> Accumulator:
        return Accumulator({n: self.params[n].shape for n in self.trainable}, self.params["W1"].detach())

    def apply(self, grads: dict[str, Tensor]) -> None:
        coef = clip_coefficient([grads[n] for n in self.trainable], self.grad_clip)
        for name in self.trainable:
            self.params[name].grad = grads[name].detach().to(self.params[name].dtype) * coef
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def end_epoch(self) -> dict[str, float]:
        if self.scheduler is not None:
            self.scheduler.step()
        return {"lr": base_lr(self.optimizer)}

    def advance_clock(self, seconds: float) -> None:
        """Tensors do not drift."""

    def copy(self) -> DigitalBackend:
        return copy.deepcopy(self)

    def pulse_total(self) -> float:
        return math.nan

    def start_drift_compensation(self, per_column: bool = False) -> None:
        """Nothing drifts, so nothing to compensate."""

    def compensate_drift(self) -> dict[str, float]:
        return {}
