"""Readout layers (SPEC §1): what the output is, its loss, and its local error.

A readout turns the hidden spikes y^t into logits, keeps its own state (the
leaky integrator's potential) and a filtered copy of its input, whose outer
product with the local error is the readout's exact gradient (SPEC §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ReadoutState:
    potential: Tensor | None  # leaky integrator o^{t-1}; None for the memoryless readout
    trace: Tensor  # filtered input ybar^t (y^t itself for the memoryless readout)
    bias_trace: Tensor  # filtered constant 1, the bias's trace


class SigmoidReadout:
    """p^t = sigmoid(y^t W2 + c); loss = BCE summed over the k outputs (JSB)."""

    tau = 0.0

    def init(self, batch: int, n: int, k: int, like: Tensor) -> ReadoutState:
        return ReadoutState(None, like.new_zeros(batch, n), like.new_zeros(batch, 1))

    def step(self, state: ReadoutState, y: Tensor, drive: Tensor) -> tuple[ReadoutState, Tensor]:
        """`drive` = y W2 (+ c), computed by the backend. Returns the new state and the logits."""
        return ReadoutState(None, y, torch.ones_like(state.bias_trace)), drive

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss [..., ] summed over outputs (natural log)."""
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    @staticmethod
    def error(logits: Tensor, target: Tensor) -> Tensor:
        """dE^t/dlogits = p - y*."""
        return torch.sigmoid(logits) - target


class LeakyReadout:
    """o^t = tau o^{t-1} + y^t W2 (+ c); loss = CE(softmax(o^t), label) at every step (SHD)."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def init(self, batch: int, n: int, k: int, like: Tensor) -> ReadoutState:
        return ReadoutState(like.new_zeros(batch, k), like.new_zeros(batch, n), like.new_zeros(batch, 1))

    def step(self, state: ReadoutState, y: Tensor, drive: Tensor) -> tuple[ReadoutState, Tensor]:
        assert state.potential is not None
        o = self.tau * state.potential + drive
        return ReadoutState(o, self.tau * state.trace + y, self.tau * state.bias_trace + 1.0), o

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1)

    @staticmethod
    def error(logits: Tensor, target: Tensor) -> Tensor:
        """dE^t/do^t = softmax(o^t) - onehot."""
        return torch.softmax(logits, dim=-1) - target


Readout = SigmoidReadout | LeakyReadout


def make_readout(kind: str, tau: float) -> Readout:
    return SigmoidReadout() if kind == "sigmoid" else LeakyReadout(tau)
