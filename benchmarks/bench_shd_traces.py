"""How close the exact eligibility traces of the SHD network (700 -> 450, recurrent) run to their limits.

Exact traces are per sample: ε_W [B, 700, 450] and ε_H [B, 450, 450]. The engine
(`ExactTraces.advance`, timed here, not a re-implementation) has three regimes:

- per-step updates (chunks of one step, fully online): every step reads and writes
  each trace and reads it once more for the contraction, at least 3 trace-sized passes
  per step: memory-bound, with no GEMM to do;
- chunks of K steps with the trace carried to the next chunk: the chunk's sum is one
  GEMM over its B·K sample-steps (u_sᵀ G_s), plus 3 trace passes per chunk (contract
  ε_in, then ε ← A ⊙ ε + uᵀF, a batched GEMM);
- a sequence that fits one chunk (FSDD's 50 steps, or a last chunk): the GEMM alone;
  no trace is ever held.

Each regime's bound is the larger of its minimum bytes ÷ the copy bandwidth of the
device and the time of its bare GEMMs (torch.mm / torch.bmm on the same shapes); the
ratio measured ÷ bound says how far the engine is from what the hardware allows
(1.0 = at the limit).

A second table times whole updates (rule + Adam step) of shd_rules.yaml's network per rule
on random SHD-shaped batches (100 steps, ~0.1 spikes per channel and bin) and scales them
to one SHD training epoch (8156 recordings).

    .venv/bin/python benchmarks/bench_shd_traces.py [--device cpu|cuda] [--batch 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from imc_osttp.backends.base import Accumulator
from imc_osttp.builder import build_network
from imc_osttp.data.batching import Batch
from imc_osttp.network import SNUNet
from imc_osttp.pipeline.spec import load_spec
from imc_osttp.rules import compute_update
from imc_osttp.rules.online import CHUNK_STEPS
from imc_osttp.rules.traces import ExactTraces

SHD_TRAIN, SHD_STEPS, SHD_CHANNELS, SHD_CLASSES = 8156, 100, 700, 20
SHD_SAMPLE_STEPS = SHD_TRAIN * SHD_STEPS  # one SHD epoch at shd_rules.yaml's 100 steps
STUDY = Path(__file__).resolve().parents[1] / "studies" / "shd_rules.yaml"


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


def shd_network(m: int, n: int, device: torch.device, dtype: torch.dtype) -> SNUNet:
    """shd_rules.yaml's OSTTP network (exact traces) with m inputs and n recurrent units."""
    cfg = load_spec(STUDY).run_config("osttp", 0)
    train = cfg.train.model_copy(update={"device": str(device), "dtype": str(dtype).removeprefix("torch.")})
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden": n}), "train": train})
    return build_network(cfg, m, SHD_CLASSES)


def regime_time(m: int, n: int, batch: int, steps: int, carry: bool, device: torch.device, dtype: torch.dtype,
                repeats: int) -> float:
    """Seconds per step of one `advance` over a chunk of `steps` steps (W1 and H1), flush included: the
    chunk is the network's own, on spikes at 0.05 per input and step, with a random learning signal.

    With `carry` the traces are already held (a later chunk) and are carried on; without, the
    chunk is a whole sequence and starts from zero traces."""
    net = shd_network(m, n, device, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(batch, steps, m, generator=g, device=device, dtype=dtype) < 0.05).to(dtype)
    signal = torch.rand(batch, steps, n, generator=g, device=device, dtype=dtype)
    with torch.no_grad():
        before = net.init_state(batch, x)
        chunk, _ = net.run(x, before)
    acc = Accumulator({"W1": torch.Size((m, n)), "H1": torch.Size((n, n))}, x)
    traces = ExactTraces(net, net.layers[0], batch, x, acc)
    layer_chunk, layer_before = chunk.layers[0], before.layers[0]
    if carry:
        traces.advance(layer_chunk, layer_before, signal, carry=True)  # now the traces are held

    def one_chunk() -> None:
        if not carry:
            traces.eps = dict.fromkeys(traces.eps)
        traces.advance(layer_chunk, layer_before, signal, carry=carry)
        for name in ("W1", "H1"):
            acc.flush(name)

    return best_time(one_chunk, device, repeats) / steps


