"""Readout layers (SPEC §1): what the output is, its loss, and its local error.

A readout turns the hidden spikes y^t into logits, keeps its own state (the
leaky integrator's potential) and a filtered copy of its input, whose outer
product with the local error is the readout's exact gradient (SPEC §3). It
works on chunks of K steps so the products with W2 are one GEMM per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import Engine


@dataclass
class ReadoutState:
    potential: Tensor | None  # leaky integrator o^{t-1}; None for the memoryless readout
    trace: Tensor  # filtered input ybar^{t-1}
    bias_trace: Tensor  # filtered constant 1, the bias's trace


@dataclass
class ReadoutChunk:
    """A chunk of K steps: logits [B, K, k] and the readout's eligibility inputs."""

    logits: Tensor
    trace: Tensor  # [B, K, n]: y^t (memoryless) or ybar^t (leaky)
    bias_trace: Tensor  # [B, K, 1]


class SigmoidReadout:
    """p^t = sigmoid(y^t W2 + c); loss = BCE summed over the k outputs (JSB)."""

    def init(self, batch: int, n: int, k: int, like: Tensor) -> ReadoutState:
        return ReadoutState(None, like.new_zeros(batch, n), like.new_zeros(batch, 1))

    def run(self, drive: Tensor, y: Tensor, state: ReadoutState) -> tuple[ReadoutChunk, ReadoutState]:
        """`drive` [B, K, k] = y W2 (+ c), computed by the backend."""
        ones = drive.new_ones(drive.shape[0], drive.shape[1], 1)
        return ReadoutChunk(drive, y, ones), state

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        """Per-step loss summed over outputs (natural log)."""
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    @staticmethod
    def error(logits: Tensor, target: Tensor) -> Tensor:
        """dE^t/dlogits = p - y*."""
        return torch.sigmoid(logits) - target


class LeakyReadout:
    """o^t = tau o^{t-1} + y^t W2 (+ c); loss = CE(softmax(o^t), label) at every step (SHD)."""

    def __init__(self, tau: float, engine: Engine) -> None:
        self.tau = tau
        self.engine = engine

    def init(self, batch: int, n: int, k: int, like: Tensor) -> ReadoutState:
        return ReadoutState(like.new_zeros(batch, k), like.new_zeros(batch, n), like.new_zeros(batch, 1))

    def run(self, drive: Tensor, y: Tensor, state: ReadoutState) -> tuple[ReadoutChunk, ReadoutState]:
        assert state.potential is not None
        o, ybar, cbar = state.potential, state.trace, state.bias_trace
        engine = self.engine
        chunk = ReadoutChunk(engine.linear_scan(o, drive, self.tau), engine.linear_scan(ybar, y, self.tau),
                             engine.scan(cbar, self.tau, torch.ones_like(drive[..., :1])))
        return chunk, ReadoutState(chunk.logits[:, -1], chunk.trace[:, -1], chunk.bias_trace[:, -1])

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1)

    @staticmethod
    def error(logits: Tensor, target: Tensor) -> Tensor:
        """dE^t/do^t = softmax(o^t) - onehot."""
        return torch.softmax(logits, dim=-1) - target


Readout = SigmoidReadout | LeakyReadout


def make_readout(kind: str, tau: float, engine: Engine) -> Readout:
    return SigmoidReadout() if kind == "sigmoid" else LeakyReadout(tau, engine)
