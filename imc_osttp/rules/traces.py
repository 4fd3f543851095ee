"""Eligibility traces of the SNU parameters (SPEC §2), per sample, advanced online.

- exact: the membrane traces eps^{t,θ} = D^t eps^{t-1,θ} + ∂s^t/∂θ; the W trace
  is an m×n matrix per sample because D depends on the neuron.
- factorised: D is the constant leak, so the W trace is the filtered input
  x̄ (independent of the neuron) and L⊙e is a rank-1 outer product.
- none (DRTP): eligibility psi^t x^t, no memory of the past.

`advance` walks a chunk of K steps ([B, K, .] tensors) and adds Σ_t L^t ⊙ e^t
to the accumulator; only trainable parameters are traced.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends.base import Accumulator
from ..network import SNUNet


def threshold_trace(eps_b: Tensor, D: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """eps_b^t = D^t eps_b^{t-1} + c^t over a chunk: ([B, K, n] per step, last value)."""
    out = []
    for k in range(D.shape[1]):
        eps_b = D[:, k] * eps_b + c[:, k]
        out.append(eps_b)
    return torch.stack(out, 1), eps_b


class ExactTraces:
    def __init__(self, net: SNUNet, batch: int, like: Tensor, acc: Accumulator) -> None:
        m, n = net.n_in, net.cfg.hidden
        self.acc = acc
        self.eps_W = like.new_zeros(batch, m, n) if "W1" in acc else None
        self.eps_H = like.new_zeros(batch, n, n) if "H1" in acc else None
        self.eps_b = like.new_zeros(batch, n)

    def advance(self, D: Tensor, c: Tensor, x: Tensor, y_prev: Tensor, g: Tensor) -> None:
        for k in range(D.shape[1]):
            Dk, gk = D[:, k].unsqueeze(1), g[:, k].unsqueeze(1)
            if self.eps_W is not None:
                self.eps_W.mul_(Dk).add_(x[:, k].unsqueeze(2))
                self.acc.add("W1", (self.eps_W * gk).sum(0))
            if self.eps_H is not None:
                self.eps_H.mul_(Dk).add_(y_prev[:, k].unsqueeze(2))
                self.acc.add("H1", (self.eps_H * gk).sum(0))
        eps_b, self.eps_b = threshold_trace(self.eps_b, D, c)
        if "b1" in self.acc:
            self.acc.add("b1", (g * (eps_b - 1.0)).sum((0, 1)))


class FactorisedTraces:
    """Filtered inputs x̄^t = d x̄^{t-1} + x^t; with `decay=0` this is DRTP's trace-free form."""

    def __init__(self, net: SNUNet, batch: int, like: Tensor, acc: Accumulator, decay: float) -> None:
        n = net.cfg.hidden
        self.acc, self.decay = acc, decay
        self.x_bar = like.new_zeros(batch, net.n_in)
        self.y_bar = like.new_zeros(batch, n)
        self.eps_b = like.new_zeros(batch, n)

    def filtered(self, last: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
        if not self.decay:
            return seq, last
        out = []
        for k in range(seq.shape[1]):
            last = self.decay * last + seq[:, k]
            out.append(last)
        return torch.stack(out, 1), last

    def advance(self, D: Tensor, c: Tensor, x: Tensor, y_prev: Tensor, g: Tensor) -> None:
        G = g.flatten(0, 1)
        if "W1" in self.acc:
            x_bar, self.x_bar = self.filtered(self.x_bar, x)
            self.acc.add_outer("W1", x_bar.flatten(0, 1), G)
        if "H1" in self.acc:
            y_bar, self.y_bar = self.filtered(self.y_bar, y_prev)
            self.acc.add_outer("H1", y_bar.flatten(0, 1), G)
        if "b1" in self.acc:
            eps_b = torch.zeros_like(g)  # DRTP: no trace, e_b = -psi
            if self.decay:
                eps_b, self.eps_b = threshold_trace(self.eps_b, D, c)
            self.acc.add("b1", (g * (eps_b - 1.0)).sum((0, 1)))


def make_traces(kind: str, net: SNUNet, batch: int, like: Tensor, acc: Accumulator):
    if kind == "exact":
        return ExactTraces(net, batch, like[:, 0], acc)
    decay = net.cfg.decay if kind == "factorised" else 0.0
    return FactorisedTraces(net, batch, like[:, 0], acc, decay)
