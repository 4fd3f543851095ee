"""What a deployed chip does while its clock runs: the deploy modes (issue 11, issue 22).

A mode is a drift compensation (none, aihwkit's global one, or its per-column one) and, for the
`learning*` modes, a way for OSTTP to keep learning from the adaptation stream:

- `frozen`, `frozen_gdc`, `frozen_pcdc`: no updates; no compensation, global, per column.
- `learning`, `learning_gdc`, `learning_pcdc`: every update is written as pulses at once (each write
  restarts the drift clock of the devices it moves); no compensation, global, per column.
- `learning_gated` (error-gated writes): global compensation; an update is written only while the
  chip's NLL on its own stream (a running mean) exceeds the stream's NLL at deployment by
  `gate_margin`, so a chip that has not degraded is not written (and its clocks not restarted).
- `learning_digital`: global compensation; OSTTP learns only the digital parameters (thresholds,
  readout bias): the array is never written after deployment.
- `learning_transfer` (two timescales, Ambrogio et al., Nature 2018, the fast timescale digital on the
  host): global compensation; the host keeps a copy of the weights (read back once at deployment) and
  adds every update to it; every `transfer_every` seconds the whole array is reprogrammed to it
  (program-and-verify, with programming noise). Every device's clock then restarts at once, so the
  chip is uniformly young again and global compensation, re-referenced right after, holds. The price:
  a digital copy of every weight on the host.

Why these: aihwkit restarts a device's drift clock when a write moves it (a partial SET restarts PCM
drift, Boybat et al., NVMTS 2018), and the whole conductance of a restarted device then drifts anew,
while global compensation scales every device by the factor of the old ones. A device written at a
chip age T is read (T/t0)^ν too large right after the write: the on-chip learning of
results/jsb_deploy.csv is worse than a frozen chip from one day on. Gating writes fewer devices;
transfer never leaves devices of different ages on the chip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from .builder import DTYPES, generator
from .config import RunConfig, _Strict
from .data import TaskData
from .data.batching import batches
from .network import SNUNet
from .rules import compute_update

SEED_ADAPT = 5  # random stream of the adaptation stream's order (builder uses 1-3, the writer 4)
COMPENSATION = {"": None, "gdc": "global", "pcdc": "per_column", "gated": "global", "transfer": "global",
                "digital": "global"}
Mode = Literal["frozen", "frozen_gdc", "frozen_pcdc", "learning", "learning_gdc", "learning_pcdc",
               "learning_gated", "learning_transfer", "learning_digital"]
Row = dict[str, Any]


class AdaptationConfig(_Strict):
    """The stream a `learning` chip learns from after deployment."""

    rate: float = Field(gt=0)  # sequences per hour of chip time
    split: Literal["train", "valid"] = "train"
    lr: float | None = Field(None, gt=0)  # default: the trained run's final (scheduled) lr


class MitigationConfig(_Strict):
    """The settings of the mitigating learning modes (learning_gated, learning_transfer)."""

    gate_margin: float = Field(0.1, ge=0)  # nats per frame above the stream's NLL at deployment
    gate_window: int = Field(48, ge=1)  # updates in the running mean of the stream's NLL
    transfer_every: float = Field(86400.0, gt=0)  # chip seconds between transfers (reprogramming)
    read_repeats: int = Field(16, ge=1)  # reads averaged when learning_transfer reads the array back at deployment
    # programming noise of a transfer, per device: aihwkit's PCMLikeNoiseModel (Nandakumar et al. 2019),
    # HermesNoiseModel fitted on one HERMES device (Le Gallo et al. 2023), or none
    program_noise: Literal["pcm", "hermes", "none"] = "pcm"


def compensation_of(mode: str) -> str | None:
    """None, "global" or "per_column": the drift compensation a mode runs."""
    return COMPENSATION[mode.partition("_")[2]]


def mapping_scales(tile) -> torch.Tensor | None:
    """A copy of an aihwkit tile's digital output scales (aihwkit hands out its own tensor)."""
    scales = tile.get_mapping_scales()
    return None if scales is None else scales.clone()