def gemm_time(m: int, n: int, batch: int, steps: int, carry: bool, device: torch.device, dtype: torch.dtype,
              repeats: int) -> float:
    """Seconds per step of the bare GEMMs a chunk needs: Σ uᵀG ([m, BK] @ [BK, n]) and, with carry, the
    batched uᵀF ([B, m, K] @ [B, K, n]), for W1 and H1."""
    rows = batch * steps
    mats = {k: (torch.rand(k, rows, device=device, dtype=dtype), torch.rand(rows, n, device=device, dtype=dtype),
                torch.rand(batch, k, steps, device=device, dtype=dtype),
                torch.rand(batch, steps, n, device=device, dtype=dtype)) for k in (m, n)}

    def gemms() -> None:
        for left, right, bleft, bright in mats.values():
            torch.mm(left, right)
            if carry:
                torch.bmm(bleft, bright)

    return best_time(gemms, device, repeats) / steps


def update_time(variant: str, traces: str, batch: int, device: torch.device, repeats: int) -> float:
    """Seconds of one update (rule + optimizer step) of shd_rules.yaml's `variant` on a random batch."""
    cfg = load_spec(STUDY).run_config(variant, 0)
    cfg = cfg.model_copy(update={"rule": cfg.rule.model_copy(update={"traces": traces}),
                                 "train": cfg.train.model_copy(update={"device": str(device)})})
    net = build_network(cfg, SHD_CHANNELS, SHD_CLASSES)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, SHD_STEPS, SHD_CHANNELS, generator=g) < 0.1).float()
    labels = torch.randint(0, SHD_CLASSES, (batch,), generator=g)
    y = torch.nn.functional.one_hot(labels, SHD_CLASSES).float()[:, None].expand(-1, SHD_STEPS, -1).contiguous()
    data = Batch(x, y, torch.ones(batch, SHD_STEPS), torch.full((batch,), SHD_STEPS), labels).to(torch.float32,
                                                                                                   str(device))

    def one_update() -> None:
        grads, _ = compute_update(cfg.rule, net, data)
        net.backend.apply(grads)

    return best_time(one_update, device, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=450)
    ap.add_argument("--chunk", type=int, default=CHUNK_STEPS, help="steps per chunk (default: the engine's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copy-mib", type=int, default=512, help="size of the bandwidth probe's buffer")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    m, n, B = args.inputs, args.hidden, args.batch
    itemsize = torch.tensor([], dtype=dtype).element_size()
    bandwidth = copy_bandwidth(device, args.copy_mib, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"{name}; batch {B}, {m} -> {n} recurrent (ε_W + ε_H), {args.dtype}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write of a {args.copy_mib} MiB buffer)\n")
    print("| regime | µs per sample-step | bytes bound | GEMM bound | measured ÷ bound | "
          "SHD epoch, traces only |")
    print("|---|---:|---:|---:|---:|---:|")
    trace_bytes = itemsize * B * (m * n + n * n)
    regimes = [("per-step updates (chunks of 1)", 1, True, 3),
               (f"chunks of {args.chunk}, carried", args.chunk, True, 3),
               (f"one chunk per sequence (≤ {args.chunk} steps)", args.chunk, False, 0)]
    for label, steps, carry, passes in regimes:
        seconds = regime_time(m, n, B, steps, carry, device, dtype, args.repeats)
        by_bytes = passes * trace_bytes / steps / bandwidth
        # one step needs no GEMM: the recursion and the contraction are elementwise
        by_gemm = gemm_time(m, n, B, steps, carry, device, dtype, args.repeats) if steps > 1 else 0.0
        bound = max(by_bytes, by_gemm)
        per_sample_step = seconds / B
        print(f"| {label} | {per_sample_step * 1e6:.2f} | {by_bytes / B * 1e6:.2f} µs | {by_gemm / B * 1e6:.2f} µs | "
              f"{seconds / bound:.1f} | {per_sample_step * SHD_SAMPLE_STEPS:.0f} s |", flush=True)
    print(f"\nWhole updates of shd_rules.yaml's network (700 -> 450 recurrent -> 20), batch {B}, "
          f"{SHD_STEPS} steps:\n")
    print("| rule | traces | s per update | SHD training epoch |")
    print("|---|---|---:|---:|")
    for variant, traces in (("bptt", "exact"), ("osttp", "exact"), ("osttp", "factorised")):
        seconds = update_time(variant, traces, B, device, args.repeats)
        print(f"| {variant} | {traces if variant != 'bptt' else '—'} | {seconds:.3f} | "
              f"{seconds * SHD_TRAIN / B:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
