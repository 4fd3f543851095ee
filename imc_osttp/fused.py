"""The fused engine: the time loops as compiled code, each one numba kernel instead of a few torch
operations per step launched from Python. A layer's recursion over a chunk (and its backward for
BPTT), its Jacobian and the exact traces' recursions run kernels built from the neuron's one
definition (imc_osttp/fused_kernels.py); the first-order scans of traces and readout are one kernel.

Where the work per step is small (150 units × 32 samples), the eager loop's time goes to
launching dozens of tiny operations per step; a kernel here walks the chunk's steps inside
compiled code, one sample and unit at a time, with every intermediate in a register.
The eager engine (imc_osttp/eager.py) stays the reference: on float32 the forward kernels do the
same operations in the same order and precision, so they agree bit for bit; gradients sum in
another order (tests compare them in float64).

The kernels take CPU tensors as numpy views (no copy); they are compiled once per dtype at first
use and cached on disk (`cache=True`); `engine.choose` keeps CUDA tensors on the eager engine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import time
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import blas
from .engine import Dynamics, TraceChunk

if TYPE_CHECKING:
    from .network import LayerChunk, LayerState


@functools.cache
def kernels() -> ModuleType:
    """The numba kernels, imported at first use: numba's import and the cache's load cost seconds,
    which a command that trains nothing should not pay."""
    return importlib.import_module(".fused_kernels", __package__)


def _np(t: Tensor) -> np.ndarray:
    """A contiguous numpy view of a CPU tensor (a copy only if it was not contiguous)."""
    return t.detach().contiguous().numpy()


def _typed(value: float, like: Tensor) -> np.generic:
    """A Python number as a scalar of the tensor's dtype, so the kernel computes in that dtype."""
    return _np(like).dtype.type(value)


def _typed_params(params: NamedTuple, like: Tensor) -> NamedTuple:
    """A neuron's or surrogate's parameters with every number in the tensor's dtype (flags stay bools)."""
    return type(params)(*(v if isinstance(v, bool) else _typed(v, like) for v in params))


def _empty(like: Tensor, dims: int) -> np.ndarray:
    return np.zeros((0,) * dims, _np(like).dtype)


def _of(dyn: Dynamics) -> SimpleNamespace:
    return kernels().neuron_kernels(dyn.neuron)


class _LayerChunk(torch.autograd.Function):
    """A layer over a chunk, forward and backward as kernels; the forward kernel also leaves the
    surrogate's elementwise part, which its vector and post parts finish (the online rules read ψ too)."""

    @staticmethod
    def forward(ctx, cur: Tensor, b: Tensor, H: Tensor | None, h0: Tensor, y0: Tensor,  # type: ignore[override]
                dyn: Dynamics) -> tuple[Tensor, Tensor, Tensor]:
        if h0.requires_grad or y0.requires_grad:
            raise ValueError("the fused layer treats the state before a chunk as a constant (BPTT runs a "
                             "sequence as one chunk)")
        B, K, n = cur.shape
        S, Y, psi = cur.new_empty(dyn.neuron.k, B, K, n), torch.empty_like(cur), torch.empty_like(cur)
        forward = kernels().forward_kernels(dyn.neuron, dyn.surrogate.pre)
        p, q, zero, one = (_typed_params(dyn.params, cur), _typed_params(dyn.surrogate.params(), cur),
                           _typed(0.0, cur), _typed(1.0, cur))
        if H is None:
            forward.feedforward(_np(cur), _np(h0), _np(y0), _np(b), p, q, zero, one, S.numpy(), Y.numpy(), psi.numpy())
        else:
            forward.recurrent(_np(cur), _np(h0), _np(y0), _np(b), _np(H), p, q, zero, one, blas.EVENT_DENSITY,
                              S.numpy(), Y.numpy(), psi.numpy())
        if dyn.surrogate.vector is not None:
            dyn.surrogate.vector(psi)
        if dyn.surrogate.post is not None:
            kernels().map_kernel(dyn.surrogate.post)(psi.numpy(), q)
        ctx.mark_non_differentiable(psi)
        ctx.set_materialize_grads(False)  # no [B, K, n] zeros for the outputs nobody differentiates
        ctx.save_for_backward(S, Y, psi, h0, y0, b, H)
        ctx.dyn = dyn
        return S, Y, psi

    @staticmethod
    def backward(ctx, gS: Tensor | None, gY: Tensor | None, _gpsi: Tensor | None):  # type: ignore[override]
        S, Y, psi, h0, y0, b, H = ctx.saved_tensors
        gY = torch.zeros_like(Y) if gY is None else gY
        gcur, gb = torch.empty_like(Y), torch.zeros_like(b)
        _of(ctx.dyn).backward(_np(gS) if gS is not None else _empty(S, 4), _np(gY), S.numpy(), Y.numpy(),
                              psi.numpy(), _np(h0), _np(y0), _np(b), _np(H) if H is not None else _empty(S, 2),
                              _typed_params(ctx.dyn.params, S), _typed(0.0, S), gcur.numpy(), gb.numpy())
        gH = None
        if H is not None and ctx.needs_input_grad[2]:
            y_prev = torch.cat([y0.unsqueeze(1), Y[:, :-1]], 1)
            gH = blas.mm(y_prev.flatten(0, 1).transpose(0, 1), gcur.flatten(0, 1))
        return gcur, gb, gH, None, None, None


