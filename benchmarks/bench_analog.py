"""What the analog backend costs: OSTTP epochs on JSB, and single tile calls against torch.

1. One training epoch of OSTTP on JSB (no evaluation) per backend, at the
   same batch size, and its ratio to the digital backend (target: <= 10x).
2. Per call: the tile's forward product and update (through `PulsedTile`, the
   path the backend takes) against `x @ W` and a torch rank-k update
   `W -= lr·leftᵀright`, for W1's (88 -> 150) and W2's (150 -> 88) shapes and
   batches (= rank of the update) 1, 16, 64. The update is sized so that a
   cell gets as many pulses per call as in JSB training (0.015 on average;
   "pulses / call" counts the device pulses of the whole tile).

Times are CPU seconds of the (single-threaded) process, which a loaded machine
disturbs much less than wall time; wall seconds of the epochs are shown too.

    IMC_OSTTP_DATA=../shared/data .venv/bin/python benchmarks/bench_analog.py \
        [--configs pcm_4device ideal] [--batch-size 1] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from imc_osttp import device_configs
from imc_osttp.backends.analog import Factors, PulsedTile
from imc_osttp.builder import build_for_task
from imc_osttp.config import load_run_config
from imc_osttp.data import load_task
from imc_osttp.seeds import generator
from imc_osttp.training import train_epoch

SHAPES = {"W1": (88, 150), "W2": (150, 88)}  # (in, out)
PULSE_RATE = 0.015  # pulses per cell and update: pcm_4device's rate in a JSB epoch at lr 0.001


def epoch_row(device_config: str | None, batch: int, traces: str, epochs: int) -> dict[str, float]:
    """Mean CPU and wall seconds of a training epoch (evaluation excluded), and pulses per epoch."""
    tree = {"data": {"task": "jsb"}, "rule": {"name": "osttp", "traces": traces},
            "model": {"decay": 0.6, "threshold_init": 0.2, "init_gain": 2.0},
            "optim": {"name": "sgd", "lr": 0.001}, "train": {"batch_size": batch, "threads": 1},
            "tracking": {"enabled": False}}
    if device_config is not None:
        tree["backend"] = {"kind": "analog", "device_config": device_config}
    cfg = load_run_config(extra=tree)
    data = load_task(cfg.data)
    net = build_for_task(cfg, data)
    order = generator(cfg.seed, "order")
    cpu, wall = [], []
    for _ in range(epochs):
        c, w = time.process_time(), time.perf_counter()
        train_epoch(cfg, net, data.train, order, progress=False)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    metrics = net.backend.end_epoch()
    pulses = sum(v for k, v in metrics.items() if k.startswith("pulses/") and not k.endswith("_max_device"))
    return {"cpu": statistics.mean(cpu), "wall": statistics.mean(wall), "pulses": pulses / epochs}


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
    parser.add_argument("--configs", nargs="+", default=["pcm_4device", "ideal"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--traces", default="exact")
    parser.add_argument("--epochs", type=int, default=2, help="0: skip the epoch table")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.epochs:  # 0: only the per-call table
        print(f"OSTTP on JSB (229 sequences), batch {args.batch_size}, {args.traces} traces, "
              f"mean of {args.epochs} epochs, 1 thread\n")
        print("| backend | s / epoch (CPU) | s / epoch (wall) | × digital (CPU) | device pulses / epoch |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for name in [None, *args.configs]:
            r = epoch_row(name, args.batch_size, args.traces, args.epochs)
            base = base or r["cpu"]
            pulses = f"{r['pulses']:.3g}" if r["pulses"] else "–"
            print(f"| {name or 'digital'} | {r['cpu']:.2f} | {r['wall']:.2f} | {r['cpu'] / base:.1f} | {pulses} |",
                  flush=True)
    print("\nµs of CPU per call (update: rank = batch; tile updates through PulsedTile.write)\n")
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
