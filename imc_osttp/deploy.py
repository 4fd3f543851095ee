"""Deployment over time: a trained analog network's test metric at log-spaced times after its last
write, frozen, frozen with global drift compensation, or still learning on the chip (issue 11).

One deploy file trains each seed once (a tracked run, as `imc-osttp train`), copies the trained
chip for every mode, and lets the chip clock run from the last write to each evaluation time:

- `frozen`: no updates, no compensation; conductances drift by aihwkit's power law.
- `frozen_gdc`: no updates; every trainable tile's output is rescaled by aihwkit's
  `GlobalDriftCompensation` (the mean |output| of its one-hot read-out against the same read-out
  right after the last write), applied as the tile's digital output scale.
- `learning`: the config's rule keeps updating from an adaptation stream (a split replayed in a
  seeded order) at `adaptation.rate` sequences per hour of chip time; every write restarts the
  clock of the devices it changed. `learning_gdc` does both.

Each seed's rows (`mode, seed, time_s, test_nll|test_accuracy, pulses, updates`) are appended to
`<output_dir>/<name>.csv` when the seed is done, so an interrupted deploy resumes; every (mode, seed)
is also an MLflow run whose metric has the decade of the time as its step (100 steps per decade).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from .builder import DTYPES, generator
from .config import RunConfig, _Strict, build, config_hash, merge, read_yaml
from .data import TaskData, load_task
from .data.batching import batches
from .errors import ConfigError
from .named import study_file
from .network import SNUNet
from .rules import compute_update

Mode = Literal["frozen", "frozen_gdc", "learning", "learning_gdc"]
DEFAULT_TIMES = [1.0, 60.0, 3600.0, 86400.0, 604800.0, 2592000.0, 31536000.0]  # 1 s … 1 year
TIME_NAMES = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day", 604800.0: "1 week",
              2592000.0: "1 month", 31536000.0: "1 year"}
SEED_ADAPT = 5  # random stream of the adaptation stream's order (builder uses 1-3, the writer 4)
STEPS_PER_DECADE = 100  # MLflow step of time t: round(100·log10(t / 1 s))


class AdaptationConfig(_Strict):
    """The stream a `learning` chip learns from after deployment."""

    rate: float = Field(gt=0)  # sequences per hour of chip time
    split: Literal["train", "valid"] = "train"
    lr: float | None = Field(None, gt=0)  # default: the trained run's final (scheduled) lr


class DeployConfig(_Strict):
    """A deploy file: the training config, the seeds, the evaluation times and the modes."""

    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    times: list[float] = Field(default_factory=lambda: list(DEFAULT_TIMES), min_length=1)
    modes: list[Mode] = Field(default_factory=lambda: ["frozen", "frozen_gdc", "learning"], min_length=1)
    adaptation: AdaptationConfig | None = None
    output_dir: str = "results"
    workers: int = Field(1, ge=1)

    @field_validator("times")
    @classmethod
    def _increasing(cls, times: list[float]) -> list[float]:
        if times[0] <= 0 or any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError(f"times: seconds after the last write, positive and increasing (got {times})")
        return times

    @model_validator(mode="after")
    def _learning_needs_stream(self) -> DeployConfig:
        if any(m.startswith("learning") for m in self.modes) and self.adaptation is None:
            raise ValueError("adaptation: the learning modes need adaptation.rate (sequences per hour)")
        return self

    def run_config(self, seed: int) -> RunConfig:
        data = merge(self.base, {"seed": seed, "name": f"{self.name}/trained"})
        data.setdefault("tracking", {}).setdefault("experiment", self.name)
        cfg = build(RunConfig, data, source=f"deploy {self.name}")
        if cfg.backend.kind != "analog":
            raise ConfigError(f"deploy {self.name}: base.backend.kind must be 'analog' (digital weights do not drift)")
        return cfg

    def hash(self) -> str:
        """What a row was produced with: everything but the labels, the seeds and where results go."""
        return config_hash(self, {"name": True, "description": True, "seeds": True, "output_dir": True,
                                  "workers": True})


def load_deploy(path: str | Path, overrides: dict[str, Any] | None = None) -> DeployConfig:
    path = study_file(path)  # a path, or a shipped study's name
    data = read_yaml(path)
    if overrides:
        data = merge(data, overrides)
    deploy = build(DeployConfig, data, source=str(path))
    for seed in deploy.seeds:
        deploy.run_config(seed)  # a typo in the base fails before any training
    return deploy


class DriftCompensation:
    """aihwkit's global drift compensation on trainable tiles: each tile's digital output scale is
    multiplied by ref/now, the mean |output| of its one-hot read-out right after the last write
    against now. The pulse writer divides by the same scale, so learning writes stay calibrated."""

    def __init__(self, net: SNUNet) -> None:
        from aihwkit.inference.compensation.drift import GlobalDriftCompensation

        self.gdc = GlobalDriftCompensation()
        self.tiles = {name: tile.tile for name, tile in net.backend.tiles.items()}
        self.base = {name: tile.get_mapping_scales() for name, tile in self.tiles.items()}
        self.factor = dict.fromkeys(self.tiles, 1.0)
        self.ref = {name: self._readout(name) for name in self.tiles}

    @torch.no_grad()
    def _readout(self, name: str) -> float:
        """The read-out through the tile with the compensation divided out (the raw conductances)."""
        tile = self.tiles[name]
        out = tile.forward(self.gdc.get_readout_tensor(tile.in_size))
        return float(self.gdc.readout(out)) / self.factor[name]

    def update(self, net: SNUNet) -> None:
        for name, tile in self.tiles.items():
            self.factor[name] = self.ref[name] / max(self._readout(name), 1e-12)
            base = self.base[name]
            # a tensor: aihwkit's set_mapping_scales ignores a float once scales exist
            tile.set_mapping_scales(torch.tensor([self.factor[name]]) if base is None else base * self.factor[name])
        net.backend.forget_views()


def copy_chip(net: SNUNet) -> SNUNet:
    """A deep copy of a trained network whose trainable tiles are copies of the simulator's own
    tiles (devices, bounds, drift clocks): aihwkit's Python tiles cannot be pickled with a vector unit
    cell (`dump_extra` repeats a key), but their C++ tiles copy. The programmed B is read-only: shared."""
    memo: dict[int, Any] = {id(net.backend.B.tile): net.backend.B.tile}
    for pulsed in net.backend.tiles.values():
        old = pulsed.tile
        new = old.rpu_config.tile_class(old.out_size, old.in_size, copy.deepcopy(old.rpu_config))
        new.tile = copy.deepcopy(old.tile)
        scales = old.get_mapping_scales()
        new.set_mapping_scales(None if scales is None else scales.clone())
        new.mapping_lr_scale = getattr(old, "mapping_lr_scale", 1.0)
        memo[id(old)] = new
    return copy.deepcopy(net, memo)


def total_pulses(net: SNUNet) -> float:
    """Device pulses every trainable tile has fired since the run began (NaN where not observable)."""
    counters = [t.counter for t in net.backend.tiles.values()]
    if any(c is None for c in counters):
        return math.nan
    return sum(c.total() for c in counters)


class AdaptationStream:
    """The split replayed in a seeded order, one batch per update, for as long as the chip runs."""

    def __init__(self, cfg: RunConfig, data: TaskData, adaptation: AdaptationConfig) -> None:
        self.split = data.train if adaptation.split == "train" else data.valid
        self.batch_size = cfg.train.batch_size
        self.order = generator(cfg.seed, SEED_ADAPT)
        self.dtype, self.device = DTYPES[cfg.train.dtype], cfg.train.device
        self._it = iter(())

    def next(self):
        batch = next(self._it, None)
        if batch is None:
            self._it = batches(self.split, self.batch_size, self.order)
            batch = next(self._it)
        return batch.to(self.dtype, self.device)


def set_lr(net: SNUNet, lr: float) -> None:
    for group in net.backend.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


Row = dict[str, Any]


def deploy_mode(cfg: RunConfig, trained: SNUNet, data: TaskData, mode: str, times: list[float],
                adaptation: AdaptationConfig | None, on_time: Callable[[Row], None] | None = None) -> list[Row]:
    """Copy the trained chip and let its clock run to each of `times` (seconds after the last write),
    evaluating the test split at each; returns one row per time."""
    from .train import evaluate

    net = copy_chip(trained)
    backend = net.backend
    backend.time_per_update = 0.0  # the clock is advanced here, by the deployment schedule
    gdc = DriftCompensation(net) if mode.endswith("_gdc") else None
    learning = mode.startswith("learning")
    if learning:
        stream = AdaptationStream(cfg, data, adaptation)
        interval = 3600.0 * stream.batch_size / adaptation.rate  # chip seconds between updates
        if adaptation.lr is not None:
            set_lr(net, adaptation.lr)
    pulses0, updates, now, rows = total_pulses(net), 0, 0.0, []
    for t in times:
        if learning:
            while (updates + 1) * interval <= t:
                backend.advance_clock((updates + 1) * interval - now)
                now = (updates + 1) * interval
                if gdc is not None:
                    gdc.update(net)
                grads, _ = compute_update(cfg.rule, net, stream.next())
                if grads:
                    backend.apply(grads)
                updates += 1
        backend.advance_clock(t - now)
        now = t
        if gdc is not None:
            gdc.update(net)
        metrics = evaluate(net, data.test, max(cfg.train.batch_size, 64), DTYPES[cfg.train.dtype], data.kind,
                           cfg.train.device)
        key = "test_accuracy" if data.kind == "classification" else "test_nll"
        value = metrics["accuracy" if data.kind == "classification" else "nll"]
        row = {"mode": mode, "seed": cfg.seed, "time_s": t, key: value, "updates": updates,
               "pulses": total_pulses(net) - pulses0}
        rows.append(row)
        if on_time is not None:
            on_time(row)
    return rows


def _log_mode(cfg: RunConfig, experiment: str, mode: str, rows: list[dict[str, float]], trained_run: str | None,
              extra: dict[str, Any]) -> None:
    """One MLflow run per (mode, seed): the metric against log time (step = 100·log10(t/s))."""
    from .tracking import start_run

    tags = {"deploy_mode": mode, **({"trained_run_id": trained_run} if trained_run else {})}
    with start_run(cfg, experiment, extra_tags=tags, variant=mode) as logger:
        logger.log_params({f"deploy.{k}": v for k, v in extra.items()})
        for row in rows:
            step = round(STEPS_PER_DECADE * math.log10(row["time_s"]))
            logger.log_metrics({k: float(v) for k, v in row.items() if k not in ("mode", "seed")}, step=step)


def deploy_seed(deploy: DeployConfig, seed: int, progress: bool = False) -> list[dict[str, Any]]:
    """Train one seed, then run every mode from copies of its trained chip; the seed's rows."""
    from .runner import run

    cfg = deploy.run_config(seed)
    data = load_task(cfg.data)
    result, run_id = run(cfg, data, experiment=deploy.name, progress=progress, variant="trained")
    if result.diverged or result.net is None:
        raise ConfigError(f"deploy {deploy.name}: seed {seed} diverged in training; nothing to deploy")
    adapt = deploy.adaptation.model_dump() if deploy.adaptation else {}
    rows: list[dict[str, Any]] = []
    print(f"deploy {deploy.name}: seed {seed} trained ({len(result.history)} epochs)", file=sys.stderr, flush=True)

    def show(row: dict[str, Any]) -> None:  # progress of the long modes, one line per evaluation
        value = row.get("test_nll", row.get("test_accuracy"))
        print(f"deploy {deploy.name}: seed {seed} {row['mode']} at {TIME_NAMES.get(row['time_s'], row['time_s'])}: "
              f"{value:.3f} ({row['updates']} updates)", file=sys.stderr, flush=True)

    for mode in deploy.modes:
        mode_rows = deploy_mode(cfg, result.net, data, mode, deploy.times,
                                deploy.adaptation if mode.startswith("learning") else None, on_time=show)
        if cfg.tracking.enabled:
            _log_mode(cfg, deploy.name, mode, mode_rows, run_id, adapt if mode.startswith("learning") else {})
        rows += [{**r, "config_hash": deploy.hash(), "trained_run_id": run_id or ""} for r in mode_rows]
    return rows


