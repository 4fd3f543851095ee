"""The time loops as compiled code: the SNU recursion over a chunk (and its backward for BPTT)
and the first-order scans of traces and readout, each one numba kernel instead of a few torch
operations per step launched from Python.

Where the work per step is small (150 units × 32 samples), the eager loop's time goes to
launching dozens of tiny operations per step; a kernel here walks the chunk's steps inside
compiled code, one sample and unit at a time, with every intermediate in a register.
The eager loops (`network.py`, `rules/traces.py`, `readout.py`) stay the reference: on float32
the forward kernels do the same operations in the same order and precision, so they agree bit
for bit; gradients sum in another order (tests compare them in float64).

The kernels (`fused_kernels.py`) take CPU tensors as numpy views (no copy); they are compiled
once per dtype at first use and cached on disk (`cache=True`); CUDA tensors keep the eager loops.
"""

from __future__ import annotations

import functools
import importlib
import time
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from . import blas


@functools.cache
def kernels() -> ModuleType:
    """The numba kernels, imported at first use: numba's import and the cache's load cost seconds,
    which a command that trains nothing should not pay."""
    return importlib.import_module(".fused_kernels", __package__)


def applies(*tensors: Tensor) -> bool:
    """Whether the kernels can run on these tensors: float32/float64 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


def _np(t: Tensor) -> np.ndarray:
    """A contiguous numpy view of a CPU tensor (a copy only if it was not contiguous)."""
    return t.detach().contiguous().numpy()


def _typed(value: float, like: Tensor) -> np.generic:
    """A Python number as a scalar of the tensor's dtype, so the kernel computes in that dtype."""
    return _np(like).dtype.type(value)


def _no_h(like: Tensor) -> np.ndarray:
    return np.zeros((0, 0), _np(like).dtype)


class _SNUChunk(torch.autograd.Function):
    """The SNU layer over a chunk, forward and backward as kernels; the forward kernel also leaves
    the surrogate ψ(S - b) (the online rules read it too), tanh's finished by one vectorised sigmoid."""

    @staticmethod
    def forward(ctx, cur: Tensor, s0: Tensor, y0: Tensor, b: Tensor, H: Tensor | None, decay: float,  # type: ignore[override]
                reset: str, surrogate: str) -> tuple[Tensor, Tensor, Tensor]:
        S, Y, psi = torch.empty_like(cur), torch.empty_like(cur), torch.empty_like(cur)
        h = _np(H) if H is not None else _no_h(cur)
        tanh = surrogate == "tanh"
        kernels().snu_forward(_np(cur), _np(s0), _np(y0), _np(b), h, _typed(decay, S), _typed(1.0, S),
                              _typed(0.0, S), reset == "full", S.numpy(), Y.numpy(), psi.numpy(), _typed(2.0, S),
                              _typed(100.0, S), tanh, blas.EVENT_DENSITY)
        if tanh:
            kernels().sech2(torch.sigmoid_(psi).numpy(), _typed(4.0, S), _typed(1.0, S))
        ctx.mark_non_differentiable(psi)
        ctx.set_materialize_grads(False)  # no [B, K, n] zeros for the outputs nobody differentiates
        ctx.save_for_backward(S, Y, psi, s0, y0, b, H)
        ctx.config = (decay, reset)
        return S, Y, psi

    @staticmethod
    def backward(ctx, gS: Tensor | None, gY: Tensor | None, _gpsi: Tensor | None):  # type: ignore[override]
        S, Y, psi, s0, y0, b, H = ctx.saved_tensors
        decay, reset = ctx.config
        gs = _np(gS) if gS is not None else np.zeros((0, 0, 0), _np(S).dtype)
        gY = torch.zeros_like(Y) if gY is None else gY
        gcur, gs0, gy0, gb = torch.empty_like(S), torch.empty_like(s0), torch.empty_like(y0), torch.zeros_like(b)
        h = _np(H) if H is not None else _no_h(S)
        kernels().snu_backward(gs, _np(gY), S.numpy(), Y.numpy(), psi.numpy(), _np(s0), _np(y0), _np(b), h,
                               _typed(decay, S), _typed(1.0, S), _typed(0.0, S), reset == "full", gcur.numpy(),
                               gs0.numpy(), gy0.numpy(), gb.numpy())
        gH = None
        if H is not None and ctx.needs_input_grad[4]:
            y_prev = torch.cat([y0.unsqueeze(1), Y[:, :-1]], 1)
            gH = blas.mm(y_prev.flatten(0, 1).transpose(0, 1), gcur.flatten(0, 1))
        return gcur, gs0, gy0, gb, gH, None, None, None


