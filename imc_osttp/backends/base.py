"""The contract between learning rules and backends.

A rule computes *what* to change (an estimate of dE/dθ per parameter) and
adds it to an accumulator; the backend decides *how* the change reaches the
weights (an optimizer step on tensors, or pulse trains on analog tiles). An
update can be added densely or as a sum of rank-1 outer products, which is
the form a crossbar applies natively, so a backend can keep it factorised.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Accumulator:
    """Sums a rule's gradient estimates until the backend applies them."""

    def __init__(self, shapes: dict[str, torch.Size], like: Tensor) -> None:
        self.sums = {name: like.new_zeros(shape) for name, shape in shapes.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.sums

    def add(self, name: str, value: Tensor) -> None:
        """Add a dense estimate of the parameter's shape."""
        self.sums[name] += value

    def add_outer(self, name: str, left: Tensor, right: Tensor) -> None:
        """Add sum_b left_b^T right_b (left [B, m], right [B, n]): a batch of rank-1 terms."""
        self.sums[name].addmm_(left.transpose(0, 1), right)

    def add_eligibility(self, name: str, trace: Tensor, signal: Tensor) -> None:
        """Add sum_b trace_b * signal_b for a per-sample trace [B, m, n] and signal [B, n]."""
        self.sums[name] += torch.einsum("bij,bj->ij", trace, signal)

    def take(self, scale: float) -> dict[str, Tensor]:
        """The accumulated estimates times `scale`; the accumulator restarts from zero."""
        out = {name: value * scale for name, value in self.sums.items()}
        for value in self.sums.values():
            value.zero_()
        return out


class Backend(Protocol):
    """What the network and the rules may ask of wherever the weights live."""

    def mvm(self, name: str, x: Tensor) -> Tensor:
        """x W for the named matrix (W1, H1, W2)."""

    def mvm_t(self, name: str, d: Tensor) -> Tensor:
        """d Wᵀ: the transposed product (OSTL's learning signal needs W2ᵀ)."""

    def feedback(self, target: Tensor) -> Tensor:
        """y* B: the projected target through the fixed random matrix."""

    def read(self, name: str) -> Tensor:
        """A digital view of a parameter (thresholds, biases, the diagonal of H)."""

    def parameters(self) -> dict[str, Tensor]:
        """All parameters as tensors (for BPTT's autograd, checkpoints and alignment)."""

    def accumulator(self) -> Accumulator:
        """A fresh accumulator for the trainable parameters."""

    def apply(self, grads: dict[str, Tensor]) -> None:
        """Hand gradient estimates dE/dθ to the optimizer and change the weights."""

    def end_epoch(self) -> dict[str, float]:
        """Advance the learning-rate schedule; return per-epoch backend metrics (e.g. pulses)."""
