"""The training loop: batches → rule → backend, then per-epoch metrics to whoever listens."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .builder import DTYPES, build_for_task
from .config import RunConfig
from .data.batching import Split, TaskData, batches
from .network import SNUNet
from .rules import compute_update
from .seeds import generator

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class RunResult:
    """A trained run.

    Attributes:
        config: the run config it trained.
        history: one dict of metrics per epoch (`train_nll` or `train_loss`, `valid_nll`, `test_nll` or
            `test_accuracy`, `spike_rate`, `epoch_time`, and the backend's, e.g. pulse counts).
        diverged: it stopped early because the loss stopped being finite.
        net: the trained network (its weights on its backend).
        run_id: its MLflow run, when tracked.
    """

    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    net: SNUNet | None = None
    run_id: str | None = None

    @property
    def selection_metric(self) -> str:
        return "valid_nll" if "valid_nll" in (self.history[0] if self.history else {}) else "test_accuracy"

    def best(self) -> dict[str, float]:
        """The epoch of best validation NLL (JSB), or of maximum test accuracy (classification)."""
        if not self.history:
            return {}
        key = self.selection_metric
        if key.endswith("nll"):
            finite = [h for h in self.history if math.isfinite(h[key])] or self.history
            return min(finite, key=lambda h: h[key])
        return max(self.history, key=lambda h: h[key])


@torch.no_grad()
def evaluate(net: SNUNet, split: Split, batch_size: int, dtype: torch.dtype, kind: str,
             device: str = "cpu") -> dict[str, float]:
    """NLL per frame (multilabel) or accuracy of argmax Σ_t softmax(o^t) (classification)."""
    loss_sum = spikes = correct = 0.0
    frames = 0
    for batch in batches(split, batch_size):
        batch = batch.to(dtype, device)
        logits, y = net.forward(batch.x)
        loss_sum += float((net.readout.loss(logits, batch.y) * batch.mask).sum())
        spikes += float((y * batch.mask[..., None]).sum())
        frames += int(batch.mask.sum())
        if kind == "classification":
            votes = (torch.softmax(logits, -1) * batch.mask[..., None]).sum(1)
            correct += float((votes.argmax(-1) == batch.labels).sum())
    out = {"loss": loss_sum / max(frames, 1), "spike_rate": spikes / max(frames * net.n_hidden, 1)}
    if kind == "classification":
        out["accuracy"] = correct / max(len(split), 1)
    else:
        out["nll"] = out.pop("loss")
    return out


def train_epoch(cfg: RunConfig, net: SNUNet, split: Split, order: torch.Generator,
                progress: bool) -> dict[str, float]:
    dtype = DTYPES[cfg.train.dtype]
    loss_sum = spikes = 0.0
    frames = 0
    n_batches = math.ceil(len(split) / cfg.train.batch_size)
    bar = tqdm(batches(split, cfg.train.batch_size, order), total=n_batches, leave=False,
               disable=not progress, desc="batches")
    for batch in bar:
        grads, stats = compute_update(cfg.rule, net, batch.to(dtype, cfg.train.device))
        if grads:
            net.backend.apply(grads)
        loss_sum, frames, spikes = loss_sum + stats.loss_sum, frames + stats.frames, spikes + stats.spikes
        bar.set_postfix(loss=f"{loss_sum / max(frames, 1):.3f}")
    return {"loss": loss_sum / max(frames, 1), "spike_rate": spikes / max(frames * net.n_hidden, 1)}


def train(cfg: RunConfig, data: TaskData, on_epoch: EpochCallback | None = None,
          progress: bool = True) -> RunResult:
    """Train for cfg.train.epochs; stops early (diverged=True) if the loss stops being finite."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    dtype = DTYPES[cfg.train.dtype]
    net = build_for_task(cfg, data)
    order = generator(cfg.seed, "order")
    result = RunResult(cfg, net=net)
    eval_bs = max(cfg.train.batch_size, 64)
    epochs = tqdm(range(1, cfg.train.epochs + 1), desc=cfg.name, disable=not progress)
    for epoch in epochs:
        start = time.perf_counter()
        tr = train_epoch(cfg, net, data.train, order, progress)
        epoch_time = time.perf_counter() - start
        metrics: dict[str, float] = {"epoch_time": epoch_time, "spike_rate": tr["spike_rate"]}
        if data.kind == "classification":
            metrics["train_loss"] = tr["loss"]
        else:
            metrics["train_nll"] = tr["loss"]
        splits = {"test": data.test} if data.kind == "classification" else {"valid": data.valid,
                                                                              "test": data.test}
        for name, split in splits.items():
            for key, value in evaluate(net, split, eval_bs, dtype, data.kind, cfg.train.device).items():
                if key != "spike_rate":
                    metrics[f"{name}_{key}"] = value
        metrics.update(net.backend.end_epoch())
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        shown = {k: f"{v:.3f}" for k, v in metrics.items() if k.startswith(("valid", "test"))}
        epochs.set_postfix(shown)
        if not math.isfinite(tr["loss"]):
            result.diverged = True
            break
    return result
