"""Eligibility traces of the SNU parameters (SPEC §2), per sample, advanced online.

- exact: the membrane traces eps^{t,θ} = D^t eps^{t-1,θ} + ∂s^t/∂θ; the W trace
  is an m×n matrix per sample because D depends on the neuron.
- factorised: D is the constant leak, so the W trace is the filtered input
  x̄ (independent of the neuron) and L⊙e is a rank-1 outer product.
- none (DRTP): eligibility psi^t x^t, no memory of the past.

Each kind adds L^t ⊙ e^t to the accumulator; only trainable parameters are traced.
"""

from __future__ import annotations

from torch import Tensor

from ..backends.base import Accumulator
from ..network import SNUNet


class ExactTraces:
    def __init__(self, net: SNUNet, batch: int, like: Tensor, acc: Accumulator) -> None:
        m, n = net.n_in, net.cfg.hidden
        self.acc = acc
        self.eps_W = like.new_zeros(batch, m, n) if "W1" in acc else None
        self.eps_H = like.new_zeros(batch, n, n) if "H1" in acc else None
        self.eps_b = like.new_zeros(batch, n)

    def step(self, D: Tensor, c: Tensor, x: Tensor, y_prev: Tensor) -> None:
        Dr = D.unsqueeze(1)
        if self.eps_W is not None:
            self.eps_W.mul_(Dr).add_(x.unsqueeze(2))
        if self.eps_H is not None:
            self.eps_H.mul_(Dr).add_(y_prev.unsqueeze(2))
        self.eps_b = D * self.eps_b + c

    def contribute(self, g: Tensor) -> None:
        if self.eps_W is not None:
            self.acc.add_eligibility("W1", self.eps_W, g)
        if self.eps_H is not None:
            self.acc.add_eligibility("H1", self.eps_H, g)
        if "b1" in self.acc:
            self.acc.add("b1", (g * (self.eps_b - 1.0)).sum(0))


class FactorisedTraces:
    """Filtered inputs x̄^t = d x̄^{t-1} + x^t; with `decay=0` this is DRTP's trace-free form."""

    def __init__(self, net: SNUNet, batch: int, like: Tensor, acc: Accumulator, decay: float) -> None:
        n = net.cfg.hidden
        self.acc, self.decay = acc, decay
        self.x_bar = like.new_zeros(batch, net.n_in)
        self.y_bar = like.new_zeros(batch, n)
        self.eps_b = like.new_zeros(batch, n)

    def step(self, D: Tensor, c: Tensor, x: Tensor, y_prev: Tensor) -> None:
        d = self.decay
        self.x_bar = d * self.x_bar + x
        self.y_bar = d * self.y_bar + y_prev
        self.eps_b = d * self.eps_b + c if d else self.eps_b

    def contribute(self, g: Tensor) -> None:
        if "W1" in self.acc:
            self.acc.add_outer("W1", self.x_bar, g)
        if "H1" in self.acc:
            self.acc.add_outer("H1", self.y_bar, g)
        if "b1" in self.acc:
            self.acc.add("b1", (g * (self.eps_b - 1.0)).sum(0))


def make_traces(kind: str, net: SNUNet, batch: int, like: Tensor, acc: Accumulator):
    if kind == "exact":
        return ExactTraces(net, batch, like[:, 0], acc)
    decay = net.cfg.decay if kind == "factorised" else 0.0
    return FactorisedTraces(net, batch, like[:, 0], acc, decay)
