"""Studies: variants × seeds of one base config, run in parallel, tabulated and plotted.

Each finished run is appended to `results/<name>.csv` at once, with its
per-epoch history in `results/<name>_history.csv`, so an interrupted study
loses nothing and a rerun only trains what is missing. Each row carries the
hash of the config it was trained with: when a variant is changed in the study
file, its old rows are set aside in `<name>_stale.csv` and it is trained again.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from .config import RunConfig, _Strict, build, config_hash, merge, read_yaml, set_dotted
from .errors import ConfigError
from .named import study_file


class StudyConfig(_Strict):
    """A study file: a base run config, named variants (overrides), seeds."""

    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    base: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    output_dir: str = "results"
    workers: int = Field(1, ge=1)

    @field_validator("variants")
    @classmethod
    def _dotted(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Variants may use dotted keys (`optim.lr: 0.001`); expand them to nested sections."""
        out = {}
        for name, overrides in variants.items():
            tree: dict[str, Any] = {}
            for key, value in (overrides or {}).items():
                set_dotted(tree, key, value) if "." in key else tree.__setitem__(key, value)
            out[name] = tree
        return out

    def run_config(self, variant: str, seed: int) -> RunConfig:
        data = merge(merge(self.base, self.variants[variant]), {"seed": seed, "name": f"{self.name}/{variant}"})
        data.setdefault("tracking", {}).setdefault("experiment", self.name)
        return build(RunConfig, data, source=f"study {self.name}, variant {variant}")

    def runs(self) -> list[tuple[str, int, RunConfig]]:
        """Every (variant, seed, config), validated up front so a typo fails before any training."""
        return [(v, s, self.run_config(v, s)) for v in self.variants for s in self.seeds]


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    path = study_file(path)  # a path, or a shipped study's name
    data = read_yaml(path)
    if overrides:
        data = merge(data, overrides)
    study = build(StudyConfig, data, source=str(path))
    study.runs()
    return study


def study_paths(study: StudyConfig) -> tuple[Path, Path, Path]:
    """(runs CSV, per-epoch history CSV, figure) of a study."""
    out = Path(study.output_dir)
    return out / f"{study.name}.csv", out / f"{study.name}_history.csv", out / f"{study.name}.png"


def run_hash(cfg: RunConfig) -> str:
    """What a row was trained with: the config less its labels (tracking, name), the seed (a column
    of its own), where the data lives, how many threads ran and which engine (data.path, train.threads,
    train.engine: the same run)."""
    return config_hash(cfg, {"tracking": True, "name": True, "seed": True, "data": {"path"},
                             "train": {"threads", "engine"}})


def summary_row(variant: str, seed: int, cfg: RunConfig, result, run_id: str | None) -> dict[str, Any]:
    best = result.best()
    last = result.history[-1] if result.history else {}
    row: dict[str, Any] = {"variant": variant, "rule": cfg.rule.name, "backend": cfg.backend.kind,
                           "device_config": cfg.backend.device_config if cfg.backend.kind == "analog" else "",
                           "seed": seed, "best_epoch": result.history.index(best) + 1 if best else 0,
                           "epochs": len(result.history), "diverged": result.diverged, "run_id": run_id or "",
                           "config_hash": run_hash(cfg)}
    for key in ("test_nll", "valid_nll", "train_nll", "test_accuracy", "spike_rate"):
        if key in best:
            row[key] = best[key]
    if "test_nll" in last:
        row["final_test_nll"] = last["test_nll"]
    row["mean_epoch_time"] = sum(h["epoch_time"] for h in result.history) / max(len(result.history), 1)
    return row


def _run_one(variant: str, seed: int, cfg: RunConfig, parent_run_id: str | None):
    """Worker: one run, no progress bars (the parent shows the study's)."""
    from .runner import run

    if cfg.train.threads is None:
        import torch

        torch.set_num_threads(1)
    result, run_id = run(cfg, parent_run_id=parent_run_id, progress=False, variant=variant)
    history = [{"variant": variant, "seed": seed, "epoch": i + 1, **h} for i, h in enumerate(result.history)]
    return summary_row(variant, seed, cfg, result, run_id), history


