"""Training throughput and peak memory of every rule on the JSB network (88 → 150 × depth → 88).

Batch 32 of synthetic JSB-like sequences of T steps; one update (rule + optimizer
step) per measurement, each (rule, depth, T) in a fresh process so that its peak RSS
is its own. Prints a Markdown table. `--network shd` measures the SHD layer instead
(700 → 450 recurrent soft-reset SNUs → 20 leaky integrators, shd_rules.yaml's model, random
spikes at 0.1 per channel and step). `--engine eager` runs the reference time loop instead
of the compiled one (`train.engine`). `--neuron alif` uses e-prop's adaptive LIF neurons
(model.neuron, at their default settings) in place of SNUs. Usage:

    .venv/bin/python benchmarks/bench_rules.py [--lengths 128 1024 8192] [--depths 1 2 4]
                                               [--device cpu|cuda] [--threads 1]
                                               [--engine fused|eager] [--network jsb|shd]
                                               [--neuron snu|alif]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VARIANTS = [("bptt", "exact"), ("ostl", "exact"), ("ostl_rnd", "exact"), ("drtp", "exact"),
            ("osttp", "exact"), ("osttp", "factorised")]


SHD_MODEL = ["data.task=shd", "model.recurrent=true", "model.reset=soft", "model.surrogate=fast_sigmoid",
             "model.decay=0.95", "model.threshold_init=0.5", "model.train_threshold=false", "model.readout=leaky",
             "model.readout_bias=false", "model.tau=0.99"]


def measure(rule: str, traces: str, depth: int, T: int, batch: int, device: str, threads: int,
            repeats: int, engine: str = "fused", network: str = "jsb", neuron: str = "snu") -> dict:
    """Runs in the child process."""
    import torch

    torch.set_num_threads(threads)
    from imc_osttp.builder import build_network
    from imc_osttp.config import load_run_config
    from imc_osttp.data.batching import Batch, collate
    from imc_osttp.data.synthetic import synthetic_jsb
    from imc_osttp.rules import compute_update

    common = [f"rule.name={rule}", f"rule.traces={traces}", f"train.device={device}", f"train.engine={engine}",
              f"model.neuron={neuron}"]
    if network == "shd":
        cfg = load_run_config(None, common + [f"model.hidden={[450] * depth}"] + SHD_MODEL)
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(batch, T, 700, generator=g) < 0.1).float()
        labels = torch.randint(0, 20, (batch,), generator=g)
        y = torch.nn.functional.one_hot(labels, 20).float()[:, None].expand(-1, T, -1).contiguous()
        b = Batch(x, y, torch.ones(batch, T), torch.full((batch,), T), labels).to(torch.float32, device)
        net = build_network(cfg, 700, 20)
    else:
        cfg = load_run_config(None, common + [f"model.hidden={[150] * depth}", "model.threshold_init=0.2",
                                              "model.init_gain=2.0"])
        data = synthetic_jsb(batch, T)
        b = collate(data.train.inputs, data.train.targets).to(torch.float32, device)
        net = build_network(cfg, 88, 88)
    from imc_osttp import fused

    # the kernels' compilation (or load from numba's disk cache) before the memory baseline; the eager
    # engine uses them too, for the event-driven products (imc_osttp/blas.py)
    load_s = fused.warm_up(getattr(torch, cfg.train.dtype))
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compute_update(cfg.rule, net, b)  # warm-up (its memory counts: it is an update like the others)
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        grads, _ = compute_update(cfg.rule, net, b)
        if grads:
            net.backend.apply(grads)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    best = sorted(times)[len(times) // 2]  # the median update
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device != "cpu"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
    return {"rule": rule, "traces": traces, "depth": depth, "T": T, "seconds": best,
            "sample_steps_per_s": batch * T / best, "peak_mib": peak, "kernel_load_s": load_s}


def compile_times() -> str:
    """Seconds to compile every fused kernel (float32) into an empty numba cache, then to load them
    from it: what a fresh install's first run pays, and what every later process pays."""
    code = "from imc_osttp import fused; print(fused.warm_up())"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold, warm = (float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                           check=True).stdout) for _ in range(2))
    return f"fused kernels: {cold:.1f} s to compile (empty cache), {warm:.2f} s to load from the cache\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 8192])
    ap.add_argument("--depths", type=int, nargs="+", default=[1], help="hidden layers of 150")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine", choices=["fused", "eager"], default="fused")
    ap.add_argument("--network", choices=["jsb", "shd"], default="jsb")
    ap.add_argument("--neuron", choices=["snu", "alif"], default="snu")
    ap.add_argument("--child", nargs=4, metavar=("RULE", "TRACES", "DEPTH", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        rule, traces, depth, T = args.child
        print(json.dumps(measure(rule, traces, int(depth), int(T), args.batch, args.device, args.threads,
                                 args.repeats, args.engine, args.network, args.neuron)))
        return
    if args.engine == "fused":
        print(compile_times())
    print(f"{args.network} network, {args.neuron} neurons, {args.engine} engine, batch {args.batch}, "
          f"device {args.device}, {args.threads} thread(s); median of {args.repeats} updates after a warm-up; "
          "peak memory = growth of peak RSS during the update (CPU) or peak allocated (GPU)\n")
    print("| rule | traces | layers | T | sample-steps/s | s per update | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for depth in args.depths:
        for T in args.lengths:
            for rule, traces in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--child", rule, traces, str(depth), str(T),
                                      "--batch", str(args.batch), "--device", args.device, "--threads",
                                      str(args.threads), "--repeats", str(args.repeats),
                                      "--engine", args.engine, "--network", args.network, "--neuron", args.neuron],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {r['rule']} | {r['traces']} | {depth} | {T} | {r['sample_steps_per_s']:,.0f} | "
                      f"{r['seconds']:.3f} | {r['peak_mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
