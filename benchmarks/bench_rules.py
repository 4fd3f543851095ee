"""Training throughput and peak memory of every rule on the JSB network (88 → 150 × depth → 88).

Batch 32 of synthetic JSB-like sequences of T steps; one update (rule + optimizer
step) per measurement, each (rule, depth, T) in a fresh process so that its peak RSS
is its own. Prints a Markdown table. Usage:

    .venv/bin/python benchmarks/bench_rules.py [--lengths 128 1024 8192] [--depths 1 2 4]
                                               [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = [("bptt", "exact"), ("ostl", "exact"), ("ostl_rnd", "exact"), ("drtp", "exact"),
            ("osttp", "exact"), ("osttp", "factorised")]


def measure(rule: str, traces: str, depth: int, T: int, batch: int, device: str, threads: int,
            repeats: int) -> dict:
    """Runs in the child process."""
    import torch

    torch.set_num_threads(threads)
    from imc_osttp.builder import build_network
    from imc_osttp.config import load_run_config
    from imc_osttp.data.batching import collate
    from imc_osttp.data.synthetic import synthetic_jsb
    from imc_osttp.rules import compute_update

    cfg = load_run_config(None, [f"rule.name={rule}", f"rule.traces={traces}", f"train.device={device}",
                                 f"model.hidden={[150] * depth}", "model.threshold_init=0.2", "model.init_gain=2.0"])
    data = synthetic_jsb(batch, T)
    b = collate(data.train.inputs, data.train.targets).to(torch.float32, device)
    net = build_network(cfg, 88, 88)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
    best = min(times)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device != "cpu"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
    return {"rule": rule, "traces": traces, "depth": depth, "T": T, "seconds": best,
            "sample_steps_per_s": batch * T / best, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 8192])
    ap.add_argument("--depths", type=int, nargs="+", default=[1], help="hidden layers of 150")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=4, metavar=("RULE", "TRACES", "DEPTH", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        rule, traces, depth, T = args.child
        print(json.dumps(measure(rule, traces, int(depth), int(T), args.batch, args.device, args.threads,
                                 args.repeats)))
        return
    print(f"batch {args.batch}, device {args.device}, {args.threads} thread(s); "
          "peak memory = growth of peak RSS during the update (CPU) or peak allocated (GPU)\n")
    print("| rule | traces | layers | T | sample-steps/s | s per update | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for depth in args.depths:
        for T in args.lengths:
            for rule, traces in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--child", rule, traces, str(depth), str(T),
                                      "--batch", str(args.batch), "--device", args.device, "--threads",
                                      str(args.threads), "--repeats", str(args.repeats)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {r['rule']} | {r['traces']} | {depth} | {T} | {r['sample_steps_per_s']:,.0f} | "
                      f"{r['seconds']:.3f} | {r['peak_mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
