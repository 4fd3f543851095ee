"""Eligibility traces of one hidden layer's parameters (SPEC §2), per sample, advanced online.

Every hidden layer keeps its own traces over its own input x_l (the spikes of the
layer below, or the data for layer 1); nothing here looks at other layers. A neuron
with k state variables per unit (imc_osttp/neurons) has k-vector traces per parameter,
advanced by its per-unit k×k Jacobian J; the spike reads them through r = d arg/dh.

- exact: ε^{t,θ} = J^t ε^{t-1,θ} + ∂h^t/∂θ; the W trace is an m×n(×k) tensor per
  sample because J depends on the neuron. Within a chunk its contribution is summed in
  closed form (see `ExactTraces`), so the trace is touched once per chunk, not once per
  step.
- factorised (e-prop's approximation): the neuron's reset paths dropped from J. For a
  one-state neuron J is then the constant leak, so the W trace is the filtered input x̄
  (independent of the neuron) and L⊙e is a rank-1 outer product, the crossbar's update;
  a neuron with more state (ALIF's adaptation) keeps per-synapse traces, summed as the
  exact ones are.
- none (DRTP): eligibility psi^t x^t, no memory of the past.

`advance` walks a chunk of K steps ([B, K, .] tensors) and adds Σ_t L^t ⊙ e^t
to the accumulator; only trainable parameters are traced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import blas
from ..backends.base import Accumulator
from ..engine import shift_in
from ..layers import LayerSpec

if TYPE_CHECKING:
    from ..network import LayerChunk, LayerState, SNUNet


class ExactTraces:
    """Per-synapse traces, summed over a chunk in closed form instead of step by step.

    With ε_s = J_s ε_{s-1} + q u_s (u = x for W, y^{t-1} for H; q = ∂h/∂current, the neuron's
    current_grad) and ε_in the trace entering the chunk, the chunk's Σ_s g_s rᵀε_s (g = L ⊙ ψ) is

        Σ_b ε_in · (Σ_s g_s rᵀA_s)  +  Σ_b Σ_s u_sᵀ (G_s q),   A_s = J_s ⋯ J_0,  G_s = g_s rᵀ + G_{s+1} J_{s+1},

    the same sum in another order, exact in every step and parameter: one GEMM over
    the chunk's samples and steps, plus one pass over ε_in. The trace leaving the
    chunk, A_{K-1} ε_in + Σ_s u_sᵀ F_s (F_s = J_{K-1} ⋯ J_{s+1} q), is built only when another
    chunk follows. So a sequence that fits one chunk never holds an m×n trace, and per-step
    updates (chunks of one step) keep the fully online recursion. The u_sᵀ G_s are no crossbar
    update (G_s holds later steps' signals): an analog backend writes their sum densely.
    `exact=False`: the same with the neuron's factorised Jacobian.
    """

    def __init__(self, net: SNUNet, layer: LayerSpec, batch: int, like: Tensor, acc: Accumulator,
                 exact: bool = True) -> None:
        self.net, self.layer, self.acc, self.exact = net, layer, acc, exact
        neuron, params, _ = net.dynamics[layer.index - 1]
        self.k, self.r, self.q = neuron.k, neuron.spike_grad(params), neuron.current_grad(params)
        self.eps: dict[str, Tensor | None] = {name: None for name in (layer.W, layer.H) if name in acc}  # None: 0
        self.eps_b = like.new_zeros(self.k, batch, layer.n)

    def advance(self, chunk: LayerChunk, before: LayerState, g: Tensor, carry: bool = True) -> None:
        layer = self.layer
        inputs = {layer.W: chunk.x}
        if layer.recurrent:
            inputs[layer.H] = shift_in(before.y, chunk.y)
        if chunk.y.shape[1] == 1:
            self._step(chunk, before, inputs, g)
            return
        held = any(eps is not None for eps in self.eps.values())
        out = self.net.trace_chunk(layer, chunk, before, self.exact, g, self.eps_b, carry and bool(self.eps), held)
        if layer.b in self.acc:
            self.acc.add(layer.b, out.gb)
        for name, eps in self.eps.items():
            u = inputs[name]
            if eps is not None:
                for a in range(self.k):
                    self.acc.add_eligibility(name, eps[a], out.gA[a])
            self.acc.add_outer(name, u.flatten(0, 1), out.G.flatten(0, 1), crossbar=False)  # G_s needs later steps
            if out.F is None:
                continue
            if eps is None:
                self.eps[name] = torch.stack([blas.mm(u.transpose(1, 2), F) for F in out.F])
                continue
            if self.k == 1:  # in place
                eps[0].mul_(out.A_last[0, 0].unsqueeze(1))
            else:
                eps.copy_(torch.einsum("acbn,cbmn->abmn", out.A_last, eps))
            for a in range(self.k):
                blas.addmm_(eps[a], u.transpose(1, 2), out.F[a])

    def _step(self, chunk: LayerChunk, before: LayerState, inputs: dict[str, Tensor], g: Tensor) -> None:
        """One step: the online recursion ε ← J ε + q u in one fused pass, then Σ_b ε ⊙ (g r)."""
        J, c = self.net.jacobian(self.layer, chunk, before, self.exact)
        J, c, g = J[:, :, :, 0].unsqueeze(3), c[:, :, 0], g[:, 0]  # [k, k, B, 1, n]: broadcast over the inputs
        for name, eps in self.eps.items():
            u = inputs[name][:, 0].unsqueeze(2)
            if eps is None:
                eps = self.eps[name] = torch.stack([(q * u).expand(-1, -1, J.shape[-1]) for q in self.q])
            elif self.k == 1:
                torch.addcmul(u * self.q[0], eps[0], J[0, 0], out=eps[0])
            else:
                eps.copy_(torch.einsum("acbin,cbmn->abmn", J, eps))
                for a in range(self.k):
                    eps[a] += self.q[a] * u
            for a in range(self.k):
                self.acc.add_eligibility(name, eps[a], g * self.r[a])
        J = J[:, :, :, 0]
        if self.k == 1:
            self.eps_b = (J[0, 0] * self.eps_b[0] + c[0]).unsqueeze(0)
        else:
            self.eps_b = torch.einsum("acbn,cbn->abn", J, self.eps_b) + c
        if self.layer.b in self.acc:
            spiking = sum((self.r[a] * self.eps_b[a] for a in range(1, self.k)), self.r[0] * self.eps_b[0])
            self.acc.add(self.layer.b, (g * (spiking - 1.0)).sum(0))


class FactorisedTraces:
    """Filtered inputs x̄^t = d x̄^{t-1} + x^t (one-state neurons); with `decay=0` DRTP's trace-free form (any neuron).

    The update Σ_t x̄^tᵀ (rq g^t) is handed over as each step's rank-1 term: the crossbar's own update, which
    an analog backend applies as pulses (rq = d arg/dh · dh/dcur, 1 for the SNU and ALIF)."""

    def __init__(self, net: SNUNet, layer: LayerSpec, batch: int, like: Tensor, acc: Accumulator,
                 decay: float) -> None:
        self.net, self.acc, self.layer, self.decay = net, acc, layer, decay
        neuron, params, _ = net.dynamics[layer.index - 1]
        r, q = neuron.spike_grad(params), neuron.current_grad(params)
        self.r, self.rq = r[0], sum(a * b for a, b in zip(r, q, strict=True))  # DRTP's x's instant effect on arg
        self.bars = {name: like.new_zeros(batch, net.fan_in(layer) if name == layer.W else layer.n)
                     for name in (layer.W, layer.H) if name in acc}
        self.eps_b = like.new_zeros(batch, layer.n)

    def advance(self, chunk: LayerChunk, before: LayerState, g: Tensor, carry: bool = True) -> None:
        layer, acc, engine = self.layer, self.acc, self.net.engine
        inputs = {layer.W: chunk.x}
        if layer.recurrent:
            inputs[layer.H] = shift_in(before.y, chunk.y)
        G = (g if self.rq == 1.0 else g * self.rq).flatten(0, 1)
        for name, last in self.bars.items():
            bar = engine.scan(last, self.decay, inputs[name]) if self.decay else inputs[name]
            acc.add_outer(name, bar.flatten(0, 1), G)
            if self.decay:
                self.bars[name] = bar[:, -1]
        if layer.b in acc:
            gb = -g.sum((0, 1))  # DRTP: no trace, e_b = -psi
            if self.decay:
                J, c = self.net.jacobian(layer, chunk, before, exact=False)
                eps_b = engine.scan(self.eps_b, J[0, 0], c[0])
                self.eps_b = eps_b[:, -1]
                gb = (g * (eps_b if self.r == 1.0 else self.r * eps_b)).sum((0, 1)) + gb
            acc.add(layer.b, gb)


Traces = ExactTraces | FactorisedTraces


def make_traces(kind: str, net: SNUNet, layer: LayerSpec, batch: int, like: Tensor, acc: Accumulator) -> Traces:
    """One layer's traces: `exact`, `factorised` (e-prop's Jacobian: for a one-state neuron the layer's
    leak, the filtered input) or `none` (DRTP: no memory)."""
    k = net.dynamics[layer.index - 1].neuron.k
    if kind == "exact" or (kind == "factorised" and k > 1):
        return ExactTraces(net, layer, batch, like, acc, exact=kind == "exact")
    return FactorisedTraces(net, layer, batch, like, acc, layer.decay if kind == "factorised" else 0.0)