def snu_chunk(cur: Tensor, s0: Tensor, y0: Tensor, b: Tensor, H: Tensor | None, decay: float, reset: str,
              surrogate: str) -> tuple[Tensor, Tensor, Tensor]:
    """Membranes, spikes and surrogates ψ(S - b) [B, K, n] of one layer from its input currents
    `cur` = x W [B, K, n] and its state before the chunk; differentiable (the surrogate as dy/ds)
    in every tensor input that needs it. `surrogate` names one of `neuron.SURROGATES`."""
    return _SNUChunk.apply(cur, s0, y0, b, H, decay, reset, surrogate)


def scan(state: Tensor, coef: Tensor | float, drive: Tensor, reverse: bool = False) -> Tensor:
    """The first-order recursion of `rules.traces.scan` as one kernel (no autograd): [B, K, n]."""
    out = torch.empty_like(drive)
    c = coef.detach().contiguous() if isinstance(coef, Tensor) else torch.full((1, 1, 1), coef, dtype=drive.dtype)
    kernels().scan(_np(state), c.numpy(), _np(drive), out.numpy(), reverse)
    return out


class _LinearScan(torch.autograd.Function):
    """o_k = tau o_{k-1} + d_k with its backward, a scan from the end with the same constant."""

    @staticmethod
    def forward(ctx, state: Tensor, drive: Tensor, tau: float) -> Tensor:  # type: ignore[override]
        ctx.tau = tau
        return scan(state, tau, drive)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g = scan(torch.zeros_like(grad[:, 0]), ctx.tau, grad, reverse=True)
        return g[:, 0] * ctx.tau, g, None


def linear_scan(state: Tensor, drive: Tensor, tau: float) -> Tensor:
    """The leaky integrator over a chunk [B, K, n], differentiable in `state` and `drive`."""
    return _LinearScan.apply(state, drive, tau)


def exact_chunk(D: Tensor, c: Tensor, g: Tensor, eps_b: Tensor, carry: bool, held: bool
                ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor]:
    """`ExactTraces`' recursions over a chunk [B, K, n] as one kernel: (G, F if `carry`, A_{K-1} and
    Σ_s g_s A_s if a trace is `held`, Σ_{b,s} g (ε_b - 1) [n]); advances `eps_b` in place."""
    G = torch.empty_like(g)
    F = torch.empty_like(g) if carry else g.new_empty(0, 0, 0)
    A_last = torch.empty_like(eps_b) if held else eps_b.new_empty(0, 0)
    gA = torch.empty_like(eps_b) if held else eps_b.new_empty(0, 0)
    gb = g.new_zeros(g.shape[2])
    kernels().exact_chunk(_np(D), _np(c), _np(g), eps_b.numpy(), G.numpy(), F.numpy(), A_last.numpy(), gA.numpy(),
                 gb.numpy(), carry, held, _typed(1.0, g))
    return G, F if carry else None, A_last if held else None, gA if held else None, gb


def jacobian(S: Tensor, Y: Tensor, psi: Tensor, s_in: Tensor, y_in: Tensor, psi_in: Tensor, b: Tensor,
             h_diag: Tensor | None, decay: float, reset: str, exact: bool) -> tuple[Tensor, Tensor]:
    """(D, c) [B, K, n] of a chunk as one kernel: `network.SNUNet.jacobian` without its shifted copies."""
    D, c = torch.empty_like(S), torch.empty_like(S)
    h = _np(h_diag) if h_diag is not None else np.zeros(0, _np(S).dtype)
    kernels().jacobian(_np(S), _np(Y), _np(psi), _np(s_in), _np(y_in), _np(psi_in), _np(b), h, _typed(decay, S),
              reset == "full", exact, _typed(1.0, S), D.numpy(), c.numpy())
    return D, c


def warm_up(dtype: torch.dtype = torch.float32) -> float:
    """Run every kernel once on tiny inputs of `dtype` (compiling it, or loading it from numba's
    disk cache); returns the seconds it took. The setup calls it so that no run pays compilation."""
    start = time.perf_counter()
    x = torch.rand(2, 3, 4, dtype=dtype)
    zero, b = torch.zeros(2, 4, dtype=dtype), torch.full((4,), 0.5, dtype=dtype)
    for H in (None, torch.rand(4, 4, dtype=dtype, requires_grad=True)):
        cur = x.clone().requires_grad_()
        for surrogate in ("tanh", "fast_sigmoid"):
            S, Y, psi = snu_chunk(cur, zero, zero, b, H, 0.9, "full", surrogate)
            (S.sum() + Y.sum()).backward()
    linear_scan(zero.requires_grad_(), x, 0.9).sum().backward()
    D, c = jacobian(x, x, x, zero, zero, zero, b, None, 0.9, "full", True)
    exact_chunk(D, c, x, zero.detach().clone(), True, True)
    return time.perf_counter() - start