def scan(state: Tensor, coef: Tensor | float, drive: Tensor, reverse: bool = False) -> Tensor:
    """The first-order recursion o_k = coef_k ⊙ o_{k∓1} + drive_k as one kernel (no autograd): [B, K, n]."""
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


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of handing them back to the
    system. By default it maps every block above 128 kiB afresh and returns it on free, so each update
    page-faults its [B, K, n] temporaries back in: ~15-20 % of the CPU time of a JSB update at T = 128
    (measured with MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_, which set the same). Peak memory is
    unchanged; memory freed stays with the process. False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    trim, top_pad, mmap = -1, -2, -3  # M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD (malloc.h)
    return bool(mallopt(mmap, 32 * 2**20) and mallopt(trim, 2**30) and mallopt(top_pad, 64 * 2**20))


class FusedEngine:
    name = "fused"

    def __init__(self) -> None:
        keep_freed_memory()

    def layer(self, dyn: Dynamics, cur: Tensor, before: LayerState, b: Tensor, H: Tensor | None,
              recur: Callable[[Tensor], Tensor] | None, differentiable: bool) -> tuple[Tensor, Tensor, Tensor]:
        S, Y, psi = _LayerChunk.apply(cur, b, H, before.h, before.y, dyn)
        return (S, Y, psi) if differentiable else (S.detach(), Y.detach(), psi)

    def jacobian(self, dyn: Dynamics, chunk: LayerChunk, before: LayerState, b: Tensor, hd: Tensor | None,
                 exact: bool) -> tuple[Tensor, Tensor]:
        S, k = chunk.h, dyn.neuron.k
        J, c = S.new_empty(k, *S.shape), torch.empty_like(S)
        _of(dyn).jacobian(_np(S), _np(chunk.y), _np(chunk.psi), _np(before.h), _np(before.y), _np(before.psi),
                          _np(b), None if hd is None else _np(hd), _typed_params(dyn.params, S),
                          exact, J.numpy(), c.numpy())
        return J, c

    def traces(self, dyn: Dynamics, chunk: LayerChunk, before: LayerState, b: Tensor, hd: Tensor | None,
               exact: bool, g: Tensor, eps_b: Tensor, carry: bool, held: bool) -> TraceChunk:
        S, k = chunk.h, dyn.neuron.k
        _, B, K, n = S.shape
        G = torch.empty_like(g)
        F = S.new_empty(k, B, K, n) if carry else S.new_empty(0, 0, 0, 0)
        A_last = S.new_empty(k, k, B, n) if held else S.new_empty(0, 0, 0, 0)
        gA = S.new_empty(k, B, n) if held else S.new_empty(0, 0, 0)
        gb = g.new_zeros(n)
        _of(dyn).traces(_np(S), _np(chunk.y), _np(chunk.psi), _np(before.h), _np(before.y), _np(before.psi), _np(b),
                        None if hd is None else _np(hd), _typed_params(dyn.params, S), exact,
                        _typed(0.0, S), _typed(1.0, S), _np(g), eps_b.numpy(), G.numpy(), F.numpy(), A_last.numpy(),
                        gA.numpy(), gb.numpy(), carry, held)
        return TraceChunk(G, F if carry else None, A_last if held else None, gA if held else None, gb)

    def scan(self, state: Tensor, coef: Tensor | float, drive: Tensor, reverse: bool = False) -> Tensor:
        return scan(state, coef, drive, reverse)

    def linear_scan(self, state: Tensor, drive: Tensor, tau: float) -> Tensor:
        return _LinearScan.apply(state, drive, tau)


def warm_up(dtype: torch.dtype = torch.float32) -> float:
    """Run every kernel of every neuron and surrogate once on tiny inputs of `dtype` (compiling it, or
    loading it from numba's disk cache); returns the seconds it took. The setup calls it so that no run
    pays compilation."""
    from . import registry
    from .config import ModelConfig
    from .network import LayerChunk, LayerState
    from .neurons.surrogates import SURROGATES

    start = time.perf_counter()
    engine = FusedEngine()
    x = torch.rand(2, 3, 4, dtype=dtype)
    b = torch.full((4,), 0.5, dtype=dtype)
    for neuron in map(registry.neuron, registry.neuron_names()):
        layer = ModelConfig(hidden=4, neuron=neuron.name).layers()[0]
        zero = LayerState(torch.zeros(neuron.k, 2, 4, dtype=dtype), torch.zeros(2, 4, dtype=dtype),
                          torch.zeros(2, 4, dtype=dtype))
        for surrogate in SURROGATES.values():
            dyn = Dynamics(neuron, neuron.params(layer), surrogate)
            for H in (None, torch.rand(4, 4, dtype=dtype, requires_grad=True)):
                cur = x.clone().requires_grad_()
                S, Y, psi = engine.layer(dyn, cur, zero, b, H, None, True)
                (S.sum() + Y.sum()).backward()
        chunk = LayerChunk(x, S.detach(), Y.detach(), psi)
        for hd in (None, b):  # without and with recurrence: compiled apart
            engine.jacobian(dyn, chunk, zero, b, hd, True)
            engine.traces(dyn, chunk, zero, b, hd, True, x, zero.h.clone(), True, True)
    engine.linear_scan(torch.zeros(2, 4, dtype=dtype, requires_grad=True), x, 0.9).sum().backward()
    return time.perf_counter() - start