class DriftCompensation:
    """aihwkit's drift compensation on trainable tiles (GlobalDriftCompensation, or per output column
    PerColumnDriftCompensation): each tile's digital output scale is multiplied by ref/now, the mean
    |output| of its one-hot read-out (per column) right after the last write against now. The pulse writer
    divides by the same scale, so learning writes stay calibrated."""

    def __init__(self, net: SNUNet, kind: str = "global") -> None:
        from aihwkit.inference.compensation.drift import GlobalDriftCompensation, PerColumnDriftCompensation

        self.gdc = PerColumnDriftCompensation() if kind == "per_column" else GlobalDriftCompensation()
        self.tiles = {name: tile.tile for name, tile in net.backend.tiles.items()}
        # a copy: aihwkit returns its own scale tensor and set_mapping_scales writes a one-element one in place,
        # so a kept reference would follow every compensation and compound it at the next update
        self.base = {name: mapping_scales(tile) for name, tile in self.tiles.items()}
        self.factor: dict[str, torch.Tensor] = {name: torch.ones(1) for name in self.tiles}
        self.ref = {name: self._readout(name) for name in self.tiles}

    @torch.no_grad()
    def _readout(self, name: str) -> torch.Tensor:
        """The read-out through the tile with the compensation divided out (the raw conductances)."""
        tile = self.tiles[name]
        out = tile.forward(self.gdc.get_readout_tensor(tile.in_size))
        return self.gdc.readout(out).reshape(-1) / self.factor[name]

    def update(self, net: SNUNet) -> None:
        for name, tile in self.tiles.items():
            self.factor[name] = self.ref[name] / self._readout(name).clamp(min=1e-12)
            base = self.base[name]
            tile.set_mapping_scales(self.factor[name].clone() if base is None else base * self.factor[name])
        net.backend.forget_views()


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


class Learner:
    """OSTTP learning on the deployed chip, one update every `interval` chip seconds, written at once."""

    def __init__(self, cfg: RunConfig, net: SNUNet, data: TaskData, adaptation: AdaptationConfig,
                 mitigation: MitigationConfig) -> None:
        self.cfg, self.net = cfg, net
        self.stream = AdaptationStream(cfg, data, adaptation)
        self.interval = 3600.0 * self.stream.batch_size / adaptation.rate
        if adaptation.lr is not None:
            set_lr(net, adaptation.lr)
        self.mitigation = mitigation
        self.updates = self.writes = self.programmed = 0

    def step(self) -> None:
        """One sequence of the stream: the rule's update, written (or not) by `write`."""
        grads, stats = compute_update(self.cfg.rule, self.net, self.stream.next())
        self.updates += 1
        if grads and self.accept(stats.loss_sum / max(stats.frames, 1)):
            self.write(grads)

    def accept(self, nll: float) -> bool:
        return True

    def write(self, grads: dict[str, torch.Tensor]) -> None:
        self.net.backend.apply(grads)
        self.writes += 1

    def events(self) -> list[tuple[float, Callable[[], None]]]:
        """Events other than updates (time, action), the next of each kind; none for a plain learner."""
        return []


