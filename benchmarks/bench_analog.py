"""What the analog backend costs: JSB training epochs of the jsb_analog protocol, and single tile calls.

1. The marginal training epoch (no evaluation; the first epoch is a warm-up and
   is not counted) of `studies/jsb_analog.yaml`'s variants, seed 0: OSTTP with
   exact traces, batch 1, hidden 150; median CPU seconds over repeats, one
   thread, and the ratio to the first variant (digital). Issue 22 asks for at
   most 5x on one core.
2. `--profile`: where one epoch of each analog variant spends its CPU time,
   grouped by aihwkit entry point (the update with its refresh, the hidden
   parameters read and written back, the tile reads) and everything else.
3. Per call: the tile's forward product and write (the path the backend takes)
   against `x @ W` and a torch rank-k update `W -= lr·leftᵀright`, for W1's
   (88 -> 150) and W2's (150 -> 88) shapes and batches (= rank of the update)
   1, 16, 64. The update is sized so that a cell gets as many pulses per call
   as in JSB training (0.015 on average; "pulses / call" counts the device
   pulses of the whole tile).

Times are CPU seconds of the (single-threaded) process, which a loaded machine
disturbs much less than wall time; pin it to a core for comparable figures:

    IMC_OSTTP_DATA=../shared/data taskset -c 1 .venv/bin/python benchmarks/bench_analog.py \
        [--variants digital pcm_4device] [--repeats 5] [--profile] [--batches 1 16 64]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from imc_osttp import device_configs
from imc_osttp.backends.analog import Factors, PulsedTile
from imc_osttp.builder import build_for_task
from imc_osttp.config import RunConfig
from imc_osttp.data import load_task
from imc_osttp.pipeline.spec import load_spec
from imc_osttp.seeds import generator
from imc_osttp.training import train_epoch

SHAPES = {"W1": (88, 150), "W2": (150, 88)}  # (in, out)
PULSE_RATE = 0.015  # pulses per cell and update: pcm_4device's rate in a JSB epoch at lr 0.001


def protocol(variant: str, study: str) -> RunConfig:
    """Seed 0 of a study variant, one thread, no tracking."""
    cfg = load_spec(study).run_config(variant, 0)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": 1}),
                                  "tracking": cfg.tracking.model_copy(update={"enabled": False})})


def epoch_row(cfg: RunConfig, repeats: int, profile: bool) -> dict[str, Any]:
    """Median CPU and wall seconds of a training epoch after a warm-up one, device pulses per epoch, and
    (profile) CPU seconds of one more epoch by aihwkit entry point."""
    torch.set_num_threads(1)
    data = load_task(cfg.data)
    net = build_for_task(cfg, data)
    order = generator(cfg.seed, "order")
    train_epoch(cfg, net, data.train, order, progress=False)
    net.backend.end_epoch()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        train_epoch(cfg, net, data.train, order, progress=False)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    pulses = [v for k, v in net.backend.end_epoch().items() if k.startswith("pulses/") and k.count("/") == 1
              and not k.endswith("_max_device")]
    row: dict[str, Any] = {"cpu": statistics.median(cpu), "wall": statistics.median(wall),
                           "pulses": sum(pulses) / repeats if pulses else None}
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        train_epoch(cfg, net, data.train, order, progress=False)
        prof.disable()
        row["profile"] = grouped(pstats.Stats(prof))
    return row


# aihwkit's C++ entry points, by what they do in a training epoch
GROUPS = {"update": "aihwkit update (pulses, refresh)",
          "get_hidden_parameters": "hidden parameters read (visible-weight re-derivation)",
          "set_hidden_parameters": "hidden parameters written back (visible-weight re-derivation)",
          "forward": "tile reads (forward)", "backward": "tile reads (backward)"}


def grouped(stats: pstats.Stats) -> dict[str, float]:
    """Own CPU seconds of aihwkit's C++ tile calls by kind, the rest as one figure, and the total."""
    out = dict.fromkeys(GROUPS.values(), 0.0)
    total = 0.0
    for (filename, _, name), (_, _, own, _, _) in stats.stats.items():
        total += own
        if filename == "~" and "aihwkit.simulator.rpu_base.tiles" in name:
            key = name.rsplit(".", 1)[-1].rstrip(">")
            if key in GROUPS:
                out[GROUPS[key]] += own
    out["everything else (Python, the rule's digital arithmetic)"] = total - sum(out.values())
    out["total"] = total
    return out


def per_call(fn: Callable[[], object], budget: float = 0.3) -> float:
    """Median CPU seconds of fn over batches of calls filling about `budget` seconds."""
    fn()
    start, calls = time.process_time(), 0
    while time.process_time() - start < budget / 10:
        fn()
        calls += 1
    samples = []
    for _ in range(10):
        t = time.process_time()
        for _ in range(calls):
            fn()
        samples.append((time.process_time() - t) / calls)
    return statistics.median(samples)


