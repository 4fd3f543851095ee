"""Eligibility traces of one SNU layer's parameters (SPEC §2), per sample, advanced online.

Every hidden layer keeps its own traces over its own input x_l (the spikes of the
layer below, or the data for layer 1); nothing here looks at other layers.

- exact: the membrane traces eps^{t,θ} = D^t eps^{t-1,θ} + ∂s^t/∂θ; the W trace
  is an m×n matrix per sample because D depends on the neuron. Within a chunk
  its contribution is summed in closed form (see `ExactTraces`), so the m×n
  trace is touched once per chunk, not once per step.
- factorised: D is the constant leak, so the W trace is the filtered input
  x̄ (independent of the neuron) and L⊙e is a rank-1 outer product.
- none (DRTP): eligibility psi^t x^t, no memory of the past.

`advance` walks a chunk of K steps ([B, K, .] tensors) and adds Σ_t L^t ⊙ e^t
to the accumulator; only trainable parameters are traced.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import blas, fused
from ..backends.base import Accumulator
from ..layers import LayerSpec


def scan(state: Tensor, coef: Tensor | float, drive: Tensor, compiled: bool = False) -> tuple[Tensor, Tensor]:
    """state^k = coef^k ⊙ state^{k-1} + drive^k over a chunk [B, K, n] (coef per step, or one number):
    every trace here is this first-order recursion. Returns ([B, K, n] per step, last state).
    `compiled`: one fused kernel (imc_osttp/fused.py) where it applies, the same result."""
    if compiled and drive.shape[1] > 1 and fused.applies(drive):
        out_ = fused.scan(state, coef, drive)
        return out_, out_[:, -1]
    out = []
    for k in range(drive.shape[1]):
        state = (coef[:, k] if isinstance(coef, Tensor) else coef) * state + drive[:, k]
        out.append(state)
    return torch.stack(out, 1), state


class ExactTraces:
    """Exact diagonal traces, summed over a chunk in closed form instead of step by step.

    With ε_s = D_s ε_{s-1} + u_s (u = x for W1, y^{t-1} for H1) and ε_in the trace
    entering the chunk, the chunk's Σ_s g_s ⊙ ε_s (g = L ⊙ ψ) is

        Σ_b ε_in ⊙ (Σ_s g_s A_s)  +  Σ_b Σ_s u_sᵀ G_s,   A_s = D_0 ⋯ D_s,  G_s = g_s + D_{s+1} G_{s+1},

    the same sum in another order, exact in every step and parameter: one GEMM over
    the chunk's samples and steps, plus one pass over ε_in. The trace leaving the
    chunk, A_{K-1} ⊙ ε_in + Σ_s u_sᵀ F_s, is built only when another chunk follows.
    So a sequence that fits one chunk never holds an m×n trace, and per-step updates
    (chunks of one step) keep the fully online recursion. The u_sᵀ G_s are no crossbar
    update (G_s holds later steps' signals): an analog backend writes their sum densely.
    """

    def __init__(self, layer: LayerSpec, batch: int, like: Tensor, acc: Accumulator, compiled: bool = False) -> None:
        self.acc, self.layer, self.compiled = acc, layer, compiled
        self.eps: dict[str, Tensor | None] = {name: None for name in (layer.W, layer.H) if name in acc}  # None: 0
        self.eps_b = like.new_zeros(batch, layer.n)

    def advance(self, D: Tensor, c: Tensor, x: Tensor, y_prev: Tensor | None, g: Tensor, carry: bool = True) -> None:
        inputs = {self.layer.W: x} if y_prev is None else {self.layer.W: x, self.layer.H: y_prev}
        if D.shape[1] > 1 and self.compiled and fused.applies(g):
            held = any(eps is not None for eps in self.eps.values())
            self.eps_b = self.eps_b.contiguous().clone()  # the kernel advances it in place
            G, F, A_last, gA, gb = fused.exact_chunk(D, c, g, self.eps_b, carry and bool(self.eps), held)
            if self.layer.b in self.acc:
                self.acc.add(self.layer.b, gb)
            self._close_chunk(inputs, G.flatten(0, 1), F, A_last, gA)
            return
        if D.shape[1] == 1:
            self._step(D[:, 0].unsqueeze(1), inputs, g[:, 0])
        elif self.eps:
            self._chunk(D, inputs, g, carry)
        eps_b, self.eps_b = scan(self.eps_b, D, c)
        if self.layer.b in self.acc:
            self.acc.add(self.layer.b, (g * (eps_b - 1.0)).sum((0, 1)))

    def _step(self, D: Tensor, inputs: dict[str, Tensor], g: Tensor) -> None:
        """One step: the online recursion ε ← D ⊙ ε + u in one fused pass, then Σ_b ε ⊙ g."""
        for name, eps in self.eps.items():
            u = inputs[name][:, 0].unsqueeze(2)
            if eps is None:
                eps = self.eps[name] = u.expand(-1, -1, D.shape[2]).contiguous()
            else:
                torch.addcmul(u, eps, D, out=eps)
            self.acc.add_eligibility(name, eps, g)

    def _chunk(self, D: Tensor, inputs: dict[str, Tensor], g: Tensor, carry: bool) -> None:
        """K steps in closed form (class docstring), step by step in torch: the reference of the
        compiled `fused.exact_chunk`."""
        # D_{s+1} from the chunk's last step back: G_s = g_s + D_{s+1} G_{s+1} is the scan run
        # backwards, and F_s = D_{s+1} ⋯ D_{K-1} its running product
        later = torch.flip(torch.cat([D[:, 1:], torch.ones_like(D[:, :1])], 1), (1,))
        G = torch.flip(scan(torch.zeros_like(g[:, 0]), later, torch.flip(g, (1,)))[0], (1,)).flatten(0, 1)
        F = torch.flip(torch.cumprod(later, 1), (1,)) if carry else None
        held = any(eps is not None for eps in self.eps.values())
        A = torch.cumprod(D, 1) if held else None
        gA = (g * A).sum(1) if held else None  # Σ_s g_s A_s, shared by W1 and H1
        self._close_chunk(inputs, G, F, A[:, -1] if held else None, gA)

    def _close_chunk(self, inputs: dict[str, Tensor], G: Tensor, F: Tensor | None, A_last: Tensor | None,
                     gA: Tensor | None) -> None:
        """Add the chunk's sum to the accumulator and carry each trace out of the chunk."""
        for name, eps in self.eps.items():
            u = inputs[name]
            if eps is not None:
                self.acc.add_eligibility(name, eps, gA)
            self.acc.add_outer(name, u.flatten(0, 1), G, crossbar=False)  # G_s needs later steps
            if F is not None and eps is None:
                self.eps[name] = blas.mm(u.transpose(1, 2), F)
            elif F is not None:
                blas.addmm_(eps.mul_(A_last.unsqueeze(1)), u.transpose(1, 2), F)


class FactorisedTraces:
    """Filtered inputs x̄^t = d x̄^{t-1} + x^t; with `decay=0` this is DRTP's trace-free form."""

    def __init__(self, layer: LayerSpec, n_in: int, batch: int, like: Tensor, acc: Accumulator,
                 decay: float, compiled: bool = False) -> None:
        self.acc, self.layer, self.decay, self.compiled = acc, layer, decay, compiled
        self.x_bar = like.new_zeros(batch, n_in)
        self.y_bar = like.new_zeros(batch, layer.n)
        self.eps_b = like.new_zeros(batch, layer.n)

    def filtered(self, last: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
        return (seq, last) if not self.decay else scan(last, self.decay, seq, self.compiled)

    def advance(self, D: Tensor, c: Tensor, x: Tensor, y_prev: Tensor | None, g: Tensor, carry: bool = True) -> None:
        G = g.flatten(0, 1)
        W, H, b = self.layer.W, self.layer.H, self.layer.b
        if W in self.acc:
            x_bar, self.x_bar = self.filtered(self.x_bar, x)
            self.acc.add_outer(W, x_bar.flatten(0, 1), G)
        if H in self.acc:
            assert y_prev is not None, "a recurrent layer's traces need the previous spikes"
            y_bar, self.y_bar = self.filtered(self.y_bar, y_prev)
            self.acc.add_outer(H, y_bar.flatten(0, 1), G)
        if b in self.acc:
            gb = -g.sum((0, 1))  # DRTP: no trace, e_b = -psi
            if self.decay:
                eps_b, self.eps_b = scan(self.eps_b, D, c, self.compiled)
                gb = (g * eps_b).sum((0, 1)) + gb
            self.acc.add(b, gb)


Traces = ExactTraces | FactorisedTraces


def make_traces(kind: str, layer: LayerSpec, n_in: int, batch: int, like: Tensor, acc: Accumulator,
                compiled: bool = False) -> Traces:
    """One layer's traces: `exact`, `factorised` (D = the layer's leak) or `none` (DRTP: no memory);
    `compiled`: their scans as fused kernels."""
    if kind == "exact":
        return ExactTraces(layer, batch, like, acc, compiled)
    decay = layer.decay if kind == "factorised" else 0.0
    return FactorisedTraces(layer, n_in, batch, like, acc, decay, compiled)
