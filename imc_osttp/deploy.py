"""Deployment over time: a trained chip's test metric at log-spaced times after its last write, frozen,
frozen with drift compensation, or still learning on the chip (issue 11; the mitigating modes of issue 22
are in imc_osttp/deploy_modes.py).

A deploy job (imc_osttp/pipeline, `imc-osttp deploy`) trains a seed, then gives every mode its own copy of
the trained chip and lets the chip clock run from the last write to each evaluation time:

- `frozen`: no updates, no compensation; conductances drift by aihwkit's power law.
- `frozen_gdc`: no updates; every trainable tile's output is rescaled by aihwkit's
  `GlobalDriftCompensation` (the backend's `compensate_drift`).
- `learning`: the config's rule keeps updating from an adaptation stream (a split replayed in a
  seeded order) at `adaptation.rate` sequences per hour of chip time; every write restarts the
  clock of the devices it changed. `learning_gdc` does both.

A mode is an entry of `MODES`; every deployment runs on its own copy of it. To add one, subclass `Mode` where
the chip needs more than an update stream and compensation (override `start`, `tend`, `write`, and
`next_event`/`event` for events of its own, such as reprogramming) and register it, e.g. in this module:

    class LearningRefresh(Mode):
        def tend(self, backend): ...               # before every update and every evaluation
    MODES["learning_refresh"] = LearningRefresh(learns=True)

Deploy files then accept `modes: [learning_refresh]`; a `learns` mode needs the file's `adaptation`, and the
file's `mitigation` section holds the settings of the modes that have any (imc_osttp/deploy_modes.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from .backends.base import Backend
from .config import RunConfig, _Strict
from .optim import set_lr
from .seeds import generator

DEFAULT_TIMES = [1.0, 60.0, 3600.0, 86400.0, 604800.0, 2592000.0, 31536000.0]  # 1 s … 1 year
TIME_NAMES = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day", 604800.0: "1 week",
              2592000.0: "1 month", 31536000.0: "1 year"}
DEFAULT_MODES = ["frozen", "frozen_gdc", "learning"]


class AdaptationConfig(_Strict):
    """The stream a learning chip learns from after deployment."""

    rate: float = Field(gt=0)  # sequences per hour of chip time
    split: Literal["train", "valid"] = "train"
    lr: float | None = Field(None, gt=0)  # default: the trained run's final (scheduled) lr


class MitigationConfig(_Strict):
    """The settings of the modes that mitigate the restart of drift clocks (imc_osttp/deploy_modes.py)."""

    gate_margin: float = Field(0.1, ge=0)  # learning_gated: nats per frame above the stream's NLL at deployment
    gate_window: int = Field(48, ge=1)  # learning_gated: updates in the running mean of the stream's NLL
    transfer_every: float = Field(86400.0, gt=0)  # learning_transfer: chip seconds between reprogrammings
    read_repeats: int = Field(16, ge=1)  # learning_transfer: reads averaged when the array is read back
    # learning_transfer's programming noise per device: aihwkit's PCMLikeNoiseModel (Nandakumar et al. 2019),
    # HermesNoiseModel fitted on one HERMES device (Le Gallo et al. 2023), or none
    program_noise: Literal["pcm", "hermes", "none"] = "pcm"


@dataclass
class Mode:
    """How a deployed chip spends its time: whether it learns from the adaptation stream, and whether its
    output is rescaled by drift compensation (aihwkit's global one, or per output column). `MODES` holds
    templates: each deployment runs on a copy, which may keep state of its own."""

    learns: bool
    compensated: bool = False
    per_column: bool = False
    programmed: int = 0  # devices reprogrammed so far (modes that reprogram)

    def start(self, backend: Backend, mitigation: MitigationConfig) -> None:
        """Once, on the fresh copy of the trained chip (right after its last training write)."""
        if self.compensated:
            backend.start_drift_compensation(per_column=self.per_column)

    def tend(self, backend: Backend) -> None:
        """Before every update and every evaluation."""
        if self.compensated:
            backend.compensate_drift()

    def write(self, backend: Backend, grads: dict[str, Any], nll: float) -> bool:
        """One update of the adaptation stream (`nll`: its NLL per frame): written at once; True if it was."""
        backend.apply(grads)
        return True

    def next_event(self) -> float:
        """Chip time of the mode's next event of its own (none: infinity); an event due at an evaluation time
        comes after that evaluation, an update due then before it."""
        return math.inf

    def event(self, backend: Backend) -> None:
        """The event `next_event` announced."""


MODES: dict[str, Mode] = {"frozen": Mode(learns=False), "frozen_gdc": Mode(learns=False, compensated=True),
                          "learning": Mode(learns=True), "learning_gdc": Mode(learns=True, compensated=True)}


class AdaptationStream:
    """The split replayed in a seeded order, one batch per update, for as long as the chip runs."""

    def __init__(self, cfg: RunConfig, data, adaptation: AdaptationConfig) -> None:
        self.split = data.train if adaptation.split == "train" else data.valid
        self.batch_size = cfg.train.batch_size
        self.order = generator(cfg.seed, "adaptation")
        self.dtype, self.device = cfg.train.dtype, cfg.train.device
        self._it = iter(())

    def next(self):
        from .builder import DTYPES
        from .data.batching import batches

        batch = next(self._it, None)
        if batch is None:
            self._it = batches(self.split, self.batch_size, self.order)
            batch = next(self._it)
        return batch.to(DTYPES[self.dtype], self.device)


def copy_chip(net):
    """A deep copy of a trained network around a copy of its backend (`Backend.copy`)."""
    return copy.deepcopy(net, {id(net.backend): net.backend.copy()})


Row = dict[str, Any]


def deploy_mode(cfg: RunConfig, trained, data, mode: str, times: list[float],
                adaptation: AdaptationConfig | None, on_time: Callable[[Row], None] | None = None,
                mitigation: MitigationConfig | None = None) -> list[Row]:
    """Copy the trained chip and let its clock run to each of `times` (seconds after the last write),
    evaluating the test split at each; returns one row per time (`updates` computed, `writes` that reached
    the chip or its periphery, devices `programmed`, device `pulses`)."""
    from .builder import DTYPES
    from .rules import compute_update
    from .training import evaluate

    kind = copy.deepcopy(MODES[mode])
    net = copy_chip(trained)
    backend = net.backend
    backend.time_per_update = 0.0  # the clock is advanced here, by the deployment schedule
    kind.start(backend, mitigation or MitigationConfig())
    interval = math.inf
    if kind.learns:
        stream = AdaptationStream(cfg, data, adaptation)
        interval = 3600.0 * stream.batch_size / adaptation.rate  # chip seconds between updates
        if adaptation.lr is not None:
            set_lr(backend.optimizer, adaptation.lr)
    pulses0, updates, writes, now, rows = backend.pulse_total(), 0, 0, 0.0, []

    def advance(to: float) -> None:
        nonlocal now
        backend.advance_clock(to - now)
        now = to
        kind.tend(backend)

    for t in times:
        while True:
            update_at, event_at = (updates + 1) * interval, kind.next_event()
            if update_at <= t and update_at <= event_at:
                advance(update_at)
                grads, stats = compute_update(cfg.rule, net, stream.next())
                updates += 1
                if grads and kind.write(backend, grads, stats.loss_sum / max(stats.frames, 1)):
                    writes += 1
            elif event_at < t:
                backend.advance_clock(event_at - now)
                now = event_at
                kind.event(backend)
            else:
                break
        advance(t)
        metrics = evaluate(net, data.test, max(cfg.train.batch_size, 64), DTYPES[cfg.train.dtype], data.kind,
                           cfg.train.device)
        key = "test_accuracy" if data.kind == "classification" else "test_nll"
        value = metrics["accuracy" if data.kind == "classification" else "nll"]
        row = {"mode": mode, "seed": cfg.seed, "time_s": t, key: value, "updates": updates, "writes": writes,
               "programmed": kind.programmed, "pulses": backend.pulse_total() - pulses0}
        rows.append(row)
        if on_time is not None:
            on_time(row)
    return rows


from . import deploy_modes  # noqa: E402, F401  (registers the mitigating modes in MODES)
