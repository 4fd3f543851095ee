"""What each PCM mitigation does to OSTTP on JSB: the evidence behind pcm_4device's defaults.

The ladder starts from the paper's 4-device cell as aihwkit models it
(`pcm_4device_naive`) and adds one mitigation per row, cumulatively; its last
row must be the shipped `pcm_4device` (checked, so the table and the default
cannot drift apart). Side rows show references (digital, ideal tiles) and the
alternatives that were measured and not kept. Every row of a table runs the
same protocol and seeds. The seed fixes the initial weights, B, the sequence order and the
writer's rounding; aihwkit's device-to-device and cycle-to-cycle draws come
from its own clock-seeded generator, so reruns differ within the seed spread.

    IMC_OSTTP_DATA=../shared/data .venv/bin/python benchmarks/pcm_mitigations.py \
        [--epochs 6] [--lr 0.001] [--seeds 0 1] [--rows naive ...] [--workers 1]

Prints a Markdown table per protocol (mean and min-max over seeds) and keeps
one CSV line per row, protocol and seed in results/pcm_mitigations.csv: a
rerun of some rows, seeds or another protocol replaces only its own lines.
The committed CSV is the default run (every row) plus the refresh rows under
two heavier pulse loads, whose tables decided the refresh policy:

    ... --rows digital "+ mixed-precision carry" "refresh every 10 writes" "no refresh" --epochs 20
    ... --rows "+ mixed-precision carry" "refresh every 10 writes" "no refresh" --lr 0.003

Pulse counts are exact for the mixed-precision writer and expected values for
stochastic trains; the pulses of aihwkit's refresh are not visible and not counted.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from imc_osttp import device_configs
from imc_osttp.device_configs import DeviceSpec
from imc_osttp.knobs import apply_to_spec

CSV = Path(__file__).resolve().parents[1] / "results" / "pcm_mitigations.csv"
STEP = 0.08  # mean weight change of one pulse of the cell near G = 0.6 (aihwkit assumes 0.032)
Step = Callable[[DeviceSpec], DeviceSpec]


def weight_scaling(spec: DeviceSpec) -> DeviceSpec:
    """max|W| maps to conductance 1, a digital output scale α restores W: pulses act on W/α."""
    rpu = copy.deepcopy(spec.rpu_config)
    rpu.mapping.weight_scaling_omega = 1.0
    return spec.model_copy(update={"rpu_config": rpu})


def writer(**fields: object) -> Step:
    """Change how updates become pulses (WriterSpec fields)."""
    return lambda spec: spec.model_copy(update={"writer": spec.writer.model_copy(update=fields)})


def knobs(**values: float) -> Step:
    return lambda spec: apply_to_spec(spec, values, "device")


def baseline(g0: float) -> Step:
    return lambda spec: spec.model_copy(update={"baseline": g0})


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    spec: DeviceSpec | None  # None: the digital backend
    traces: str = "exact"


# cumulative: each step applies to the previous row's configuration
LADDER: list[tuple[str, str, Step]] = [
    ("+ weight scaling", "largest weight at G = 1, digital output scale", weight_scaling),
    ("+ step calibration", f"one pulse taken as ΔW = {STEP} (aihwkit: 0.032)", writer(step=STEP)),
    ("+ mixed-precision carry", "digital accumulation, whole pulses fired one by one, remainder kept (= pcm_4device)",
     writer(policy="exact", rounding="carry")),
]
# alternatives: (name, what, the ladder row they start from, change, rule traces)
SIDE: list[tuple[str, str, str, Step, str]] = [
    ("rank-1 trains, factorised traces", "from + step calibration: rank-1 factors as coincident "
     "stochastic trains (the crossbar's parallel update)", "+ step calibration", lambda s: s, "factorised"),
    ("refresh every 10 writes", "pairs refreshed every 10 writes (pcm_4device: after every write)",
     "+ mixed-precision carry", knobs(refresh_every=10), "exact"),
    ("no refresh", "pairs never refreshed", "+ mixed-precision carry", knobs(refresh_every=0), "exact"),
    ("baseline G0 = 0.6", "both devices of every pair start at G = 0.6",
     "+ mixed-precision carry", baseline(0.6), "exact"),
]


def all_rows() -> list[Row]:
    spec = device_configs.load_spec("pcm_4device_naive")
    rows = [Row("digital", "torch tensors (reference)", None),
            Row("ideal tiles", "IdealDevice, perfect IO; B on programmed PCM (reference)",
                device_configs.load_spec("ideal")),
            Row("naive", "pcm_4device_naive: preset IO/update, stochastic trains", spec)]
    for name, what, step in LADDER:
        spec = step(spec)
        rows.append(Row(name, what, spec))
    check_default(spec)
    by_name = {r.name: r for r in rows}
    rows += [Row(name, what, step(by_name[start].spec), traces) for name, what, start, step, traces in SIDE]
    return rows


def check_default(spec: DeviceSpec) -> None:
    """The ladder's last row is the shipped default, or the table no longer explains it."""
    shipped = device_configs.load_spec("pcm_4device")
    same = (device_configs.to_dict(spec.rpu_config) == device_configs.to_dict(shipped.rpu_config)
            and spec.model_dump(exclude={"rpu_config", "description"})
            == shipped.model_dump(exclude={"rpu_config", "description"}))
    if not same:
        print("warning: the ladder's last row is not the shipped pcm_4device", file=sys.stderr)