def call_row(shape: tuple[int, int], batch: int, configs: list[str]) -> dict[str, float]:
    """µs per call of forward and rank-`batch` update, torch and each tile config; pulses per call."""
    g = torch.Generator().manual_seed(0)
    n_in, n_out = shape
    w = (torch.rand(n_in, n_out, generator=g) - 0.5) * 0.4
    x = torch.rand(batch, n_in, generator=g)
    left, right = torch.rand(batch, n_in, generator=g), torch.randn(batch, n_out, generator=g)
    grad = left.T @ right
    grad.factors = Factors(left, right)
    out = {"matmul": per_call(lambda: x @ w), "torch update": per_call(lambda: w.addmm_(left.T, right, alpha=-1e-9))}
    pulses = {}
    for name in configs:
        tile = PulsedTile(w, device_configs.load_spec(name), torch.Generator().manual_seed(1), seed=1)
        alpha = tile.tile.get_mapping_scales()
        alpha = 1.0 if alpha is None else float(alpha.mean())
        lr = PULSE_RATE * alpha * (tile.step or 0.01) / float(grad.abs().mean())
        out[f"{name} forward"] = per_call(lambda t=tile: t.forward(x))
        calls = Calls(tile, grad, lr)
        out[f"{name} update"] = per_call(calls)
        if tile.counter is not None:
            pulses[f"{name} pulses / call"] = float((tile.counter.up + tile.counter.down).sum()) / calls.n
    return {**{k: v * 1e6 for k, v in out.items()}, **pulses}


class Calls:
    """tile.write(grad), counting the calls (for pulses per call)."""

    def __init__(self, tile: PulsedTile, grad: torch.Tensor, lr: float) -> None:
        self.tile, self.grad, self.lr, self.n = tile, grad, lr, 0

    def __call__(self) -> None:
        self.tile.write(self.grad, self.lr)
        self.n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/jsb_analog.yaml")
    parser.add_argument("--variants", nargs="+", default=["digital", "pcm_4device"],
                        help="the first is the reference of the ratio")
    parser.add_argument("--repeats", type=int, default=5, help="epochs measured after the warm-up; 0: skip")
    parser.add_argument("--profile", action="store_true", help="profile one more epoch of each analog variant")
    parser.add_argument("--configs", nargs="+", default=["pcm_4device", "ideal"], help="per-call table")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64], help="per-call table; none: skip")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.repeats:
        print(f"{args.study}, seed 0: training epochs (no evaluation), median of {args.repeats} after a "
              "warm-up epoch, 1 thread\n")
        print(f"| variant | s / epoch (CPU) | s / epoch (wall) | × {args.variants[0]} (CPU) | device pulses / epoch |")
        print("|---|---:|---:|---:|---:|")
        rows = {}
        for name in args.variants:
            cfg = protocol(name, args.study)
            rows[name] = r = epoch_row(cfg, args.repeats, args.profile and cfg.backend.kind == "analog")
            pulses = f"{r['pulses']:.3g}" if r["pulses"] else "–"
            print(f"| {name} | {r['cpu']:.2f} | {r['wall']:.2f} | {r['cpu'] / rows[args.variants[0]]['cpu']:.1f} "
                  f"| {pulses} |", flush=True)
        for name, r in rows.items():
            if "profile" in r:
                print(f"\nProfile of one more {name} epoch (cProfile, own CPU seconds)\n")
                print("| where | s / epoch | share |\n|---|---:|---:|")
                total = r["profile"]["total"]
                for where, seconds in r["profile"].items():
                    print(f"| {where} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    if args.batches:
        print("\nµs of CPU per call (update: rank = batch, through the backend's write path)\n")
        rows = [(label, shape, batch, call_row(shape, batch, args.configs))
                for label, shape in SHAPES.items() for batch in args.batches]
        cols = ["matmul", *[f"{c} forward" for c in args.configs], "torch update",
                *[f"{c} update" for c in args.configs], *[k for k in rows[0][3] if k.endswith("pulses / call")]]
        print("| W (in → out) | batch | " + " | ".join(cols) + " |")
        print("|---|---:|" + "---:|" * len(cols))
        for label, (n_in, n_out), batch, r in rows:
            cells = " | ".join(f"{r[c]:.0f}" if r[c] >= 10 else f"{r[c]:.1f}" for c in cols)
            print(f"| {label} ({n_in} → {n_out}) | {batch} | {cells} |")


if __name__ == "__main__":
    main()
