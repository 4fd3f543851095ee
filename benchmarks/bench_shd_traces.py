"""How close the exact eligibility traces of the SHD network (700 -> 450) run to memory bandwidth.

Exact traces are per sample: ε_W [B, 700, 450] and, for the recurrent layer,
ε_H [B, 450, 450]. Each step must at least read and write every trace once
(ε ← D ε + x) and read it once more for the contraction Σ_b ε ⊙ (ψ L), so a step
moves at least 3 × 4 B × B (m n + n n) bytes and no kernel can beat that
traffic divided by the memory bandwidth. The benchmark times the engine's own
`ExactTraces.advance` (not a re-implementation) with and without ε_H, converts
the time to the bandwidth those minimum bytes imply, and divides it by the
bandwidth of a large `copy_` on the same device: the ratio is the fraction of
the bandwidth bound reached (1.0 = as fast as the hardware allows).

The engine's unfused torch ops move about 7 trace-sized passes per step, not 3
(mul_ and add_ read and write ε, ε ⊙ g writes a temporary that sum(0) reads back),
so its own ceiling is a ratio of ~3/7 ≈ 0.43; a fused kernel that updates ε and
contracts it in registers needs only 2 passes (a ratio of 1.5 against this bound).

    .venv/bin/python benchmarks/bench_shd_traces.py [--device cpu|cuda] [--batch 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from imc_osttp.backends.base import Accumulator
from imc_osttp.rules.traces import ExactTraces

SHD_SAMPLE_STEPS = 8156 * 100  # one SHD epoch at shd_rules.yaml's 100 steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Minimum wall time of `fn` over `repeats` calls after one warm-up: the least disturbed run."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(device: torch.device, mib: int, repeats: int) -> float:
    """Bytes/s of dst.copy_(src) on buffers far larger than any cache (read + write counted)."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * 4 / seconds


def trace_step_time(m: int, n: int, batch: int, recurrent: bool, steps: int, device: torch.device,
                    dtype: torch.dtype, repeats: int) -> float:
    """Seconds per step of `ExactTraces.advance` over a chunk of `steps` steps (W1, and H1 if recurrent)."""
    like = torch.zeros(batch, m, device=device, dtype=dtype)
    names = ["W1", "H1"] if recurrent else ["W1"]
    shapes = {"W1": torch.Size((m, n)), "H1": torch.Size((n, n))}
    acc = Accumulator({name: shapes[name] for name in names}, like)
    net = SimpleNamespace(n_in=m, cfg=SimpleNamespace(hidden=n))  # all ExactTraces reads of the net
    traces = ExactTraces(net, batch, like, acc)  # type: ignore[arg-type]
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=g, device=device, dtype=dtype)

    D, c = 0.9 + 0.1 * rand(batch, steps, n), rand(batch, steps, n)
    x, y_prev = (rand(batch, steps, m) < 0.05).to(dtype), (rand(batch, steps, n) < 0.1).to(dtype)
    signal = rand(batch, steps, n)
    return best_time(lambda: traces.advance(D, c, x, y_prev, signal), device, repeats) / steps


def min_trace_bytes(m: int, n: int, batch: int, recurrent: bool, itemsize: int) -> int:
    """Read + write of each trace for its update, one more read for the contraction."""
    return 3 * itemsize * batch * (m * n + (n * n if recurrent else 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=450)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copy-mib", type=int, default=512, help="size of the bandwidth probe's buffer")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    bandwidth = copy_bandwidth(device, args.copy_mib, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"{name}; batch {args.batch}, {args.inputs} -> {args.hidden}, {args.dtype}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write of a {args.copy_mib} MiB buffer)\n")
    print("| traces | ms per step | µs per sample-step | min MB per step | implied GB/s | "
          "fraction of copy bandwidth | SHD epoch, traces only |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for recurrent in (False, True):
        seconds = trace_step_time(args.inputs, args.hidden, args.batch, recurrent, args.steps, device, dtype,
                                  args.repeats)
        moved = min_trace_bytes(args.inputs, args.hidden, args.batch, recurrent, itemsize)
        label = "ε_W + ε_H (recurrent)" if recurrent else "ε_W only"
        epoch = seconds / args.batch * SHD_SAMPLE_STEPS
        print(f"| {label} | {seconds * 1e3:.2f} | {seconds / args.batch * 1e6:.1f} | {moved / 1e6:.1f} | "
              f"{moved / seconds / 1e9:.1f} | {moved / seconds / bandwidth:.2f} | {epoch:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
