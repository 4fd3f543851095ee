"""Alignment diagnostic: every rule's update against the BPTT gradient on one batch.

The cosine between a rule's update and the true gradient is the standard
diagnostic of feedback-alignment methods (~1 for OSTL on one feed-forward
layer, lower for OSTL-rnd, DRTP and OSTTP), reported per parameter of every
layer. `dump` writes everything a reader needs to check a rule against their
own BPTT: parameters, feedback matrices B_l, the batch, the neuron model and its
settings, the layers and every rule's update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .builder import DTYPES, build_for_task
from .config import RunConfig
from .data import TaskData, batches
from .data.batching import Batch
from .network import SNUNet
from .registry import rule_names
from .rules import compute_update
from .training import train


def rule_updates(cfg: RunConfig, net: SNUNet, batch: Batch) -> dict[str, dict[str, torch.Tensor]]:
    """dE/dθ estimates of every rule (summed over valid steps, mean over the batch), not applied."""
    out = {}
    for rule in rule_names():
        rule_cfg = cfg.rule.model_copy(update={"name": rule, "update_timing": "sequence"})
        grads, _ = compute_update(rule_cfg, net, batch)
        out[rule] = {name: g.detach() for name, g in grads.items()}
    return out


def compare(updates: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, dict[str, float]]]:
    """{rule: {param: {"cosine": c, "norm_ratio": |update| / |BPTT gradient|}}}."""
    ref = updates["bptt"]
    report: dict[str, dict[str, dict[str, float]]] = {}
    for rule, grads in updates.items():
        report[rule] = {}
        for name, g in grads.items():
            r = ref[name].flatten().double()
            v = g.flatten().double()
            denom = float(v.norm() * r.norm())
            report[rule][name] = {"cosine": float(v @ r) / denom if denom > 0 else float("nan"),
                                  "norm_ratio": float(v.norm() / r.norm()) if r.norm() > 0 else float("nan")}
    return report


def dump(directory: Path, cfg: RunConfig, net: SNUNet, batch: Batch,
         updates: dict[str, dict[str, torch.Tensor]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "params.npz",
             **{k: v.detach().cpu().numpy() for k, v in net.backend.parameters().items()})
    B = net.backend.feedback_matrix().detach().cpu()
    np.savez(directory / "feedback.npz",
             **{f"B{layer.index}": b.numpy() for layer, b in zip(net.layers, net.split(B), strict=True)})
    np.savez(directory / "batch.npz", x=batch.x.cpu().numpy(), y=batch.y.cpu().numpy(),
             lengths=batch.lengths.cpu().numpy())
    neuron = cfg.model.neuron  # with its own settings, e.g. {"alif": {"beta": …, "decay": …}}
    own = {neuron: dict(net.layers[0].neuron_params)} if net.layers[0].neuron_params else {}
    meta = {"neuron": neuron, **own, "reset": cfg.model.reset, "decay": cfg.model.decay,
            "surrogate": cfg.model.surrogate, "readout": cfg.model.readout, "tau": cfg.model.tau,
            "traces": cfg.rule.traces,
            "recurrent": cfg.model.recurrent, "train_threshold": cfg.model.train_threshold,
            "layers": [layer.meta() for layer in net.layers],
            "loss": "sum over valid steps of BCE summed over outputs (sigmoid) or CE (leaky), mean over batch"}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    for rule, grads in updates.items():
        np.savez(directory / f"updates_{rule}.npz", **{k: v.cpu().numpy() for k, v in grads.items()})


def align(cfg: RunConfig, data: TaskData, dump_dir: Path | None = None, after_epochs: int = 0,
          batch_size: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Run the diagnostic on the first batch of the training split (`batch_size` sequences, default the
    config's), at initialisation or after training the config's own rule for `after_epochs` epochs."""
    torch.manual_seed(cfg.seed)
    if after_epochs:
        trained = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": after_epochs})})
        net = train(trained, data, progress=False).net
        assert net is not None
    else:
        net = build_for_task(cfg, data)
    batch = next(batches(data.train, batch_size or cfg.train.batch_size)).to(DTYPES[cfg.train.dtype],
                                                                              cfg.train.device)
    updates = rule_updates(cfg, net, batch)
    if dump_dir is not None:
        dump(dump_dir, cfg, net, batch, updates)
    return compare(updates)


def summarise(reports: list[dict[str, dict[str, dict[str, float]]]]) -> list[dict[str, object]]:
    """One row per (rule, param): mean and std over seeds of the cosine and the norm ratio."""
    rows = []
    for rule, params in reports[0].items():
        for name in params:
            row: dict[str, object] = {"rule": rule, "param": name}
            for key in ("cosine", "norm_ratio"):
                values = np.array([r[rule][name][key] for r in reports])
                row[key], row[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0)
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Alignment:
    """The diagnostic over seeds.

    Attributes:
        config: the run config (its seed the first of the seeds).
        after_epochs: epochs of the config's own rule before the diagnostic (0: at initialisation).
        reports: each seed's `{rule: {param: {"cosine": c, "norm_ratio": r}}}`.
        table: one row per (rule, param): config, after_epochs, seeds, and the mean and std over seeds of
            `cosine` and `norm_ratio`.
    """

    config: RunConfig
    after_epochs: int
    reports: list[dict[str, dict[str, dict[str, float]]]]
    table: pd.DataFrame


def align_seeds(cfg: RunConfig, data: TaskData, seeds: list[int], dump_dir: Path | None = None,
                after_epochs: int = 0, batch_size: int | None = None) -> Alignment:
    """`align` for each seed (a dump is the last seed's), and the mean ± std over them (`summarise`)."""
    reports = [align(cfg.model_copy(update={"seed": seed}), data, dump_dir, after_epochs, batch_size)
               for seed in seeds]
    table = pd.DataFrame([{"config": cfg.name, "after_epochs": after_epochs, "seeds": len(seeds), **row}
                          for row in summarise(reports)])
    return Alignment(cfg, after_epochs, reports, table)
