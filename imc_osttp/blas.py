"""The engine's matrix products on the CPU: event-driven where the left factor is mostly zeros
(spikes), otherwise through numpy's OpenBLAS where torch's MKL is the slow one.

Spikes are binary and sparse (JSB's piano roll is 4.5 % ones, SHD's input 10 %): x W is then a
sum of a few rows of W per row of x, and xᵀ g a few row additions, which a dense GEMM cannot
exploit (`fused_kernels.event_mm`, below EVENT_DENSITY non-zeros; exact for any x, only the
order of the sums differs from a GEMM's).

torch's MKL runs these shapes (a few hundred units, K = 88–450, tens of thousands of rows)
1.1–2.6× slower than OpenBLAS on AMD processors: one thread of a Zen 4 core does x W for JSB's
layer (32768 × 88 by 88 × 150) in 31 ms through MKL and 12 ms through OpenBLAS
(`benchmarks/bench_blas.py`, `results/bench_blas_cpu.md`). The choice is made once per process and does not depend on
timing, so a seed still reproduces its run: OpenBLAS unless the CPU is Intel's, where MKL is
at home; `IMC_OSTTP_BLAS=torch|openblas` overrides it. CUDA tensors, other dtypes and
autograd through `linear` are handled; everything else is torch's own product.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import Tensor


@functools.cache
def _choice() -> str:
    chosen = os.environ.get("IMC_OSTTP_BLAS", "")
    if chosen in ("torch", "openblas"):
        return chosen
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            intel = "GenuineIntel" in info.read(4096)
    except OSError:
        intel = True  # unknown CPU: keep torch's own
    return "torch" if intel else "openblas"


_threads: list[int] = []  # OpenBLAS's thread count, kept equal to torch's


def _openblas(*tensors: Tensor) -> bool:
    """Whether these tensors' product goes through OpenBLAS (and its threads match torch's)."""
    if _choice() != "openblas" or not all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
                                          and t.dtype == tensors[0].dtype for t in tensors):
        return False
    threads = torch.get_num_threads()
    if _threads != [threads]:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
        _threads[:] = [threads]
    return True


EVENT_DENSITY = 0.125  # below this fraction of non-zeros the event-driven product wins (bench_blas.py: ~0.15)


def _events(x: Tensor) -> bool:
    """Whether x (2-d, CPU, float) is sparse enough for the event-driven products."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 2
            and x.is_contiguous() and x.numel() > 0
            and _kernels().nonzeros(x.detach().numpy()) < EVENT_DENSITY * x.numel())


def _kernels():  # noqa: ANN202
    from .fused import kernels

    return kernels()


def _view(t: Tensor) -> np.ndarray:
    """A numpy view without copying when one stride is 1 (BLAS reads transposes as they are)."""
    t = t.detach()
    return t.numpy() if 1 in t.stride() else t.contiguous().numpy()


def _sparse_transpose(a: Tensor, b: Tensor) -> Tensor | None:
    """x where a = xᵀ of a sparse, contiguous x (a weight gradient's left factor), else None."""
    if a.dim() != 2 or a.stride(0) != 1 or a.dtype != b.dtype:
        return None
    x = a.transpose(0, 1)
    return x if x.is_contiguous() and _events(x) else None


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-d (or batched 3-d) tensors, no autograd; xᵀ g of sparse x by events."""
    x = _sparse_transpose(a, b)
    if x is not None:
        out = b.new_zeros(a.shape[0], b.shape[-1])
        _kernels().event_mm_t(_view(x), b.detach().contiguous().numpy(), out.numpy())
        return out
    if not _openblas(a, b):
        return a @ b
    out = a.new_empty(*a.shape[:-1], b.shape[-1])
    np.matmul(_view(a), _view(b), out=out.numpy())
    return out


def addmm_(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c += a @ b in place (c is weight-sized here, so the temporary is small); a = xᵀ of a sparse
    x adds x's events' rows of b straight into c."""
    x = _sparse_transpose(a, b) if c.is_contiguous() and c.dtype == a.dtype else None
    if x is not None:
        _kernels().event_mm_t(_view(x), b.detach().contiguous().numpy(), c.numpy())
        return c
    if not _openblas(c, a, b):
        return c.addmm_(a, b) if c.dim() == 2 else c.baddbmm_(a, b)
    return c.add_(mm(a, b))


class _Linear(torch.autograd.Function):
    """x @ W with both gradients; event-driven in x where x is sparse."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, events: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, W)
        if not events:
            return mm(x, W)
        out = x.new_empty(x.shape[0], W.shape[1])
        _kernels().event_mm(_view(x.contiguous()), W.detach().contiguous().numpy(), out.numpy())
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, W = ctx.saved_tensors
        gx = mm(g, W.transpose(0, 1)) if ctx.needs_input_grad[0] else None
        gW = mm(x.transpose(0, 1), g) if ctx.needs_input_grad[1] else None  # by events where x is sparse
        return gx, gW, None


def linear(x: Tensor, W: Tensor) -> Tensor:
    """x [N, m] @ W [m, n], differentiable in both."""
    events = W.dtype == x.dtype and _events(x)
    if not events and not _openblas(x, W):
        return x @ W
    return _Linear.apply(x, W, events)