class GatedLearner(Learner):
    """Writes an update only while the running mean of the stream's NLL exceeds its value at deployment by
    `gate_margin`: the first `gate_window` updates measure the reference and are not written."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.recent: list[float] = []
        self.reference: float | None = None

    def accept(self, nll: float) -> bool:
        self.recent = [*self.recent, nll][-self.mitigation.gate_window:]
        if self.reference is None:
            if len(self.recent) == self.mitigation.gate_window:
                self.reference = sum(self.recent) / len(self.recent)
            return False
        return sum(self.recent) / len(self.recent) > self.reference + self.mitigation.gate_margin


class TransferLearner(Learner):
    """Two timescales: the host keeps the weights (read back once at deployment, `read_repeats` reads averaged)
    and adds every update to them (ΔW = -lr·grad); every `transfer_every` chip seconds every trainable tile is
    reprogrammed to them. A transfer never reads the array back: each read carries IO noise and the drift
    error of every device, and reprogramming to a read-back copies them, so errors would pile up transfer
    after transfer (a pilot that did: test NLL 9.61, 9.69, 9.93 after 1, 2, 3 hourly transfers, 19.3 after
    a week of daily ones)."""

    def __init__(self, *args: Any, recompensate: Callable[[], None]) -> None:
        super().__init__(*args)
        self.weights = {name: read_back(tile.tile, self.mitigation.read_repeats)
                        for name, tile in self.net.backend.tiles.items()}
        self.transfers = 0
        self.recompensate = recompensate

    def write(self, grads: dict[str, torch.Tensor]) -> None:
        from .optim import group_lrs

        lrs = group_lrs(self.net.backend.optimizer)
        for name, grad in grads.items():
            if name in self.weights:
                self.weights[name] -= lrs[name] * grad.detach().transpose(0, 1).float()
        digital = {name: grad for name, grad in grads.items() if name not in self.weights}
        if digital:  # thresholds and biases are digital: they learn at once, as in every learning mode
            self.net.backend.apply(digital)
        self.writes += 1

    def events(self) -> list[tuple[float, Callable[[], None]]]:
        return [((self.transfers + 1) * self.mitigation.transfer_every, self.transfer)]

    @torch.no_grad()
    def transfer(self) -> None:
        noise = program_noise_model(self.mitigation.program_noise)
        for name, tile in self.net.backend.tiles.items():
            self.programmed += program(tile.tile, self.weights[name], noise)
        self.transfers += 1
        self.net.backend.forget_views()
        self.recompensate()


class DigitalLearner(Learner):
    """Learns only what is digital (the thresholds and the readout bias): the array is never written, so no
    drift clock restarts, and the rule can only compensate the chip's errors through the periphery."""

    def write(self, grads: dict[str, torch.Tensor]) -> None:
        digital = {name: grad for name, grad in grads.items() if name not in self.net.backend.tiles}
        if digital:
            self.net.backend.apply(digital)
        self.writes += 1


def program_noise_model(kind: str):
    """aihwkit's programming-noise model of one PCM device, or None."""
    from aihwkit.inference import HermesNoiseModel, PCMLikeNoiseModel

    return {"pcm": PCMLikeNoiseModel(), "hermes": HermesNoiseModel(num_devices=1), "none": None}[kind]


@torch.no_grad()
def read_back(tile, repeats: int) -> torch.Tensor:
    """The tile's weights [out, in] as the chip reads them: one-hot inputs through its forward pass (IO noise,
    converters, digital output scale and compensation), averaged over `repeats` reads."""
    eye = torch.eye(tile.in_size)
    return sum(tile.forward(eye) for _ in range(repeats)).transpose(0, 1) / repeats


@torch.no_grad()
def program(tile, target: torch.Tensor, noise) -> int:
    """Program-and-verify every device to `target` [out, in] (aihwkit's set_weights: weight scaling and
    differential pairs as at training start), then each device of a unit cell with the noise model's
    programming noise (its conductance range mapped to the device's; a single-device tile gets none);
    returns the devices programmed."""
    from .knobs import pulsed_devices

    tile.set_weights(target)
    names = list(tile.tile.get_hidden_parameter_names())
    conductances = [n for n in names if n.startswith("hidden_weights_")]
    depth = max((n.count("_") for n in conductances), default=0)  # devices are the innermost level
    devices = [i for i, n in enumerate(names) if n in conductances and n.count("_") == depth]
    if noise is not None and devices:
        hidden = tile.tile.get_hidden_parameters()
        scale = noise.g_max / max(d.w_max for d in pulsed_devices(tile.rpu_config))
        for i in devices:
            hidden[i] = noise.apply_programming_noise_to_conductance(hidden[i] * scale) / scale
        derive_pair_weights(hidden, names)
        tile.tile.set_hidden_parameters(hidden)
    return max(len(devices), 1) * target.numel()  # a single-device tile: one device per weight