KEY_TYPES = {"variant": str, "config_hash": str}  # never parsed as numbers: keys must compare as written


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=KEY_TYPES)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write through a temporary file, so an interruption never leaves half a table."""
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def append_csv(path: Path, rows: list[dict[str, Any]] | pd.DataFrame, dedupe: bool = False) -> None:
    frame = pd.DataFrame(rows)
    if path.exists():
        frame = pd.concat([read_table(path), frame], ignore_index=True)
    write_csv(path, frame.drop_duplicates() if dedupe else frame)


def run_keys(frame: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(frame["variant"], frame["seed"], strict=True))


def current_rows(study: StudyConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the study's own (variant, seed) runs: a table may still hold variants or seeds
    since removed from the study file, which its report must not average in."""
    keys = {(v, s) for v in study.variants for s in study.seeds}
    return frame[[key in keys for key in run_keys(frame)]]


def drop_runs(path: Path, keys: set[tuple[str, int]], moved_to: Path | None = None) -> None:
    """Remove the rows of the (variant, seed) `keys` from a table, first copying them to `moved_to`
    (deduplicated, so a move interrupted and redone copies nothing twice)."""
    if not keys or not path.exists():
        return
    frame = read_table(path)
    mask = pd.Series([key in keys for key in run_keys(frame)], index=frame.index, dtype=bool)
    if mask.any():
        if moved_to is not None:
            append_csv(moved_to, frame[mask], dedupe=True)
        write_csv(path, frame[~mask])


def set_aside_stale(study: StudyConfig, runs: list[tuple[str, int, RunConfig]]) -> set[tuple[str, int]]:
    """The (variant, seed) runs already trained with the study's current config (`runs`: study.runs()).

    Rows of the study's runs whose config hash differs (the variant was changed, or the row predates
    hashes) move with their history to `<name>_stale.csv` / `<name>_stale_history.csv`, so they are
    kept but neither reused nor reported; each changed variant is named on stderr. The history moves
    first and the runs table last: the runs table is the record of what is done."""
    runs_csv, hist_csv = study_paths(study)[:2]
    if not runs_csv.exists():
        return set()
    prev = read_table(runs_csv)
    current = {(v, s): run_hash(c) for v, s, c in runs}
    keys = run_keys(prev)
    hashes = prev["config_hash"] if "config_hash" in prev else [None] * len(prev)
    stale = {key for key, h in zip(keys, hashes, strict=True) if key in current and h != current[key]}
    if stale:
        out = Path(study.output_dir)
        drop_runs(hist_csv, stale, out / f"{study.name}_stale_history.csv")
        drop_runs(runs_csv, stale, out / f"{study.name}_stale.csv")
        for variant in dict.fromkeys(v for v, _ in sorted(stale)):
            seeds = sorted(s for v, s in stale if v == variant)
            print(f"study {study.name}: variant '{variant}' changed since its rows were written (seeds {seeds}); "
                  f"they move to {out / f'{study.name}_stale.csv'} and are trained again", file=sys.stderr)
    return set(keys) - stale


def run_study(study: StudyConfig, workers: int | None = None, progress: bool = True,
              parent_run_id: str | None = None) -> pd.DataFrame:
    """Train what is missing, appending each finished run to the study's CSVs; returns the study's runs."""
    Path(study.output_dir).mkdir(parents=True, exist_ok=True)
    runs_csv, hist_csv = study_paths(study)[:2]
    runs = study.runs()
    done = set_aside_stale(study, runs)
    todo = [(v, s, c) for v, s, c in runs if (v, s) not in done]
    # a run interrupted between writing its history and its row left history without a row
    drop_runs(hist_csv, {(v, s) for v, s, _ in todo})
    if todo and todo[0][2].tracking.enabled:
        from .tracking import prepare_store

        prepare_store(todo[0][2].tracking.uri, study.name)  # create tables once, before workers race
    workers = min(workers or study.workers, max(len(todo), 1))
    bar = tqdm(total=len(todo), desc=f"study {study.name}", disable=not progress)
    env = {"OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_run_one, v, s, c, parent_run_id): (v, s) for v, s, c in todo}
        try:
            for fut in cf.as_completed(futures):
                row, history = fut.result()
                append_csv(hist_csv, history)  # the history first: the row marks the run done
                append_csv(runs_csv, [row])
                bar.update(1)
                bar.set_postfix(last=f"{row['variant']}/{row['seed']}")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    bar.close()
    if not runs_csv.exists():
        raise ConfigError(f"study {study.name}: nothing was run")
    return current_rows(study, read_table(runs_csv))