def train_row(row: Row, spec_path: str | None, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """Worker: one row and seed, single-threaded, untracked."""
    import torch

    from imc_osttp.config import load_run_config
    from imc_osttp.data import load_task
    from imc_osttp.training import train

    torch.set_num_threads(1)
    tree = {"seed": seed, "data": {"task": "jsb", "max_sequences": args.max_sequences},
            "model": {"hidden": 150, "recurrent": False, "reset": "full", "surrogate": "tanh",
                      "threshold_init": 0.2, "init_gain": 2.0, "decay": 0.6},
            "rule": {"name": "osttp", "traces": row.traces, "update_timing": "sequence"},
            "optim": {"name": "sgd", "lr": args.lr},
            "train": {"epochs": args.epochs, "batch_size": 1, "threads": 1},
            "tracking": {"enabled": False}}
    if spec_path is not None:
        tree["backend"] = {"kind": "analog", "device_config": spec_path}
    cfg = load_run_config(extra=tree)
    cpu = time.process_time()
    history = train(cfg, load_task(cfg.data), progress=False).history
    best = min(range(len(history)), key=lambda i: history[i]["valid_nll"])
    last = history[-1]
    pulses = [v for k, v in last.items() if k.startswith("pulses/") and not k.endswith("_max_device")]
    peaks = [v for k, v in last.items() if k.endswith("_max_device")]
    return {"row": row.name, "what": row.what, "seed": seed, "epochs": args.epochs, "lr": args.lr,
            "traces": row.traces, "max_sequences": args.max_sequences, "best_epoch": best + 1,
            "valid_nll": history[best]["valid_nll"], "test_nll": history[best]["test_nll"],
            "final_valid_nll": last["valid_nll"], "device_pulses": sum(pulses) if pulses else None,
            "max_device_pulses": max(peaks) if peaks else None,
            "epoch_s": statistics.mean(h["epoch_time"] for h in history), "cpu_s": time.process_time() - cpu}


PROTOCOL = ["lr", "epochs", "max_sequences"]  # runs that share these form one table


def spread(values: pd.Series, fmt: str) -> str:
    """mean (min-max) over seeds."""
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return format(values.iloc[0], fmt)
    return f"{format(values.mean(), fmt)} ({format(values.min(), fmt)}–{format(values.max(), fmt)})"


def title(runs: pd.DataFrame) -> str:
    lr, epochs, nseq = (runs[c].iloc[0] for c in PROTOCOL)
    data = "full split" if pd.isna(nseq) else f"{int(nseq)} sequences per split"
    seeds = "/".join(str(s) for s in sorted(runs["seed"].unique()))
    return (f"OSTTP on JSB ({data}), d = 0.6, batch 1, exact traces unless noted, SGD lr {lr} (constant), "
            f"{epochs} epochs, seeds {seeds}")


def markdown(frame: pd.DataFrame, rows: list[Row]) -> str:
    """One table per protocol; rows in ladder order, mean (min-max) over seeds."""
    blocks = []
    for _, runs in frame.groupby(PROTOCOL, dropna=False, sort=False):
        lines = [title(runs), "", "| configuration | change | valid NLL (best) | test NLL (at best valid) | "
                 "device pulses | most pulses on one device | CPU s / epoch |", "|---|---|---|---|---|---|---|"]
        for spec in rows:
            row = runs[runs["row"] == spec.name]
            if not row.empty:
                lines.append(f"| {spec.name} | {spec.what} | {spread(row['valid_nll'], '.2f')} | "
                             f"{spread(row['test_nll'], '.2f')} | {spread(row['device_pulses'], '.3g')} | "
                             f"{spread(row['max_device_pulses'], '.0f')} | "
                             f"{spread(row['cpu_s'] / row['epochs'], '.1f')} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def merge(new: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A rerun replaces its own (row, seed, protocol) lines and keeps every other line."""
    if not path.exists():
        return new
    old = pd.read_csv(path)
    key = ["row", "seed", *PROTOCOL]
    stale = old[key].astype(str).apply(tuple, axis=1).isin(set(new[key].astype(str).apply(tuple, axis=1)))
    return pd.concat([old[~stale], new], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-sequences", type=int, default=None, help="per split (default: all of JSB)")
    parser.add_argument("--rows", nargs="+", help="only these rows (names as in the table)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--csv", type=Path, default=CSV, help="merged: other rows and protocols are kept")
    args = parser.parse_args()

    every = all_rows()
    rows = [r for r in every if not args.rows or r.name in args.rows]
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp, cf.ProcessPoolExecutor(
            args.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = []
        for i, row in enumerate(rows):
            path = None
            if row.spec is not None:  # the backend loads configs by name or file: hand it a file
                path = str(Path(tmp) / f"row{i}.yaml")
                device_configs.save(row.spec, path)
            futures += [pool.submit(train_row, row, path, seed, args) for seed in args.seeds]
        results = []
        for fut in cf.as_completed(futures):
            results.append(fut.result())
            r = results[-1]
            print(f"{r['row']} seed {r['seed']}: valid {r['valid_nll']:.2f} ({r['cpu_s']:.0f} s cpu)",
                  file=sys.stderr)
    frame = merge(pd.DataFrame(results), args.csv)
    order = [r.name for r in every]
    frame = frame[frame["row"].isin(order)]
    frame = frame.sort_values(["lr", "epochs", "row", "seed"], ascending=[True, True, True, True],
                              key=lambda c: c.map(order.index) if c.name == "row" else c, kind="stable")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.csv, index=False)
    print(markdown(frame, every))


if __name__ == "__main__":
    main()