def derive_pair_weights(hidden: torch.Tensor, names: list[str]) -> None:
    """Set each differential pair's weight (hidden_weights_<k>) to G+ - G- of its devices (_1_<k>, _0_<k>)."""
    for i, name in enumerate(names):
        pair = name[len("hidden_weights_"):]
        if name.startswith("hidden_weights_") and pair.isdigit() and f"hidden_weights_1_{pair}" in names:
            plus, minus = names.index(f"hidden_weights_1_{pair}"), names.index(f"hidden_weights_0_{pair}")
            hidden[i] = hidden[plus] - hidden[minus]


def learner(mode: str, cfg: RunConfig, net: SNUNet, data: TaskData, adaptation: AdaptationConfig,
            mitigation: MitigationConfig, recompensate: Callable[[], None]) -> Learner:
    if mode == "learning_gated":
        return GatedLearner(cfg, net, data, adaptation, mitigation)
    if mode == "learning_transfer":
        return TransferLearner(cfg, net, data, adaptation, mitigation, recompensate=recompensate)
    if mode == "learning_digital":
        return DigitalLearner(cfg, net, data, adaptation, mitigation)
    return Learner(cfg, net, data, adaptation, mitigation)


def run_mode(cfg: RunConfig, net: SNUNet, data: TaskData, mode: str, times: list[float],
             adaptation: AdaptationConfig | None, mitigation: MitigationConfig,
             on_time: Callable[[Row], None] | None = None) -> list[Row]:
    """Let the clock of chip `net` (a copy: it is changed) run to each of `times` (seconds after its last
    write) in mode `mode`, evaluating the test split at each; one row per time. Updates due at an
    evaluation time come before it; other events (transfers) at an evaluation time come after it, so a
    chip is evaluated at the end of its transfer interval."""
    from .train import evaluate

    backend = net.backend
    backend.time_per_update = 0.0  # the clock is advanced here, by the deployment schedule
    kind = compensation_of(mode)
    comp = [DriftCompensation(net, kind)] if kind else []

    def recompensate() -> None:  # a new reference: the chip was just reprogrammed
        comp[:] = [DriftCompensation(net, kind)] if kind else []

    learn = (learner(mode, cfg, net, data, adaptation, mitigation, recompensate) if mode.startswith("learning")
             else None)
    pulses0, now, rows = total_pulses(net), 0.0, []

    def advance(to: float) -> None:
        nonlocal now
        backend.advance_clock(to - now)
        now = to
        for c in comp:
            c.update(net)

    for t in times:
        while learn is not None:
            due = [((learn.updates + 1) * learn.interval, learn.step)] if (learn.updates + 1) * learn.interval <= t \
                else []
            due += [(at, act) for at, act in learn.events() if at < t]
            if not due:
                break
            at, act = min(due, key=lambda e: e[0])
            advance(at)
            act()
        advance(t)
        metrics = evaluate(net, data.test, max(cfg.train.batch_size, 64), DTYPES[cfg.train.dtype], data.kind,
                           cfg.train.device)
        key = "test_accuracy" if data.kind == "classification" else "test_nll"
        value = metrics["accuracy" if data.kind == "classification" else "nll"]
        row = {"mode": mode, "seed": cfg.seed, "time_s": t, key: value,
               "updates": learn.updates if learn else 0, "writes": learn.writes if learn else 0,
               "programmed": learn.programmed if learn else 0, "pulses": total_pulses(net) - pulses0}
        rows.append(row)
        if on_time is not None:
            on_time(row)
    return rows