def deploy_path(deploy: DeployConfig) -> Path:
    return Path(deploy.output_dir) / f"{deploy.name}.csv"


def own_rows(deploy: DeployConfig) -> pd.DataFrame:
    """The CSV's rows made with this deploy file's settings, its seeds and modes (others stay in the file)."""
    path = deploy_path(deploy)
    if not path.exists():
        return pd.DataFrame(columns=["mode", "seed", "time_s", "config_hash"])
    frame = pd.read_csv(path, dtype={"config_hash": str, "mode": str})
    return frame[(frame["config_hash"] == deploy.hash()) & frame["seed"].isin(deploy.seeds)
                 & frame["mode"].isin(deploy.modes)]


def done_seeds(deploy: DeployConfig) -> set[int]:
    """Seeds whose every mode already has rows made with this deploy file's settings."""
    frame = own_rows(deploy)
    need = {(m, t) for m in deploy.modes for t in deploy.times}
    return {int(s) for s, rows in frame.groupby("seed") if need <= set(zip(rows["mode"], rows["time_s"], strict=True))}


def run_deploy(deploy: DeployConfig, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Train and deploy every seed not yet done (seeds in parallel processes); returns this file's rows.
    Rows made with other settings stay in the CSV but are neither reused nor returned."""
    from .study import append_csv
    from .sweep.executors import pool_map

    path = deploy_path(deploy)
    path.parent.mkdir(parents=True, exist_ok=True)
    todo = [s for s in deploy.seeds if s not in done_seeds(deploy)]
    tracking = deploy.run_config(deploy.seeds[0]).tracking
    if todo and tracking.enabled:
        from .tracking import prepare_store

        prepare_store(tracking.uri, deploy.name)
    bar = tqdm(total=len(todo), desc=f"deploy {deploy.name}", disable=not progress)
    if todo:
        for _, rows in pool_map(partial(deploy_seed, deploy), [(s, s) for s in todo], workers or deploy.workers):
            append_csv(path, rows)  # each seed as it finishes: an interrupted deploy keeps it
            bar.update(1)
    bar.close()
    return own_rows(deploy)
