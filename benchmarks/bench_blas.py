"""The engine's matrix products (`imc_osttp/blas.py`) at the JSB and SHD layers' shapes, one thread,
median of 7 after a warm-up: torch's own BLAS (MKL) against numpy's OpenBLAS for dense factors, and
the event-driven product against the dense one for spikes of a given density. The figures behind
`blas._choice` and `blas.EVENT_DENSITY`.

    .venv/bin/python benchmarks/bench_blas.py [--rows 32768] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from imc_osttp import blas
from imc_osttp.fused import kernels

SHAPES = {  # label: (m, n) of x [rows, m] @ W [m, n]; rows = batch × steps
    "JSB x W1 (88 → 150)": (88, 150),
    "JSB y W2 (150 → 88)": (150, 88),
    "SHD x W1 (700 → 450)": (700, 450),
}
DENSITIES = (0.05, 0.1, 0.2)


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def openblas(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The dense product through numpy's OpenBLAS itself (blas.mm would take sparse xᵀ g by events)."""
    return np.matmul(a.numpy(), b.numpy())


def dense_row(label: str, x: torch.Tensor, W: torch.Tensor, g: torch.Tensor) -> str:
    """x W and xᵀ g through MKL and through OpenBLAS."""
    fwd = median_ms(lambda: x @ W), median_ms(lambda: openblas(x, W))
    grad = median_ms(lambda: x.transpose(0, 1) @ g), median_ms(lambda: openblas(x.transpose(0, 1), g))
    gflop = 2 * x.shape[0] * x.shape[1] * W.shape[1] / 1e9
    return (f"| {label} | {fwd[0]:.1f} / {fwd[1]:.1f} | {gflop / fwd[0] * 1e3:.0f} / {gflop / fwd[1] * 1e3:.0f} "
            f"| {grad[0]:.1f} / {grad[1]:.1f} |")


def event_row(label: str, x: torch.Tensor, W: torch.Tensor, g: torch.Tensor) -> str:
    """x W and xᵀ g for spikes x: OpenBLAS against the event-driven kernels."""
    k = kernels()
    out, gW = torch.empty(x.shape[0], W.shape[1], dtype=x.dtype), torch.zeros_like(W)
    fwd = median_ms(lambda: openblas(x, W)), median_ms(lambda: k.event_mm(x.numpy(), W.numpy(), out.numpy()))
    grad = (median_ms(lambda: openblas(x.transpose(0, 1), g)),
            median_ms(lambda: k.event_mm_t(x.numpy(), g.numpy(), gW.numpy())))
    return f"| {label} | {fwd[0]:.1f} / {fwd[1]:.1f} | {grad[0]:.1f} / {grad[1]:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32768, help="batch × steps (32 × 1024)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    print(f"one thread, {args.dtype}, {args.rows} rows; the engine's choice on this CPU: {blas._choice()}\n")
    os.environ["IMC_OSTTP_BLAS"] = "openblas"
    blas._choice.cache_clear()
    print("| dense product | x W ms: MKL / OpenBLAS | GFLOP/s | xᵀ g ms: MKL / OpenBLAS |\n|---|---:|---:|---:|")
    tensors = {}
    for label, (m, n) in SHAPES.items():
        x, W = torch.rand(args.rows, m, dtype=dtype), torch.rand(m, n, dtype=dtype)
        g = torch.rand(args.rows, n, dtype=dtype)
        tensors[label] = (W, g)
        print(dense_row(label, x, W, g))
    print("\n| spikes | x W ms: OpenBLAS / events | xᵀ g ms: OpenBLAS / events |\n|---|---:|---:|")
    for label, (W, g) in tensors.items():
        for density in DENSITIES:
            x = (torch.rand(args.rows, W.shape[0]) < density).to(dtype)
            print(event_row(f"{label}, {density:.0%} ones", x, W, g))


if __name__ == "__main__":
    main()
